"""
The p2p topology with SWIM membership (``--swim``), as ``twistd`` processes on loopback.

Members and their states come from SWIM; connections are dialled to the
stream endpoints each member advertises with its state. Every wait polls
``GET /status``.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests._support import spawn_twistd, status_port, unique_id
from tests.test_integration_p2p import CONVERGE, FAST_KEEPALIVE, LISTEN_ANY_PORT, get_json, poll

SWIM_LOOPBACK = "udp:0:interface=127.0.0.1"


def fetch_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def swim_view(document: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Each peer's (state, connected) in one status document."""
    return {peer["id"]: (peer["state"], peer["connected"]) for peer in document["peers"]}


class SwimNodesTests(TestCase):
    """``--nodes 4 --swim``: one process, four nodes, each its own SWIM port."""

    timeout = 40

    @defer.inlineCallbacks
    def check_four_nodes(self, transport: str) -> Any:
        node_id = unique_id(f"swim-{transport}")
        child = spawn_twistd(
            self,
            [
                "netmodels",
                "--topology",
                "p2p",
                "--transport",
                transport,
                "--nodes",
                "4",
                "--node-id",
                node_id,
                "--swim",
                SWIM_LOOPBACK,
                "--keepalive",
                FAST_KEEPALIVE,
                "--status",
                LISTEN_ANY_PORT,
                "--interval",
                "0.5",
            ],
        )
        status = yield status_port(child)
        ids = [node_id] + [f"{node_id}-{i}" for i in range(1, 4)]

        @defer.inlineCallbacks
        def meshed() -> Any:
            documents = yield get_json(status, "/status/all")
            for document in documents:
                others = set(ids) - {document["node"]["id"]}
                view = swim_view(document)
                if set(view) != others or set(view.values()) != {("alive", True)}:
                    return False
            return documents

        documents = yield poll(meshed, CONVERGE, f"four nodes over {transport}, SWIM members, connected")
        for document in documents:
            self.assertEqual(document["mesh"]["membership"], "swim")
            swim = document["swim"]
            self.assertTrue(swim["running"])
            self.assertEqual(swim["members"], {"alive": 3, "suspect": 0, "dead": 0, "left": 0})
            self.assertTrue(swim["address"].startswith("127.0.0.1:"))
            self.assertEqual(swim["malformed"], 0)

        @defer.inlineCallbacks
        def broadcasts_heard() -> Any:
            # The demo application broadcasts every 0.5 s; with SWIM it goes through the overlay.
            documents = yield get_json(status, "/status/all")
            overlays = [d["swim"]["overlay"] for d in documents]
            return overlays if all(o["delivered"] >= 6 for o in overlays) else False

        overlays = yield poll(broadcasts_heard, CONVERGE, "broadcasts delivered through the overlay")
        for overlay in overlays:
            self.assertEqual(overlay["malformed"], 0)
            self.assertLessEqual(len(overlay["mesh"]), 3)
        metrics = yield threads.deferToThread(fetch_text, status, "/metrics")
        received = re.search(
            r'^netmodels_swim_packets_total\{direction="received"[^}]*\} (\S+)$', metrics, re.M
        )
        self.assertIsNotNone(received, metrics)
        assert received is not None
        self.assertGreater(float(received.group(1)), 0)
        self.assertNotIn("Traceback", child.text)

    def test_tcp(self) -> Any:
        return self.check_four_nodes("tcp")

    def test_udp(self) -> Any:
        return self.check_four_nodes("udp")


class SwimProcessTests(TestCase):
    """Three processes: a crash is seen by SWIM (dead), a SIGTERM is a leave."""

    timeout = 60

    @defer.inlineCallbacks
    def spawn(self, node_id: str, seed: str | None) -> Any:
        args = [
            "netmodels",
            "--topology",
            "p2p",
            "--listen",
            LISTEN_ANY_PORT,
            "--swim",
            SWIM_LOOPBACK,
            "--keepalive",
            FAST_KEEPALIVE,
            "--status",
            LISTEN_ANY_PORT,
            "--node-id",
            node_id,
            "--interval",
            "0",
        ]
        if seed is not None:
            args += ["--swim-seed", seed]
        child = spawn_twistd(self, args)
        status = yield status_port(child)
        return child, status

    @defer.inlineCallbacks
    def views(self, statuses: list[int]) -> Any:
        documents = yield defer.gatherResults([get_json(s) for s in statuses], consumeErrors=True)
        return [swim_view(d) for d in documents]

    @defer.inlineCallbacks
    def test_crash_and_leave(self) -> Any:
        names = [unique_id(f"swim-{letter}") for letter in "abc"]
        first, first_status = yield self.spawn(names[0], None)
        document = yield poll(lambda: get_json(first_status), CONVERGE, "the first node's status")
        seed = document["swim"]["address"]
        spawned = yield defer.gatherResults(
            [self.spawn(name, seed) for name in names[1:]], consumeErrors=True
        )
        children = [first] + [child for child, _ in spawned]
        statuses = [first_status] + [status for _, status in spawned]

        def all_see(subject: str, state: str, among: list[int]) -> defer.Deferred[Any]:
            return self.views(among).addCallback(
                lambda views: views if all(v.get(subject, ("",))[0] == state for v in views) else False
            )

        for name in names:
            others = [s for s, n in zip(statuses, names, strict=True) if n != name]
            yield poll(lambda n=name, o=others: all_see(n, "alive", o), CONVERGE, f"{name} alive everywhere")

        children[2].kill("KILL")
        yield children[2].ended
        self.assertEqual(children[2].signal, signal.SIGKILL)
        yield poll(lambda: all_see(names[2], "dead", statuses[:2]), CONVERGE, f"{names[2]} dead (SWIM)")

        children[1].kill("TERM")
        yield children[1].ended
        self.assertNotIn("Traceback", children[1].text)
        yield poll(lambda: all_see(names[1], "left", statuses[:1]), CONVERGE, f"{names[1]} left")
        self.assertNotIn("Traceback", children[0].text)
