"""
Tests for :mod:`netmodels.runtime.session`: the handshake and its failures, framing
errors, DATA and request/response, closing with BYE, and application
keepalive, between nodes (or a hand-driven raw peer) on a
:class:`~netmodels.testing.MemoryNetwork`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.connection import ConnectionRecord, ConnectionState
from netmodels.core.frames import (
    PROTOCOL_VERSION,
    MessageType,
    decode_bye,
    encode_bye,
    encode_frame,
    encode_hello,
)
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.session import MessageTooLarge, PeerClosed, RemoteError, RequestTimeout
from netmodels.topologies.client_server import ClientServer
from tests.test_testing import (
    CLIENT_ID,
    EPSILON,
    HANDSHAKE_TIMEOUT,
    IDLE,
    INTERVAL,
    KEEPALIVE_BOUND,
    LATENCY,
    MAX_FRAME,
    PROBES,
    REQUEST_TIMEOUT,
    SERVER_ID,
    EchoMessages,
    HeldAnswers,
    Pair,
    RawPeer,
    RecordingApplication,
    WireTap,
    advance_by,
    advance_to,
    raw_hello,
    with_hello,
)

#: A protocol version this netmodels does not speak.
OTHER_VERSION = PROTOCOL_VERSION + 1

#: How many requests the in-flight tests keep outstanding at once.
IN_FLIGHT = 50
MANY_REQUESTS = 100

#: Largest DATA payload a frame of MAX_FRAME bytes carries (one byte is the type).
MAX_PAYLOAD = MAX_FRAME - 1

#: A message type no version of the protocol defines.
UNKNOWN_TYPE = 0x7F

#: How long the keepalive tests watch a link that stays healthy.
WATCH = 10 * KEEPALIVE_BOUND

#: When the keepalive probes to a silent peer go out, counted from its last traffic.
PROBE_TIMES = [IDLE + INTERVAL * n for n in range(PROBES)]


class OtherTopology(ClientServer):
    """Client-server under another name: a topology mismatch."""

    name = "other-topology"


def data(payload: bytes) -> bytes:
    return encode_frame(MessageType.DATA, payload)


class _SessionTestCase(SynchronousTestCase):
    def assertClosed(
        self,
        record: ConnectionRecord,
        reason: CloseReason,
        initiator: Initiator,
        detail: str | None = None,
    ) -> None:
        """``record`` is closed with ``reason``/``initiator`` (and ``detail`` if given)."""
        actual = (record.state, record.reason, record.initiator)
        self.assertEqual(actual, (ConnectionState.CLOSED, reason, initiator))
        if detail is not None:
            self.assertEqual(record.detail, detail)

    def assertStopsClean(self, pair: Pair) -> None:
        """Stopping both nodes of ``pair`` leaves nothing scheduled."""
        pair.stop()
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def assertBye(self, peer: RawPeer, reason: CloseReason, detail: str, fatal: bool = False) -> None:
        """The raw peer got a HELLO, then a BYE saying exactly this, then EOF."""
        self.assertEqual(peer.frame_types(), [MessageType.HELLO, MessageType.BYE])
        self.assertEqual(decode_bye(peer.frames[1][1]), (str(reason), detail, fatal))
        self.assertIsInstance(peer.lost.value, error.ConnectionDone)


class HandshakeTests(_SessionTestCase):
    """Both sides send HELLO; the session opens once both have arrived."""

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.start()

    def tearDown(self) -> None:
        self.assertStopsClean(self.pair)

    def test_peer_ids(self) -> None:
        """Each side knows the other's node id and role from its HELLO."""
        client, server = self.pair.client_session(), self.pair.server_session()
        self.assertEqual(
            (client.node_id, client.role, server.node_id, server.role),
            (SERVER_ID, "server", CLIENT_ID, "client"),
        )

    def test_records_open_with_peer_id(self) -> None:
        """Both records are open and name the peer's node id."""
        client, server = self.pair.client_record(), self.pair.server_record()
        self.assertEqual(
            (client.state, client.peer_id, server.state, server.peer_id),
            (ConnectionState.OPEN, SERVER_ID, ConnectionState.OPEN, CLIENT_ID),
        )

    def test_each_side_sent_its_hello(self) -> None:
        """Each side sent exactly its HELLO and received exactly one message."""
        client, server = self.pair.client_record(), self.pair.server_record()
        client_hello = encode_hello(self.pair.client.session_settings.hello)
        server_hello = encode_hello(self.pair.server.session_settings.hello)
        self.assertEqual(
            (client.bytes_out, server.bytes_in, server.bytes_out, client.bytes_in),
            (len(client_hello), len(client_hello), len(server_hello), len(server_hello)),
        )
        self.assertEqual((client.messages_in, server.messages_in), (1, 1))

    def test_peer_ready_once(self) -> None:
        """Each application hears peer_ready exactly once, with the session."""
        self.assertEqual(self.pair.server_app.ready, [self.pair.server_session()])
        self.assertEqual(self.pair.client_app.ready, [self.pair.client_session()])

    def test_peer_keepalive_recorded(self) -> None:
        """The record keeps the peer's advertised keepalive settings, shown in the status."""
        record = self.pair.client_record()
        self.assertEqual(record.peer_keepalive, KeepaliveSettings(IDLE, INTERVAL, PROBES))
        self.assertEqual(
            record.as_dict()["peer_keepalive"],
            {"idle": IDLE, "interval": INTERVAL, "probes": PROBES, "worst_case": KEEPALIVE_BOUND},
        )


