"""
Tests for :mod:`netmodels.core.session`: the session machine alone, fed bytes
and times, with every action it takes recorded in one list and compared whole.
No reactor, no transport, no clock.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from netmodels.core.connection import CloseMode, ConnectionRecord, Direction
from netmodels.core.frames import (
    Hello,
    MessageType,
    encode_correlated,
    encode_frame,
    encode_hello,
    encode_ping,
)
from netmodels.core.handshake import SessionRules, encode_bye
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason
from netmodels.core.session import ISessionOutput, MessageTooLarge, PeerClosed, Phase, SessionMachine
from netmodels.topologies.callback.messages import REGISTER
from netmodels.topologies.p2p.messages import PEERS

#: When the connection comes up.
START = 100.0
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
IDLE, INTERVAL, PROBES = 4.0, 2.0, 3
KEEPALIVE = KeepaliveSettings(IDLE, INTERVAL, PROBES)
MAX_FRAME = 1024

OURS = Hello(node_id="us", topology="client-server", role="server", keepalive=KEEPALIVE)
THEIRS = Hello(node_id="them", topology="client-server", role="client", keepalive=KEEPALIVE, max_frame=512)
#: A topology's own message type this session accepts.
TOPOLOGY_TYPE = int(PEERS)

PROTOCOL_ERROR = CloseReason.PROTOCOL_ERROR


def _refuse_servers(hello: Hello) -> str | None:
    return "a server does not talk to a server" if hello.role == "server" else None


@implementer(ISessionOutput)
class Recorder:
    """The machine's output: every action, in order, as a tuple."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def transmit(self, data: bytes, corked: bool = False) -> None:
        self.events.append(("cork" if corked else "transmit", data))

    def opened(self, hello: Hello) -> None:
        self.events.append(("opened", hello.node_id))

    def request_received(self, request_id: int, payload: bytes) -> None:
        self.events.append(("request_received", request_id, payload))

    def topology_frame(self, message_type: int, body: bytes) -> None:
        self.events.append(("topology_frame", message_type, body))

    def liveness_changed(self, state: str) -> None:
        self.events.append(("liveness_changed", state))

    def use_reliable_channel(self) -> None:
        self.events.append(("use_reliable_channel",))

    def ending(self, reason: CloseReason, detail: str, fatal: bool, mode: CloseMode | None) -> None:
        self.events.append(("ending", reason, detail, fatal, mode))

    def remote_ending(self, reason: CloseReason, detail: str, fatal: bool) -> None:
        self.events.append(("remote_ending", reason, detail, fatal))

    def closed(self) -> None:
        self.events.append(("closed",))

    def schedule(self, when: float) -> None:
        self.events.append(("schedule", when))

    def schedule_requests(self, when: float) -> None:
        self.events.append(("schedule_requests", when))


def _deliver(peer: Recorder, body: bytes) -> None:
    peer.events.append(("deliver", body))


def _resolve(token: tuple[Recorder, str], payload: bytes) -> None:
    token[0].events.append(("resolve", token[1], payload))


def _reject(token: tuple[Recorder, str], error: Exception) -> None:
    token[0].events.append(("reject", token[1], type(error).__name__, str(error)))


RULES = SessionRules(
    hello=OURS,
    keepalive=KEEPALIVE,
    max_frame=MAX_FRAME,
    handshake_timeout=HANDSHAKE_TIMEOUT,
    request_timeout=REQUEST_TIMEOUT,
    check_peer=_refuse_servers,
    topology_types=frozenset({TOPOLOGY_TYPE}),
    deliver=_deliver,
    resolve=_resolve,
    reject=_reject,
)


def bye(reason: CloseReason, detail: str = "", fatal: bool = False) -> tuple[Any, ...]:
    return ("transmit", encode_bye(reason, detail, fatal))


