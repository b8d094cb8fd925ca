"""
Tests for :mod:`netmodels.topologies.p2p.mesh`, the peer-to-peer topology, on the in-memory
network: mesh formation, one connection per pair, membership (alive, suspect,
dead, left) and its gossip, broadcast with de-duplication, direct sends, the
status document, and the ``--nodes`` / ``--listen`` options.

Everything runs on a :class:`~twisted.internet.task.Clock`. The harness
(:class:`MemoryMesh`, above the first test class) builds each node as
``PeerToPeer.build`` would, but listening at ``"<id>:1"`` on a
:class:`~netmodels.testing.MemoryNetwork` and dialling through it from host
``<id>``, so ``network.links_of(id)`` and ``network.blackhole_host(id)`` act
on exactly one node. Jitter is drawn as 0 and every node's maintenance loop
starts at the same instant, so ticks line up and runs are reproducible.

Membership changes are observed two ways: every ``[node] peer X is STATE``
log event, with the clock time it happened at (:attr:`MemoryMesh.transitions`,
which catches a state that lasts no time at all), and a sample of every
member's state after each clock step (:attr:`MemoryMesh.samples`).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from netmodels.core.backoff import DEFAULT_RECONNECT_POLICY
from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.core.frames import MessageType, encode_frame
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.daemon.tap import Options, makeService
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.session import Session, decode_bye, encode_bye
from netmodels.testing import DatagramNetwork, MemoryLink, MemoryNetwork
from netmodels.topologies.p2p import mesh as p2p
from netmodels.topologies.p2p.flooding import SEEN_WINDOW
from netmodels.topologies.p2p.mesh import (
    DIAL_GRACE,
    TICK,
    Member,
    Mesh,
    PeerState,
    RemoteNode,
)
from netmodels.topologies.p2p.messages import BROADCAST, MAX_MEMBERS, PEERS, Broadcast, encode_broadcast
from netmodels.topologies.p2p.options import P2PSettings
from netmodels.topologies.p2p.swim_membership import SwimSetup
from netmodels.topologies.p2p.topology import BroadcastApplication, PeerToPeer, first_endpoint, mesh_of
from tests.test_testing import CLOSE_DEADLINE, RawPeer, WireTap, advance_by, advance_to, raw_hello

# --- Constants --------------------------------------------------------------

#: Keepalive for mesh nodes: probe after 3 s of silence, every 1 s, twice.
IDLE = 3.0
INTERVAL = 1.0
PROBES = 2
KEEPALIVE = KeepaliveSettings(IDLE, INTERVAL, PROBES)
#: Seconds of silence after which a peer is declared dead (5 s).
BOUND = KEEPALIVE.worst_case

#: Clock step of MemoryMesh.advance: exact in binary, a divisor of every
#: timer the tests reason about (ticks, keepalive, backoffs drawn with 0).
STEP = 0.125

#: Slack for "not before" / "by" checks on times that are multiples of STEP.
EPSILON = 0.001

#: Time for a mesh of up to 12 nodes bootstrapping from one to settle: the
#: bootstrap dial, gossip, the dial grace for smaller ids, and slack.
SETTLE = 10.0

#: The default reconnect delays with jitter drawn as 0.
TIMEOUT_BACKOFF = DEFAULT_RECONNECT_POLICY.by_reason[CloseReason.TIMEOUT]
CLEAN_BACKOFF = DEFAULT_RECONNECT_POLICY.by_reason[CloseReason.CLEAN]
assert TIMEOUT_BACKOFF is not None and CLEAN_BACKOFF is not None

#: Connect attempts to a blackholed host hang this long, then time out.
CONNECT_TIMEOUT = 2.0


def name(index: int) -> str:
    """Node ids sort like their indexes: ``n00`` < ``n01`` < ... < ``n11``."""
    return f"n{index:02d}"


def address(node_id: str) -> str:
    return f"{node_id}:1"


# --- The harness ------------------------------------------------------------


class MemoryListener(Service):
    """Listen at one memory-network address while the node runs, as ``Node.listen`` would."""

    def __init__(self, network: MemoryNetwork, where: str, factory: Factory[Any]) -> None:
        self.network = network
        self.where = where
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        result: list[Any] = []
        self.network.server_endpoint(self.where).listen(self.factory).addBoth(result.append)
        assert IListeningPort.providedBy(result[0]), result
        self.port = result[0]

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()


@implementer(IStreamClientEndpoint)
class _RecordedEndpoint:
    """A memory client endpoint that notes each dial and taps the link it makes."""

    def __init__(self, mesh: MemoryMesh, target: str, source: str) -> None:
        if ":" not in target:
            # As clientFromString does with a description it cannot parse.
            raise ValueError(f"not a memory address: {target!r}")
        self.mesh = mesh
        self.target = target
        self.source = source

    def connect(self, factory: Factory[Any]) -> defer.Deferred[Any]:
        mesh = self.mesh
        mesh.dials.append((mesh.clock.seconds(), self.source, self.target))
        before = len(mesh.network.links)
        attempt = mesh.network.client_endpoint(self.target, self.source).connect(factory)
        if len(mesh.network.links) > before:
            link = mesh.network.links[-1]
            mesh.taps[link] = (WireTap(link.client, mesh.clock), WireTap(link.server, mesh.clock))
        return attempt


class MemoryMesh:
    """
    p2p nodes on one memory network and one clock.

    ``add_node(i, bootstrap)`` builds node ``n<i>`` listening at ``n<i>:1``;
    ``start`` starts nodes (their maintenance loops start at that instant);
    ``advance`` moves the clock in steps of :data:`STEP`, running every timer
    at its own time and sampling every member's state after each step.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        *,
        max_peers: int = 32,
        keepalive: KeepaliveSettings = KEEPALIVE,
        latency: float = 0.0,
        connect_timeout: float = 30.0,
        draw: Callable[[], float] = lambda: 0.0,
        swim: bool = False,
        high_water: int | None = None,
        trim_grace: float = 30.0,
    ) -> None:
        self.testcase = testcase
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock, latency, connect_timeout)
        #: With ``swim``: SWIM's UDP, in memory on the same clock; node ``n<i>`` at 10.9.0.<i + 1>:7946.
        self.swim = swim
        self.datagrams = DatagramNetwork(self.clock, seed=1)
        self.high_water = high_water
        self.trim_grace = trim_grace
        self.max_peers = max_peers
        self.keepalive = keepalive
        self.draw = draw
        #: Every node built, by id; a restarted node replaces its predecessor.
        self.nodes: dict[str, Node] = {}
        #: Ids of the nodes started and not stopped.
        self.running: set[str] = set()
        #: ``(time, source id, target address)`` of every dial, bootstrap or gossip.
        self.dials: list[tuple[float, str, str]] = []
        #: ``(time, observer id, peer id, state)`` of every membership change.
        self.transitions: list[tuple[float, str, str, str]] = []
        #: ``(observer, peer) -> [(time, state), ...]``, a new entry when the sampled state changed.
        self.samples: dict[tuple[str, str], list[tuple[float, str]]] = collections.defaultdict(list)
        #: What each end of each link wrote (links made by a dial through the harness).
        self.taps: dict[MemoryLink, tuple[WireTap, WireTap]] = {}
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    # Building

    def add_node(
        self,
        index: int,
        bootstrap: Iterable[int | str] = (),
        *,
        max_peers: int | None = None,
        extra_listen: Iterable[str] = (),
        max_connections: int | None = 10_000,
    ) -> Node:
        node_id = name(index)
        where = address(node_id)
        config = NodeConfig(
            topology="p2p",
            role="peer",
            listen=(where,),
            node_id=node_id,
            app="broadcast",
            keepalive=self.keepalive,
            interval=0,
            settings=P2PSettings(max_peers=self.max_peers if max_peers is None else max_peers),
            max_connections=max_connections,
        )
        node = Node(config, PeerToPeer(), BroadcastApplication(config), self.clock)
        for listening in (where, *extra_listen):
            factory = node.manager.wrap_factory(
                node.session_factory(), rejection_payload=lambda reason, detail: encode_bye(reason, detail)
            )
            MemoryListener(self.network, listening, factory).setServiceParent(node)
        targets = [address(name(b)) if isinstance(b, int) else b for b in bootstrap]
        swim = None
        if self.swim:
            node.datagram_reactor = self.datagrams
            seeds: list[str | Callable[[], str | None]] = ["10.9.0.1:7946"] if index else []
            swim = SwimSetup(7946, f"10.9.0.{index + 1}", seeds, seed=index)
        mesh = Mesh(
            node,
            config.settings.max_peers,
            [] if self.swim else targets,
            draw=self.draw,
            client_endpoint=lambda target, me=node_id: _RecordedEndpoint(self, target, me),
            endpoints=(where,),
            swim=swim,
            high_water=self.high_water,
            trim_grace=self.trim_grace,
        )
        node.topology_state = mesh
        node.start_hooks.append(mesh.start)
        node.stop_hooks.append(mesh.stop)
        self.nodes[node_id] = node
        return node

    def build(self, count: int, **node_options: Any) -> None:
        """Nodes ``n00`` .. ``n<count-1>``; every node but ``n00`` bootstraps from ``n00`` only."""
        for index in range(count):
            self.add_node(index, [0] if index else [], **node_options)

    # Running

    def start(self, *ids: str) -> None:
        """Start ``ids`` (default: every node not running) and deliver what is due now."""
        for node_id in ids or [i for i in self.nodes if i not in self.running]:
            self.nodes[node_id].startService()
            self.running.add(node_id)
        self.clock.advance(0)

    def stop(self, node_id: str) -> defer.Deferred[None]:
        self.running.discard(node_id)
        stopped: defer.Deferred[None] = self.nodes[node_id].stopService()
        return stopped

    def stop_all(self, others: Iterable[Node] = ()) -> None:
        """
        Stop every running node (and ``others``), let every close and hanging
        connect finish, and check that no timer is left on the clock.
        """
        stopping = [self.stop(node_id) for node_id in sorted(self.running)]
        stopping += [node.stopService() for node in others]
        advance_to(self.clock, self.clock.seconds() + max(CLOSE_DEADLINE, self.network.connect_timeout) + 1)
        for deferred in stopping:
            results: list[Any] = []
            deferred.addBoth(results.append)
            self.testcase.assertEqual(results, [None])
        self.testcase.assertEqual(self.clock.getDelayedCalls(), [], "timers left after stopping every node")

    def advance(self, seconds: float) -> None:
        start = self.clock.seconds()
        for k in range(1, round(seconds / STEP) + 1):
            advance_to(self.clock, start + k * STEP)
            self._sample()

    def advance_until(self, condition: Callable[[], bool], limit: float, what: str = "condition") -> float:
        """Advance step by step until ``condition()``; the time it first held. Fails after ``limit`` s."""
        start = self.clock.seconds()
        for k in range(round(limit / STEP) + 1):
            if k:
                advance_to(self.clock, start + k * STEP)
                self._sample()
            if condition():
                return self.clock.seconds()
        self.testcase.fail(
            f"{what} still false {limit:g} s after t={start:g}; views:\n{self.describe_views()}"
        )
        raise AssertionError("unreachable")

    # Observing

    def mesh(self, node_id: str) -> Mesh:
        mesh = mesh_of(self.nodes[node_id])
        return mesh

    def received(self, node_id: str) -> list[tuple[str, bytes]]:
        application = self.nodes[node_id].application
        assert isinstance(application, BroadcastApplication)
        return application.received

    def states_seen_by(self, node_id: str) -> dict[str, str]:
        return {m.node_id: str(m.state) for m in self.mesh(node_id).members.values()}

    def direct_peers(self, node_id: str) -> set[str]:
        return {m.node_id for m in self.mesh(node_id).members.values() if m.session is not None}

    def all_alive(self, subjects: Iterable[str] | None = None) -> bool:
        """Every running node's ``mesh.alive()`` holds every other running node (or ``subjects``)."""
        for observer in self.running:
            wanted = set(self.running if subjects is None else subjects) - {observer}
            if not wanted <= set(self.mesh(observer).alive()):
                return False
        return True

    def full_mesh(self) -> bool:
        """Every running node is directly connected to every other, and sees it alive."""
        return self.all_alive() and all(
            self.direct_peers(node_id) >= self.running - {node_id} for node_id in self.running
        )

    def live_links(self) -> list[MemoryLink]:
        return [link for link in self.network.links if all(end.connected for end in link.ends)]

    def links_between(self, a: str, b: str) -> list[MemoryLink]:
        return [
            link
            for link in self.live_links()
            if {link.client.getHost().host, link.server.getHost().host} == {a, b}
        ]

    def edges(self) -> set[frozenset[str]]:
        """The pairs joined by a session both ends use."""
        return {frozenset((node_id, peer)) for node_id in self.running for peer in self.direct_peers(node_id)}

    def mark(self) -> Mark:
        """Where the records stand now, to look only at what happens next."""
        return Mark(self.clock.seconds(), len(self.dials), len(self.transitions))

    def dials_to(self, node_id: str, mark: Mark) -> list[tuple[float, str, str]]:
        """Dials of ``node_id``'s address since ``mark``."""
        return [dial for dial in self.dials[mark.dials :] if dial[2] == address(node_id)]

    def transitions_about(self, peer: str, mark: Mark | None = None) -> list[tuple[float, str, str]]:
        """``(time, observer, state)`` of every change in how others see ``peer``, since ``mark``."""
        start = 0 if mark is None else mark.transitions
        return [(t, obs, state) for t, obs, subject, state in self.transitions[start:] if subject == peer]

    def describe_views(self) -> str:
        lines = []
        for node_id in sorted(self.running):
            view = self.states_seen_by(node_id)
            direct = self.direct_peers(node_id)
            lines.append(
                f"  {node_id}: "
                + " ".join(f"{p}={s}{'*' if p in direct else ''}" for p, s in sorted(view.items()))
            )
        return "\n".join(lines)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") != "netmodels.p2p" or "peer" not in event or "state" not in event:
            return
        if event.get("node") in self.nodes:
            self.transitions.append((self.clock.seconds(), event["node"], event["peer"], event["state"]))

    def _sample(self) -> None:
        now = self.clock.seconds()
        for observer in self.running:
            for member in self.mesh(observer).members.values():
                history = self.samples[(observer, member.node_id)]
                if not history or history[-1][1] != member.state:
                    history.append((now, str(member.state)))