class BadHandshakeTests(_SessionTestCase):
    """A raw peer breaking the handshake: the server closes with protocol-error and a BYE."""

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.server.startService()
        self.raw = self.pair.connect_raw()

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.raw.transport.write(chunk)
        self.pair.clock.advance(0)

    def test_first_frame_not_hello(self) -> None:
        """A DATA frame before HELLO is a protocol error, said in the BYE."""
        self.send(data(b"hi"))
        self.assertClosed(
            self.pair.server_record(),
            CloseReason.PROTOCOL_ERROR,
            Initiator.LOCAL,
            "expected HELLO, got DATA",
        )
        self.assertBye(self.raw, CloseReason.PROTOCOL_ERROR, "expected HELLO, got DATA")

    def test_hello_twice(self) -> None:
        """A second HELLO is a protocol error."""
        self.send(raw_hello(), raw_hello())
        self.assertClosed(
            self.pair.server_record(),
            CloseReason.PROTOCOL_ERROR,
            Initiator.LOCAL,
            "HELLO received twice",
        )

    def test_malformed_hello(self) -> None:
        """A HELLO that is not JSON is a protocol error."""
        self.send(encode_frame(MessageType.HELLO, b"{not json"))
        record = self.pair.server_record()
        self.assertClosed(record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL)
        self.assertTrue(record.detail.startswith("HELLO is not JSON"), record.detail)

    def test_hello_missing_node_id(self) -> None:
        """A HELLO without a node id is a protocol error, not a crash."""
        hello = encode_frame(
            MessageType.HELLO,
            b'{"version":1,"topology":"client-server","role":"client",'
            b'"keepalive":{"idle":1,"interval":1,"probes":1}}',
        )
        self.send(hello)
        record = self.pair.server_record()
        self.assertClosed(record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL)
        self.assertIn("node_id", record.detail)

    def test_version_mismatch_is_fatal(self) -> None:
        """A HELLO of another protocol version is a fatal protocol error, said in the BYE."""
        self.send(raw_hello(version=OTHER_VERSION))
        detail = f"peer speaks protocol version {OTHER_VERSION}, we speak {PROTOCOL_VERSION}"
        record = self.pair.server_record()
        self.assertClosed(record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL, detail)
        self.assertTrue(record.fatal)
        self.assertBye(self.raw, CloseReason.PROTOCOL_ERROR, detail, fatal=True)

    def test_topology_mismatch_is_fatal(self) -> None:
        """A peer of another topology is refused with a fatal protocol error."""
        self.send(raw_hello(topology=OtherTopology.name))
        detail = f"peer runs topology {OtherTopology.name!r}, we run 'client-server'"
        record = self.pair.server_record()
        self.assertClosed(record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL, detail)
        self.assertTrue(record.fatal)

    def test_role_mismatch_is_fatal(self) -> None:
        """A server refuses a peer that says it is a server too, fatally."""
        self.send(raw_hello(role="server"))
        detail = "a server talks to a client, and the peer is a server"
        record = self.pair.server_record()
        self.assertClosed(record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL, detail)
        self.assertTrue(record.fatal)

    def test_refused_hello_never_reaches_application(self) -> None:
        """A peer refused at HELLO is never announced to the application."""
        self.send(raw_hello(role="server"))
        self.assertEqual((self.pair.server_app.ready, self.pair.server.peers()), ([], []))

    def test_handshake_deadline_not_yet(self) -> None:
        """Just before the handshake deadline, a silent peer is still handshaking."""
        advance_to(self.pair.clock, HANDSHAKE_TIMEOUT - EPSILON)
        self.assertEqual(self.pair.server_record().state, ConnectionState.HANDSHAKING)

    def test_handshake_deadline(self) -> None:
        """At the handshake deadline, a silent peer is closed with protocol-error."""
        advance_to(self.pair.clock, HANDSHAKE_TIMEOUT)
        detail = f"no HELLO within the handshake deadline of {HANDSHAKE_TIMEOUT:g} s"
        self.assertClosed(self.pair.server_record(), CloseReason.PROTOCOL_ERROR, Initiator.LOCAL, detail)
        self.assertBye(self.raw, CloseReason.PROTOCOL_ERROR, detail)

    def test_bye_instead_of_hello(self) -> None:
        """A BYE instead of HELLO records the peer's reason, remote."""
        self.send(encode_bye("rejected", "full"))
        self.assertClosed(self.pair.server_record(), CloseReason.REJECTED, Initiator.REMOTE, "full")


