"""
Integration: the p2p topology over real loopback sockets.

- ``twistd netmodels --topology p2p`` processes that mesh through one
  bootstrap peer; one is killed (SIGKILL) and the others say why its
  connection ended and mark it ``dead``; restarted on the same port with the
  same id it rejoins; one stopped with SIGTERM is ``left``.
- ``--nodes 5`` in one process, and the usage errors of ``--nodes`` and
  ``--listen``.
- Four in-process nodes on loopback flood 100 broadcasts each: every node
  delivers each of the others' 300 exactly once.

Nothing sleeps for an outcome: every wait polls ``GET /status`` (or the nodes'
counters) with :func:`twisted.internet.task.deferLater` between polls, under
an overall deadline. Every process is killed in cleanup.
"""

from __future__ import annotations

import collections
import json
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from netmodels.runtime.node import NodeConfig
from netmodels.topologies.p2p.options import P2PSettings
from netmodels.topologies.p2p.topology import mesh_of

from ._support import (
    LISTEN_ANY_PORT,
    ChildProcess,
    RunningNode,
    listening_port,
    spawn_twistd,
    start_node,
    status_port,
    unique_id,
)

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]

#: Keepalive for the processes: a dead peer is found within 1 s.
FAST_KEEPALIVE = "0.5,0.25,2"

#: Seconds between two polls of a status page or of counters.
POLL = 0.05

#: How long a mesh of a few nodes on loopback may take to agree (ticks of 1 s,
#: the 2 s dial grace, refused redials backing off while a process restarts).
CONVERGE = 12.0


class Timeout(AssertionError):
    """A polled condition did not hold before its deadline."""


@defer.inlineCallbacks
def poll(check: Callable[[], Any], deadline: float, what: str, interval: float = POLL) -> Any:
    """
    Call ``check()`` (a value or a Deferred of one) every ``interval`` seconds
    until its result is truthy, and return that result; fail with the last
    result after ``deadline`` seconds.
    """
    until = time.monotonic() + deadline
    last: Any = None
    while True:
        last = yield defer.maybeDeferred(check)
        if last:
            return last
        if time.monotonic() > until:
            raise Timeout(f"{what}: not true within {deadline:g} s; last seen: {last!r}")
        yield task.deferLater(reactor, interval, lambda: None)


def get_json(port: int, path: str = "/status") -> defer.Deferred[Any]:
    """``GET path`` on the status page (urllib in a thread: it blocks, the reactor does not)."""

    def fetch() -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.loads(response.read())

    return threads.deferToThread(fetch)


def peer_states(document: dict[str, Any]) -> dict[str, str]:
    return {peer["id"]: peer["state"] for peer in document["peers"]}


class ProcessNode:
    """One ``twistd netmodels --topology p2p`` process and what it logged."""

    def __init__(self, child: ChildProcess, node_id: str, port: int, status: int) -> None:
        self.child = child
        self.node_id = node_id
        self.port = port
        self.status = status

    def document(self) -> defer.Deferred[dict[str, Any]]:
        return get_json(self.status)


@defer.inlineCallbacks
def spawn_peer(testcase: TestCase, node_id: str, bootstrap: int | None, listen: str = LISTEN_ANY_PORT) -> Any:
    args = [
        "netmodels",
        "--topology",
        "p2p",
        "--listen",
        listen,
        "--keepalive",
        FAST_KEEPALIVE,
        "--status",
        LISTEN_ANY_PORT,
        "--node-id",
        node_id,
        "--interval",
        "0",
    ]
    if bootstrap is not None:
        args += ["--peer", f"tcp:127.0.0.1:{bootstrap}"]
    child = spawn_twistd(testcase, args)
    port = yield listening_port(child)
    status = yield status_port(child)
    return ProcessNode(child, node_id, port, status)


