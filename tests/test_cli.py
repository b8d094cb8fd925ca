"""
Integration: the ``netmodels`` operator CLI, run as a process, against real
nodes serving their status endpoint on loopback. Exit codes and one-line
errors are part of what is tested: scripts depend on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from netmodels.cli.client import EXIT_AUTH, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from netmodels.core.reasons import CloseReason
from netmodels.daemon.status import status_site
from netmodels.runtime.node import NodeConfig

from ._support import (
    LISTEN_ANY_PORT,
    LOOPBACK,
    TIMEOUT,
    RunningNode,
    closed_port,
    ready_pair,
    start_client,
    start_node,
    start_server,
    unique_id,
)
from .test_integration_callback import TOKEN, WaitingInbox, callback_config, server_of, when

CLI = [sys.executable, "-m", "netmodels.cli"]
ADMIN_TOKEN = "cli-test-admin-token"


def one_line(testcase: TestCase | SynchronousTestCase, stderr: str) -> str:
    """The error, checked to be exactly one line and no traceback."""
    testcase.assertNotIn("Traceback", stderr)
    testcase.assertEqual(len(stderr.splitlines()), 1, stderr)
    return stderr.strip()


class _CountingSite(Site):
    """A status site that says when it has answered ``GET /status`` n times."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.answered = 0
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def log(self, request: Any) -> None:
        if request.path == b"/status":
            self.answered += 1
            for waiter in [w for w in self._waiters if w[0] <= self.answered]:
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def answered_times(self, count: int) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, waiter))
        return waiter