class FramingErrorTests(_SessionTestCase):
    """Framing errors after the handshake: protocol-error, and nothing after is read."""

    def setUp(self) -> None:
        self.pair = Pair(server_config={"max_frame": MAX_FRAME})
        self.pair.server.startService()
        self.raw = self.pair.connect_raw()
        self.raw.transport.write(raw_hello())
        self.pair.clock.advance(0)

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.raw.transport.write(chunk)
        self.pair.clock.advance(0)

    def test_oversized_length_rejected_from_header_alone(self) -> None:
        """
        A length over the limit is a protocol error as soon as its four bytes
        arrive: the claimed size is never waited for, nor allocated.
        """
        claimed = MAX_FRAME + 1
        self.send(struct.pack("!I", claimed))
        self.assertClosed(
            self.pair.server_record(),
            CloseReason.PROTOCOL_ERROR,
            Initiator.LOCAL,
            f"frame of {claimed} bytes exceeds the limit of {MAX_FRAME} bytes",
        )

    def test_huge_length_rejected(self) -> None:
        """A 4 GiB claim is rejected the same way."""
        claimed = 2**32 - 1
        self.send(struct.pack("!I", claimed))
        self.assertEqual(
            self.pair.server_record().detail,
            f"frame of {claimed} bytes exceeds the limit of {MAX_FRAME} bytes",
        )

    def test_unknown_type(self) -> None:
        """A frame of an unknown type is a protocol error naming the type."""
        self.send(encode_frame(UNKNOWN_TYPE, b""))
        self.assertClosed(
            self.pair.server_record(),
            CloseReason.PROTOCOL_ERROR,
            Initiator.LOCAL,
            f"unknown message type 0x{UNKNOWN_TYPE:02x}",
        )

    def test_data_before_bad_frame_delivered(self) -> None:
        """Whole frames before the bad one are delivered."""
        self.send(data(b"before") + encode_frame(UNKNOWN_TYPE, b"") + data(b"after"))
        self.assertEqual(self.pair.server_app.messages, [b"before"])

    def test_data_after_bad_frame_ignored(self) -> None:
        """Frames after the bad one, in the same chunk or later, are never delivered."""
        self.send(encode_frame(UNKNOWN_TYPE, b"") + data(b"same chunk"))
        self.send(data(b"later chunk"))
        self.assertEqual(self.pair.server_app.messages, [])

    def test_malformed_request(self) -> None:
        """A REQUEST too short for its correlation id is a protocol error."""
        self.send(encode_frame(MessageType.REQUEST, b"\x00"))
        record = self.pair.server_record()
        self.assertClosed(record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL)
        self.assertEqual(self.pair.server_app.requests, [])

    def test_malformed_ping_not_answered(self) -> None:
        """A PING with a bad body is a protocol error and is not answered with a PONG."""
        self.send(encode_frame(MessageType.PING, b"\x00"))
        self.assertClosed(self.pair.server_record(), CloseReason.PROTOCOL_ERROR, Initiator.LOCAL)
        self.assertNotIn(MessageType.PONG, self.raw.frame_types())

    def test_bye_records_peer_reason(self) -> None:
        """A BYE from the peer records the peer's reason and detail, initiated remotely."""
        self.send(encode_bye("timeout", "you went quiet"))
        self.assertClosed(self.pair.server_record(), CloseReason.TIMEOUT, Initiator.REMOTE, "you went quiet")

    def test_bye_with_unknown_reason(self) -> None:
        """A BYE with a reason we do not know is recorded clean, the reason kept in the detail."""
        self.send(encode_bye("mystery", "why"))
        self.assertClosed(self.pair.server_record(), CloseReason.CLEAN, Initiator.REMOTE, "mystery: why")