@attrs.frozen
class Mark:
    """A point in a MemoryMesh's records: the time, and how many dials and transitions came before."""

    time: float
    dials: int
    transitions: int


def session_link(session: Session) -> MemoryLink:
    """The memory link under a session (its transport is the manager's wrapper)."""
    link: MemoryLink = session.transport.transport.link
    return link


def side_of(link: MemoryLink, node_id: str) -> int:
    """Which end of ``link`` (0 = dialler, 1 = listener) belongs to ``node_id``."""
    (side,) = [i for i, end in enumerate(link.ends) if end.getHost().host == node_id]
    return side


def connect_raw(mesh: MemoryMesh, target: str, node_id: str = "raw") -> RawPeer:
    """A wire-level p2p peer ``node_id`` that has sent its HELLO to ``target`` and read the answer."""
    attempt = mesh.network.client_endpoint(address(target), node_id).connect(Factory.forProtocol(RawPeer))
    results: list[Any] = []
    attempt.addBoth(results.append)
    (peer,) = results
    assert isinstance(peer, RawPeer), peer
    peer.transport.write(raw_hello(role="peer", topology="p2p", node_id=node_id))
    mesh.clock.advance(0)
    return peer


def peers_frame(*entries: dict[str, Any]) -> bytes:
    return encode_frame(PEERS, json.dumps({"members": list(entries)}).encode())


def peers_bodies(peer: RawPeer) -> list[dict[str, Any]]:
    return [json.loads(body) for kind, body in peer.frames if kind == PEERS]


def byes(peer: RawPeer) -> list[tuple[CloseReason, str, bool]]:
    return [decode_bye(body) for kind, body in peer.frames if kind == MessageType.BYE]


def connected(nodes: Iterable[str], edges: set[frozenset[str]]) -> bool:
    """Whether ``edges`` join ``nodes`` into one component."""
    remaining = set(nodes)
    if not remaining:
        return True
    frontier = [remaining.pop()]
    while frontier:
        here = frontier.pop()
        for edge in edges:
            if here in edge:
                for other in edge - {here}:
                    if other in remaining:
                        remaining.remove(other)
                        frontier.append(other)
    return not remaining


# --- Formation ----------------------------------------------------------------