def ending(reason: CloseReason, detail: str = "", fatal: bool = False) -> tuple[Any, ...]:
    return ("ending", reason, detail, fatal, None)


class _MachineTestCase(SynchronousTestCase):
    rules = RULES

    def setUp(self) -> None:
        self.output = Recorder()
        self.record = ConnectionRecord(id=7, direction=Direction.INBOUND, peer="192.0.2.1:4000")
        self.machine = SessionMachine(self.rules, self.output)
        verifyObject(ISessionOutput, self.output)

    def start(self) -> None:
        self.machine.start(self.record, START)
        self.assertEqual(
            self.output.take(),
            [("transmit", encode_hello(OURS)), ("schedule", START + min(IDLE, HANDSHAKE_TIMEOUT))],
        )

    def open(self, at: float = START + 1) -> None:
        self.start()
        self.machine.receive(encode_hello(THEIRS), at)
        self.assertEqual(self.output.take(), [("opened", "them")])

    def token(self, name: str) -> tuple[Recorder, str]:
        return (self.output, name)


class HandshakeTests(_MachineTestCase):
    def test_close_before_start_says_no_bye(self) -> None:
        # An encrypted session is closed while it still exchanges keys: nothing to say BYE over.
        self.machine.close(CloseReason.CLEAN)
        self.assertEqual(self.output.take(), [ending(CloseReason.CLEAN)])

    def test_handshake_ok(self) -> None:
        """Our HELLO goes out at once; the peer's opens the session and lowers our frame limit to its own."""
        self.start()
        self.assertIs(self.machine.phase, Phase.HANDSHAKE)
        self.machine.receive(encode_hello(THEIRS), START + 1)
        self.assertEqual(self.output.take(), [("opened", "them")])
        self.assertIs(self.machine.phase, Phase.OPEN)
        self.assertEqual(self.machine.hello, THEIRS)
        self.assertEqual((self.machine.max_body, self.machine.max_data), (511, 511))
        self.assertEqual((self.record.messages_in, self.record.messages_out), (1, 1))
        self.assertEqual(self.record.peer_keepalive, KEEPALIVE)

    def test_frames_after_hello_in_one_chunk(self) -> None:
        """What arrives behind the HELLO, in the same bytes, is dispatched once the session is open."""
        self.start()
        self.machine.receive(encode_hello(THEIRS) + encode_frame(MessageType.DATA, b"first"), START)
        self.assertEqual(self.output.take(), [("opened", "them"), ("deliver", b"first")])

    def test_bad_version_is_fatal(self) -> None:
        self.start()
        self.machine.receive(encode_hello(attrs.evolve(THEIRS, version=2)), START + 1)
        detail = "peer speaks protocol version 2, we speak 1"
        self.assertEqual(
            self.output.take(),
            [bye(PROTOCOL_ERROR, detail, fatal=True), ending(PROTOCOL_ERROR, detail, fatal=True)],
        )
        self.assertIs(self.machine.phase, Phase.CLOSING)

    def test_refused_peer_is_fatal(self) -> None:
        self.start()
        self.machine.receive(encode_hello(attrs.evolve(THEIRS, role="server")), START + 1)
        detail = "a server does not talk to a server"
        self.assertEqual(
            self.output.take(),
            [bye(PROTOCOL_ERROR, detail, fatal=True), ending(PROTOCOL_ERROR, detail, fatal=True)],
        )

    def test_bad_credentials_are_rejected(self) -> None:
        self.rules = attrs.evolve(RULES, authenticate=lambda hello: "no token")
        self.setUp()
        self.start()
        self.machine.receive(encode_hello(THEIRS), START + 1)
        self.assertEqual(
            self.output.take(),
            [
                bye(CloseReason.REJECTED, "no token", fatal=True),
                ending(CloseReason.REJECTED, "no token", True),
            ],
        )

    def test_data_before_hello(self) -> None:
        self.start()
        self.machine.receive(encode_frame(MessageType.DATA, b"early"), START + 1)
        detail = "expected HELLO, got DATA"
        self.assertEqual(self.output.take(), [bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)])

    def test_hello_twice(self) -> None:
        self.open()
        self.machine.receive(encode_hello(THEIRS), START + 2)
        detail = "HELLO received twice"
        self.assertEqual(self.output.take(), [bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)])

    def test_handshake_deadline(self) -> None:
        """The timer first runs at ``idle`` (sooner than the deadline), then at the deadline."""
        self.start()
        self.machine.timer_due(START + IDLE)
        self.assertEqual(self.output.take(), [("schedule", START + HANDSHAKE_TIMEOUT)])
        self.machine.timer_due(START + HANDSHAKE_TIMEOUT)
        detail = "no HELLO within the handshake deadline of 10 s"
        self.assertEqual(self.output.take(), [bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)])

    def test_late_hello_brings_keepalive_forward(self) -> None:
        """After waiting for the deadline, a HELLO brings the timer back to keepalive's own time."""
        self.start()
        self.machine.timer_due(START + IDLE)
        self.output.take()
        self.machine.receive(encode_hello(THEIRS), START + IDLE + 1)
        self.assertEqual(self.output.take(), [("schedule", START + IDLE), ("opened", "them")])

    def test_bye_during_handshake(self) -> None:
        self.start()
        self.machine.receive(encode_bye(CloseReason.REJECTED, "full", fatal=True), START + 1)
        self.assertEqual(self.output.take(), [("remote_ending", CloseReason.REJECTED, "full", True)])
        self.assertTrue(self.machine.bye_received)
        self.machine.connection_lost()
        self.assertEqual(self.output.take(), [])