class MismatchTests(_SessionTestCase):
    """Fatal mismatches between two nodes: both records say fatal."""

    def test_version_mismatch_fatal_on_both_sides(self) -> None:
        """
        A client of another version is refused; the server's record is fatal,
        and so is the client's, from the BYE it receives.
        """
        pair = Pair(client_factory=lambda node: with_hello(node, version=OTHER_VERSION))
        pair.start()
        detail = f"peer speaks protocol version {OTHER_VERSION}, we speak {PROTOCOL_VERSION}"
        server, client = pair.server.manager.history[0], pair.client.manager.history[0]
        self.assertEqual(
            (server.reason, server.initiator, server.detail, server.fatal),
            (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL, detail, True),
        )
        self.assertEqual(
            (client.reason, client.initiator, client.detail, client.fatal),
            (CloseReason.PROTOCOL_ERROR, Initiator.REMOTE, detail, True),
        )

    def test_topology_mismatch_fatal_on_both_sides(self) -> None:
        """Nodes of different topologies each refuse the other, fatally."""
        pair = Pair(client_topology=OtherTopology())
        pair.start()
        server, client = pair.server.manager.history[0], pair.client.manager.history[0]
        self.assertEqual(
            (server.reason, server.fatal, client.reason, client.fatal),
            (CloseReason.PROTOCOL_ERROR, True, CloseReason.PROTOCOL_ERROR, True),
        )

    def test_client_to_client_fatal_on_both_sides(self) -> None:
        """A client dialing a client: each refuses the other's role, fatally."""
        pair = Pair(server_role="client")
        pair.start()
        server, client = pair.server.manager.history[0], pair.client.manager.history[0]
        self.assertEqual(
            (server.detail, server.fatal, client.detail, client.fatal),
            (
                "a client talks to a server, and the peer is a client",
                True,
                "a client talks to a server, and the peer is a client",
                True,
            ),
        )


class MessageTests(_SessionTestCase):
    """DATA messages: delivered in order; size and state checked on send."""

    def setUp(self) -> None:
        self.pair = Pair(server_config={"max_frame": MAX_FRAME}, client_config={"max_frame": MAX_FRAME})
        self.pair.start()
        self.peer = self.pair.client_session()

    def tearDown(self) -> None:
        self.assertStopsClean(self.pair)

    def test_delivered_in_order(self) -> None:
        """Messages arrive at message_received in the order they were sent."""
        payloads = [b"message %d" % n for n in range(20)]
        for payload in payloads:
            self.peer.send(payload)
        self.pair.clock.advance(0)
        self.assertEqual(self.pair.server_app.messages, payloads)

    def test_counted(self) -> None:
        """Each message counts once out on the sender and once in on the receiver."""
        before_in = self.pair.server_record().messages_in
        before_out = self.pair.client_record().messages_out
        self.peer.send(b"one")
        self.peer.send(b"two")
        self.pair.clock.advance(0)
        self.assertEqual(self.pair.client_record().messages_out - before_out, 2)
        self.assertEqual(self.pair.server_record().messages_in - before_in, 2)

    def test_largest_message_delivered(self) -> None:
        """A message of exactly the frame limit's payload is delivered."""
        self.peer.send(b"x" * MAX_PAYLOAD)
        self.pair.clock.advance(0)
        self.assertEqual(self.pair.server_app.messages, [b"x" * MAX_PAYLOAD])

    def test_too_large_raises(self) -> None:
        """send() over the frame limit raises MessageTooLarge and writes nothing."""
        record = self.pair.client_record()
        before = (record.bytes_out, record.messages_out)
        self.assertRaises(MessageTooLarge, self.peer.send, b"x" * (MAX_PAYLOAD + 1))
        self.assertEqual((record.bytes_out, record.messages_out), before)

    def test_too_large_leaves_connection_open(self) -> None:
        """After a refused send() the connection is open and carries the next message."""
        self.assertRaises(MessageTooLarge, self.peer.send, b"x" * (MAX_PAYLOAD + 1))
        self.peer.send(b"fits")
        self.pair.clock.advance(0)
        self.assertEqual(self.pair.client_record().state, ConnectionState.OPEN)
        self.assertEqual(self.pair.server_app.messages, [b"fits"])

    def test_request_too_large_raises(self) -> None:
        """request() over the frame limit (counting its 4-byte id) raises MessageTooLarge."""
        self.assertRaises(MessageTooLarge, self.peer.request, b"x" * (MAX_PAYLOAD - 4 + 1))

    def test_send_after_close_raises(self) -> None:
        """send() after the connection ended raises PeerClosed carrying the record."""
        self.peer.close()
        self.pair.clock.advance(0)
        exception = self.assertRaises(PeerClosed, self.peer.send, b"too late")
        self.assertIs(exception.record, self.pair.client.manager.history[0])
        self.assertEqual(exception.record.reason, CloseReason.CLEAN)

    def test_request_after_close_fails(self) -> None:
        """request() after the connection ended fails with PeerClosed."""
        self.peer.close()
        self.pair.clock.advance(0)
        self.failureResultOf(self.peer.request(b"too late"), PeerClosed)