class FormationTests(SynchronousTestCase):
    """N nodes given one bootstrap peer form a full mesh, one connection per pair."""

    def assertFullMesh(self, count: int) -> None:
        mesh = MemoryMesh(self)
        mesh.build(count)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        mesh.advance(SETTLE)  # and it stays that way

        for node_id in mesh.running:
            others = mesh.running - {node_id}
            self.assertEqual(mesh.states_seen_by(node_id), dict.fromkeys(others, "alive"), node_id)
            self.assertEqual(mesh.direct_peers(node_id), others, node_id)
            self.assertEqual(len(mesh.nodes[node_id].manager.live), count - 1, node_id)
        pairs = count * (count - 1) // 2
        self.assertEqual(len(mesh.live_links()), pairs)
        self.assertEqual(len(mesh.edges()), pairs)
        # Each node reached the others through one bootstrap peer: nobody but n00 was configured.
        configured = {n: mesh.mesh(n).bootstrap for n in mesh.nodes}
        self.assertEqual(configured, {n: ([] if n == "n00" else ["n00:1"]) for n in mesh.nodes})
        # No connection was ever closed: no duplicate, no failure.
        closed = [r for n in mesh.nodes.values() for r in n.manager.records() if r.closed]
        self.assertEqual(closed, [])
        mesh.stop_all()

    def test_six_nodes(self) -> None:
        """6 nodes bootstrapping from n00: everyone sees everyone alive, directly; 15 connections."""
        self.assertFullMesh(6)

    def test_twelve_nodes(self) -> None:
        """12 nodes bootstrapping from n00: everyone sees everyone alive, directly; 66 connections."""
        self.assertFullMesh(12)

    def test_smaller_id_dials(self) -> None:
        """
        Apart from the bootstrap connections to n00, each pair's connection was
        dialled by its smaller id (the greater id waits for it).
        """
        mesh = MemoryMesh(self)
        mesh.build(6)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        for link in mesh.live_links():
            dialler, listener = link.client.getHost().host, link.server.getHost().host
            if listener != "n00":
                self.assertLess(dialler, listener)
        mesh.stop_all()

    def test_greater_id_dials_after_grace(self) -> None:
        """
        A smaller id that does not dial (n01 has no dial budget beyond its
        bootstrap connection) is dialled by the greater id, DIAL_GRACE after
        the greater id learned of it -- not before.
        """
        mesh = MemoryMesh(self)
        mesh.add_node(0)
        mesh.add_node(1, [0], max_peers=1)
        mesh.add_node(2, [0])
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        known = mesh.mesh("n02").members["n01"].known_since
        (dial,) = [d for d in mesh.dials if d[1:] == ("n02", "n01:1")]
        self.assertGreaterEqual(dial[0], known + DIAL_GRACE)
        self.assertLessEqual(dial[0], known + DIAL_GRACE + TICK)
        self.assertEqual([d for d in mesh.dials if d[1:] == ("n01", "n02:1")], [])
        mesh.stop_all()

    def test_bootstrap_retried_until_it_answers(self) -> None:
        """A node whose bootstrap peer is not up yet keeps trying, and joins once it is."""
        mesh = MemoryMesh(self)
        mesh.build(3)
        mesh.start("n01", "n02")
        mesh.advance(5)
        self.assertEqual(mesh.mesh("n01").members, {})
        failed = [r for r in mesh.nodes["n01"].manager.records() if r.reason is CloseReason.REFUSED]
        self.assertGreater(len(failed), 1)
        mesh.start("n00")
        mesh.advance_until(mesh.full_mesh, SETTLE + 30, "full mesh")
        mesh.stop_all()


# --- One connection per pair ----------------------------------------------------


class SimultaneousDialTests(SynchronousTestCase):
    """
    When two nodes dial each other at once, both keep the connection the
    smaller id dialled and close the other with a BYE saying "duplicate";
    nobody is marked dead or left for it.
    """

    def assertOneConnection(self, mesh: MemoryMesh, a: str, b: str, mark: Mark) -> None:
        smaller, greater = sorted((a, b))
        live = mesh.links_between(a, b)
        self.assertEqual(len(live), 1, live)
        (kept,) = live
        self.assertEqual(kept.client.getHost().host, smaller, "the kept link was dialled by the smaller id")
        session_a = mesh.mesh(a).members[b].session
        session_b = mesh.mesh(b).members[a].session
        assert session_a is not None and session_b is not None
        self.assertIs(session_link(session_a), kept)
        self.assertIs(session_link(session_b), kept)
        # The duplicate: dialled by the greater id after the mark, closed by
        # both ends with a BYE whose detail says why, recorded clean.
        dialled = [
            link
            for link in mesh.network.links
            if {e.getHost().host for e in link.ends} == {a, b} and link not in live and link in mesh.taps
        ]
        recent = [link for link in dialled if any(tap.times_of(MessageType.BYE) for tap in mesh.taps[link])]
        recent = [link for link in recent if min(mesh.taps[link][0].times_of(MessageType.BYE)) >= mark.time]
        self.assertEqual(len(recent), 1, recent)
        (duplicate,) = recent
        self.assertEqual(duplicate.client.getHost().host, greater)
        for tap in mesh.taps[duplicate]:
            details = [decode_bye(body)[1] for _, kind, body in tap.frames if kind == MessageType.BYE]
            self.assertEqual(len(details), 1, details)
            self.assertIn("duplicate", details[0])
            self.assertIn(smaller, details[0])
        for node_id in (a, b):
            records = [
                r
                for r in mesh.nodes[node_id].manager.records()
                if "duplicate" in r.detail and r.closed_at is not None and r.closed_at >= mark.time
            ]
            self.assertEqual(len(records), 1, records)
            self.assertEqual(records[0].reason, CloseReason.CLEAN)
        # The duplicate's close made nobody dead or left, not even for an instant.
        about = [
            (t, obs, subject, state)
            for t, obs, subject, state in mesh.transitions[mark.transitions :]
            if {obs, subject} == {a, b} and state in ("dead", "left", "suspect")
        ]
        self.assertEqual(about, [])

    def test_both_learn_at_once_and_dial(self) -> None:
        """
        n01 and n02 learn of each other from n00 in the same instant. With no
        dial grace (so the greater id does not wait), both dial at their next
        tick: exactly one connection survives, the one n01 dialled.
        """
        self.patch(p2p, "DIAL_GRACE", 0.0)
        mesh = MemoryMesh(self)
        mesh.build(3)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        mesh.advance(3)
        self.assertIn((TICK, "n01", "n02:1"), mesh.dials)
        self.assertIn((TICK, "n02", "n01:1"), mesh.dials)
        self.assertOneConnection(mesh, "n01", "n02", Mark(0.0, 0, 0))
        self.assertTrue(mesh.full_mesh())
        mesh.stop_all()

    def test_both_redial_after_a_bare_fin(self) -> None:
        """
        A bare FIN ends the n01-n02 connection on both sides at once; both
        redial at the same tick, and again only n01's connection survives.
        """
        mesh = MemoryMesh(self)
        mesh.build(4)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        (link,) = mesh.links_between("n01", "n02")
        mark = mesh.mark()
        link.close(side_of(link, "n02"))
        mesh.clock.advance(0)
        self.assertFalse(mesh.full_mesh())
        dead = mesh.mark()
        mesh.advance_until(mesh.full_mesh, 3 * TICK, "full mesh again")
        redials = {(src, dst) for t, src, dst in mesh.dials[mark.dials :]}
        self.assertEqual(redials, {("n01", "n02:1"), ("n02", "n01:1")})
        mesh.advance(3)
        self.assertOneConnection(mesh, "n01", "n02", dead)
        mesh.stop_all()

    def test_same_dialler_twice_keeps_the_older(self) -> None:
        """
        n01 bootstraps from two addresses of n02 (``n02:1`` and ``n02:2``) at
        once: two connections it dialled. Both ends keep the older, close the
        other as a duplicate, and nobody is marked dead or left.
        """
        mesh = MemoryMesh(self)
        mesh.add_node(2, extra_listen=["n02:2"])
        mesh.add_node(1, ["n02:1", "n02:2"])
        mesh.start()
        mesh.advance(3)
        self.assertEqual([d[1:] for d in mesh.dials], [("n01", "n02:1"), ("n01", "n02:2")])
        first, second = mesh.network.links
        self.assertEqual(mesh.live_links(), [first])
        for node_id, peer in (("n01", "n02"), ("n02", "n01")):
            session = mesh.mesh(node_id).members[peer].session
            assert session is not None
            self.assertIs(session_link(session), first)
            self.assertEqual(mesh.states_seen_by(node_id), {peer: "alive"})
        for tap in mesh.taps[second]:
            details = [decode_bye(body)[1] for _, kind, body in tap.frames if kind == MessageType.BYE]
            self.assertEqual(len(details), 1, details)
            self.assertIn("duplicate", details[0])
        self.assertEqual(mesh.transitions, [])
        mesh.stop_all()


# --- Partial mesh ---------------------------------------------------------------


