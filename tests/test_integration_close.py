"""
Integration: close reasons over real loopback sockets -- clean (FIN), reset
(RST), aborted, refused -- recorded on both sides, and the errno capture that
tells an RST from a plain lost connection against the installed Twisted.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from netmodels.core.connection import ConnectionState, Direction
from netmodels.core.frames import encode_ping
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.dialer import Dialer, DialerState
from netmodels.transports.tcp import _ErrnoRecordingSocket, capture_errno, find_tcp_connection

from ._support import (
    TIMEOUT,
    RawPeer,
    bye_bodies,
    closed_port,
    connect_raw,
    first_tick,
    raw_hello,
    ready_pair,
    record_id,
    start_client,
    start_server,
    with_peer_id,
)


def _write_after_abort(server: Any, connection_id: int) -> None:
    """
    Loopback does not process an RST on every OS (twisted#12711): writing to the
    connection after the peer aborted makes the peer's kernel answer with RST
    again. Harmless once the RST has been seen (the connection is gone).
    """
    connection = server.manager.find(connection_id)
    if connection is not None and not connection.record.closed:
        connection.write(encode_ping(1))


class CleanCloseTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_session_close_is_clean_on_both_sides(self) -> Any:
        """
        The client's ``session.close()`` (BYE, then FIN) is recorded ``clean``:
        ``local`` on the client, ``remote`` on the server, no errno on either.
        """
        server = start_server(self)
        client = start_client(self, server.address)
        on_server, on_client = yield ready_pair(server, client)

        on_client.session.close()

        client_closed = yield client.events.wait("closed", record_id(on_client.record.id))
        server_closed = yield server.events.wait("closed", record_id(on_server.record.id))
        self.assertEqual(
            (client_closed.record.reason, client_closed.record.initiator, client_closed.record.errno),
            (CloseReason.CLEAN, Initiator.LOCAL, None),
        )
        self.assertEqual(
            (server_closed.record.reason, server_closed.record.initiator, server_closed.record.errno),
            (CloseReason.CLEAN, Initiator.REMOTE, None),
        )
        self.assertEqual(server_closed.record.state, ConnectionState.CLOSED)
        self.assertEqual(server_closed.record.direction, Direction.INBOUND)
        self.assertEqual(client_closed.record.direction, Direction.OUTBOUND)
        self.assertFalse(client_closed.record.fatal)
        # A clean close is not a reason to stop: the client schedules a reconnect.
        yield first_tick()
        self.assertEqual(client.client.state, DialerState.WAITING)

    @defer.inlineCallbacks
    def test_bare_fin_without_bye_is_clean_remote(self) -> Any:
        """A peer that says HELLO then just closes (FIN, no BYE) is ``clean`` / ``remote``."""
        server = start_server(self)
        hello_answered: defer.Deferred[None] = defer.Deferred()

        def on_data(peer: RawPeer, data: bytes) -> None:
            # The server's HELLO arrived: its handshake may complete.
            if not hello_answered.called:
                hello_answered.callback(None)

        peer = RawPeer(on_connect=lambda p: p.transport.write(raw_hello()), on_data=on_data)
        yield connect_raw(self, server.port, peer)
        ready = yield server.events.wait("ready")
        yield hello_answered
        peer.transport.loseConnection()
        closed = yield server.events.wait("closed", record_id(ready.record.id))
        self.assertEqual(
            (closed.record.reason, closed.record.initiator, closed.record.errno),
            (CloseReason.CLEAN, Initiator.REMOTE, None),
        )


class NodeStopTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_stopping_server_closes_every_connection_cleanly(self) -> Any:
        """
        ``Node.stopService()`` says BYE to every connection, ready or still
        handshaking, and fires only once each has closed: ``clean`` / ``local``
        on the server, ``clean`` / ``remote`` on a client node, a BYE and a FIN
        for a raw peer.
        """
        server = start_server(self)
        client = start_client(self, server.address)
        on_server, on_client = yield ready_pair(server, client)
        silent = yield connect_raw(self, server.port)
        handshaking = yield server.events.wait("opened", lambda r: r.id != on_server.record.id)
        self.assertEqual(handshaking.record.state, ConnectionState.HANDSHAKING)

        yield server.node.stopService()

        self.assertEqual(server.manager.live, {})
        for record in (on_server.record, handshaking.record):
            self.assertEqual(
                (record.state, record.reason, record.initiator),
                (ConnectionState.CLOSED, CloseReason.CLEAN, Initiator.LOCAL),
            )
        client_closed = yield client.events.wait("closed", record_id(on_client.record.id))
        self.assertEqual(
            (client_closed.record.reason, client_closed.record.initiator),
            (CloseReason.CLEAN, Initiator.REMOTE),
        )
        yield silent.lost
        self.assertTrue(silent.reason.check(error.ConnectionDone), silent.reason)
        self.assertEqual(
            [json.loads(body)["reason"] for body in bye_bodies(bytes(silent.received))], ["clean"]
        )


class ResetTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_abort_connection_is_reset_econnreset(self) -> Any:
        """
        A raw client that sends a valid HELLO and then ``abortConnection()`` (RST):
        the server records ``reset``, ``remote``, ``ECONNRESET``.
        """
        server = start_server(self)
        peer = RawPeer(on_connect=lambda p: p.transport.write(raw_hello()))
        yield connect_raw(self, server.port, peer)
        ready = yield server.events.wait("ready")

        peer.transport.abortConnection()
        yield peer.lost
        self.assertTrue(peer.reason.check(error.ConnectionAborted), peer.reason)
        _write_after_abort(server, ready.record.id)

        closed = yield server.events.wait("closed", record_id(ready.record.id))
        self.assertEqual(
            (closed.record.reason, closed.record.initiator, closed.record.errno),
            (CloseReason.RESET, Initiator.REMOTE, "ECONNRESET"),
        )

    @defer.inlineCallbacks
    def test_linger_zero_socket_close_is_reset(self) -> Any:
        """
        A plain non-blocking socket closed with ``SO_LINGER {1, 0}`` after its
        HELLO: the server records ``reset``, ``remote``, ``ECONNRESET``.
        """
        server = start_server(self)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.setblocking(False)
        # Loopback connect: completes in the kernel at once or soon; no thread, no wait on I/O.
        result = sock.connect_ex(("127.0.0.1", server.port))
        self.assertIn(result, (0, errno.EINPROGRESS))
        opened = yield server.events.wait("opened")
        sock.send(raw_hello())
        ready = yield server.events.wait("ready", record_id(opened.record.id))

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        _write_after_abort(server, ready.record.id)

        closed = yield server.events.wait("closed", record_id(ready.record.id))
        self.assertEqual(
            (closed.record.reason, closed.record.initiator, closed.record.errno),
            (CloseReason.RESET, Initiator.REMOTE, "ECONNRESET"),
        )

    @defer.inlineCallbacks
    def test_session_reset_is_aborted_locally_reset_remotely(self) -> Any:
        """
        ``session.reset()`` on the client: the client records ``aborted`` /
        ``local``; the server records ``reset`` / ``remote`` / ``ECONNRESET``.
        """
        server = start_server(self)
        client = start_client(self, server.address)
        on_server, on_client = yield ready_pair(server, client)

        on_client.session.reset()

        client_closed = yield client.events.wait("closed", record_id(on_client.record.id))
        _write_after_abort(server, on_server.record.id)
        server_closed = yield server.events.wait("closed", record_id(on_server.record.id))
        self.assertEqual(
            (client_closed.record.reason, client_closed.record.initiator, client_closed.record.errno),
            (CloseReason.ABORTED, Initiator.LOCAL, None),
        )
        self.assertEqual(
            (server_closed.record.reason, server_closed.record.initiator, server_closed.record.errno),
            (CloseReason.RESET, Initiator.REMOTE, "ECONNRESET"),
        )


class RefusedTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_refused_then_retry_scheduled_then_reconnects(self) -> Any:
        """
        Dialling a port with no listener records a ``failed`` attempt
        (``refused``, ``remote``, ``ECONNREFUSED``) and the client waits for a
        jittered retry within the refused backoff (0.5 s, jitter 0.5); once
        something listens on that port, the retry connects.
        """
        port = closed_port()
        client = start_client(self, f"tcp:127.0.0.1:{port}")
        failed = yield client.events.wait("failed")
        record = failed.record
        self.assertEqual(
            (record.reason, record.initiator, record.errno, record.state),
            (CloseReason.REFUSED, Initiator.REMOTE, "ECONNREFUSED", ConnectionState.FAILED),
        )
        self.assertEqual(record.direction, Direction.OUTBOUND)
        self.assertEqual(record.peer, f"127.0.0.1:{port}")
        self.assertIn(record, list(client.manager.records()))

        yield first_tick()
        reconnecting = client.client
        self.assertEqual(reconnecting.state, DialerState.WAITING)
        self.assertIsNotNone(reconnecting.next_attempt_at)
        delay = reconnecting.next_attempt_at - reactor.seconds()
        self.assertTrue(0 < delay <= 0.5, f"retry in {delay:.3f} s, expected (0, 0.5]")
        status = reconnecting.status()
        self.assertEqual((status["state"], status["last_reason"]), ("waiting", "refused"))
        self.assertEqual(status["failures"], 1)

        # Restart "the server" on the same port: the scheduled retry finds it.
        server = start_server(self, listen=(f"tcp:{port}:interface=127.0.0.1",))
        yield ready_pair(server, client)
        self.assertEqual(reconnecting.state, DialerState.CONNECTED)

    @defer.inlineCallbacks
    def test_stopping_a_waiting_client_cancels_the_retry(self) -> Any:
        """Stopping the node while it waits to retry cancels the retry (no stray DelayedCall)."""
        client = start_client(self, f"tcp:127.0.0.1:{closed_port()}")
        yield client.events.wait("failed")
        yield first_tick()
        self.assertEqual(client.client.state, DialerState.WAITING)
        yield client.node.stopService()
        self.assertEqual(client.client.state, DialerState.STOPPED)
        self.assertEqual(
            [call for call in reactor.getDelayedCalls() if call.func.__module__ == Dialer.__module__], []
        )


class ErrnoCaptureTests(TestCase):
    """
    ``netmodels.transports.tcp.capture_errno`` depends on ``tcp.Connection`` reading and
    writing through its ``socket`` attribute; this guards that against the
    installed Twisted.
    """

    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_capture_errno_sees_econnreset_twisted_drops(self) -> Any:
        """
        A plain Twisted server protocol sees a bare ``ConnectionLost`` for a
        peer's RST; with ``capture_errno`` the errno ``ECONNRESET`` is reported.
        """
        errors: list[int] = []
        installed: list[bool] = []
        lost: defer.Deferred[list[Failure]] = defer.Deferred()
        accepted: defer.Deferred[Protocol] = defer.Deferred()

        class Recorder:
            record_errno = errors.append

        class Watched(Protocol):
            def connectionMade(self) -> None:
                installed.append(capture_errno(self.transport, Recorder()))
                installed.append(capture_errno(self.transport, Recorder()))
                accepted.callback(self)

            def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
                lost.callback([reason])

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Watched)
        )
        self.addCleanup(port.stopListening)
        peer = yield connect_raw(self, port.getHost().port)
        watched = yield accepted
        connection = find_tcp_connection(watched.transport)
        self.assertIsNotNone(connection)
        self.assertIsInstance(connection.socket, _ErrnoRecordingSocket)
        self.assertEqual(installed, [True, True])

        peer.transport.abortConnection()
        yield peer.lost
        if not lost.called:
            watched.transport.write(b"x")
        (reason,) = yield lost
        # What stock Twisted says: no errno anywhere in the failure.
        self.assertTrue(reason.check(error.ConnectionLost), reason)
        self.assertIn(errno.ECONNRESET, errors)

    @defer.inlineCallbacks
    def test_managed_connection_records_errno_after_rst(self) -> Any:
        """End to end through the manager: after an RST the record's errno is not ``None``."""
        server = start_server(self)
        client = start_client(self, server.address)
        on_server, on_client = yield ready_pair(server, client)
        # The server's transport is the errno-recording socket proxy.
        connection = find_tcp_connection(on_server.connection)
        self.assertIsInstance(connection.socket, _ErrnoRecordingSocket)

        on_client.connection.transport.abortConnection()
        yield client.events.wait("closed", record_id(on_client.record.id))
        _write_after_abort(server, on_server.record.id)
        closed = yield server.events.wait("closed", record_id(on_server.record.id))
        self.assertIsNotNone(closed.record.errno)
        self.assertEqual(closed.record.errno, "ECONNRESET")
        self.assertEqual(closed.record.reason, CloseReason.RESET)
        # The client's own abort is aborted/local, whatever the server saw.
        client_record = next(r for r in client.manager.records() if r.id == on_client.record.id and r.closed)
        self.assertEqual(
            (client_record.reason, client_record.initiator), (CloseReason.ABORTED, Initiator.LOCAL)
        )
        self.assertTrue(with_peer_id(server.node.config.node_id)(client_record))