class CloseTests(_SessionTestCase):
    """close() says BYE, then FIN; the peer records a clean close it did not start."""

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.start()
        self.tap = WireTap(self.pair.link.client, self.pair.clock)
        self.pair.client_session().close()
        self.pair.clock.advance(0)

    def test_bye_then_fin(self) -> None:
        """What close() puts on the wire: a BYE, then a FIN, nothing else."""
        self.assertEqual(self.tap.kinds(), ["BYE", "fin"])

    def test_bye_says_clean(self) -> None:
        """The BYE says clean, no detail, not fatal."""
        (bye,) = [body for _, kind, body in self.tap.frames if kind == MessageType.BYE]
        self.assertEqual(decode_bye(bye), ("clean", "", False))

    def test_peer_records_clean_remote(self) -> None:
        """The peer records the close clean, initiated remotely."""
        self.assertClosed(self.pair.server.manager.history[0], CloseReason.CLEAN, Initiator.REMOTE)

    def test_closer_records_clean_local(self) -> None:
        """The closing side records it clean, initiated locally."""
        self.assertClosed(self.pair.client.manager.history[0], CloseReason.CLEAN, Initiator.LOCAL)

    def test_peer_lost_told(self) -> None:
        """Both applications hear peer_lost with the closed record."""
        self.assertEqual(self.pair.client_app.lost, [self.pair.client.manager.history[0]])
        self.assertEqual(self.pair.server_app.lost, [self.pair.server.manager.history[0]])

    def test_no_timers_left(self) -> None:
        """After the close nothing of the closed connection stays scheduled."""
        self.pair.dialer.stopService()
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])


class RequestTests(_SessionTestCase):
    """Requests and responses, with correlation ids and one timeout timer."""

    def setUp(self) -> None:
        self.held = HeldAnswers()
        self.pair = Pair(server_app=self.held)
        self.pair.start()
        self.peer = self.pair.client_session()

    def tearDown(self) -> None:
        self.assertStopsClean(self.pair)

    def test_out_of_order_responses_reach_their_callers(self) -> None:
        """Many requests in flight, answered in reverse order, each get their own answer."""
        payloads = [b"request %d" % n for n in range(IN_FLIGHT)]
        results = [self.peer.request(payload) for payload in payloads]
        self.pair.clock.advance(0)
        self.assertEqual([payload for payload, _ in self.held.held], payloads)
        for payload, deferred in reversed(self.held.held):
            deferred.callback(b"answer to " + payload)
        self.pair.clock.advance(0)
        self.assertEqual(
            [self.successResultOf(result) for result in results],
            [b"answer to " + payload for payload in payloads],
        )

    def test_no_answer_before_timeout(self) -> None:
        """A request without an answer has not failed just before request_timeout."""
        sent = self.pair.clock.seconds()
        result = self.peer.request(b"anyone?")
        advance_to(self.pair.clock, sent + REQUEST_TIMEOUT - EPSILON)
        self.assertNoResult(result)
        self.pair.clock.advance(EPSILON)
        self.failureResultOf(result, RequestTimeout)

    def test_timeout_at_request_timeout(self) -> None:
        """A request without an answer fails with RequestTimeout at exactly request_timeout."""
        sent = self.pair.clock.seconds()
        result = self.peer.request(b"anyone?")
        advance_to(self.pair.clock, sent + REQUEST_TIMEOUT)
        self.failureResultOf(result, RequestTimeout)

    def test_timeout_leaves_connection_open(self) -> None:
        """A timed-out request does not end the connection."""
        result = self.peer.request(b"anyone?")
        advance_by(self.pair.clock, REQUEST_TIMEOUT)
        self.failureResultOf(result, RequestTimeout)
        self.assertEqual(self.pair.client_record().state, ConnectionState.OPEN)
        self.assertEqual(self.pair.client.peers(), [self.peer])

    def test_late_response_dropped(self) -> None:
        """A response after its request timed out is dropped silently; the next works."""
        result = self.peer.request(b"slow")
        advance_by(self.pair.clock, REQUEST_TIMEOUT)
        self.failureResultOf(result, RequestTimeout)
        self.held.held[0][1].callback(b"late")
        self.pair.clock.advance(0)
        self.assertEqual(self.pair.client_record().state, ConnectionState.OPEN)
        following = self.peer.request(b"next")
        self.pair.clock.advance(0)
        self.held.held[1][1].callback(b"on time")
        self.pair.clock.advance(0)
        self.assertEqual(self.successResultOf(following), b"on time")

    def test_one_timer_for_many_requests(self) -> None:
        """However many requests are in flight, they share one timeout timer."""
        first = [self.peer.request(b"first")]
        scheduled = len(self.pair.clock.getDelayedCalls())
        rest = [self.peer.request(b"more %d" % n) for n in range(MANY_REQUESTS - 1)]
        self.assertEqual(len(self.pair.clock.getDelayedCalls()), scheduled)
        advance_by(self.pair.clock, REQUEST_TIMEOUT)
        for result in first + rest:
            self.failureResultOf(result, RequestTimeout)

    def test_shorter_timeout_honoured(self) -> None:
        """
        A request with a shorter timeout than one already in flight fails at
        its own deadline, not the earlier request's.
        """
        patient = self.peer.request(b"patient")
        sent = self.pair.clock.seconds()
        short = REQUEST_TIMEOUT / 6
        hasty = self.peer.request(b"hasty", timeout=short)
        advance_to(self.pair.clock, sent + short)
        self.failureResultOf(hasty, RequestTimeout)
        self.assertNoResult(patient)
        advance_by(self.pair.clock, REQUEST_TIMEOUT)
        self.failureResultOf(patient, RequestTimeout)

    def test_pending_fail_with_peer_closed(self) -> None:
        """Requests in flight when the connection ends fail with PeerClosed and its record."""
        results = [self.peer.request(b"pending %d" % n) for n in range(3)]
        self.pair.clock.advance(0)
        self.pair.link.reset(1)
        failures = [self.failureResultOf(result, PeerClosed) for result in results]
        self.assertEqual([failure.value.record.reason for failure in failures], [CloseReason.RESET] * 3)