class FramingTests(_MachineTestCase):
    def test_unknown_type(self) -> None:
        self.open()
        self.machine.receive(b"\x00\x00\x00\x01\x7f", START + 2)
        detail = "unknown message type 0x7f"
        self.assertEqual(self.output.take(), [bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)])

    def test_type_of_another_topology(self) -> None:
        self.open()
        self.machine.receive(encode_frame(REGISTER, b"{}"), START + 2)
        detail = "REGISTER is not part of topology client-server"
        self.assertEqual(self.output.take(), [bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)])

    def test_topology_type(self) -> None:
        self.open()
        self.machine.receive(encode_frame(TOPOLOGY_TYPE, b"[]"), START + 2)
        self.assertEqual(self.output.take(), [("topology_frame", TOPOLOGY_TYPE, b"[]")])

    def test_oversized_frame(self) -> None:
        """Good frames before the bad one are delivered; the length alone condemns it."""
        self.open()
        self.machine.receive(encode_frame(MessageType.DATA, b"ok") + b"\x00\x10\x00\x00", START + 2)
        detail = f"frame of {0x100000} bytes exceeds the limit of {MAX_FRAME} bytes"
        self.assertEqual(
            self.output.take(),
            [("deliver", b"ok"), bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)],
        )

    def test_data_in_pieces(self) -> None:
        self.open()
        frame = encode_frame(MessageType.DATA, b"in pieces")
        for position in range(len(frame)):
            self.machine.receive(frame[position : position + 1], START + 2)
        self.assertEqual(self.output.take(), [("deliver", b"in pieces")])
        self.assertEqual(self.record.messages_in, 2)

    def test_send_keeps_to_the_peer_limit(self) -> None:
        self.assertRaises(PeerClosed, self.machine.send, b"not yet")
        self.open()
        self.assertRaises(MessageTooLarge, self.machine.send, b"x" * 512)
        self.machine.send(b"x" * 511)
        self.assertEqual(self.output.take(), [("transmit", encode_frame(MessageType.DATA, b"x" * 511))])