class ProcessMeshTests(TestCase):
    """Three twistd processes: mesh, SIGKILL, restart on the same port, SIGTERM."""

    timeout = 45

    @defer.inlineCallbacks
    def views(self, nodes: list[ProcessNode]) -> Any:
        documents = yield defer.gatherResults([n.document() for n in nodes], consumeErrors=True)
        return {n.node_id: peer_states(d) for n, d in zip(nodes, documents, strict=True)}

    def all_alive(self, nodes: list[ProcessNode]) -> defer.Deferred[Any]:
        """
        Each node's /status lists every other as alive and connected, over one
        open connection each (a duplicate still closing is waited out); the
        documents, or False.
        """

        @defer.inlineCallbacks
        def check() -> Any:
            documents = yield defer.gatherResults([n.document() for n in nodes], consumeErrors=True)
            for node, document in zip(nodes, documents, strict=True):
                open_ = [c for c in document["connections"] if c["state"] == "open"]
                if len(open_) != len(nodes) - 1:
                    return False
                peers = {p["id"]: p for p in document["peers"]}
                for other in nodes:
                    if other is node:
                        continue
                    peer = peers.get(other.node_id)
                    if peer is None or peer["state"] != "alive" or not peer["connected"]:
                        return False
            return documents

        return check()

    @defer.inlineCallbacks
    def test_kill_restart_and_leave(self) -> Any:
        names = [unique_id(f"p2p-{letter}") for letter in "abc"]
        first = yield spawn_peer(self, names[0], None)
        others = yield defer.gatherResults(
            [spawn_peer(self, name, first.port) for name in names[1:]], consumeErrors=True
        )
        nodes = [first, *others]
        documents = yield poll(lambda: self.all_alive(nodes), CONVERGE, "three processes meshed")
        for document in documents:
            self.assertEqual(document["node"]["topology"], "p2p")
            self.assertEqual(document["mesh"]["direct"], 2)
            self.assertEqual(document["mesh"]["by_state"]["alive"], 2)
            live = [c for c in document["connections"] if c["state"] == "open"]
            self.assertEqual(len(live), 2, live)
        (victim_before,) = [p for p in documents[0]["peers"] if p["id"] == names[2]]

        # SIGKILL the third: its kernel closes its sockets, with no BYE.
        victim = nodes[2]
        victim.child.kill("KILL")
        yield victim.child.ended
        self.assertEqual(victim.child.signal, signal.SIGKILL)
        survivors = nodes[:2]

        def victim_dead() -> defer.Deferred[Any]:
            return self.views(survivors).addCallback(
                lambda views: views if all(v.get(names[2]) == "dead" for v in views.values()) else False
            )

        yield poll(victim_dead, CONVERGE, f"{names[2]} dead at the survivors")
        for survivor in survivors:
            document = yield survivor.document()
            # The connection the kill ended (not a duplicate closed while the mesh formed).
            closes = [
                c
                for c in document["connections"]
                if c["peer_id"] == names[2] and c["state"] == "closed" and "duplicate" not in c["detail"]
            ]
            self.assertEqual(len(closes), 1, document["connections"])
            (close,) = closes
            # An idle killed process's kernel sends FIN (clean); with data
            # unread in its buffers, RST (reset). Never a BYE, so never "left".
            self.assertIn((close["reason"], close["initiator"]), [("clean", "remote"), ("reset", "remote")])
            self.assertNotIn("duplicate", close["detail"])
            (peer,) = [p for p in document["peers"] if p["id"] == names[2]]
            self.assertEqual((peer["state"], peer["connected"]), ("dead", False))
            # SWIM holds it alive until its suspicion runs out, so it is redialled till then.
            self.assertIn(peer["last_reason"], (close["reason"], "refused"))
            self.log_close(survivor.node_id, close)

        # Restart it on the same port with the same id: a new incarnation rejoins.
        restarted = yield spawn_peer(
            self, names[2], first.port, listen=f"tcp:{victim.port}:interface=127.0.0.1"
        )
        self.assertEqual(restarted.port, victim.port)
        nodes = [*survivors, restarted]
        documents = yield poll(lambda: self.all_alive(nodes), CONVERGE, "the restarted process rejoined")
        (victim_after,) = [p for p in documents[0]["peers"] if p["id"] == names[2]]
        self.assertGreater(victim_after["incarnation"], victim_before["incarnation"])

        # SIGTERM the second: it says BYE, so the others record it left.
        leaver = nodes[1]
        leaver.child.kill("TERM")
        yield leaver.child.ended
        self.assertNotIn("Traceback", leaver.child.text)
        remaining = [nodes[0], nodes[2]]

        def leaver_left() -> defer.Deferred[Any]:
            return self.views(remaining).addCallback(
                lambda views: views if all(v.get(names[1]) == "left" for v in views.values()) else False
            )

        yield poll(leaver_left, CONVERGE, f"{names[1]} left at the others")
        for node in remaining:
            document = yield node.document()
            closes = [
                c for c in document["connections"] if c["peer_id"] == names[1] and c["state"] == "closed"
            ]
            self.assertEqual(
                {(c["reason"], c["initiator"]) for c in closes if "duplicate" not in c["detail"]},
                {("clean", "remote")},
            )
            self.assertTrue(node.child.running)
            self.assertNotIn("Traceback", node.child.text)

    def log_close(self, node_id: str, close: dict[str, Any]) -> None:
        # Shown in the test log, so a run says which of the two reasons it saw.
        from twisted.logger import Logger

        Logger(namespace="tests.p2p").info(
            "{node} recorded the killed peer's close as {reason} ({initiator}, errno {errno})",
            node=node_id,
            reason=close["reason"],
            initiator=close["initiator"],
            errno=close["errno"],
        )


class NodesOptionTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_five_nodes_in_one_process(self) -> Any:
        """``--nodes 5``: GET /status/all shows 5 nodes, each with the 4 others alive and connected."""
        node_id = unique_id("grp")
        child = spawn_twistd(
            self,
            [
                "netmodels",
                "--topology",
                "p2p",
                "--nodes",
                "5",
                "--node-id",
                node_id,
                "--keepalive",
                FAST_KEEPALIVE,
                "--status",
                LISTEN_ANY_PORT,
                "--interval",
                "0",
            ],
        )
        status = yield status_port(child)
        ids = [node_id] + [f"{node_id}-{i}" for i in range(1, 5)]

        @defer.inlineCallbacks
        def meshed() -> Any:
            documents = yield get_json(status, "/status/all")
            if [d["node"]["id"] for d in documents] != ids:
                return False
            for document in documents:
                alive = [p for p in document["peers"] if p["state"] == "alive" and p["connected"]]
                open_ = [c for c in document["connections"] if c["state"] == "open"]
                if len(alive) != 4 or len(open_) != 4:
                    return False
            return documents

        documents = yield poll(meshed, CONVERGE, "five nodes meshed")
        for document in documents:
            me = document["node"]["id"]
            self.assertEqual({p["id"] for p in document["peers"]}, set(ids) - {me})
            self.assertEqual(document["mesh"]["direct"], 4)
            self.assertEqual(len([c for c in document["connections"] if c["state"] == "open"]), 4)
        self.assertNotIn("Traceback", child.text)

    @defer.inlineCallbacks
    def test_usage_errors(self) -> Any:
        """``--nodes`` with another topology, p2p without ``--listen``: exit non-zero, naming the option."""
        cases = [
            (["netmodels", "--listen", LISTEN_ANY_PORT, "--nodes", "3"], "--nodes"),
            (["netmodels", "--topology", "p2p"], "--listen"),
        ]
        children = [spawn_twistd(self, args) for args, _ in cases]
        yield defer.gatherResults([c.ended for c in children], consumeErrors=True)
        for (_, option), child in zip(cases, children, strict=True):
            self.assertNotIn(child.exit_code, (0, None), child.text)
            self.assertIn(option, child.text)
            self.assertNotIn("Traceback", child.text)


class BroadcastExactlyOnceTests(TestCase):
    """
    Four in-process nodes on loopback: 100 broadcasts from each, each delivered exactly once.
    Membership by connections (``--swim off``), so broadcasts flood the links and every
    copy is counted (with SWIM they go through the overlay: tests/test_integration_swim.py).
    """

    timeout = 30
    COUNT = 4
    MESSAGES = 100

    def start_peer(self, index: int, bootstrap: RunningNode | None) -> RunningNode:
        config = NodeConfig(
            topology="p2p",
            role="peer",
            app="broadcast",
            listen=(LISTEN_ANY_PORT,),
            connect=() if bootstrap is None else (bootstrap.address,),
            node_id=unique_id(f"bc{index}"),
            interval=0,
            settings=P2PSettings(swim=None),
        )
        return start_node(self, config)

    @defer.inlineCallbacks
    def test_each_broadcast_delivered_once(self) -> Any:
        first = self.start_peer(0, None)
        nodes = [first] + [self.start_peer(i, first) for i in range(1, self.COUNT)]
        meshes = [mesh_of(n.node) for n in nodes]

        def full_mesh() -> bool:
            return all(
                len([m for m in mesh.members.values() if m.session is not None]) == self.COUNT - 1
                and len(mesh.alive()) == self.COUNT - 1
                and len(running.manager.live) == self.COUNT - 1
                for mesh, running in zip(meshes, nodes, strict=True)
            )

        yield poll(full_mesh, CONVERGE, "four nodes meshed", interval=0.01)

        first_hops = 0
        for mesh in meshes:
            for i in range(self.MESSAGES):
                first_hops += mesh.broadcast(f"{mesh.node_id} #{i}".encode())
        expected = self.MESSAGES * (self.COUNT - 1)

        def settled() -> bool:
            counters = [mesh.counters for mesh in meshes]
            received = sum(c["delivered"] + c["duplicates"] for c in counters)
            sent = first_hops + sum(c["forwarded"] for c in counters)
            # Every frame written has been read: nothing is in flight.
            return all(c["delivered"] >= expected for c in counters) and received == sent

        yield poll(settled, CONVERGE, "every broadcast delivered and every copy read", interval=0.01)

        for running, mesh in zip(nodes, meshes, strict=True):
            received = running.node.application.received  # type: ignore[attr-defined]
            counts = collections.Counter(received)
            self.assertEqual(len(received), expected)
            self.assertEqual(set(counts.values()), {1}, "a message delivered twice")
            wanted = {
                (other.node_id, f"{other.node_id} #{i}".encode())
                for other in meshes
                if other is not mesh
                for i in range(self.MESSAGES)
            }
            self.assertEqual(set(counts), wanted)
            self.assertEqual(mesh.counters["sent"], self.MESSAGES)
            self.assertEqual(mesh.counters["delivered"], expected)
            # From each origin, in the order it sent them (one TCP stream per pair).
            for other in meshes:
                if other is not mesh:
                    from_other = [p for origin, p in received if origin == other.node_id]
                    self.assertEqual(
                        from_other, [f"{other.node_id} #{i}".encode() for i in range(self.MESSAGES)]
                    )
