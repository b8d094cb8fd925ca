"""
End to end through ``twistd netmodels``: real server and client processes and
their status page, option errors, and the listing options.

Every process runs in its own temporary directory with ``--pidfile=`` and logs
to stdout; each is terminated in cleanup, even when a test fails.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from ._support import (
    TIMEOUT,
    ChildProcess,
    listening_port,
    spawn_twistd,
    status_port,
    unique_id,
)

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]

LOOPBACK_ANY = "tcp:0:interface=127.0.0.1"


def get_status(port: int) -> defer.Deferred[dict[str, Any]]:
    """``GET /status`` (in a thread: urllib blocks; the reactor does not)."""

    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            assert response.status == 200, response.status
            assert response.headers["content-type"] == "application/json"
            document: dict[str, Any] = json.loads(response.read())
            return document

    return threads.deferToThread(fetch)


class ServerAndClientProcessTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_status_shows_client_then_its_clean_close(self) -> Any:
        """
        The server's ``GET /status`` lists the client process's connection as
        open with the client's node id; after SIGTERM stops the client, the
        same connection is ``clean`` / ``remote``.
        """
        server_id = unique_id("srv")
        client_id = unique_id("cli")
        server = spawn_twistd(
            self,
            ["netmodels", "--listen", LOOPBACK_ANY, "--status", LOOPBACK_ANY, "--node-id", server_id],
        )
        port = yield listening_port(server)
        status = yield status_port(server)

        client = spawn_twistd(
            self,
            [
                "netmodels",
                "--role",
                "client",
                "--connect",
                f"tcp:127.0.0.1:{port}",
                "--node-id",
                client_id,
                "--interval",
                "0.05",
            ],
        )
        # The echo client logs each answered request: the connection is ready on both ends.
        yield client.wait_for(rf"\[{client_id}\] {server_id} answered".encode())

        document = yield get_status(status)
        self.assertEqual((document["node"]["id"], document["node"]["role"]), (server_id, "server"))
        inbound = [c for c in document["connections"] if c["direction"] == "inbound"]
        self.assertEqual(len(inbound), 1, document["connections"])
        (connection,) = inbound
        self.assertEqual(
            (connection["state"], connection["peer_id"], connection["reason"]),
            ("open", client_id, None),
        )
        self.assertGreater(connection["messages_in"], 1)

        mark = len(server.output)
        client.kill("TERM")
        yield client.ended
        # twistd re-raises the signal it shut down on, so "killed by SIGTERM" is a clean exit too.
        self.assertIn((client.exit_code, client.signal), [(0, None), (None, signal.SIGTERM)], client.text)
        self.assertIn("Server Shut Down", client.text)
        self.assertNotIn("Traceback", client.text)
        yield server.wait_for(rb"closed: clean \(remote\)", after=mark)

        document = yield get_status(status)
        (closed,) = [c for c in document["connections"] if c["id"] == connection["id"]]
        self.assertEqual(
            (closed["state"], closed["reason"], closed["initiator"], closed["errno"], closed["peer_id"]),
            ("closed", "clean", "remote", None, client_id),
        )
        self.assertIsNotNone(closed["closed_at"])
        self.assertEqual(document["counters"].get("clean"), 1)
        self.assertTrue(server.running)
        self.assertNotIn("Traceback", server.text)


@defer.inlineCallbacks
def run_to_exit(testcase: TestCase, args: list[str]) -> Any:
    child: ChildProcess = spawn_twistd(testcase, args)
    yield child.ended
    return child


#: (arguments after ``netmodels``, text the message must contain)
BAD_OPTIONS = [
    (["--listen", LOOPBACK_ANY, "--keepalive", "1,2"], "--keepalive"),
    (["--listen", LOOPBACK_ANY, "--keepalive", "a,b,c"], "--keepalive"),
    (["--listen", LOOPBACK_ANY, "--keepalive", "1,1,0"], "--keepalive"),
    (["--listen", LOOPBACK_ANY, "--topology", "nope"], "--topology"),
    (["--listen", LOOPBACK_ANY, "--role", "nope"], "--role"),
    (["--listen", "nonsense:::"], "--listen"),
    (["--role", "client"], "--connect"),
    (["--role", "server"], "--listen"),
    (["--listen", LOOPBACK_ANY, "--max-frame", "10"], "--max-frame"),
    (["--listen", LOOPBACK_ANY, "--max-per-address", "x"], "--max-per-address"),
    (["--listen", LOOPBACK_ANY, "--handshake-timeout", "-1"], "--handshake-timeout"),
]


def _bad_option_test(args: list[str], option: str) -> Any:
    @defer.inlineCallbacks
    def test(self: TestCase) -> Any:
        child = yield run_to_exit(self, ["netmodels", *args])
        text = child.text
        self.assertNotIn(child.exit_code, (0, None), f"{args}: signal {child.signal}\n{text}")
        self.assertIn(option, text, f"{args}: the message does not name {option}")
        self.assertNotIn("Traceback", text, args)

    test.__doc__ = f"``{' '.join(args)}`` exits non-zero naming {option}, without a traceback."
    return test


class OptionErrorTests(TestCase):
    """
    Each bad option exits non-zero with a message naming it, and no traceback.

    One test per option, each a twistd process of its own: started all at
    once, eleven interpreters outran one test's timeout on a loaded machine.
    """

    timeout = TIMEOUT

    for _index, (_args, _option) in enumerate(BAD_OPTIONS):
        locals()[f"test_{_index:02d}_{_option.strip('-').replace('-', '_')}"] = _bad_option_test(
            _args, _option
        )
    del _index, _args, _option


class ListingTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_list_topologies_and_apps(self) -> Any:
        topologies, apps = yield defer.gatherResults(
            [
                run_to_exit(self, ["netmodels", "--list-topologies"]),
                run_to_exit(self, ["netmodels", "--list-apps"]),
            ],
            consumeErrors=True,
        )
        self.assertEqual(topologies.exit_code, 0, topologies.text)
        self.assertRegex(topologies.text, r"(?m)^client-server\s.*\[roles: server, client\]")
        self.assertEqual(apps.exit_code, 0, apps.text)
        self.assertRegex(apps.text, r"(?m)^echo\s")
        self.assertNotIn("Traceback", topologies.text + apps.text)