class RequestTests(_MachineTestCase):
    def test_request_and_response(self) -> None:
        self.open()
        self.machine.request(self.token("a"), b"question", START + 2)
        self.assertEqual(
            self.output.take(),
            [
                ("schedule_requests", START + 2 + REQUEST_TIMEOUT),
                ("transmit", encode_correlated(MessageType.REQUEST, 1, b"question")),
            ],
        )
        self.machine.receive(encode_correlated(MessageType.RESPONSE, 1, b"answer"), START + 3)
        self.machine.receive(encode_correlated(MessageType.RESPONSE, 1, b"again"), START + 3)
        self.assertEqual(self.output.take(), [("resolve", "a", b"answer")])

    def test_remote_error(self) -> None:
        self.open()
        self.machine.request(self.token("a"), b"question", START + 2)
        self.output.take()
        self.machine.receive(encode_correlated(MessageType.ERROR, 1, b"no idea"), START + 3)
        self.assertEqual(self.output.take(), [("reject", "a", "RemoteError", "no idea")])

    def test_request_received_and_answered(self) -> None:
        self.open()
        self.machine.receive(encode_correlated(MessageType.REQUEST, 9, b"question"), START + 2)
        self.assertEqual(self.output.take(), [("request_received", 9, b"question")])
        self.machine.respond(9, b"answer")
        self.machine.respond(10, "not bytes")
        self.machine.respond_error(11, "it broke")
        self.assertEqual(
            self.output.take(),
            [
                ("transmit", encode_correlated(MessageType.RESPONSE, 9, b"answer")),
                (
                    "transmit",
                    encode_correlated(MessageType.ERROR, 10, b"application returned str, not bytes"),
                ),
                ("transmit", encode_correlated(MessageType.ERROR, 11, b"it broke")),
            ],
        )

    def test_short_request(self) -> None:
        self.open()
        self.machine.receive(encode_frame(MessageType.REQUEST, b"\x00"), START + 2)
        detail = "REQUEST/RESPONSE/ERROR body shorter than its 4-byte id"
        self.assertEqual(self.output.take(), [bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)])

    def test_timeouts_share_one_deadline(self) -> None:
        """Three requests, one timer: set again only for an earlier deadline, and after each expiry."""
        self.open()
        self.machine.request(self.token("a"), b"a", START + 2)
        self.machine.request(self.token("b"), b"b", START + 3)
        self.machine.request(self.token("c"), b"c", START + 4, timeout=5.0)
        self.assertEqual(
            [event for event in self.output.take() if event[0] != "transmit"],
            [("schedule_requests", START + 32), ("schedule_requests", START + 9)],
        )
        self.machine.requests_due(START + 9)
        self.assertEqual(
            self.output.take(),
            [
                ("schedule_requests", START + 32),
                ("reject", "c", "RequestTimeout", "request 3 got no response in time"),
            ],
        )
        self.machine.requests_due(START + 33)
        self.assertEqual(
            self.output.take(),
            [
                ("reject", "a", "RequestTimeout", "request 1 got no response in time"),
                ("reject", "b", "RequestTimeout", "request 2 got no response in time"),
            ],
        )
        # A response after its request timed out is dropped.
        self.machine.receive(encode_correlated(MessageType.RESPONSE, 1, b"late"), START + 34)
        self.assertEqual(self.output.take(), [])

    def test_connection_lost_fails_what_waits(self) -> None:
        self.open()
        self.machine.request(self.token("a"), b"a", START + 2)
        self.output.take()
        self.machine.connection_lost()
        self.assertEqual(
            self.output.take(),
            [("reject", "a", "PeerClosed", "connection 7 to 192.0.2.1:4000 ended: None"), ("closed",)],
        )
        self.assertIs(self.machine.phase, Phase.CLOSED)