class SendRequestTests(_SessionTestCase):
    """send_request: a request answered through callables, with the same outcomes as request()."""

    def setUp(self) -> None:
        self.held = HeldAnswers()
        self.pair = Pair(server_app=self.held)
        self.pair.start()
        self.peer = self.pair.client_session()
        #: What the callables were called with, in order: ("response", bytes) or ("error", exception).
        self.outcomes: list[tuple[str, object]] = []

    def tearDown(self) -> None:
        self.assertStopsClean(self.pair)

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        self.peer.send_request(
            payload,
            lambda response: self.outcomes.append(("response", response)),
            lambda error: self.outcomes.append(("error", error)),
            timeout,
        )

    def test_responses_reach_their_callers(self) -> None:
        """Requests answered in reverse order each reach their own on_response, never from within the call."""
        payloads = [b"request %d" % n for n in range(IN_FLIGHT)]
        for payload in payloads:
            self.send(payload)
        self.assertEqual(self.outcomes, [])
        self.pair.clock.advance(0)
        for payload, deferred in reversed(self.held.held):
            deferred.callback(b"answer to " + payload)
        self.pair.clock.advance(0)
        self.assertEqual(
            self.outcomes, [("response", b"answer to " + payload) for payload in reversed(payloads)]
        )

    def test_timeout(self) -> None:
        """Without an answer, on_error gets RequestTimeout at the request's own deadline."""
        sent = self.pair.clock.seconds()
        self.send(b"anyone?", timeout=REQUEST_TIMEOUT / 2)
        advance_to(self.pair.clock, sent + REQUEST_TIMEOUT / 2 - EPSILON)
        self.assertEqual(self.outcomes, [])
        self.pair.clock.advance(EPSILON)
        [(kind, error)] = self.outcomes
        self.assertEqual(kind, "error")
        self.assertIsInstance(error, RequestTimeout)

    def test_remote_error(self) -> None:
        """An error answer reaches on_error as RemoteError with its text."""
        self.send(b"question")
        self.pair.clock.advance(0)
        self.held.held[0][1].errback(ValueError("bad input"))
        self.pair.clock.advance(0)
        [(kind, error)] = self.outcomes
        self.assertEqual((kind, type(error), str(error)), ("error", RemoteError, "bad input"))

    def test_pending_fail_with_peer_closed(self) -> None:
        """Requests in flight when the connection ends reach on_error with PeerClosed and its record."""
        for n in range(3):
            self.send(b"pending %d" % n)
        self.pair.clock.advance(0)
        self.pair.link.reset(1)
        self.assertEqual([kind for kind, _ in self.outcomes], ["error"] * 3)
        self.assertEqual(
            [error.record.reason for _, error in self.outcomes],  # type: ignore[attr-defined]
            [CloseReason.RESET] * 3,
        )

    def test_after_close_raises(self) -> None:
        """After the connection ended, send_request raises PeerClosed and calls neither callable."""
        self.peer.close()
        self.pair.clock.advance(0)
        self.assertRaises(PeerClosed, self.send, b"too late")
        self.assertEqual(self.outcomes, [])

    def test_too_large_raises(self) -> None:
        """Over the peer's limit (counting its 4-byte id) it raises MessageTooLarge."""
        self.assertRaises(MessageTooLarge, self.send, b"x" * (self.peer.machine.max_data - 4 + 1))
        self.send(b"x" * (self.peer.machine.max_data - 4))  # just fits

    def test_failing_handler_is_logged_and_session_goes_on(self) -> None:
        """An exception in on_response is logged; the session stays open and answers the next request."""
        self.peer.send_request(b"first", lambda response: 1 / 0, self.outcomes.append)
        self.pair.clock.advance(0)
        self.held.held[0][1].callback(b"answer")
        self.pair.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.pair.client_record().state, ConnectionState.OPEN)
        self.send(b"second")
        self.pair.clock.advance(0)
        self.held.held[1][1].callback(b"still here")
        self.pair.clock.advance(0)
        self.assertEqual(self.outcomes, [("response", b"still here")])


