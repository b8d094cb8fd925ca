"""
Integration: the many-to-one topology over real loopback sockets -- fan-out
to 200 clients, a stuck client dropped by the slow-consumer policy while the
others keep flowing, a raw line client (a plain socket, as ``nc``) chatting
with a netmodels client, and the same through ``twistd``.

Nothing sleeps: every wait is a Deferred fired by an event.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from netmodels.core.frames import FrameDecoder, Hello, MessageType, encode_frame, encode_hello
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.manager import ManagedConnection
from netmodels.topologies.many_to_one.chat import ChatApplication
from netmodels.topologies.many_to_one.hub import hub_of
from netmodels.topologies.many_to_one.raw import RawLineSession
from netmodels.transports.tcp import find_tcp_connection

from ._support import (
    LOOPBACK,
    QUIET_KEEPALIVE,
    TIMEOUT,
    make_config,
    spawn_twistd,
    start_node,
    unique_id,
)

_DATA = int(MessageType.DATA)
#: Where a test server listens: loopback, any port, with room for many connects at once
#: (a dropped SYN would stall a connect for a whole second).
LISTEN = f"tcp:0:interface={LOOPBACK}:backlog=1024"


def m21_config(role: str, **overrides: Any) -> Any:
    return make_config(role, topology="many-to-one", app="chat", **overrides)


def port_of(node: Any, index: int = 0) -> int:
    port = node.listeners[index].port
    assert port is not None
    return int(port.getHost().port)


def when_clients(node: Any, count: int) -> defer.Deferred[None]:
    """Fires once ``node``'s hub has ``count`` clients (checked on every ready event)."""
    hub = hub_of(node)
    assert hub is not None
    done: defer.Deferred[None] = defer.Deferred()

    def check(event: str = "ready", subject: Any = None) -> None:
        if event == "ready" and not done.called and len(hub.clients()) >= count:
            reactor.callLater(0, done.callback, None)

    node.manager.subscribe(check)
    check()
    return done


class FramedClient(Protocol):
    """
    A light netmodels client: sends a many-to-one HELLO, then DATA frames;
    keeps the DATA it receives and fires :attr:`done` once it has ``expected``.
    """

    def __init__(self, node_id: str, expected: int = 0) -> None:
        self.node_id = node_id
        self.expected = expected
        self.messages: list[bytes] = []
        self.done: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self._decoder = FrameDecoder(1 << 20)

    def connectionMade(self) -> None:
        hello = Hello(node_id=self.node_id, topology="many-to-one", role="client", keepalive=QUIET_KEEPALIVE)
        self.transport.write(encode_hello(hello))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for kind, body in self._decoder.feed(data):
            if kind == _DATA:
                self.messages.append(body)
        if self.expected and len(self.messages) >= self.expected and not self.done.called:
            self.done.callback(None)

    def send(self, payload: bytes) -> None:
        self.transport.write(encode_frame(_DATA, payload))  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.lost.callback(None)


@defer.inlineCallbacks
def connect_framed(testcase: TestCase, port: int, clients: list[FramedClient]) -> Any:
    """Connect every client to ``127.0.0.1:port``; each is aborted in cleanup."""
    endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=10)
    yield defer.gatherResults([connectProtocol(endpoint, client) for client in clients], consumeErrors=True)

    def abort_all() -> defer.Deferred[Any]:
        waits = []
        for client in clients:
            if client.reason is None and client.transport is not None:
                client.transport.abortConnection()
                waits.append(client.lost)
        return defer.gatherResults(waits)

    testcase.addCleanup(abort_all)


