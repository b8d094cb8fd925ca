"""
The peer-to-peer topology: every node listens and dials, and the nodes form a
mesh.

- **Membership** (:class:`Member`) is its :class:`~.membership.IMembership`'s
  word. By default SWIM's (:mod:`.swim_membership`, :doc:`p2p-scale`):
  connections are links dialled to alive members, up to ``--max-peers``,
  trimmed above ``--high-water``; broadcasts go through the overlay
  (:mod:`.gossipsub`) as OVERLAY frames. With ``--swim off``, membership is
  by connections and PEERS gossip (:mod:`.gossip_membership`), and
  broadcasts flood the links with de-duplication (:mod:`.flooding`).
- **One connection per pair.** When two nodes dial each other at once, both
  keep the connection dialled by the smaller node id and close the other
  (BYE, detail "duplicate").
- **Direct sends** to a node id go straight over its connection, or are
  relayed (a BROADCAST frame with a destination, :mod:`.flooding`) when
  there is none.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core.backoff import DEFAULT_RECONNECT_POLICY, ReconnectPolicy
from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.core.frames import encode_frame
from netmodels.core.reasons import CloseReason
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.manager import ConnectFailed, ManagedConnection
from netmodels.runtime.node import Node
from netmodels.runtime.session import Session
from netmodels.topologies.p2p.addresses import dialable_endpoint
from netmodels.topologies.p2p.dialling import Dialling
from netmodels.topologies.p2p.flooding import Flooding
from netmodels.topologies.p2p.gossip_membership import GossipMembership
from netmodels.topologies.p2p.gossipsub import IOverlayOutput, Overlay, OverlayConfig
from netmodels.topologies.p2p.members import Member, PeerState
from netmodels.topologies.p2p.membership import IMembership, IMeshMembers
from netmodels.topologies.p2p.messages import BROADCAST, OVERLAY, PEERS
from netmodels.topologies.p2p.metrics import mesh_metrics
from netmodels.topologies.p2p.swim_membership import SwimMembership, SwimSetup
from netmodels.topologies.p2p.trimming import links_to_trim

__all__ = ["Member", "Mesh", "PeerState", "RemoteNode"]

_log = Logger(namespace="netmodels.p2p")

#: Seconds between mesh maintenance rounds (dialling, anti-entropy gossip).
TICK = 1.0
#: A smaller-id peer that has not dialled us within this long, we dial.
DIAL_GRACE = 2.0
#: With SWIM, a connection younger than this is never trimmed (libp2p's grace period).
TRIM_GRACE = 30.0


@implementer(IPeer)
class RemoteNode:
    """Another node of the mesh, as the application sees it: messages and sends by id."""

    def __init__(self, mesh: Mesh, node_id: str) -> None:
        self._mesh = mesh
        self.node_id = node_id
        self.role = "peer"

    @property
    def connection_id(self) -> int:
        session = self._session()
        return -1 if session is None else session.connection_id

    @property
    def record(self) -> ConnectionRecord | None:
        session = self._session()
        return None if session is None else session.record

    def send(self, payload: bytes) -> None:
        self._mesh.send_to(self.node_id, payload)

    def request(self, payload: bytes, timeout: float | None = None) -> Deferred[bytes]:
        session = self._session()
        if session is None:
            from twisted.internet.defer import fail

            return fail(LookupError(f"no direct connection to {self.node_id}; requests need one"))
        return session.request(payload, timeout)

    def close(self) -> None:
        session = self._session()
        if session is not None:
            session.close()

    def reset(self) -> None:
        session = self._session()
        if session is not None:
            session.reset()

    def _session(self) -> Session | None:
        member = self._mesh.members.get(self.node_id)
        return None if member is None else member.session


@implementer(IMeshMembers)
class Mesh:
    """The p2p engine of one node: links, dialling and broadcast, and the members its membership says."""

    def __init__(
        self,
        node: Node,
        max_peers: int,
        bootstrap: Iterable[str | Callable[[], str | None]] = (),
        policy: ReconnectPolicy = DEFAULT_RECONNECT_POLICY,
        draw: Callable[[], float] = random.random,
        tick: float = TICK,
        client_endpoint: Callable[[str], IStreamClientEndpoint] | None = None,
        endpoints: tuple[str, ...] | None = None,
        swim: SwimSetup | None = None,
        high_water: int | None = None,
        trim_grace: float = TRIM_GRACE,
    ) -> None:
        """
        :param bootstrap: endpoints to dial until joined through each, and
            whenever the node has no peer; an entry may be a callable
            returning one (or ``None``, not yet).
        :param client_endpoint: turns an advertised endpoint into something to
            dial (default: :meth:`Node.endpoint`, so ``udp:`` endpoints too;
            tests pass a memory network's).
        :param endpoints: what to advertise (default: the node's listeners,
            once they listen).
        :param swim: run SWIM membership (:mod:`.swim_membership`): members and
            their states come from it, not from connections and PEERS gossip.
        :param high_water: with SWIM, above this many connections (default
            twice ``max_peers``) the least used inbound ones older than
            ``trim_grace`` seconds are closed, down to ``max_peers``.
        """
        self.node = node
        self.clock = node.clock
        self.node_id = node.config.node_id
        self.max_peers = max_peers
        self.bootstrap = list(bootstrap)
        self.policy = policy
        self.tick = tick
        self._fixed_endpoints = endpoints
        self._epoch = 0
        self.members: dict[str, Member] = {}
        self.endpoints: tuple[str, ...] = ()
        self._loop: LoopingCall | None = None
        self.dialling = Dialling(
            self.node_id,
            node.manager,
            self.clock,
            node.session_factory(),
            client_endpoint or (lambda description: node.endpoint(description, server=False)),
            lambda node_id: self.members[node_id].endpoints[0],
            policy,
            draw,
        )
        self._stopping = False
        #: SWIM's membership, with ``swim`` (the same as :attr:`membership`).
        self.swim: SwimMembership | None = None
        #: Who the members are, and in what state.
        self.membership: IMembership
        if swim is None:
            self.membership = GossipMembership(self.node_id, self, self.dialling, self.clock, draw)
        else:
            self.swim = SwimMembership(node, swim, self, self.dialling, lambda: self.bootstrap)
            self.membership = self.swim
        self.high_water = 2 * max_peers if high_water is None else high_water
        self.trim_grace = trim_grace
        #: Connections closed for being over the high-water mark.
        self.trimmed = 0
        #: With SWIM, broadcasts go through this overlay over the links (flooding without).
        self.overlay: Overlay | None = None
        self.counters = {"sent": 0, "delivered": 0, "duplicates": 0, "forwarded": 0, "relayed": 0}
        #: Broadcasts without the overlay, and relayed sends.
        self.flooding = Flooding(self.node_id, self.members, self._deliver, self.counters)
        node.add_handler(PEERS, self.membership.peers_received)
        node.add_handler(BROADCAST, self.flooding.received)
        node.add_handler(OVERLAY, self._overlay_received)
        node.on_liveness(self._liveness)
        node.manager.subscribe(self._connection_event)
        node.add_status_section("peers", lambda: [m.as_dict() for m in self.members.values()])
        node.add_status_section("mesh", self.status)
        if swim is not None:
            node.add_status_section("swim", self._swim_status)
        node.add_metrics(lambda: mesh_metrics(self))

    @property
    def incarnation(self) -> int:
        """This node's incarnation as its membership tells the others (0 until started)."""
        return self.membership.incarnation

    # Life

    def start(self) -> None:
        incarnation = int(self._wall() * 1000)
        # Broadcast ids use the incarnation this process started with: a
        # refutation bumps the membership incarnation, and must not make
        # copies of earlier broadcasts still in flight look new.
        self._epoch = incarnation
        self.flooding.start(incarnation)
        if self._fixed_endpoints is not None:
            self.endpoints = self._fixed_endpoints
        else:
            listening = [listener for listener in self.node.listeners if listener.port]
            self.endpoints = tuple(dialable_endpoint(listener) for listener in listening)
        if self.swim is not None:
            self.overlay = Overlay(
                self.node_id,
                self._epoch,
                OverlayConfig(),
                _OverlayLinks(self.members, self._deliver),
                random.Random(self.swim.setup.seed),
            )
            for member in self.members.values():
                if member.session is not None:
                    self.overlay.peer_up(member.node_id)
        self.membership.start(incarnation, self.endpoints)
        self._loop = LoopingCall(self._maintain)
        self._loop.clock = self.clock
        self._loop.start(self.tick, now=True)

    @property
    def swim_address(self) -> str | None:
        """This node's SWIM address, once SWIM runs."""
        return None if self.swim is None else self.swim.address

    def stop(self) -> None:
        self._stopping = True
        self.membership.stop()
        self.dialling.stop()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    # What applications use

    def broadcast(self, payload: bytes) -> int:
        """Flood ``payload`` to every node of the mesh; returns the peers it went to at first."""
        self.counters["sent"] += 1
        if self.overlay is not None:
            peers = len(self.overlay.mesh) or min(len(self.overlay.peers), self.overlay.config.degree)
            self.overlay.publish(payload, self.clock.seconds())
            return peers
        return self.flooding.broadcast(payload)

    def send_to(self, node_id: str, payload: bytes) -> None:
        """Send to one node: over its connection, or relayed through the mesh."""
        member = self.members.get(node_id)
        if member is not None and member.session is not None:
            member.session.send(payload)
            return
        if member is None or member.state is PeerState.LEFT:
            raise LookupError(f"no node {node_id!r} in the mesh")
        self.flooding.relay(node_id, payload)

    def alive(self) -> list[str]:
        """Ids of the members believed alive (directly or by gossip)."""
        return [m.node_id for m in self.members.values() if m.state is PeerState.ALIVE]

    def status(self) -> dict[str, Any]:
        states = [m.state for m in self.members.values()]
        return {
            "incarnation": self.incarnation,
            "endpoints": list(self.endpoints),
            "max_peers": self.max_peers,
            "direct": sum(1 for m in self.members.values() if m.session is not None),
            "known": len(self.members),
            "by_state": {str(s): states.count(s) for s in PeerState},
            "broadcasts": dict(self.counters),
            "membership": self.membership.name,
            "high_water": self.high_water if self.swim is not None else None,
            "trimmed": self.trimmed,
        }

    def _overlay_received(self, session: Session, body: bytes) -> None:
        if self.overlay is not None and session.node_id is not None:
            self.overlay.receive(session.node_id, body, self.clock.seconds())

    def _deliver(self, origin: str, payload: bytes) -> None:
        """A broadcast (or relayed send) for this node: to the application."""
        self.counters["delivered"] += 1
        try:
            self.node.application.message_received(RemoteNode(self, origin), payload)
        except Exception:
            _log.failure("application failed on a broadcast from {origin}", origin=origin)

    def _swim_status(self) -> dict[str, Any]:
        assert self.swim is not None
        status = self.swim.status()
        if status["running"]:
            status["overlay"] = None if self.overlay is None else self.overlay.status()
        return status

    # Members (IMeshMembers: what the membership changes)

    def member(self, node_id: str) -> Member:
        member = self.members.get(node_id)
        if member is None:
            member = Member(node_id, since=self._wall(), known_since=self.clock.seconds())
            self.members[node_id] = member
            self.membership.member_changed(member)
        return member

    def set_state(self, member: Member, state: PeerState) -> None:
        if member.state is state and member.since:
            return
        if member.state is not state:
            _log.info(
                "[{node}] peer {peer} is {state}{reason}",
                node=self.node_id,
                peer=member.node_id,
                state=str(state),
                reason=f" ({member.last_reason})"
                if member.last_reason and state is not PeerState.ALIVE
                else "",
            )
        member.state = state
        member.since = self._wall()
        self.membership.member_changed(member)

    # Connections

    def _connection_event(self, event: str, subject: Any) -> None:
        if not isinstance(subject, ManagedConnection):
            return
        if event == "closed":
            self.dialling.connection_closed(subject)
        session = subject.wrappedProtocol
        if not isinstance(session, Session):
            return
        if event == "ready":
            assert session.node_id is not None
            self.dialling.connection_ready(subject, session.node_id)
            self._session_ready(session)
        elif event == "closed":
            self._session_closed(session, subject.record)

    def _session_ready(self, session: Session) -> None:
        peer_id = session.node_id
        assert peer_id is not None
        if peer_id == self.node_id:
            # We dialled ourselves, at an address of ours under another name
            # (the dialling remembers not to do that again).
            session.close()
            return
        member = self.member(peer_id)
        current = member.session
        if current is not None and current is not session:
            keep = self._keep(current, session)
            drop = session if keep is current else current
            member.session = keep
            dialler = self._dialler(keep)
            _log.debug(
                "duplicate connection to {peer}; keeping the one {dialler} dialled",
                peer=peer_id,
                dialler=dialler,
            )
            drop.end(CloseReason.CLEAN, f"duplicate connection; keeping the one {dialler} dialled")
            return
        member.session = session
        member.linked_at = self.clock.seconds()
        # Connected, whoever dialled: its dialer forgets failures and hold-offs.
        self.dialling.connected(peer_id)
        member.via = None
        if self.overlay is not None:
            self.overlay.peer_up(peer_id)
        self.membership.link_up(member, session)

    def _session_closed(self, session: Session, record: ConnectionRecord) -> None:
        peer_id = session.node_id
        if peer_id is None:
            return
        member = self.members.get(peer_id)
        if member is None or member.session is not session:
            return  # A duplicate, or a connection that never became the member's.
        member.session = None
        member.last_reason = None if record.reason is None else str(record.reason)
        if self._stopping:
            return
        if self.overlay is not None:
            self.overlay.peer_down(peer_id)
        self.membership.link_down(member, session, record)

    def _keep(self, first: Session, second: Session) -> Session:
        """Of two connections to one peer, the one both sides keep."""
        first_dialler, second_dialler = self._dialler(first), self._dialler(second)
        if first_dialler != second_dialler:
            return first if first_dialler == min(first_dialler, second_dialler) else second
        # Same dialler twice (bootstrap and gossip): keep the older.
        return first if first.connection_id <= second.connection_id else second

    def _dialler(self, session: Session) -> str:
        record = session.record
        outbound = record is not None and record.direction is Direction.OUTBOUND
        return self.node_id if outbound else (session.node_id or "")

    def _liveness(self, session: Session, state: str) -> None:
        member = self.members.get(session.node_id or "")
        if member is not None and member.session is session:
            self.membership.liveness(member, state)

    # Dialling

    def _maintain(self) -> None:
        """One round: dial who is missing, and let the membership do its round."""
        now = self.clock.seconds()
        direct = [m for m in self.members.values() if m.session is not None]
        self.dialling.dial_bootstrap(self._bootstrap_targets(direct))
        in_flight = sum(
            1 for m in self.members.values() if m.session is None and self.dialling.busy(m.node_id)
        )
        budget = self.max_peers - len(direct) - in_flight
        for member in sorted(self.members.values(), key=self.membership.dial_order):
            if budget <= 0:
                break
            if self._should_dial(member, now) and self._dial(member):
                budget -= 1
        if self.swim is not None:
            self._trim(direct)
        if self.overlay is not None:
            self.overlay.heartbeat(now)
        self.membership.maintain(direct)

    def _trim(self, direct: list[Member]) -> None:
        """Above the high-water mark, close the least used inbound links (:func:`.links_to_trim`)."""
        overlay = self.overlay
        doomed = links_to_trim(
            direct,
            self.clock.seconds(),
            keep=self.max_peers,
            high_water=self.high_water,
            grace=self.trim_grace,
            overlay_mesh=() if overlay is None else overlay.mesh,
            overlay_floor=0 if overlay is None else overlay.config.degree_low,
        )
        detail = f"trimmed: {len(direct)} connections, over the high-water mark of {self.high_water}"
        for member in doomed:
            assert member.session is not None
            self.trimmed += 1
            # Non-fatal "rejected": the peer holds off before it dials us again, and dials others.
            member.session.end(CloseReason.REJECTED, detail)

    def _should_dial(self, member: Member, now: float) -> bool:
        """Whether membership says to dial ``member`` now (its dialer may still be holding off)."""
        if member.session is not None or not member.endpoints or member.state is PeerState.LEFT:
            return False
        if not self.membership.may_dial(member):
            return False
        # Greater ids are ours to dial; smaller ones dial us, unless they have not.
        return member.node_id > self.node_id or now - member.known_since >= DIAL_GRACE

    def _dial(self, member: Member) -> bool:
        """Dial ``member`` unless its dialer is busy or holding off; ``True`` if it dials."""
        attempt = self.dialling.dial_member(member.node_id)
        if attempt is None:
            return False
        attempt.addErrback(self._dial_failed, member)
        return True

    def _dial_failed(self, failure: Failure, member: Member) -> None:
        failure.trap(ConnectFailed)
        if self._stopping:
            return
        record: ConnectionRecord = failure.value.record  # type: ignore[union-attr]
        member.last_reason = None if record.reason is None else str(record.reason)
        self.membership.dial_failed(member)

    def _bootstrap_targets(self, direct: list[Member]) -> list[str]:
        """
        The bootstrap endpoints to dial now (each dialer still holds off on
        its own): all of them while this node has no peer; otherwise those it
        has not joined through yet and that no direct peer advertises. So an
        inbound connection does not stop a node from joining its seeds, and
        nodes started in any order end up in one cluster instead of islands.
        """
        resolved = [target() if callable(target) else target for target in self.bootstrap]
        targets = [target for target in resolved if target and target not in self.endpoints]
        if not direct:
            return targets
        advertised = {endpoint for member in direct for endpoint in member.endpoints}
        return [
            target for target in targets if target not in self.dialling.joined and target not in advertised
        ]

    def _wall(self) -> float:
        return float(self.node.manager._wall_clock())


@implementer(IOverlayOutput)
class _OverlayLinks:
    """The overlay's packets go over the mesh's links; what it delivers, to the application."""

    def __init__(self, links: Mapping[str, Member], deliver: Callable[[str, bytes], None]) -> None:
        self._links = links
        self._deliver = deliver

    def send(self, peer_id: str, packet: bytes) -> None:
        member = self._links.get(peer_id)
        if member is not None and member.session is not None:
            member.session.write_frame(encode_frame(OVERLAY, packet))

    def deliver(self, origin: str, payload: bytes) -> None:
        self._deliver(origin, payload)