class RemoteErrorTests(_SessionTestCase):
    """A request the peer's application fails comes back as RemoteError."""

    def request_with(self, answer: Callable[[bytes], Any]) -> defer.Deferred[bytes]:
        """Send one request to a server whose application answers with ``answer(payload)``."""
        self.pair = Pair(server_app=RecordingApplication(answer))
        self.pair.start()
        result = self.pair.client_session().request(b"question")
        self.pair.clock.advance(0)
        self.addCleanup(self.assertStopsClean, self.pair)
        return result

    def test_application_raises(self) -> None:
        """An exception in request_received reaches the caller as RemoteError with its text."""

        def fails(payload: bytes) -> bytes:
            raise KeyError("no such key")

        failure = self.failureResultOf(self.request_with(fails), RemoteError)
        self.assertEqual(str(failure.value), "'no such key'")
        # The caller has the error; the server logs a warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(KeyError), [])

    def test_application_returns_failed_deferred(self) -> None:
        """A failed Deferred from request_received is a RemoteError with its message."""
        failure = self.failureResultOf(
            self.request_with(lambda payload: defer.fail(ValueError("bad input"))), RemoteError
        )
        self.assertEqual(str(failure.value), "bad input")

    def test_application_returns_non_bytes(self) -> None:
        """A return value that is not bytes is a RemoteError naming its type."""
        failure = self.failureResultOf(self.request_with(lambda payload: 42), RemoteError)
        self.assertEqual(str(failure.value), "application returned int, not bytes")

    def test_application_deferred_fires_non_bytes(self) -> None:
        """A Deferred that fires with something other than bytes is a RemoteError too."""
        answer: defer.Deferred[object] = defer.Deferred()
        result = self.request_with(lambda payload: answer)
        answer.callback("a str, not bytes")
        answer.addErrback(lambda failure: None)  # whatever the session left unhandled
        self.pair.clock.advance(0)
        self.failureResultOf(result, RemoteError)

    def test_connection_stays_open(self) -> None:
        """A failed request does not end the connection."""
        pair = Pair(server_app=RecordingApplication(lambda payload: 42))
        pair.start()
        result = pair.client_session().request(b"q")
        pair.clock.advance(0)
        self.failureResultOf(result, RemoteError)
        self.assertEqual(pair.client_record().state, ConnectionState.OPEN)
        self.assertStopsClean(pair)