@implementer(IReadDescriptor)
class SocketLineClient:
    """
    What ``nc`` is: a plain socket, no netmodels and no Twisted protocol.
    Read from the reactor (``addReader``), non-blocking; :meth:`line` waits for
    a line that matches.
    """

    def __init__(self, testcase: TestCase, port: int) -> None:
        # A connect to a listening loopback port completes at once.
        self.sock = socket.create_connection((LOOPBACK, port), timeout=5)
        self.sock.setblocking(False)
        self.buffer = b""
        self.lines: list[bytes] = []
        self.closed = False
        self._waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []
        reactor.addReader(self)
        testcase.addCleanup(self.close)

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def say(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, matches: Callable[[bytes], bool]) -> defer.Deferred[bytes]:
        for line in self.lines:
            if matches(line):
                return defer.succeed(line)
        waiting: defer.Deferred[bytes] = defer.Deferred()
        self._waiters.append((matches, waiting))
        return waiting

    # IReadDescriptor

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "SocketLineClient"

    def doRead(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        for line in complete:
            self.lines.append(line)
            for waiter in list(self._waiters):
                if waiter[0](line):
                    self._waiters.remove(waiter)
                    waiter[1].callback(line)

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            reactor.removeReader(self)
            self.sock.close()


class NotifyingChat(ChatApplication):
    """The chat application, firing a Deferred for each received line a test waits for."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._waiters: list[tuple[bytes, defer.Deferred[None]]] = []

    def message_received(self, peer: Any, payload: bytes) -> None:
        super().message_received(peer, payload)
        for waiter in list(self._waiters):
            if waiter[0] == payload:
                self._waiters.remove(waiter)
                reactor.callLater(0, waiter[1].callback, None)

    def heard(self, payload: bytes) -> defer.Deferred[None]:
        if payload in self.recent:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((payload, waiting))
        return waiting


class FanOutTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_every_message_reaches_every_other_of_200_clients(self) -> Any:
        """200 clients each say one line; each hears the 199 others, prefixed, and never itself."""
        count = 200
        server = start_node(self, m21_config("server", listen=(LISTEN,)))
        ids = [f"c{index:03d}" for index in range(count)]
        clients = [FramedClient(node_id, expected=count - 1) for node_id in ids]
        ready = when_clients(server.node, count)
        yield connect_framed(self, port_of(server.node), clients)
        yield ready
        for client in clients:
            client.send(f"line from {client.node_id}".encode())
        yield defer.gatherResults([client.done for client in clients])
        for client in clients:
            expected = {f"{other}: line from {other}".encode() for other in ids if other != client.node_id}
            self.assertEqual(len(client.messages), count - 1)
            self.assertEqual(set(client.messages), expected)
        application = server.node.application
        assert isinstance(application, ChatApplication)
        self.assertEqual(application.relayed, count * (count - 1))

    @defer.inlineCallbacks
    def test_stuck_client_dropped_while_the_others_keep_flowing(self) -> Any:
        """
        One client stops reading (its transport paused, small buffers); the
        server drops it with RST, reason ``rejected``, once it is a backlog
        cap behind, while 20 others receive every message.
        """
        max_backlog = 128 * 1024
        server = start_node(
            self,
            m21_config("server", listen=(LISTEN,), max_backlog=max_backlog, slow_consumer_deadline=5.0),
        )
        hub = hub_of(server.node)
        assert hub is not None
        fast = [FramedClient(f"fast-{index}") for index in range(20)]
        slow = FramedClient("slow")
        ready = when_clients(server.node, len(fast) + 1)
        yield connect_framed(self, port_of(server.node), [*fast, slow])
        yield ready
        assert slow.transport is not None
        slow.transport.pauseProducing()
        slow.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        [slow_session] = [peer for peer in hub.clients() if peer.node_id == "slow"]
        connection = find_tcp_connection(slow_session.transport)
        assert connection is not None
        connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        fast_sessions = [peer for peer in hub.clients() if peer is not slow_session]
        closed = server.events.wait("closed", lambda record: record.peer_id == "slow")

        payload = b"x" * 1024
        sent = [0]
        after_drop = [0]
        finished: defer.Deferred[None] = defer.Deferred()

        def pump() -> None:
            # Offer more only while every fast client keeps up, as a lossless sender would.
            if all(session.writable for session in fast_sessions):
                for _ in range(20):
                    hub.broadcast(payload)
                    sent[0] += 1
                if closed.called:
                    after_drop[0] += 20
            if after_drop[0] >= 200:
                finished.callback(None)
                return
            reactor.callLater(0, pump)

        pump()
        event = yield closed
        record = event.record
        self.assertEqual((record.reason, record.initiator), (CloseReason.REJECTED, Initiator.LOCAL))
        self.assertIn("slow consumer", record.detail)
        yield finished
        for client in fast:
            client.expected = sent[0]
            if len(client.messages) >= sent[0]:
                client.done.callback(None)
        yield defer.gatherResults([client.done for client in fast])
        for client in fast:
            self.assertEqual(len(client.messages), sent[0])
        self.assertEqual(hub.status()["counts"]["slow_consumers_dropped"], 1)
        self.assertEqual(len(hub.clients()), len(fast))
        # The cap bounds what was accepted for it: far less than was sent.
        self.assertLess(max_backlog, sent[0] * len(payload))


class RawLineClientTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_raw_socket_client_chats_with_a_netmodels_client(self) -> Any:
        server = start_node(
            self, m21_config("server", listen=(LISTEN,), raw_listen=(LISTEN,), node_id=unique_id("hub"))
        )
        self.assertIsInstance(
            server.node.listeners[1].factory.wrappedFactory.buildProtocol(None), RawLineSession
        )
        alice_config = m21_config(
            "client", connect=(f"tcp:{LOOPBACK}:{port_of(server.node)}",), node_id="alice"
        )
        alice = start_node(self, alice_config, NotifyingChat(alice_config))
        yield server.events.wait("ready", lambda record: record.peer_id == "alice")

        nc = SocketLineClient(self, port_of(server.node, 1))
        raw_id = f"raw-{LOOPBACK}:{nc.local_port}"
        opened = yield server.events.wait("ready", lambda record: record.peer_id == raw_id)

        nc.say(b"hi from nc\r\n")
        application = alice.node.application
        assert isinstance(application, NotifyingChat)
        yield application.heard(f"{raw_id}: hi from nc".encode())

        application.say(b"hello nc")
        line = yield nc.line(lambda line: line.startswith(b"alice:"))
        self.assertEqual(line, b"alice: hello nc")

        # Kernel keepalive and TCP_NODELAY on the server's end of the raw connection.
        assert isinstance(opened.subject, ManagedConnection)
        sock = opened.subject.transport.getHandle()
        keepalive = server.node.config.keepalive
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), math.ceil(keepalive.idle))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

        section = server.node.status()["many_to_one"]
        self.assertEqual(section["counts"]["raw"], 1)
        self.assertEqual(section["clients"][raw_id]["kind"], "raw")
        self.assertEqual(section["clients"][raw_id]["unsent"], 0)

        # nc hangs up: a clean close from the remote side.
        nc.close()
        closed = yield server.events.wait("closed", lambda record: record.peer_id == raw_id)
        self.assertEqual(
            (closed.record.reason, closed.record.initiator), (CloseReason.CLEAN, Initiator.REMOTE)
        )

    @defer.inlineCallbacks
    def test_over_long_line_over_a_real_socket(self) -> Any:
        server = start_node(self, m21_config("server", raw_listen=(LISTEN,), max_frame=1024))
        nc = SocketLineClient(self, port_of(server.node))
        nc.say(b"y" * 5000)
        error_line = yield nc.line(lambda line: line.startswith(b"error:"))
        self.assertIn(b"exceeds the limit of 1023 bytes", error_line)
        closed = yield server.events.wait("closed")
        self.assertEqual(closed.record.reason, CloseReason.PROTOCOL_ERROR)


class TwistdTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_two_nc_clients_chat_through_twistd(self) -> Any:
        """``twistd netmodels --topology many-to-one --raw-listen``: two line clients chat."""
        child = spawn_twistd(
            self,
            [
                "netmodels",
                "--topology",
                "many-to-one",
                "--listen",
                f"tcp:0:interface={LOOPBACK}",
                "--raw-listen",
                f"tcp:0:interface={LOOPBACK}",
                "--node-id",
                unique_id("hub"),
            ],
        )
        listening = rb"listening on tcp:127\.0\.0\.1:(\d+)"
        framed = yield child.wait_for(listening)
        raw = yield child.wait_for(listening, after=framed.end())
        raw_port = int(raw.group(1))
        first = SocketLineClient(self, raw_port)
        second = SocketLineClient(self, raw_port)
        for client in (first, second):
            yield child.wait_for(rf"opened: inbound 127\.0\.0\.1:{client.local_port}".encode())
        first.say(b"anyone there?\n")
        line = yield second.line(lambda line: b"anyone" in line)
        self.assertEqual(line, f"raw-{LOOPBACK}:{first.local_port}: anyone there?".encode())
        self.assertNotIn("Traceback", child.text)