class KeepaliveTests(_MachineTestCase):
    def test_ping_answered_with_pong(self) -> None:
        self.open()
        self.machine.receive(encode_ping(41), START + 2)
        self.assertEqual(self.output.take(), [("transmit", encode_ping(41, pong=True))])

    def test_busy_connection_never_probes(self) -> None:
        self.open()
        self.machine.receive(encode_frame(MessageType.DATA, b"busy"), START + 3)
        self.machine.timer_due(START + IDLE)
        self.assertEqual(self.output.take(), [("deliver", b"busy"), ("schedule", START + 3 + IDLE)])

    def test_probe_and_rtt(self) -> None:
        self.open(at=START)
        self.machine.timer_due(START + IDLE)
        self.assertEqual(
            self.output.take(), [("schedule", START + IDLE + INTERVAL), ("cork", encode_ping(1))]
        )
        self.machine.receive(encode_ping(1, pong=True), START + IDLE + 0.25)
        # Answered: the timer moves an idle period on, past the interval's check.
        self.assertEqual(self.output.take(), [("schedule", START + IDLE + 0.25 + IDLE)])
        self.assertEqual(self.record.rtt, 0.25)
        self.machine.timer_due(START + IDLE + 0.25 + IDLE)
        self.assertEqual(
            self.output.take(),
            [("schedule", START + IDLE + 0.25 + IDLE + INTERVAL), ("cork", encode_ping(2))],
        )
        self.assertEqual(self.record.probes_sent, 2)
        self.assertEqual(self.record.probes_unanswered, 0)

    def test_stale_pong_sets_no_rtt(self) -> None:
        """A PONG to an earlier probe is traffic, not a measure of this probe's round trip."""
        self.open(at=START)
        self.machine.timer_due(START + IDLE)
        self.output.take()
        self.machine.receive(encode_ping(0, pong=True), START + IDLE + 0.25)
        self.assertEqual(self.output.take(), [])
        self.assertIsNone(self.record.rtt)

    def test_pong_without_a_probe_moves_no_timer(self) -> None:
        """A PONG no probe asked for is traffic; the timer stays where it was."""
        self.open(at=START)
        self.machine.receive(encode_ping(0, pong=True), START + 1)
        self.assertEqual(self.output.take(), [])
        self.machine.timer_due(START + IDLE)
        self.assertEqual(self.output.take(), [("schedule", START + 1 + IDLE)])

    def test_malformed_pong(self) -> None:
        self.open()
        self.machine.receive(encode_frame(MessageType.PONG, b"\x00\x01\x02"), START + 2)
        detail = "PING/PONG body must be 4 bytes, not 3"
        self.assertEqual(self.output.take(), [bye(PROTOCOL_ERROR, detail), ending(PROTOCOL_ERROR, detail)])

    def test_suspect_then_alive(self) -> None:
        """A probe unanswered for a whole interval makes the peer suspect; any answer, alive."""
        self.open(at=START)
        self.machine.timer_due(START + IDLE)
        self.machine.timer_due(START + IDLE + INTERVAL)
        self.assertEqual(
            self.output.take(),
            [
                ("schedule", START + IDLE + INTERVAL),
                ("cork", encode_ping(1)),
                ("schedule", START + IDLE + 2 * INTERVAL),
                ("liveness_changed", "suspect"),
                ("cork", encode_ping(2)),
            ],
        )
        self.machine.receive(encode_ping(2, pong=True), START + IDLE + INTERVAL + 1)
        self.assertEqual(
            self.output.take(),
            [("schedule", START + IDLE + INTERVAL + 1 + IDLE), ("liveness_changed", "alive")],
        )

    def test_dead_peer(self) -> None:
        """Every probe unanswered: closed with ``timeout`` and no BYE, within idle + probes x interval."""
        self.open(at=START)
        for n in range(PROBES):
            self.machine.timer_due(START + IDLE + n * INTERVAL)
        self.output.take()
        self.machine.timer_due(START + KEEPALIVE.worst_case)
        detail = "no answer to 3 keepalive probes; nothing received for 10 s (bound 10 s = idle 4 + 3 x 2)"
        self.assertEqual(self.output.take(), [ending(CloseReason.TIMEOUT, detail)])
        # Closing: the timer does nothing more.
        self.machine.timer_due(START + 20)
        self.assertEqual(self.output.take(), [])


