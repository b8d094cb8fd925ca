"""
Integration: protocol errors and rejections over real loopback sockets --
oversized frames, a missing HELLO, version and role mismatches (fatal: the
client stops reconnecting), and the per-address connection limit.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from netmodels.core.connection import ConnectionState, Direction
from netmodels.core.frames import DEFAULT_MAX_FRAME, PROTOCOL_VERSION
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.dialer import DialerState
from netmodels.runtime.session import encode_bye
from netmodels.topologies.client_server import ClientServer

from ._support import (
    LISTEN_ANY_PORT,
    TIMEOUT,
    RawPeer,
    bye_bodies,
    connect_raw,
    decode_frames,
    first_tick,
    listen_raw,
    make_config,
    raw_hello,
    ready_pair,
    record_id,
    start_client,
    start_node,
    start_server,
)


def _bye(peer: RawPeer) -> dict[str, Any]:
    """The one BYE the server sent ``peer``, decoded."""
    byes = bye_bodies(bytes(peer.received))
    assert len(byes) == 1, decode_frames(bytes(peer.received))
    document: dict[str, Any] = json.loads(byes[0])
    return document


class OversizedFrameTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_frame_over_limit_is_protocol_error_and_others_keep_working(self) -> Any:
        """
        A client that sends a valid HELLO and then a header claiming 2**31 bytes
        is closed with ``protocol-error`` (the detail names the limit; a BYE
        tells it so), while a well-behaved client of the same server keeps
        getting answers.
        """
        server = start_server(self)
        good = start_client(self, server.address)
        _, on_good = yield ready_pair(server, good)

        bad = RawPeer(on_connect=lambda p: p.transport.write(raw_hello() + struct.pack("!IB", 2**31, 0x02)))
        yield connect_raw(self, server.port, bad)
        opened = yield server.events.wait("opened", lambda r: r.peer_id is None)
        closed = yield server.events.wait("closed", record_id(opened.record.id))
        record = closed.record
        self.assertEqual((record.reason, record.initiator), (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL))
        self.assertIn("limit", record.detail)
        self.assertIn(str(2**31), record.detail)
        self.assertIn(str(DEFAULT_MAX_FRAME), record.detail)
        self.assertFalse(record.fatal)

        yield bad.lost
        bye = _bye(bad)
        self.assertEqual(bye["reason"], "protocol-error")
        self.assertIn("limit", bye["detail"])

        # The other client was never disturbed: same connection, still answered.
        reply = yield on_good.session.request(b"still there?")
        self.assertEqual(reply, b"still there?")
        self.assertEqual(on_good.record.state, ConnectionState.OPEN)
        self.assertEqual(len(server.manager.live), 1)


class HandshakeDeadlineTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_silent_client_is_closed_after_handshake_timeout(self) -> Any:
        """
        A client that connects and sends nothing is closed with
        ``protocol-error`` once ``handshake_timeout`` (0.2 s) has passed, not before.
        """
        deadline = 0.2
        server = start_server(self, handshake_timeout=deadline)
        silent = yield connect_raw(self, server.port)
        opened = yield server.events.wait("opened")
        closed = yield server.events.wait("closed", record_id(opened.record.id))
        elapsed = closed.at - opened.at
        record = closed.record
        self.assertEqual((record.reason, record.initiator), (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL))
        self.assertIn("handshake", record.detail)
        self.assertIsNone(record.peer_id)
        self.assertTrue(
            deadline - 0.02 <= elapsed <= deadline + 1.0,
            f"closed {elapsed:.3f} s after opening; deadline {deadline} s",
        )
        yield silent.lost
        self.assertEqual(_bye(silent)["reason"], "protocol-error")


class VersionMismatchTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_hello_with_unknown_version_is_fatal_protocol_error(self) -> Any:
        """A HELLO with version 99 is a ``protocol-error`` marked fatal, and the BYE says so."""
        server = start_server(self)
        peer = RawPeer(on_connect=lambda p: p.transport.write(raw_hello(version=99)))
        yield connect_raw(self, server.port, peer)
        opened = yield server.events.wait("opened")
        closed = yield server.events.wait("closed", record_id(opened.record.id))
        record = closed.record
        self.assertEqual((record.reason, record.initiator), (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL))
        self.assertTrue(record.fatal)
        self.assertIn("99", record.detail)
        self.assertEqual(len(server.events.named("ready")), 0)
        yield peer.lost
        bye = _bye(peer)
        self.assertEqual((bye["reason"], bye.get("fatal")), ("protocol-error", True))

    @defer.inlineCallbacks
    def test_client_gives_up_on_server_speaking_another_version(self) -> Any:
        """
        A netmodels client whose server answers with a HELLO of another
        version records a fatal ``protocol-error`` and stops reconnecting.
        """

        answered: list[RawPeer] = []

        def answer(peer: RawPeer, data: bytes) -> None:
            if peer not in answered:
                answered.append(peer)
                peer.transport.write(raw_hello(role="server", version=PROTOCOL_VERSION + 98))

        raw_server = yield listen_raw(self, lambda: RawPeer(on_data=answer))
        client = start_client(self, f"tcp:127.0.0.1:{raw_server.port}")
        closed = yield client.events.wait("closed")
        record = closed.record
        self.assertEqual((record.reason, record.initiator), (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL))
        self.assertTrue(record.fatal)
        yield first_tick()
        self.assertEqual(client.client.state, DialerState.GAVE_UP)
        self.assertIsNone(client.client.next_attempt_at)
        self.assertEqual(len(raw_server.peers), 1)


class FatalByeTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_client_receiving_fatal_bye_gives_up(self) -> Any:
        """
        A client whose peer answers its HELLO with ``BYE {fatal: true}`` records
        the peer's reason with initiator ``remote``, and gives up.
        """

        def refuse(peer: RawPeer, data: bytes) -> None:
            if peer.transport is not None and not peer.transport.disconnecting:
                peer.transport.write(encode_bye(CloseReason.PROTOCOL_ERROR, "go away", fatal=True))
                peer.transport.loseConnection()

        raw_server = yield listen_raw(self, lambda: RawPeer(on_data=refuse))
        client = start_client(self, f"tcp:127.0.0.1:{raw_server.port}")
        closed = yield client.events.wait("closed")
        record = closed.record
        self.assertEqual(
            (record.reason, record.initiator, record.fatal, record.detail),
            (CloseReason.PROTOCOL_ERROR, Initiator.REMOTE, True, "go away"),
        )
        yield first_tick()
        self.assertEqual(client.client.state, DialerState.GAVE_UP)
        self.assertEqual(client.client.status()["last_reason"], "protocol-error")

    @defer.inlineCallbacks
    def test_client_dialling_a_client_gives_up(self) -> Any:
        """
        Role mismatch: a client dialling a node that also plays ``client``.
        Both sides record a fatal ``protocol-error``; the dialler gives up
        instead of retrying.
        """
        # A client-role node that listens (ClientServer.build listens for any role).
        listener = start_node(self, make_config("client", listen=(LISTEN_ANY_PORT,), connect=()))
        self.assertIsInstance(listener.node.topology, ClientServer)
        dialler = start_client(self, listener.address)

        dialler_closed = yield dialler.events.wait("closed")
        listener_closed = yield listener.events.wait("closed")
        for record in (dialler_closed.record, listener_closed.record):
            self.assertEqual(record.reason, CloseReason.PROTOCOL_ERROR)
            self.assertTrue(record.fatal, record)
            self.assertIn("client", record.detail)
        self.assertEqual(dialler_closed.record.direction, Direction.OUTBOUND)
        self.assertEqual(listener_closed.record.direction, Direction.INBOUND)
        yield first_tick()
        self.assertEqual(dialler.client.state, DialerState.GAVE_UP)
        self.assertEqual(len(dialler.events.named("opened")), 1)


class ConnectionLimitTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_second_connection_from_address_is_rejected(self) -> Any:
        """
        With ``max_per_address=1`` the second connection from 127.0.0.1 is
        ``rejected`` (``local`` on the server, ``remote`` on the rejected
        client, learnt from the BYE); the first keeps answering requests.
        """
        server = start_server(self, max_per_address=1)
        first = start_client(self, server.address)
        on_server, on_first = yield ready_pair(server, first)

        started = reactor.seconds()
        second = start_client(self, server.address)
        rejected = yield second.events.wait("closed")
        server_side = yield server.events.wait("closed", lambda r: r.id != on_server.record.id)

        self.assertEqual(
            (server_side.record.reason, server_side.record.initiator),
            (CloseReason.REJECTED, Initiator.LOCAL),
        )
        self.assertIn("limit of 1", server_side.record.detail)
        self.assertEqual(
            (rejected.record.reason, rejected.record.initiator),
            (CloseReason.REJECTED, Initiator.REMOTE),
        )
        self.assertIn("limit of 1", rejected.record.detail)
        self.assertFalse(rejected.record.fatal)
        self.assertIsNone(rejected.record.peer_id)
        # The server never let the application see it.
        self.assertEqual(len(server.events.named("ready")), 1)

        yield first_tick()
        # Rejected is not fatal: the client backs off (5 s, jitter 0.5) and would retry.
        self.assertEqual(second.client.state, DialerState.WAITING)
        self.assertGreaterEqual(second.client.next_attempt_at - started, 2.5 - 0.01)

        reply = yield on_first.session.request(b"first still works")
        self.assertEqual(reply, b"first still works")
        self.assertEqual(on_server.record.state, ConnectionState.OPEN)
        self.assertEqual(len(server.manager.live), 1)
        self.assertEqual(server.manager.counters["rejected"], 1)