class KeepaliveTests(_SessionTestCase):
    """Application keepalive: PINGs on silence, PONGs answered, dead peers found in time."""

    def test_silent_peer_not_dead_before_bound(self) -> None:
        """Just before idle + interval * probes of silence, the connection is still open."""
        pair = Pair()
        pair.start()
        pair.link.blackhole()
        advance_to(pair.clock, KEEPALIVE_BOUND - EPSILON)
        self.assertEqual(pair.client_record().state, ConnectionState.OPEN)

    def test_silent_peer_dead_at_bound(self) -> None:
        """At exactly idle + interval * probes of silence, the connection times out."""
        pair = Pair()
        pair.start()
        pair.link.blackhole()
        advance_to(pair.clock, KEEPALIVE_BOUND)
        record = pair.client.manager.history[0]
        self.assertClosed(record, CloseReason.TIMEOUT, Initiator.LOCAL)
        self.assertIn(f"bound {KEEPALIVE_BOUND:g} s", record.detail)

    def test_bound_counts_from_last_traffic(self) -> None:
        """The bound runs from the last thing received, not from the connection's start."""
        pair = Pair()
        pair.start()
        last_traffic = IDLE / 2
        advance_to(pair.clock, last_traffic)
        pair.server_session().send(b"last words")
        pair.clock.advance(0)
        pair.link.blackhole()
        advance_to(pair.clock, last_traffic + KEEPALIVE_BOUND - EPSILON)
        self.assertEqual(pair.client_record().state, ConnectionState.OPEN)
        advance_to(pair.clock, last_traffic + KEEPALIVE_BOUND)
        self.assertEqual(pair.client.manager.history[0].reason, CloseReason.TIMEOUT)

    def test_probes_at_idle_then_every_interval(self) -> None:
        """To a silent peer, PINGs go out at idle, idle + interval, ... (probes of them)."""
        pair = Pair()
        pair.start()
        tap = WireTap(pair.link.client, pair.clock)
        pair.link.blackhole()
        advance_to(pair.clock, KEEPALIVE_BOUND)
        self.assertEqual(tap.times_of(MessageType.PING), PROBE_TIMES)

    def test_timeout_closes_with_rst(self) -> None:
        """A dead peer gets RST, not a BYE and FIN."""
        pair = Pair()
        pair.start()
        tap = WireTap(pair.link.client, pair.clock)
        pair.link.blackhole()
        advance_to(pair.clock, KEEPALIVE_BOUND)
        self.assertEqual(tap.kinds(), ["PING"] * PROBES + ["rst"])

    def test_answered_probes_keep_connection(self) -> None:
        """A peer that answers PINGs is never declared dead."""
        pair = Pair(latency=LATENCY)
        pair.start()
        advance_to(pair.clock, WATCH)
        self.assertEqual(
            (pair.client_record().state, pair.server_record().state),
            (ConnectionState.OPEN, ConnectionState.OPEN),
        )
        self.assertStopsClean(pair)

    def test_rtt_recorded(self) -> None:
        """
        An answered probe records the round trip, twice the link's latency,
        once its PONG arrives (the PING goes out idle after the HELLO arrived).
        """
        pair = Pair(latency=LATENCY)
        pair.start()
        probe_sent = LATENCY + IDLE
        advance_to(pair.clock, probe_sent + 2 * LATENCY - EPSILON)
        self.assertIsNone(pair.client_record().rtt)
        advance_to(pair.clock, probe_sent + 2 * LATENCY)
        self.assertEqual(pair.client_record().rtt, 2 * LATENCY)

    def test_one_timer_for_the_session_life(self) -> None:
        """Keepalive re-arms the session's one wheel timer period after period: no allocation per probe."""
        pair = Pair(latency=LATENCY)
        pair.start()
        advance_to(pair.clock, IDLE / 2)
        session = pair.client_session()
        timer = session._timer
        advance_to(pair.clock, WATCH)
        self.assertGreater(pair.client_record().probes_sent, 2)
        self.assertIs(session._timer, timer)
        self.assertStopsClean(pair)

    def test_late_timers_read_before_probing_again(self) -> None:
        """
        Both processes stopped for longer than the bound (one jump of the
        clock: every timer runs late, at once): each sends one probe on
        waking, and reads what arrived before deciding again, so neither
        declares the other dead when the answers come within a wheel slot.
        """
        pair = Pair(latency=EPSILON)
        pair.start()
        advance_to(pair.clock, IDLE / 2)
        pair.clock.advance(3 * KEEPALIVE_BOUND)
        self.assertEqual((pair.client_record().probes_sent, pair.server_record().probes_sent), (1, 1))
        advance_by(pair.clock, KEEPALIVE_BOUND)
        self.assertEqual(
            (pair.client_record().state, pair.server_record().state),
            (ConnectionState.OPEN, ConnectionState.OPEN),
        )
        self.assertStopsClean(pair)

    def test_busy_link_never_probes(self) -> None:
        """A link with traffic every idle/2 seconds never sends a PING either way."""
        pair = Pair(server_app=EchoMessages())
        pair.start()
        client_tap = WireTap(pair.link.client, pair.clock)
        server_tap = WireTap(pair.link.server, pair.clock)
        peer = pair.client_session()
        step = IDLE / 2
        for n in range(1, int(WATCH / step) + 1):
            advance_to(pair.clock, n * step)
            peer.send(b"tick %d" % n)
        advance_to(pair.clock, WATCH + step - EPSILON)
        self.assertEqual(
            (client_tap.times_of(MessageType.PING), server_tap.times_of(MessageType.PING)),
            ([], []),
        )
        self.assertEqual(len(pair.server_app.messages), int(WATCH / step))
        self.assertStopsClean(pair)


class PeerFrameLimitTests(_SessionTestCase):
    """HELLO advertises each side's frame limit, and senders keep to the smaller one."""

    def test_sender_keeps_to_the_peer_limit(self) -> None:
        """A client allowing 1 MiB never sends more than the server's 1 KiB to that server."""
        pair = Pair(server_config={"max_frame": 1024})
        pair.start()
        self.addCleanup(self.assertStopsClean, pair)
        session = pair.client_session()
        self.assertRaises(MessageTooLarge, session.send, b"x" * 1024)
        session.send(b"x" * 1023)
        pair.clock.advance(0)
        self.assertEqual(pair.server_app.messages, [b"x" * 1023])
        self.assertEqual(pair.server_record().state, ConnectionState.OPEN)