class CommandTests(TestCase):
    timeout = TIMEOUT

    def serve_status(self, *nodes: RunningNode, admin_token: str | None = ADMIN_TOKEN) -> str:
        site = _CountingSite(status_site([running.node for running in nodes], admin_token).resource)
        port = reactor.listenTCP(0, site, interface=LOOPBACK)
        self.addCleanup(lambda: port.stopListening() if port.connected else None)
        self.site, self.site_port = site, port
        return f"http://{LOOPBACK}:{port.getHost().port}"

    def run_cli(self, *args: str, env: dict[str, str] | None = None) -> defer.Deferred[tuple[str, str, int]]:
        """Runs ``netmodels args`` while the reactor serves; fires with (stdout, stderr, exit code)."""
        environment = {name: value for name, value in os.environ.items() if name != "NETMODELS_TOKEN"}
        ran = utils.getProcessOutputAndValue(CLI[0], CLI[1:] + list(args), env={**environment, **(env or {})})
        return ran.addCallback(lambda result: (result[0].decode(), result[1].decode(), result[2]))

    @defer.inlineCallbacks
    def client_server(self) -> Any:
        server = start_server(self)
        client = start_client(self, server.address)
        yield ready_pair(server, client)
        return server, client, self.serve_status(server)

    @defer.inlineCallbacks
    def test_status_and_connections(self) -> Any:
        server, client, url = yield self.client_server()
        out, err, code = yield self.run_cli("status", url)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"node         {server.node.config.node_id}: client-server server over tcp", out)
        self.assertIn("connections  open 1", out)

        out, _, code = yield self.run_cli("connections", url + "/status", "--open", "--json")
        [shown] = json.loads(out)
        self.assertEqual((code, shown["peer_id"], shown["state"]), (0, client.node.config.node_id, "open"))

        out, _, code = yield self.run_cli("connections", url, "--reason", "reset")
        self.assertEqual((code, out.splitlines()[1:]), (0, []))

    @defer.inlineCallbacks
    def test_reset_then_listed_by_reason(self) -> Any:
        """``reset ID`` sends RST: the client records reset, the server's list shows aborted."""
        server, client, url = yield self.client_server()
        [connection_id] = server.manager.live
        reset_seen = client.events.wait("closed")
        out, err, code = yield self.run_cli("reset", url, str(connection_id), "--token", ADMIN_TOKEN)
        self.assertEqual((code, out, err), (0, f"reset: connection {connection_id} on node "
                                               f"{server.node.config.node_id}\n", ""))  # fmt: skip
        event = yield reset_seen
        self.assertEqual(event.record.reason, CloseReason.RESET)

        out, _, code = yield self.run_cli("connections", url, "--reason", "aborted", "--json")
        [shown] = json.loads(out)
        self.assertEqual(
            (shown["id"], shown["initiator"], shown["detail"]), (connection_id, "local", "reset by operator")
        )

    @defer.inlineCallbacks
    def test_close_is_clean_for_the_peer(self) -> Any:
        server, client, url = yield self.client_server()
        [connection_id] = server.manager.live
        closed = client.events.wait("closed")
        # The token from the environment, as a script would pass it.
        _, _, code = yield self.run_cli(
            "close", url, str(connection_id), "--json", env={"NETMODELS_TOKEN": ADMIN_TOKEN}
        )
        self.assertEqual(code, 0)
        event = yield closed
        self.assertEqual(event.record.reason, CloseReason.CLEAN)

    @defer.inlineCallbacks
    def test_refusals_exit_1(self) -> Any:
        _, _, url = yield self.client_server()
        _, err, code = yield self.run_cli("reset", url, "999", "--token", ADMIN_TOKEN)
        self.assertEqual(code, EXIT_REFUSED)
        self.assertIn("404", one_line(self, err))
        self.assertIn("no live connection 999", err)

        _, err, code = yield self.run_cli("members", url)
        self.assertEqual(code, EXIT_REFUSED)
        self.assertIn("runs client-server: members are p2p's", one_line(self, err))

        _, err, code = yield self.run_cli("status", url, "--node", "nobody")
        self.assertEqual((code, one_line(self, err)), (EXIT_REFUSED, f"netmodels: no node 'nobody' at {url}"))

    @defer.inlineCallbacks
    def test_commands_need_the_admin_token(self) -> Any:
        """Without the admin token, or on a node that has none, reset exits 4 and the connection stays."""
        server, _, url = yield self.client_server()
        [connection_id] = server.manager.live
        for extra in ((), ("--token", "wrong")):
            _, err, code = yield self.run_cli("reset", url, str(connection_id), *extra)
            self.assertEqual(code, EXIT_AUTH)
            self.assertIn("401", one_line(self, err))
            self.assertIn("missing or wrong bearer token", err)
        tokenless = self.serve_status(server, admin_token=None)
        _, err, code = yield self.run_cli("close", tokenless, str(connection_id), "--token", ADMIN_TOKEN)
        self.assertEqual(code, EXIT_AUTH)
        self.assertIn("403", one_line(self, err))
        self.assertIn("no --admin-token-file", err)
        self.assertIn(connection_id, server.manager.live)

    @defer.inlineCallbacks
    def test_monitor_follows_a_close(self) -> Any:
        """``monitor`` prints the close, with its reason, that happens after it started."""
        server, _, url = yield self.client_server()
        [connection_id] = server.manager.live
        started = self.site.answered_times(1)
        following = self.run_cli("monitor", url, "--count", "1", "--interval", "0.05", "--json")
        yield started
        server.manager.live[connection_id].reset("by the test")
        out, err, code = yield following
        self.assertEqual((code, err), (0, ""))
        [event] = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(
            (event["event"], event["id"], event["reason"], event["detail"]),
            ("closed", connection_id, "aborted", "by the test"),
        )

    @defer.inlineCallbacks
    def test_monitor_stops_when_the_node_goes(self) -> Any:
        _, _, url = yield self.client_server()
        started = self.site.answered_times(1)
        following = self.run_cli("monitor", url, "--interval", "0.05")
        yield started
        yield self.site_port.stopListening()
        out, err, code = yield following
        self.assertEqual((code, out), (EXIT_UNREACHABLE, ""))
        self.assertIn("stopped following: no node at", one_line(self, err))

    @defer.inlineCallbacks
    def test_members_of_a_p2p_node(self) -> Any:
        def peer(name: str, seed: RunningNode | None) -> RunningNode:
            config = NodeConfig(
                topology="p2p", role="peer", app="broadcast", listen=(LISTEN_ANY_PORT,),
                connect=() if seed is None else (seed.address,), node_id=unique_id(name), interval=0,
            )  # fmt: skip
            return start_node(self, config)

        first = peer("first", None)
        second = peer("second", first)
        yield first.events.wait("ready")
        url = self.serve_status(first)
        out, _, code = yield self.run_cli("members", url, "--json")
        [shown] = json.loads(out)
        self.assertEqual((code, shown["id"], shown["state"]), (0, second.node.config.node_id, "alive"))
        out, _, _ = yield self.run_cli("members", url)
        self.assertEqual(
            out.split()[:7], ["ID", "STATE", "SINCE", "INCARNATION", "CONNECTED", "LAST", "REASON"]
        )

    @defer.inlineCallbacks
    def test_deliver_needs_the_token(self) -> Any:
        """``deliver`` hands a message to a callback client; a wrong token exits 4, an unknown client 1."""
        server = start_node(self, callback_config("server", listen=(LISTEN_ANY_PORT,)))
        client_id = unique_id("alice")
        registered = when(server_of(server), "registered", client_id)
        config = callback_config("client", node_id=client_id, connect=(server.address,),
                                 callback=f"tcp:0:interface={LOOPBACK}")  # fmt: skip
        inbox = WaitingInbox(config)
        start_node(self, config, inbox)
        yield registered
        url = self.serve_status(server)

        _, err, code = yield self.run_cli("deliver", url, client_id, "hello", "--token", "wrong")
        self.assertEqual(code, EXIT_AUTH)
        self.assertIn("401", one_line(self, err))
        _, err, code = yield self.run_cli("deliver", url, "nobody", "hello", "--token", TOKEN)
        self.assertEqual(code, EXIT_REFUSED)
        self.assertIn("404", one_line(self, err))

        out, err, code = yield self.run_cli("deliver", url, client_id, "hello", "--token", TOKEN)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"for {client_id}", out)
        messages = yield inbox.wait(1)
        self.assertEqual(messages, [b"hello"])

    @defer.inlineCallbacks
    def test_nothing_there(self) -> Any:
        """No node at the URL, or something that is not a status endpoint: exit 3, one line."""
        url = f"http://{LOOPBACK}:{closed_port()}"
        _, err, code = yield self.run_cli("status", url)
        self.assertEqual(
            (code, one_line(self, err)),
            (EXIT_UNREACHABLE, f"netmodels: no node at {url}: connection refused"),
        )

        root = Resource()
        root.putChild(b"status", Data(b"<html>a web server</html>", "text/html"))
        port = reactor.listenTCP(0, Site(root), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        _, err, code = yield self.run_cli("status", f"http://{LOOPBACK}:{port.getHost().port}")
        self.assertEqual(code, EXIT_UNREACHABLE)
        self.assertIn("did not answer JSON", one_line(self, err))


class UsageTests(SynchronousTestCase):
    """Bad arguments: exit 2 and one line naming what is wrong, before any request."""

    def run_cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60, env=env)

    def test_usage_errors(self) -> None:
        url = "http://127.0.0.1:9"
        for args, words in [
            (("status", "127.0.0.1:8080"), "Invalid value for 'URL': '127.0.0.1:8080' is not an http://"),
            (("status", "http://host:99999"), "bad port"),
            (
                ("connections", url, "--reason", "bogus"),
                "Invalid value for '--reason': 'bogus' is not one of",
            ),
            (("connections", url, "--reason", "reset", "--open"), "--reason and --open exclude each other"),
            (("reset", url, "abc"), "Invalid value for 'ID'"),
            (("reset", url), "Missing argument 'ID'"),
            (("monitor", url, "--interval", "0"), "Invalid value for '--interval'"),
            (("deliver", url, "alice", "hi"), "Missing option '--token'"),
            (("frobnicate",), "No such command 'frobnicate'"),
        ]:
            result = self.run_cli(*args, env={k: v for k, v in os.environ.items() if k != "NETMODELS_TOKEN"})
            self.assertEqual((result.returncode, result.stdout), (EXIT_USAGE, ""), args)
            self.assertIn(words, one_line(self, result.stderr), args)

    def test_help_and_version(self) -> None:
        result = self.run_cli("--help")
        self.assertEqual(result.returncode, 0)
        for command in ("status", "connections", "members", "reset", "close", "deliver", "monitor"):
            self.assertIn(command, result.stdout)
        self.assertRegex(self.run_cli("--version").stdout, r"^netmodels \d")
