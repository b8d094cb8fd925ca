"""
Integration: the callback topology over real loopback sockets, in process
(callback path, refused callback and fallback, wrong token), and through
``twistd`` subprocesses: a client killed with SIGKILL and restarted, and a
server restarted with messages in its SQLite outbox.

Nothing sleeps: every wait is a Deferred fired by an event or a log line.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from netmodels.core.connection import ConnectionState, Direction
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.node import NodeConfig
from netmodels.topologies.callback.common import CALLBACK, FALLBACK
from netmodels.topologies.callback.inbox import InboxApplication
from netmodels.topologies.callback.server import CallbackServer
from netmodels.topologies.callback.topology import callback_of

from ._support import (
    LISTEN_ANY_PORT,
    LOOPBACK,
    TIMEOUT,
    ChildProcess,
    listening_port,
    make_config,
    spawn_twistd,
    start_node,
    status_port,
    temp_dir,
    unique_id,
)

TOKEN = "integration-token"


class WaitingInbox(InboxApplication):
    """An inbox whose test can wait for the n-th message."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        self.messages: list[bytes] = []
        self._waiters: list[tuple[int, defer.Deferred[list[bytes]]]] = []

    def message_received(self, peer: Any, payload: bytes) -> None:
        super().message_received(peer, payload)
        self.messages.append(payload)
        for waiter in list(self._waiters):
            if len(self.messages) >= waiter[0]:
                self._waiters.remove(waiter)
                waiter[1].callback(self.messages)

    def wait(self, count: int) -> defer.Deferred[list[bytes]]:
        if len(self.messages) >= count:
            return defer.succeed(self.messages)
        deferred: defer.Deferred[list[bytes]] = defer.Deferred()
        self._waiters.append((count, deferred))
        return deferred


def callback_config(role: str, **overrides: Any) -> NodeConfig:
    overrides.setdefault("token", TOKEN)
    return make_config(role, topology="callback", app="inbox", **overrides)


def server_of(running: Any) -> CallbackServer:
    server = callback_of(running.node)
    assert isinstance(server, CallbackServer)
    return server


def when(server: CallbackServer, event: str, client_id: str) -> defer.Deferred[None]:
    done: defer.Deferred[None] = defer.Deferred()

    def observe(seen: str, who: str) -> None:
        if (seen, who) == (event, client_id) and not done.called:
            server.observers.remove(observe)
            done.callback(None)

    server.observers.append(observe)
    return done


class InProcessTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def start_pair(self, **client_overrides: Any) -> Any:
        server = start_node(self, callback_config("server", listen=(LISTEN_ANY_PORT,)))
        callback = server_of(server)
        client_id = unique_id("alice")
        registered = when(callback, "registered", client_id)
        config = callback_config(
            "client",
            node_id=client_id,
            connect=(server.address,),
            callback=f"tcp:0:interface={LOOPBACK}",
            **client_overrides,
        )
        inbox = WaitingInbox(config)
        client = start_node(self, config, inbox)
        yield registered
        return server, client, inbox

    @defer.inlineCallbacks
    def test_callback_then_refused_then_fallback(self) -> Any:
        """Delivered by callback; once the client closes its port, refused and by fallback, nothing lost."""
        server, client, inbox = yield self.start_pair()
        callback = server_of(server)
        client_id = client.node.config.node_id
        acked = when(callback, "acked", client_id)
        yield callback.deliver(client_id, b"by callback")
        yield inbox.wait(1)
        yield acked
        status = callback.status()["clients"][client_id]
        self.assertEqual(status["last_callback"]["result"], "ok")
        self.assertEqual(
            status["callback"],
            f"tcp:host={LOOPBACK}:port={client.node.listeners[0].port.getHost().port}:timeout=5",
        )

        # The client closes its callback port, and the callback connection it had accepted.
        yield client.node.listeners[0].stopService()
        [accepted] = [c for c in client.manager.live.values() if c.record.direction is Direction.INBOUND]
        accepted.wrappedProtocol.close()
        yield server.events.wait("closed", lambda record: record.direction is Direction.OUTBOUND)

        acked = when(callback, "acked", client_id)
        yield callback.deliver(client_id, b"by fallback")
        yield inbox.wait(2)
        yield acked
        self.assertEqual(inbox.messages, [b"by callback", b"by fallback"])
        status = callback.status()["clients"][client_id]
        self.assertEqual(
            (status["last_callback"]["result"], status["last_callback"]["errno"]), ("refused", "ECONNREFUSED")
        )
        self.assertEqual(status["delivered"], {CALLBACK: 1, FALLBACK: 1})
        self.assertEqual(status["outbox_depth"], 0)
        failed = [r for r in server.manager.history if r.state is ConnectionState.FAILED]
        self.assertEqual([r.reason for r in failed], [CloseReason.REFUSED])

    @defer.inlineCallbacks
    def test_wrong_token_is_rejected(self) -> Any:
        server = start_node(self, callback_config("server", listen=(LISTEN_ANY_PORT,)))
        config = callback_config("client", connect=(server.address,), token="wrong")
        inbox = WaitingInbox(config)
        client = start_node(self, config, inbox)
        closed = yield server.events.wait("closed")
        self.assertEqual(
            (closed.record.reason, closed.record.initiator, closed.record.fatal, closed.record.detail),
            (CloseReason.REJECTED, Initiator.LOCAL, True, "wrong token"),
        )
        on_client = yield client.events.wait("closed")
        self.assertEqual((on_client.record.reason, on_client.record.fatal), (CloseReason.REJECTED, True))
        self.assertEqual(server_of(server).status()["clients"], {})