class LongIdleTests(_MachineTestCase):
    """Keepalive's idle longer than the handshake deadline (as in the defaults, 15 s and 10 s)."""

    rules = attrs.evolve(RULES, keepalive=KeepaliveSettings(HANDSHAKE_TIMEOUT + 5, INTERVAL, PROBES))
    idle = HANDSHAKE_TIMEOUT + 5

    def test_open_moves_the_timer_to_keepalive(self) -> None:
        """
        Once open, the timer waits for the first keepalive probe, an idle
        period after the HELLO, not for the handshake deadline: an idle
        connection is woken once per idle period, never for nothing.
        """
        self.machine.start(self.record, START)
        self.assertEqual(self.output.take(), [("transmit", encode_hello(OURS)), ("schedule", START + 10)])
        self.machine.receive(encode_hello(THEIRS), START + 2)
        self.assertEqual(self.output.take(), [("schedule", START + 2 + self.idle), ("opened", "them")])
        self.machine.timer_due(START + 2 + self.idle)
        self.assertEqual(
            self.output.take(),
            [("schedule", START + 2 + self.idle + INTERVAL), ("cork", encode_ping(1))],
        )

    def test_traffic_after_open_still_defers_the_probe(self) -> None:
        self.machine.start(self.record, START)
        self.machine.receive(encode_hello(THEIRS), START + 2)
        self.machine.receive(encode_frame(MessageType.DATA, b"busy"), START + 3)
        self.output.take()
        self.machine.timer_due(START + 2 + self.idle)
        self.assertEqual(self.output.take(), [("schedule", START + 3 + self.idle)])


class ClosingTests(_MachineTestCase):
    def test_bye_received(self) -> None:
        self.open()
        self.machine.receive(
            encode_bye(CloseReason.CLEAN, "bye now") + encode_frame(MessageType.DATA, b"after"), START + 2
        )
        self.assertEqual(self.output.take(), [("remote_ending", CloseReason.CLEAN, "bye now", False)])
        self.assertTrue(self.machine.bye_received)
        self.assertIs(self.machine.phase, Phase.CLOSING)
        self.machine.connection_lost()
        self.assertEqual(self.output.take(), [("closed",)])
        self.assertRaises(PeerClosed, self.machine.send, b"too late")

    def test_nothing_follows_a_bye(self) -> None:
        """While closing, a message is dropped and a request waits to fail with the close's record."""
        self.open()
        self.machine.close(CloseReason.CLEAN)
        self.output.take()
        self.machine.send(b"dropped")
        self.machine.request(self.token("a"), b"held", START + 2)
        self.assertEqual(self.output.take(), [])
        self.record.reason = CloseReason.CLEAN
        self.machine.connection_lost()
        self.assertEqual(
            self.output.take(),
            [("reject", "a", "PeerClosed", "connection 7 to 192.0.2.1:4000 ended: clean"), ("closed",)],
        )

    def test_close_once(self) -> None:
        self.open()
        self.machine.close(CloseReason.CLEAN)
        self.machine.close(CloseReason.CLEAN)
        self.machine.protocol_error("too late to matter")
        self.assertEqual(self.output.take(), [bye(CloseReason.CLEAN), ending(CloseReason.CLEAN)])

    def test_abort_escalates_a_close(self) -> None:
        self.open()
        self.machine.close(CloseReason.CLEAN)
        self.machine.abort(CloseReason.ABORTED)
        self.assertEqual(
            self.output.take(),
            [
                bye(CloseReason.CLEAN),
                ending(CloseReason.CLEAN),
                ("ending", CloseReason.ABORTED, "", False, CloseMode.RST),
            ],
        )