class PartialMeshTests(SynchronousTestCase):
    """12 nodes with --max-peers 3: a partial mesh that still carries every broadcast once."""

    COUNT = 12
    MAX_PEERS = 3

    def setUp(self) -> None:
        self.mesh = MemoryMesh(self, max_peers=self.MAX_PEERS)
        self.mesh.build(self.COUNT)
        self.mesh.start()
        self.mesh.advance_until(lambda: self.mesh.all_alive(), SETTLE, "everyone alive")
        self.mesh.advance(SETTLE)

    def outbound(self, node_id: str) -> list[ConnectionRecord]:
        return [
            c.record
            for c in self.mesh.nodes[node_id].manager.live.values()
            if c.record.direction is Direction.OUTBOUND
        ]

    def test_each_node_dials_at_most_max_peers(self) -> None:
        """No node ever dialled more than max_peers distinct peers, nor holds more outbound."""
        for node_id in self.mesh.running:
            self.assertLessEqual(len(self.outbound(node_id)), self.MAX_PEERS, node_id)
            targets = {target for _, source, target in self.mesh.dials if source == node_id}
            self.assertLessEqual(len(targets), self.MAX_PEERS, (node_id, targets))
        self.assertLess(len(self.mesh.edges()), self.COUNT * (self.COUNT - 1) // 2, "not a full mesh")

    def test_connected_and_everyone_alive(self) -> None:
        """The graph of connections is connected; every node knows every other as alive."""
        self.assertTrue(connected(self.mesh.running, self.mesh.edges()), self.mesh.edges())
        self.assertTrue(self.mesh.all_alive(), self.mesh.describe_views())
        for node_id in self.mesh.running:
            status = self.mesh.mesh(node_id).status()
            self.assertEqual(status["known"], self.COUNT - 1)
            self.assertEqual(status["direct"], len(self.mesh.direct_peers(node_id)))

    def test_broadcast_delivered_exactly_once_everywhere(self) -> None:
        """
        A broadcast from every node reaches every other node exactly once and
        never its origin; every extra copy is counted as a duplicate.
        """
        first_hops = {}
        for node_id in sorted(self.mesh.running):
            first_hops[node_id] = self.mesh.mesh(node_id).broadcast(f"hello from {node_id}".encode())
            self.assertEqual(first_hops[node_id], len(self.mesh.direct_peers(node_id)))
        self.mesh.clock.advance(0)
        for node_id in self.mesh.running:
            expected = sorted((o, f"hello from {o}".encode()) for o in self.mesh.running - {node_id})
            self.assertEqual(sorted(self.mesh.received(node_id)), expected, node_id)
        counters = [self.mesh.mesh(n).counters for n in self.mesh.running]
        self.assertEqual([c["sent"] for c in counters], [1] * self.COUNT)
        self.assertEqual([c["delivered"] for c in counters], [self.COUNT - 1] * self.COUNT)
        # Every frame sent was received once: either delivered or a duplicate.
        sent = sum(first_hops.values()) + sum(c["forwarded"] for c in counters)
        received = sum(c["delivered"] + c["duplicates"] for c in counters)
        self.assertEqual(received, sent)
        self.assertGreater(sum(c["duplicates"] for c in counters), 0)

    def test_many_broadcasts_from_one_node(self) -> None:
        """100 broadcasts from one node: each delivered once at each other node, in order."""
        payloads = [f"m{i}".encode() for i in range(100)]
        for payload in payloads:
            self.mesh.mesh("n05").broadcast(payload)
        self.mesh.clock.advance(0)
        for node_id in self.mesh.running - {"n05"}:
            self.assertEqual(self.mesh.received(node_id), [("n05", p) for p in payloads], node_id)
        self.assertEqual(self.mesh.received("n05"), [])

    def test_send_to_a_node_not_directly_connected_is_relayed_to_it_only(self) -> None:
        """
        mesh.send_to and RemoteNode.send to a node with no direct connection
        relay through the mesh; only that node delivers it, once.
        """
        source = "n01"
        far = sorted(self.mesh.running - self.mesh.direct_peers(source) - {source})
        self.assertGreaterEqual(len(far), 2, self.mesh.describe_views())
        first, second = far[-1], far[-2]
        self.mesh.mesh(source).send_to(first, b"for you only")
        RemoteNode(self.mesh.mesh(source), second).send(b"and this one for you")
        self.mesh.clock.advance(0)
        for node_id in self.mesh.running:
            expected = {
                first: [(source, b"for you only")],
                second: [(source, b"and this one for you")],
            }.get(node_id, [])
            self.assertEqual(self.mesh.received(node_id), expected, node_id)
        self.assertEqual(self.mesh.mesh(source).counters["relayed"], 2)

    def test_send_to_a_direct_peer_uses_its_connection(self) -> None:
        """send_to a direct peer is one DATA message on that connection, not a relay."""
        source = "n01"
        peer = sorted(self.mesh.direct_peers(source))[0]
        record = self.mesh.mesh(source).members[peer].session.record  # type: ignore[union-attr]
        assert record is not None
        before = record.messages_out
        self.mesh.mesh(source).send_to(peer, b"direct")
        self.mesh.clock.advance(0)
        self.assertEqual(record.messages_out, before + 1)
        self.assertEqual(self.mesh.received(peer), [(source, b"direct")])
        self.assertEqual(self.mesh.mesh(source).counters["relayed"], 0)
        for node_id in self.mesh.running - {peer}:
            self.assertEqual(self.mesh.received(node_id), [], node_id)

    def test_send_to_unknown_node(self) -> None:
        with self.assertRaises(LookupError):
            self.mesh.mesh("n01").send_to("nobody", b"x")

    def test_remote_node_properties(self) -> None:
        """RemoteNode reports the direct connection's id and record, or none."""
        source = self.mesh.mesh("n01")
        direct = sorted(self.mesh.direct_peers("n01"))[0]
        far = sorted(self.mesh.running - self.mesh.direct_peers("n01") - {"n01"})[0]
        near = RemoteNode(source, direct)
        session = source.members[direct].session
        assert session is not None
        self.assertEqual((near.node_id, near.role), (direct, "peer"))
        self.assertEqual(near.connection_id, session.connection_id)
        self.assertIs(near.record, session.record)
        remote = RemoteNode(source, far)
        self.assertEqual((remote.connection_id, remote.record), (-1, None))
        self.failureResultOf(remote.request(b"x"), LookupError)

    def tearDown(self) -> None:
        self.mesh.stop_all()


# --- Failures and membership ----------------------------------------------------


class PartitionTests(SynchronousTestCase):
    """A node cut off (blackholed) is suspect, then dead, within the keepalive bound; healed, it rejoins."""

    COUNT = 6

    def setUp(self) -> None:
        self.mesh = MemoryMesh(self, connect_timeout=CONNECT_TIMEOUT)
        self.mesh.build(self.COUNT)
        self.mesh.start()
        self.mesh.advance_until(self.mesh.full_mesh, SETTLE, "full mesh")
        self.mesh.advance(SETTLE)

    def tearDown(self) -> None:
        self.mesh.stop_all()

    def cut_off(self, node_id: str) -> tuple[Mark, dict[str, float]]:
        """Blackhole ``node_id`` until every other node marks it dead; (the cut, dead time by observer)."""
        mesh = self.mesh
        cut = mesh.mark()
        mesh.network.blackhole_host(node_id)
        others = mesh.running - {node_id}
        mesh.advance_until(
            lambda: all(mesh.mesh(o).members[node_id].state is PeerState.DEAD for o in others),
            BOUND + TICK + 1,
            f"{node_id} dead everywhere",
        )
        dead = {obs: t for t, obs, state in mesh.transitions_about(node_id, cut) if state == "dead"}
        self.assertEqual(set(dead), others)
        return cut, dead

    def test_dead_within_keepalive_bound(self) -> None:
        """
        Every other node marks the blackholed node dead no sooner than
        interval x probes after the cut (some silence had already passed) and
        no later than idle + interval x probes (+ a tick), each by its own
        keepalive timeout.
        """
        cut, dead = self.cut_off("n05")
        for observer, when in dead.items():
            self.assertGreaterEqual(when, cut.time + INTERVAL * PROBES - EPSILON, observer)
            self.assertLessEqual(when, cut.time + BOUND + TICK + EPSILON, observer)
            (record,) = [
                r
                for r in self.mesh.nodes[observer].manager.records()
                if r.peer_id == "n05" and r.closed_at is not None and r.closed_at >= cut.time
            ]
            self.assertEqual((record.reason, record.initiator), (CloseReason.TIMEOUT, Initiator.LOCAL))
            member = self.mesh.mesh(observer).members["n05"]
            self.assertEqual((member.session, member.last_reason), (None, "timeout"))

    def test_suspect_then_dead(self) -> None:
        """
        The transition sequence, both as logged and as sampled each step:
        alive, then suspect (a probe unanswered for an interval), then dead;
        suspect lasts one keepalive interval.
        """
        cut, _ = self.cut_off("n05")
        for observer in self.mesh.running - {"n05"}:
            logged = [(t, s) for t, o, s in self.mesh.transitions_about("n05", cut) if o == observer]
            self.assertEqual([s for _, s in logged], ["suspect", "dead"], observer)
            self.assertEqual(logged[1][0] - logged[0][0], INTERVAL, observer)
            sampled = [s for t, s in self.mesh.samples[(observer, "n05")]]
            self.assertEqual(sampled[-3:], ["alive", "suspect", "dead"], observer)
        # And the cut-off node sees the others the same way.
        for peer in self.mesh.running - {"n05"}:
            states = [s for t, o, s in self.mesh.transitions_about(peer, cut) if o == "n05"]
            self.assertEqual(states, ["suspect", "dead"], peer)

    def test_heal_rejoins_within_a_few_ticks(self) -> None:
        """
        Healed as soon as everyone has declared it dead, the node is alive
        everywhere again within a few ticks: at most a redial that started
        while it was cut off times out, and the next one (after the second
        timeout backoff) succeeds.
        """
        self.cut_off("n05")
        healed = self.mesh.clock.seconds()
        self.mesh.network.heal_host("n05")
        bound = CONNECT_TIMEOUT + TIMEOUT_BACKOFF.delay(1, lambda: 0.0) + TICK
        back = self.mesh.advance_until(self.mesh.full_mesh, bound + TICK, "rejoined")
        self.assertLessEqual(back - healed, bound)
        self.assertEqual(len(self.mesh.live_links()), self.COUNT * (self.COUNT - 1) // 2)

    def test_heal_after_a_long_partition(self) -> None:
        """
        After a partition of 20 s, redials are backing off; the node still
        rejoins, within a pending connect's timeout plus the longest backoff.
        """
        self.cut_off("n05")
        self.mesh.advance(20)
        healed = self.mesh.clock.seconds()
        self.mesh.network.heal_host("n05")
        self.mesh.advance_until(
            self.mesh.full_mesh, CONNECT_TIMEOUT + TIMEOUT_BACKOFF.maximum + 2 * TICK, "rejoined"
        )
        self.assertGreater(self.mesh.clock.seconds(), healed)

    def test_dead_peer_redialled_with_backoff(self) -> None:
        """While cut off, the others keep redialling it, by the timeout backoff, not every tick."""
        cut, dead = self.cut_off("n05")
        self.mesh.advance(20)
        for observer in self.mesh.running - {"n05"}:
            attempts = [t for t, src, dst in self.mesh.dials_to("n05", cut) if src == observer]
            self.assertGreaterEqual(len(attempts), 2, observer)
            self.assertLess(len(attempts), 20 / TICK / 2, observer)
            self.assertGreaterEqual(attempts[0], dead[observer] + TIMEOUT_BACKOFF.initial - EPSILON)


class PartialMeshPartitionTests(SynchronousTestCase):
    """
    The same partition in a partial mesh (12 nodes, --max-peers 3): nodes
    that are not directly connected to the cut-off node learn its fate by
    gossip, and must learn of its return the same way.
    """

    def setUp(self) -> None:
        self.mesh = MemoryMesh(self, max_peers=3, connect_timeout=CONNECT_TIMEOUT)
        self.mesh.build(12)
        self.mesh.start()
        self.mesh.advance_until(lambda: self.mesh.all_alive(), SETTLE, "everyone alive")
        self.mesh.advance(SETTLE)

    def tearDown(self) -> None:
        self.mesh.stop_all()

    def partition(self, victim: str) -> float:
        """Cut ``victim`` off until every other node has it dead, then heal."""
        mesh = self.mesh
        self.assertLess(len(mesh.direct_peers(victim)), 11, "the victim must not be connected to all")
        mesh.network.blackhole_host(victim)
        mesh.advance_until(
            lambda: all(
                mesh.mesh(o).members[victim].state is PeerState.DEAD for o in mesh.running - {victim}
            ),
            BOUND + 3 * TICK,
            f"{victim} dead everywhere",
        )
        mesh.network.heal_host(victim)
        return mesh.clock.seconds()

    def test_brief_partition_alive_everywhere(self) -> None:
        """
        Cut off only until its direct peers suspect it (one interval past
        idle), the node is alive again everywhere once healed: the suspicion
        that gossip spread is refuted everywhere, and where a connection did
        time out meanwhile, the news that it is back spreads too.
        """
        mesh = self.mesh
        mesh.network.blackhole_host("n05")
        peers = mesh.direct_peers("n05")
        mesh.advance_until(
            lambda: all(mesh.mesh(p).members["n05"].state is PeerState.SUSPECT for p in peers),
            BOUND + TICK,
            "n05 suspect at its direct peers",
        )
        mesh.advance(INTERVAL / 2)
        mesh.network.heal_host("n05")
        mesh.advance_until(lambda: mesh.all_alive(), self.REJOIN, "everyone alive everywhere")
        mesh.advance(SETTLE)
        self.assertTrue(mesh.all_alive(), mesh.describe_views())

    #: Bound for the mesh to agree again after a heal: pending connects time
    #: out, redials back off, then gossip spreads the news.
    REJOIN = CONNECT_TIMEOUT + TIMEOUT_BACKOFF.maximum + 10 * TICK

    def test_healed_node_alive_everywhere(self) -> None:
        """
        After heal_host, the cut-off node is alive again in every node's view,
        including the nodes that only ever knew it by gossip.
        """
        self.partition("n05")
        self.mesh.advance_until(lambda: self.mesh.all_alive(["n05"]), self.REJOIN, "n05 alive everywhere")

    def test_nodes_never_cut_off_are_not_left_dead(self) -> None:
        """
        The cut-off node saw all its peers die; once back, its stale view must
        not leave healthy nodes dead in anyone's view.
        """
        self.partition("n05")
        self.mesh.advance(self.REJOIN)
        healthy = self.mesh.running - {"n05"}
        wrong = {
            observer: sorted(
                p for p, s in self.mesh.states_seen_by(observer).items() if p in healthy and s != "alive"
            )
            for observer in self.mesh.running
        }
        self.assertEqual({o: w for o, w in wrong.items() if w}, {}, self.mesh.describe_views())


class LeaveTests(SynchronousTestCase):
    """A node that stops says BYE: the others mark it left, and leave it alone."""

    def test_clean_leave_is_left_and_not_redialled(self) -> None:
        mesh = MemoryMesh(self)
        mesh.build(6)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        since = mesh.mark()
        stopped = mesh.stop("n04")
        mesh.clock.advance(0)
        self.successResultOf(stopped)
        for observer in mesh.running:
            member = mesh.mesh(observer).members["n04"]
            self.assertEqual(
                (member.state, member.session, member.last_reason), (PeerState.LEFT, None, "clean")
            )
            states = [s for t, o, s in mesh.transitions_about("n04", since) if o == observer]
            self.assertEqual(states, ["left"], observer)
            (record,) = [r for r in mesh.nodes[observer].manager.records() if r.peer_id == "n04"]
            self.assertEqual((record.reason, record.initiator), (CloseReason.CLEAN, Initiator.REMOTE))
        mesh.advance(60)
        self.assertEqual(mesh.dials_to("n04", since), [])
        for observer in mesh.running:
            self.assertEqual(mesh.states_seen_by(observer)["n04"], "left")
            self.assertNotIn("n04", mesh.mesh(observer).alive())
            with self.assertRaises(LookupError):
                mesh.mesh(observer).send_to("n04", b"x")
        self.assertTrue(mesh.full_mesh())
        mesh.stop_all()

    def test_broadcast_after_a_leave_reaches_the_rest(self) -> None:
        mesh = MemoryMesh(self, max_peers=2)
        mesh.build(8)
        mesh.start()
        mesh.advance_until(lambda: mesh.all_alive(), SETTLE, "everyone alive")
        mesh.stop("n03")
        mesh.advance(3)
        mesh.mesh("n07").broadcast(b"still here")
        mesh.clock.advance(0)
        for observer in mesh.running - {"n07"}:
            self.assertEqual(mesh.received(observer), [("n07", b"still here")], observer)
        mesh.stop_all()


class CrashTests(SynchronousTestCase):
    """A connection that ends without a BYE is a crash: dead, and redialled."""

    def test_bare_fin_is_dead_and_redialled(self) -> None:
        """
        n03's end of its connection to n01 sends a bare FIN (a killed process's
        kernel does): n01 records ``clean`` / ``remote`` with no BYE, marks n03
        dead (not left), redials it, and n03 is alive again, directly.
        """
        mesh = MemoryMesh(self)
        mesh.build(4)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        (link,) = mesh.links_between("n01", "n03")
        since = mesh.mark()
        link.close(side_of(link, "n03"))
        mesh.clock.advance(0)
        member = mesh.mesh("n01").members["n03"]
        self.assertEqual((member.session, member.last_reason), (None, "clean"))
        (record,) = [r for r in mesh.nodes["n01"].manager.records() if r.peer_id == "n03" and r.closed]
        self.assertEqual(
            (record.reason, record.initiator, record.errno), (CloseReason.CLEAN, Initiator.REMOTE, None)
        )
        back = mesh.advance_until(mesh.full_mesh, CLEAN_BACKOFF.initial + 2 * TICK, "n03 back")
        redials = [t for t, src, dst in mesh.dials_to("n03", since) if src == "n01"]
        self.assertEqual(len(redials), 1, redials)
        self.assertGreaterEqual(redials[0], since.time + CLEAN_BACKOFF.initial)
        self.assertLessEqual(back, redials[0] + EPSILON)
        states = [s for t, o, s in mesh.transitions_about("n03", since) if o == "n01"]
        self.assertEqual((states[0], states[-1]), ("dead", "alive"), states)
        self.assertNotIn("left", states)
        mesh.stop_all()

    def test_killed_node_is_dead_then_restarted_node_rejoins(self) -> None:
        """
        n03 is killed: every connection of it ends with a bare FIN and its
        port closes. The others mark it dead and keep redialling (refused).
        A new n03 started later (a higher incarnation) rejoins: alive
        everywhere, with a direct connection to everyone.
        """
        mesh = MemoryMesh(self)
        mesh.build(6)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        old = mesh.nodes["n03"]
        old_incarnation = mesh.mesh("n03").incarnation
        since = mesh.mark()
        # The process is gone: its loop stops, its port closes, its kernel FINs every connection.
        mesh.running.discard("n03")
        mesh.mesh("n03").stop()
        for listener in list(old):
            self.successResultOf(defer.maybeDeferred(listener.stopService))
        for link in mesh.network.links_of("n03"):
            if all(end.connected for end in link.ends):
                link.close(side_of(link, "n03"))
        mesh.advance(10)
        for observer in mesh.running:
            self.assertEqual(mesh.states_seen_by(observer)["n03"], "dead", observer)
            self.assertGreater(len([d for d in mesh.dials_to("n03", since) if d[1] == observer]), 0, observer)
        refused = [
            r
            for n in mesh.running
            for r in mesh.nodes[n].manager.records()
            if r.reason is CloseReason.REFUSED
        ]
        self.assertGreater(len(refused), 0)

        restarted = mesh.add_node(3, [0])
        mesh.start("n03")
        self.assertGreater(mesh.mesh("n03").incarnation, old_incarnation)
        mesh.advance_until(mesh.full_mesh, CLEAN_BACKOFF.maximum + 3 * TICK, "n03 rejoined")
        for observer in mesh.running - {"n03"}:
            member = mesh.mesh(observer).members["n03"]
            self.assertEqual(member.incarnation, mesh.mesh("n03").incarnation, observer)
        self.assertIs(mesh.nodes["n03"], restarted)
        mesh.stop_all(others=[old])

    def test_restart_after_clean_leave(self) -> None:
        """
        n04 stops (left everywhere), then a new n04 starts later with a higher
        incarnation: it is alive everywhere again, directly connected.
        """
        mesh = MemoryMesh(self)
        mesh.build(6)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        old_incarnation = mesh.mesh("n04").incarnation
        mesh.stop("n04")
        mesh.advance(10)
        self.assertEqual({mesh.states_seen_by(o)["n04"] for o in mesh.running}, {"left"})
        mesh.add_node(4, [0])
        mesh.start("n04")
        new_incarnation = mesh.mesh("n04").incarnation
        self.assertGreater(new_incarnation, old_incarnation)
        mesh.advance_until(mesh.full_mesh, 3 * TICK, "n04 rejoined")
        self.assertEqual(
            {mesh.mesh(o).members["n04"].incarnation for o in mesh.running - {"n04"}}, {new_incarnation}
        )
        mesh.stop_all()

    def test_restart_in_partial_mesh_alive_everywhere(self) -> None:
        """Restarted in a partial mesh, a node is alive again even where it is known only by gossip."""
        mesh = MemoryMesh(self, max_peers=3)
        mesh.build(12)
        mesh.start()
        mesh.advance_until(lambda: mesh.all_alive(), SETTLE, "everyone alive")
        mesh.stop("n07")
        mesh.advance(5)
        self.assertEqual({mesh.states_seen_by(o)["n07"] for o in mesh.running}, {"left"})
        mesh.add_node(7, [0])
        mesh.start("n07")
        mesh.advance_until(lambda: mesh.all_alive(), SETTLE, "n07 alive everywhere")
        mesh.stop_all()


# --- Self, malformed frames, refutation -------------------------------------------


class SelfDialTests(SynchronousTestCase):
    """A node whose bootstrap list names itself."""

    def test_own_advertised_endpoint_is_not_dialled(self) -> None:
        mesh = MemoryMesh(self)
        mesh.add_node(0, [0])
        mesh.start()
        mesh.advance(5)
        self.assertEqual(mesh.dials, [])
        self.assertEqual(mesh.mesh("n00").members, {})
        mesh.stop_all()

    def test_own_endpoint_under_another_name_makes_no_member(self) -> None:
        """
        Bootstrapping from an address of its own that it does not advertise
        (as ``tcp:127.0.0.1:PORT`` is to ``tcp:host=127.0.0.1:port=PORT``),
        the node meets itself: it closes that connection and never makes a
        member of itself, and still joins the mesh through another peer.
        """
        mesh = MemoryMesh(self)
        mesh.add_node(0, ["n00:2"], extra_listen=["n00:2"])
        mesh.start()
        mesh.advance(3)
        self.assertEqual(mesh.mesh("n00").members, {})
        self.assertEqual(mesh.nodes["n00"].peers(), [])
        records = list(mesh.nodes["n00"].manager.records())
        self.assertTrue(records)
        self.assertEqual({(r.peer_id, r.reason) for r in records}, {("n00", CloseReason.CLEAN)})
        mesh.add_node(1, [0])
        mesh.start("n01")
        mesh.advance_until(mesh.full_mesh, SETTLE, "n00 and n01 meshed")
        self.assertEqual(set(mesh.mesh("n00").members), {"n01"})
        mesh.stop_all()

    def test_own_endpoint_under_another_name_dialled_once(self) -> None:
        """
        Having met itself at an address, a node does not dial that address
        again every tick: one self-connection, not one per second forever
        (each would be logged and would push real closes out of the history).
        """
        mesh = MemoryMesh(self)
        mesh.add_node(0, ["n00:2"], extra_listen=["n00:2"])
        mesh.start()
        mesh.advance(10)
        self_dials = [d for d in mesh.dials if d[2] == "n00:2"]
        self.assertEqual(len(self_dials), 1, self_dials)
        mesh.stop_all()


class MalformedFrameTests(SynchronousTestCase):
    """A PEERS or BROADCAST that does not parse ends that connection only, with protocol-error."""

    BAD = [
        (PEERS, b"not json", "PEERS"),
        (PEERS, b"[]", "PEERS"),
        (PEERS, b'{"members": 5}', "members must be a list"),
        (PEERS, b'{"members": [{"endpoints": []}]}', "PEERS"),
        (PEERS, b'{"members": [{"id": ""}]}', "bad id"),
        (PEERS, b'{"members": [{"id": "x", "state": "zombie"}]}', "zombie"),
        (PEERS, b'{"members": [{"id": "x", "incarnation": -1}]}', "bad incarnation"),
        (PEERS, b'{"members": [{"id": "x", "incarnation": true}]}', "bad incarnation"),
        (PEERS, b'{"members": [{"id": "x", "endpoints": "tcp:1"}]}', "bad endpoints"),
        (PEERS, b'{"members": [{"id": "x", "endpoints": [1]}]}', "bad endpoints"),
        (
            PEERS,
            json.dumps({"members": [{"id": f"m{i}"} for i in range(MAX_MEMBERS + 1)]}).encode(),
            "PEERS",
        ),
        (BROADCAST, b"\x00", "shorter than its header"),
        (BROADCAST, b"\x00\x00" + bytes(12) + b"payload", "origin or destination"),
        (BROADCAST, b"\x05\x00" + bytes(12) + b"ab", "runs past the body"),
        (BROADCAST, b"\x02\x00" + bytes(12) + b"\xff\xfe", "not UTF-8"),
    ]

    def test_each_bad_frame(self) -> None:
        mesh = MemoryMesh(self)
        mesh.build(3)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        node = mesh.nodes["n00"]
        problems = []
        for index, (kind, body, detail) in enumerate(self.BAD):
            raw = connect_raw(mesh, "n00", f"raw{index}")
            raw.transport.write(encode_frame(kind, body))
            mesh.clock.advance(0)
            said = byes(raw)
            if len(said) != 1 or said[0][0] != "protocol-error" or detail not in said[0][1]:
                problems.append(f"{kind.name} {body[:40]!r}: BYE {said}")
            if raw.lost is None:
                problems.append(f"{kind.name} {body[:40]!r}: connection still open")
            (record,) = [r for r in node.manager.records() if r.peer_id == f"raw{index}"]
            if (record.reason, record.initiator) != (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL):
                problems.append(f"{kind.name} {body[:40]!r}: recorded {record.reason} {record.initiator}")
        self.assertEqual(problems, [], "\n".join(problems))
        # Only those connections: the mesh is as it was, and knows no fake member.
        mesh.advance(3)
        self.assertTrue(mesh.full_mesh(), mesh.describe_views())
        self.assertEqual(len(mesh.live_links()), 3)
        self.assertNotIn("x", mesh.mesh("n00").members)
        mesh.stop_all()

    def test_bad_frame_after_good_ones(self) -> None:
        """Frames before the bad one are processed; the bad one closes; nothing after it is read."""
        mesh = MemoryMesh(self)
        mesh.build(2)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        raw = connect_raw(mesh, "n00")
        good = encode_broadcast(Broadcast("raw", 1, 1, b"first"))
        after = encode_broadcast(Broadcast("raw", 1, 2, b"never"))
        raw.transport.write(good + encode_frame(BROADCAST, b"\x00") + after)
        mesh.clock.advance(0)
        self.assertEqual(mesh.received("n00"), [("raw", b"first")])
        self.assertEqual(mesh.received("n01"), [("raw", b"first")])
        self.assertEqual(byes(raw)[0][0], "protocol-error")
        mesh.stop_all()


class GossipTests(SynchronousTestCase):
    """PEERS frames: what a node does with what it is told."""

    def setUp(self) -> None:
        self.mesh = MemoryMesh(self)
        self.mesh.build(3)
        self.mesh.start()
        self.mesh.advance_until(self.mesh.full_mesh, SETTLE, "full mesh")

    def tearDown(self) -> None:
        self.mesh.stop_all()

    def test_told_dead_refutes_with_new_incarnation(self) -> None:
        """
        Told it is dead at its own incarnation, a node bumps its incarnation
        and says so (alive, new incarnation) to every direct peer.
        """
        mesh = self.mesh
        raw = connect_raw(mesh, "n00")
        own = mesh.mesh("n00").incarnation
        seen = len(raw.frames)
        raw.transport.write(peers_frame({"id": "n00", "incarnation": own, "state": "dead"}))
        mesh.clock.advance(0)
        self.assertEqual(mesh.mesh("n00").incarnation, own + 1)
        told = [m for body in peers_bodies_after(raw, seen) for m in body["members"] if m["id"] == "n00"]
        self.assertIn({"id": "n00", "endpoints": ["n00:1"], "incarnation": own + 1, "state": "alive"}, told)
        for observer in ("n01", "n02"):
            member = mesh.mesh(observer).members["n00"]
            self.assertEqual((member.incarnation, member.state), (own + 1, PeerState.ALIVE), observer)
        self.assertTrue(mesh.full_mesh())

    def test_told_suspect_refutes(self) -> None:
        mesh = self.mesh
        raw = connect_raw(mesh, "n01")
        own = mesh.mesh("n01").incarnation
        raw.transport.write(peers_frame({"id": "n01", "incarnation": own, "state": "suspect"}))
        mesh.clock.advance(0)
        self.assertEqual(mesh.mesh("n01").incarnation, own + 1)

    def test_old_accusation_ignored(self) -> None:
        """Told it was dead in an older incarnation, or that it is alive, a node changes nothing."""
        mesh = self.mesh
        mesh.advance(5)
        mesh.stop("n02")
        mesh.advance(1)
        mesh.add_node(2, [0])
        mesh.start("n02")
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        own = mesh.mesh("n02").incarnation
        self.assertGreater(own, 0)
        raw = connect_raw(mesh, "n02")
        raw.transport.write(
            peers_frame(
                {"id": "n02", "incarnation": own - 1, "state": "dead"},
                {"id": "n02", "incarnation": own, "state": "alive"},
            )
        )
        mesh.clock.advance(0)
        self.assertEqual(mesh.mesh("n02").incarnation, own)

    def test_gossip_about_a_direct_peer_is_ignored(self) -> None:
        """A direct connection is the authority: gossip that n01 is dead does not make n00 think so."""
        mesh = self.mesh
        raw = connect_raw(mesh, "n00")
        incarnation = mesh.mesh("n01").incarnation
        raw.transport.write(peers_frame({"id": "n01", "incarnation": incarnation, "state": "dead"}))
        mesh.clock.advance(0)
        self.assertEqual(mesh.mesh("n00").members["n01"].state, PeerState.ALIVE)
        self.assertTrue(mesh.full_mesh())

    def test_learns_and_dials_gossiped_member(self) -> None:
        """A member first heard of in gossip is recorded with who told us, and dialled."""
        mesh = self.mesh
        mesh.add_node(5)  # not bootstrapped: nobody knows it yet
        mesh.start("n05")
        raw = connect_raw(mesh, "n00")
        raw.transport.write(peers_frame({"id": "n05", "endpoints": ["n05:1"], "incarnation": 0}))
        mesh.clock.advance(0)
        member = mesh.mesh("n00").members["n05"]
        self.assertEqual((member.via, member.endpoints, member.state), ("raw", ("n05:1",), PeerState.ALIVE))
        mesh.advance_until(lambda: mesh.full_mesh(), SETTLE, "n05 meshed")

    def test_peers_frame_on_connect_holds_the_whole_view(self) -> None:
        """A new connection gets the node's whole view at once, itself included."""
        mesh = self.mesh
        raw = connect_raw(mesh, "n00")
        first = peers_bodies(raw)[0]
        ids = {m["id"] for m in first["members"]}
        self.assertEqual(ids, {"n00", "n01", "n02", "raw"})
        (me,) = [m for m in first["members"] if m["id"] == "n00"]
        self.assertEqual(me, {"id": "n00", "endpoints": ["n00:1"], "incarnation": 0, "state": "alive"})


def peers_bodies_after(peer: RawPeer, seen: int) -> list[dict[str, Any]]:
    return [json.loads(body) for kind, body in peer.frames[seen:] if kind == PEERS]


# --- Status -------------------------------------------------------------------------


class StatusTests(SynchronousTestCase):
    def test_peers_and_mesh_sections(self) -> None:
        mesh = MemoryMesh(self)
        mesh.build(4)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        mesh.stop("n03")
        mesh.advance(1)
        status = mesh.nodes["n00"].status()
        json.dumps(status)  # serialisable as served
        peers = {p["id"]: p for p in status["peers"]}
        self.assertEqual(set(peers), {"n01", "n02", "n03"})
        for peer in peers.values():
            self.assertLessEqual(
                {"id", "endpoints", "state", "since", "incarnation", "connected", "via", "last_reason"},
                set(peer),
            )
        self.assertEqual(
            {k: v for k, v in peers["n01"].items() if k != "since"},
            {
                "id": "n01",
                "endpoints": ["n01:1"],
                "state": "alive",
                "incarnation": 0,
                "connected": True,
                "via": None,
                "last_reason": None,
            },
        )
        self.assertEqual(
            (peers["n03"]["state"], peers["n03"]["connected"], peers["n03"]["last_reason"]),
            ("left", False, "clean"),
        )
        self.assertEqual(peers["n03"]["since"], mesh.clock.seconds() - 1)
        section = status["mesh"]
        self.assertEqual(
            {k: v for k, v in section.items() if k != "broadcasts"},
            {
                "incarnation": 0,
                "endpoints": ["n00:1"],
                "max_peers": 32,
                "direct": 2,
                "known": 3,
                "by_state": {"alive": 2, "suspect": 0, "dead": 0, "left": 1},
                "membership": "gossip",
                "high_water": None,
                "trimmed": 0,
            },
        )
        self.assertEqual(
            set(section["broadcasts"]), {"sent", "delivered", "duplicates", "forwarded", "relayed"}
        )
        mesh.stop_all()

    def test_member_as_dict(self) -> None:
        member = Member("x", ("tcp:host=a:port=1",), 7, PeerState.SUSPECT, since=12.5, via="y")
        self.assertEqual(
            member.as_dict(),
            {
                "id": "x",
                "endpoints": ["tcp:host=a:port=1"],
                "state": "suspect",
                "since": 12.5,
                "incarnation": 7,
                "connected": False,
                "via": "y",
                "last_reason": None,
            },
        )
        self.assertEqual(
            member.gossip(),
            {"id": "x", "endpoints": ["tcp:host=a:port=1"], "incarnation": 7, "state": "suspect"},
        )


# --- Clean-up -------------------------------------------------------------------------


class CleanupTests(SynchronousTestCase):
    def test_nothing_left_scheduled(self) -> None:
        """After faults of every kind and stopping every node, no timer is left on the clock."""
        mesh = MemoryMesh(self, max_peers=3, connect_timeout=CONNECT_TIMEOUT)
        mesh.build(8)
        mesh.start()
        mesh.advance_until(lambda: mesh.all_alive(), SETTLE, "everyone alive")
        mesh.network.blackhole_host("n06")
        mesh.advance(BOUND + 2)
        link = mesh.live_links()[0]
        link.close(0)
        mesh.stop("n02")
        for index in range(5):
            mesh.mesh(name(index % 3 + 3)).broadcast(b"x")
        mesh.advance(1.5)
        mesh.stop_all()
        self.assertEqual(mesh.clock.getDelayedCalls(), [])
        self.assertEqual(mesh.live_links(), [])

    def test_stop_before_start_of_loop(self) -> None:
        """A mesh stopped at once (nothing dialled yet) leaves nothing behind."""
        mesh = MemoryMesh(self)
        mesh.build(2)
        mesh.start()
        mesh.stop_all()
        self.assertEqual(mesh.clock.getDelayedCalls(), [])


# --- Real-socket helpers and options (no reactor needed) ----------------------------


class FirstEndpointTests(SynchronousTestCase):
    def test_not_listening_yet(self) -> None:
        config = NodeConfig(topology="p2p", role="peer", listen=("tcp:0",), node_id="a", app="broadcast")
        node = Node(config, PeerToPeer(), BroadcastApplication(config), Clock())
        self.assertIsNone(first_endpoint(node))


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_nodes_needs_p2p(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--listen", "tcp:0", "--nodes", "3")
        self.assertIn("--nodes", str(caught.exception))

    def test_p2p_needs_listen(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--topology", "p2p")
        self.assertIn("--listen", str(caught.exception))

    def test_bad_max_peers(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--topology", "p2p", "--listen", "tcp:0", "--max-peers", "many")
        self.assertIn("--max-peers", str(caught.exception))

    def test_p2p_defaults(self) -> None:
        options = self.parse("--topology", "p2p", "--listen", "tcp:0", "--peer", "tcp:127.0.0.1:8760")
        config = options["config"]
        self.assertEqual(
            (config.role, config.app, config.settings.max_peers, config.connect),
            ("peer", "broadcast", 32, ("tcp:127.0.0.1:8760",)),
        )

    def test_nodes_builds_a_meshed_group(self) -> None:
        """--nodes 5 without --listen: five p2p nodes on loopback, all bootstrapping from the first."""
        options = self.parse("--topology", "p2p", "--nodes", "5", "--max-peers", "4", "--node-id", "g")
        self.assertEqual(options["config"].settings.nodes, 5)
        service = makeService(options)
        nodes = list(service)
        self.assertEqual([n.config.node_id for n in nodes], ["g", "g-1", "g-2", "g-3", "g-4"])
        for node in nodes:
            self.assertEqual(node.config.listen, ("tcp:0:interface=127.0.0.1",))
            self.assertEqual((node.config.settings.max_peers, mesh_of(node).max_peers), (4, 4))
        self.assertEqual(mesh_of(nodes[0]).bootstrap, [])
        for node in nodes[1:]:
            (bootstrap,) = mesh_of(node).bootstrap
            self.assertTrue(callable(bootstrap))
            self.assertIsNone(bootstrap())  # the first node does not listen yet


class DeduplicationTests(SynchronousTestCase):
    """Each (origin, incarnation, sequence) is delivered once, whatever path or order its copies take."""

    def setUp(self) -> None:
        self.mesh = MemoryMesh(self)
        self.mesh.build(2)
        self.mesh.start()
        self.mesh.advance_until(self.mesh.full_mesh, SETTLE, "full mesh")
        self.raw = connect_raw(self.mesh, "n00")

    def tearDown(self) -> None:
        self.mesh.stop_all()

    def send(self, *messages: Broadcast) -> None:
        self.raw.transport.write(b"".join(encode_broadcast(m) for m in messages))
        self.mesh.clock.advance(0)

    def test_copies_in_any_order(self) -> None:
        """Out-of-order sequences and repeated copies: each delivered once, duplicates counted."""
        order = [3, 1, 3, 2, 1, 5, 4, 5, 2]
        self.send(*(Broadcast("far", 7, seq, f"m{seq}".encode()) for seq in order))
        self.assertEqual(self.mesh.received("n00"), [("far", f"m{s}".encode()) for s in (3, 1, 2, 5, 4)])
        self.assertEqual(self.mesh.received("n01"), self.mesh.received("n00"))
        self.assertEqual(self.mesh.mesh("n00").counters["duplicates"], len(order) - 5)

    def test_sequence_numbers_per_incarnation(self) -> None:
        """The same sequence number from a new incarnation of the origin is a new message."""
        self.send(Broadcast("far", 1, 1, b"before restart"), Broadcast("far", 2, 1, b"after restart"))
        self.assertEqual(self.mesh.received("n00"), [("far", b"before restart"), ("far", b"after restart")])

    def test_late_copy_from_older_incarnation_not_delivered_again(self) -> None:
        """
        A copy of a message that arrives (by a slower path) after the origin's
        next incarnation has been heard from is not delivered a second time:
        an origin that refutes a rumour bumps its incarnation while copies of
        its earlier broadcasts may still be on their way.
        """
        self.send(
            Broadcast("far", 1, 1, b"once"),
            Broadcast("far", 2, 2, b"after refuting"),
            Broadcast("far", 1, 1, b"once"),
        )
        self.assertEqual(self.mesh.received("n00"), [("far", b"once"), ("far", b"after refuting")])
        self.assertEqual(self.mesh.received("n01"), [("far", b"once"), ("far", b"after refuting")])

    def test_gap_given_up_past_the_window(self) -> None:
        """A sequence number that never arrives does not make the window grow without bound."""
        window = SEEN_WINDOW
        self.send(*(Broadcast("far", 1, seq, b"x") for seq in range(2, window + 3)))
        self.assertEqual(len(self.mesh.received("n00")), window + 1)
        self.send(Broadcast("far", 1, window + 3, b"last"))
        self.assertEqual(self.mesh.received("n00")[-1], ("far", b"last"))
        for node in ("n00", "n01"):
            seen = self.mesh.mesh(node).flooding._seen[("far", 1)]
            self.assertLessEqual(len(seen.above), window, node)


class BroadcastApplicationTests(SynchronousTestCase):
    def test_every_interval_each_node_floods_a_line(self) -> None:
        """The default p2p application says hello every --interval; every other node logs it."""
        mesh = MemoryMesh(self)
        mesh.build(3)
        for node in mesh.nodes.values():
            application = node.application
            assert isinstance(application, BroadcastApplication)
            application.interval = 1.0
        mesh.start()
        self.addCleanup(mesh.stop_all)
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        advance_by(mesh.clock, 2.0)
        for me in mesh.nodes:
            heard = {
                origin
                for origin, text in mesh.received(me)
                if text.startswith(f"hello #1 from {origin}".encode())
            }
            self.assertEqual(heard, set(mesh.nodes) - {me}, me)


class StartOrderTests(SynchronousTestCase):
    """Seeds are dialled until joined: whatever the start order, one cluster, never islands."""

    def test_chain_started_out_of_order_is_one_cluster(self) -> None:
        """
        n4 seeds from n3, n3 from n2, n2 from n1. n3 and n4 start first: n3's
        seed refuses and n4 connects to n3, so n3 has a peer but has not
        joined. Once n1 and n2 are up, n3 still dials n2 and the two halves
        merge: every node sees the three others alive.
        """
        mesh = MemoryMesh(self)
        mesh.add_node(1)
        for index in (2, 3, 4):
            mesh.add_node(index, [index - 1])
        mesh.start("n03", "n04")
        mesh.advance_until(lambda: mesh.direct_peers("n03") == {"n04"}, SETTLE, "n03 and n04 connected")
        refused = [r for r in mesh.nodes["n03"].manager.records() if r.reason is CloseReason.REFUSED]
        self.assertGreater(len(refused), 0)
        mesh.start("n01", "n02")
        everyone = {"n01", "n02", "n03", "n04"}

        def one_cluster() -> bool:
            return all(
                mesh.states_seen_by(node_id) == dict.fromkeys(everyone - {node_id}, "alive")
                for node_id in everyone
            )

        mesh.advance_until(one_cluster, SETTLE + 30, "one cluster")
        self.assertEqual(mesh.mesh("n03").dialling.joined, {"n02:1": "n02"})
        mesh.stop_all()

    def test_joined_seed_is_not_dialled_again_while_peers_remain(self) -> None:
        """After joining, a node with peers does not redial its seed when that connection ends."""
        mesh = MemoryMesh(self)
        mesh.build(3)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        dials = len([d for d in mesh.dials if d[1:] == ("n02", "n00:1")])
        mesh.advance(10)
        self.assertEqual(len([d for d in mesh.dials if d[1:] == ("n02", "n00:1")]), dials)
        mesh.stop_all()


class SwimMeshTests(SynchronousTestCase):
    """The mesh with SWIM membership on memory networks and a Clock: links spread, trimmed above the mark."""

    def direct(self, mesh: MemoryMesh) -> dict[str, int]:
        return {n: mesh.mesh(n).status()["direct"] for n in sorted(mesh.running)}

    def test_members_from_swim_links_spread_and_trimmed_above_high_water(self) -> None:
        mesh = MemoryMesh(self, max_peers=2, swim=True, high_water=4, trim_grace=5.0)
        mesh.build(16)
        mesh.start()
        everyone = set(mesh.nodes)
        mesh.advance_until(
            lambda: all(set(mesh.mesh(n).alive()) == everyone - {n} for n in everyone), 30.0, "SWIM members"
        )
        # Trimmed peers hold off (5 s, then longer) and link elsewhere: it settles.
        mesh.advance(40.0)
        links = self.direct(mesh)
        self.assertLessEqual(max(links.values()), 4, links)
        self.assertGreaterEqual(min(links.values()), 1, links)
        self.assertGreater(sum(mesh.mesh(n).trimmed for n in everyone), 0)
        # What was trimmed was a link, not a member: everyone is still alive everywhere.
        self.assertTrue(all(set(mesh.mesh(n).alive()) == everyone - {n} for n in everyone))
        # And the links still carry a broadcast to every node, once.
        mesh.mesh("n05").broadcast(b"after trimming")
        mesh.advance(2.0)
        for node_id in everyone - {"n05"}:
            self.assertEqual(mesh.received(node_id), [("n05", b"after trimming")], node_id)
        mesh.stop_all()

    def test_a_stopped_node_is_dead_by_swim_and_not_redialled(self) -> None:
        mesh = MemoryMesh(self, max_peers=4, swim=True)
        mesh.build(6)
        mesh.start()
        everyone = set(mesh.nodes)
        mesh.advance_until(
            lambda: all(set(mesh.mesh(n).alive()) == everyone - {n} for n in everyone), 30.0, "SWIM members"
        )
        mesh.stop("n03")
        survivors = everyone - {"n03"}
        mesh.advance_until(
            lambda: all(mesh.mesh(n).members["n03"].state is PeerState.LEFT for n in survivors),
            10.0,
            "n03 left",
        )
        dials = len([d for d in mesh.dials if d[2] == address("n03")])
        mesh.advance(20.0)
        self.assertEqual(len([d for d in mesh.dials if d[2] == address("n03")]), dials)
        mesh.stop_all()