# --- twistd -----------------------------------------------------------------------------------


def http(method: str, port: int, path: str, body: bytes = b"", token: str | None = TOKEN) -> Any:
    """One request to a child's status endpoint (another process: blocking briefly is fine)."""
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{path}", data=body if method == "POST" else None, method=method
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def until_empty(status: int, client_id: str) -> defer.Deferred[None]:
    """Fires once ``GET /status`` shows the client's outbox empty (its ACK was processed)."""
    done: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        _, document = http("GET", status, "/status")
        if document["callback"]["clients"][client_id]["outbox_depth"] == 0:
            done.callback(None)
        else:
            reactor.callLater(0.01, check)

    check()
    return done


def server_args(port: str, outbox: str | None = None) -> list[str]:
    args = [
        "netmodels", "--topology", "callback", "--node-id", unique_id("mailhub"),
        "--listen", f"tcp:{port}:interface={LOOPBACK}", "--status", f"tcp:0:interface={LOOPBACK}",
        "--token", TOKEN, "--keepalive", "fast",
    ]  # fmt: skip
    return [*args, "--outbox", outbox] if outbox else args


def client_args(client_id: str, server_port: int, state: str) -> list[str]:
    return [
        "netmodels", "--topology", "callback", "--role", "client", "--node-id", client_id,
        "--connect", f"tcp:{LOOPBACK}:{server_port}", "--callback", f"tcp:0:interface={LOOPBACK}",
        "--token", TOKEN, "--outbox", state, "--keepalive", "fast",
    ]  # fmt: skip


def received_lines(child: ChildProcess) -> list[str]:
    return [line.split(": ", 1)[1] for line in child.text.splitlines() if "] via " in line]


class TwistdTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def start_server(self, outbox: str | None = None, port: str = "0") -> Any:
        server = spawn_twistd(self, server_args(port, outbox))
        listening = yield listening_port(server)
        status = yield status_port(server)
        return server, listening, status

    @defer.inlineCallbacks
    def start_client(
        self, client_id: str, server: ChildProcess, port: int, state: str, after: int = 0
    ) -> Any:
        client = spawn_twistd(self, client_args(client_id, port, state))
        yield server.wait_for(f"client {client_id} registered", after=after)
        return client

    @defer.inlineCallbacks
    def test_killed_client_gets_queued_messages_in_order_once(self) -> Any:
        """SIGKILL the client: messages queue; restarted, it shows them in order, each once."""
        directory = temp_dir(self)
        server, port, status = yield self.start_server()
        client_id = unique_id("alice")
        state = os.path.join(directory, "alice.sqlite")
        client = yield self.start_client(client_id, server, port, state)

        code, _ = http("POST", status, f"/deliver/{client_id}", b"first")
        self.assertEqual(code, 202)
        yield client.wait_for("via callback: first")
        yield until_empty(status, client_id)

        mark = len(server.output)
        client.kill("KILL")
        yield client.ended
        yield server.wait_for(f"client {client_id} is offline", after=mark)
        for n in range(3):
            code, document = http("POST", status, f"/deliver/{client_id}", f"queued {n}".encode())
            self.assertEqual((code, document["depth"]), (202, n + 1))
        _, document = http("GET", status, "/status")
        entry = document["callback"]["clients"][client_id]
        self.assertEqual((entry["alive"], entry["outbox_depth"]), (False, 3))

        restarted = yield self.start_client(client_id, server, port, state, after=mark)
        yield restarted.wait_for("queued 2")
        self.assertEqual(received_lines(restarted), ["queued 0", "queued 1", "queued 2"])
        yield until_empty(status, client_id)
        self.assertNotIn("Traceback", server.text + restarted.text)

    @defer.inlineCallbacks
    def test_restarted_server_delivers_what_its_outbox_kept(self) -> Any:
        """Messages accepted while the client is away survive a server restart (SQLite file)."""
        directory = temp_dir(self)
        outbox = os.path.join(directory, "outbox.sqlite")
        server, port, status = yield self.start_server(outbox)
        client_id = unique_id("bob")
        state = os.path.join(directory, "bob.sqlite")
        client = yield self.start_client(client_id, server, port, state)
        yield client.terminate()
        yield server.wait_for(f"client {client_id} is offline")
        for n in range(2):
            code, _ = http("POST", status, f"/deliver/{client_id}", f"kept {n}".encode())
            self.assertEqual(code, 202)
        yield server.terminate()

        again, port, status = yield self.start_server(outbox)
        _, document = http("GET", status, "/status")
        self.assertEqual(document["callback"]["clients"][client_id]["outbox_depth"], 2)
        client = yield self.start_client(client_id, again, port, state)
        yield client.wait_for("kept 1")
        self.assertEqual(received_lines(client), ["kept 0", "kept 1"])
        self.assertNotIn("Traceback", again.text + client.text)
