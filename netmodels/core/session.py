"""
The netmodels session, sans-IO: one connection's protocol as a machine.

:class:`SessionMachine` is fed what arrives (:meth:`~SessionMachine.receive`,
bytes in any chunking) and the time, and what its owner wants (send, request,
close); it answers through its output, an :class:`ISessionOutput`. It owns no
timer and no socket: it asks for a timer with
:meth:`ISessionOutput.schedule` and is told when it fires.

Phases::

    HANDSHAKE --peer's HELLO accepted--> OPEN --close / BYE / dead--> CLOSING
        |                                                               |
        +--bad HELLO, BYE, deadline, close--> CLOSING --connection lost--> CLOSED

The phase is the one record of where the session is: the adapter reports it
to the connection manager (``mark_open`` on OPEN, ``end`` on CLOSING).

Actions, each a call on the output: ``transmit`` (bytes to send),
``opened`` (the peer's HELLO was accepted), ``request_received``,
``topology_frame`` (a topology's own message type), ``liveness_changed``
(``"suspect"`` / ``"alive"``), ``use_reliable_channel``, ``ending`` (close
with reason, detail, fatal and close mode), ``remote_ending`` (the peer said
BYE), ``closed`` (an opened connection was lost), ``schedule`` and
``schedule_requests`` (when to call :meth:`~SessionMachine.timer_due` and
:meth:`~SessionMachine.requests_due`).

The three per-message paths are plain callables of the rules, called with
nothing in between: ``deliver(peer, body)`` for DATA (the application's own
``message_received``), ``resolve(token, payload)`` and
``reject(token, error)`` for the answer to a request (a ``Deferred``'s own
``callback`` and ``errback``). An open session receiving DATA does a dict
lookup and a call per message, as the hand-tuned protocol before it did.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Final

from zope.interface import Interface

from netmodels.core.connection import CloseMode, ConnectionRecord, Direction
from netmodels.core.frames import (
    FrameDecoder,
    Hello,
    MessageType,
    ProtocolError,
    decode_ping,
    encode_frame,
    encode_ping,
    message_type_name,
)
from netmodels.core.handshake import (
    HandshakeFailed,
    SessionRules,
    accept_hello,
    decode_bye,
    encode_bye,
)
from netmodels.core.keepalive import KeepaliveAction, KeepaliveTracker
from netmodels.core.reasons import CloseReason
from netmodels.core.requests import (
    _ID,
    _NO_REQUESTS,
    MessageTooLarge,
    PeerClosed,
    RemoteError,
    RequestTable,
    RequestTimeout,
)

__all__ = [
    "ISessionOutput",
    "MessageTooLarge",
    "PeerClosed",
    "Phase",
    "RemoteError",
    "RequestTimeout",
    "SessionMachine",
    "decode_bye",
    "encode_bye",
]


class Phase(enum.Enum):
    """Where a session is in its life."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_HANDSHAKE: Final = Phase.HANDSHAKE
_OPEN: Final = Phase.OPEN
_CLOSING: Final = Phase.CLOSING
_CLOSED: Final = Phase.CLOSED

# Plain ints: the decoder yields ints, and comparing them with IntEnum members
# is slower on the per-message path.
_DATA: Final = int(MessageType.DATA)
_REQUEST: Final = int(MessageType.REQUEST)
_RESPONSE: Final = int(MessageType.RESPONSE)
_ERROR: Final = int(MessageType.ERROR)
_PING: Final = int(MessageType.PING)
_PONG: Final = int(MessageType.PONG)
_HELLO: Final = int(MessageType.HELLO)
_BYE: Final = int(MessageType.BYE)
_DEAD: Final = KeepaliveAction.DEAD
_PROBE: Final = KeepaliveAction.PROBE
#: A PING or PONG body: its sequence number.
_U32: Final = struct.Struct("!I").unpack


class ISessionOutput(Interface):
    """What a :class:`SessionMachine` asks of its owner, one call per action."""

    def transmit(data: bytes, corked: bool = False) -> None:
        """
        Send ``data`` (whole frames) to the peer; ``corked``: at the end of
        the reactor turn, with the rest of a burst.
        """

    def opened(hello: Hello) -> None:
        """The peer's HELLO was accepted: the session is open."""

    def request_received(request_id: int, payload: bytes) -> None:
        """A REQUEST arrived; answer with ``respond`` or ``respond_error``."""

    def topology_frame(message_type: int, body: bytes) -> None:
        """A frame of one of the topology's own message types arrived."""

    def liveness_changed(state: str) -> None:
        """``"suspect"``: a probe went unanswered for an interval; ``"alive"``: it answers again."""

    def use_reliable_channel() -> None:
        """The peer asked for application data on a datagram transport's reliable channel."""

    def ending(reason: CloseReason, detail: str, fatal: bool, mode: CloseMode | None) -> None:
        """Close the connection (``mode``; ``None``: by the close policy). Any BYE is already sent."""

    def remote_ending(reason: CloseReason, detail: str, fatal: bool) -> None:
        """The peer said BYE: record its reason, and close."""

    def closed() -> None:
        """A session that had opened has lost its connection: tell the application."""

    def schedule(when: float) -> None:
        """Call :meth:`SessionMachine.timer_due` at ``when`` (replacing the previous time)."""

    def schedule_requests(when: float) -> None:
        """Call :meth:`SessionMachine.requests_due` at ``when`` (replacing the previous time)."""


class SessionMachine(RequestTable):
    """One connection's protocol: handshake, dispatch, requests, keepalive, BYE."""

    __slots__ = (
        "bye_received",
        "decoder",
        "handshake_deadline",
        "hello",
        "keepalive",
        "max_body",
        "max_data",
        "output",
        "peer_check",
        "phase",
        "ping_sent_at",
        "ping_sequence",
        "record",
        "rules",
        "started",
        "suspect",
        "timer_at",
    )

    def __init__(self, rules: SessionRules, output: ISessionOutput) -> None:
        self.rules = rules
        self.output = output
        self.phase = _HANDSHAKE
        #: The peer's HELLO, once accepted.
        self.hello: Hello | None = None
        self.decoder = FrameDecoder(rules.max_frame)
        self.max_body = rules.max_body
        #: Application messages may be limited further (a datagram each).
        self.max_data = rules.max_data_body
        self.handshake_deadline = 0.0
        self.pending = _NO_REQUESTS
        self.next_request_id = 1
        self.request_due = 0.0
        self.ping_sequence = 0
        self.ping_sent_at = 0.0
        self.suspect = False
        #: The peer said BYE: it closed on purpose (a bare FIN may be a crash).
        self.bye_received = False
        self.timer_at = 0.0
        #: A check of the peer's HELLO that only this connection can make
        #: (its node id against the key it proved): ``None`` or why not.
        self.peer_check: Callable[[Hello], str | None] | None = None
        #: start() was called (an encrypted session starts after its key exchange).
        self.started = False
        # ``record`` and ``keepalive`` are set by start().

    def start(self, record: ConnectionRecord, now: float) -> None:
        """The connection is up: send our HELLO and start the handshake deadline."""
        self.record = record
        self.started = True
        self.keepalive = KeepaliveTracker(self.rules.keepalive, now)
        self._control(self.rules.hello_frame)
        self.handshake_deadline = now + self.rules.handshake_timeout
        # One timer serves the handshake deadline and keepalive.
        self._schedule(min(self.handshake_deadline, self.keepalive.next_deadline))

    def is_open(self) -> bool:
        return self.phase is _OPEN

    def is_closing(self) -> bool:
        return self.phase is _CLOSING

    # Input

    def receive(self, data: bytes, now: float) -> None:
        """Bytes arrived at ``now``."""
        self.keepalive.last_received = now
        decoder = self.decoder
        frames = decoder.feed(data)
        if frames:
            self.record.messages_in += len(frames)
            if self.phase is _OPEN:
                self._dispatch(frames, now)
            elif self.phase is _HANDSHAKE:
                self._handshake(frames, now)
        if decoder.error is not None:
            self.protocol_error(str(decoder.error))

    def traffic(self, now: float) -> None:
        """The transport heard the peer without passing data up (a datagram ACK)."""
        self.keepalive.last_received = now

    def timer_due(self, now: float) -> None:
        """The time asked for with ``schedule`` has come."""
        phase = self.phase
        if phase is _HANDSHAKE:
            if now < self.handshake_deadline:
                self._schedule(self.handshake_deadline)
            else:
                self.protocol_error(
                    f"no HELLO within the handshake deadline of {self.rules.handshake_timeout:g} s"
                )
            return
        if phase is not _OPEN:
            # Closing on purpose: the close deadline bounds it, not keepalive.
            return
        tracker = self.keepalive
        action = tracker.due(now)
        if action is _DEAD:
            self._keepalive_dead(now)
            return
        self._schedule(tracker.next_deadline)
        if action is _PROBE:
            self._probe(now)
        elif self.suspect and tracker.probes_unanswered == 0:
            self._liveness("alive")

    def connection_lost(self) -> None:
        """The connection is gone: fail what waits, and say so if it had opened."""
        opened = self.hello is not None and self.phase is not _CLOSED
        self.phase = _CLOSED
        record = self.record_or_placeholder()
        self._fail_all(record)
        if opened:
            self.output.closed()

    # Commands

    def send(self, payload: bytes) -> None:
        """
        Send one DATA message. Raises ``MessageTooLarge``, or ``PeerClosed``
        before the session opens and once it is closed; while closing, the
        message is dropped (nothing follows a BYE).
        """
        if len(payload) > self.max_data:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds the {self.limit_name} of {self.max_data}"
            )
        if self.phase is not _OPEN:
            if self.phase is _CLOSING:
                # After our BYE (or the peer's) nothing more goes out.
                return
            raise PeerClosed(self.record_or_placeholder())
        self.record.messages_out += 1
        self.output.transmit(encode_frame(_DATA, payload))

    def close(self, reason: CloseReason, detail: str = "", fatal: bool = False) -> None:
        """Say BYE (why), then close by the close policy. Nothing once closing."""
        if self.phase is _CLOSING or self.phase is _CLOSED:
            return
        if self.started:
            self._control(encode_bye(reason, detail, fatal))
        self._end(reason, detail, fatal, None)

    def protocol_error(self, detail: str, fatal: bool = False) -> None:
        """The peer broke the protocol: BYE with ``protocol-error``, then close."""
        self.close(CloseReason.PROTOCOL_ERROR, detail, fatal)

    def abandon(self, reason: CloseReason, detail: str = "") -> None:
        """Close by the close policy without a BYE: the peer is unreachable. Nothing once closing."""
        if self.phase is _CLOSING or self.phase is _CLOSED:
            return
        self._end(reason, detail, False, None)

    def abort(self, reason: CloseReason, detail: str = "") -> None:
        """Close with RST now, even while closing (a FIN becomes an RST)."""
        if self.phase is _CLOSED or self.record_or_placeholder().closed:
            return
        self._end(reason, detail, False, CloseMode.RST)

    # Internals

    def _dispatch(self, frames: list[tuple[int, bytes]], now: float) -> None:
        deliver = self.rules.deliver
        output = self.output
        for message_type, body in frames:
            if message_type == _DATA:
                deliver(output, body)
            elif message_type == _REQUEST:
                if len(body) < 4:
                    self.protocol_error("REQUEST/RESPONSE/ERROR body shorter than its 4-byte id")
                    return
                output.request_received(_ID(body)[0], body[4:])
            elif message_type in (_RESPONSE, _ERROR):
                self._response_received(message_type, body)
            elif message_type == _PING:
                try:
                    sequence = decode_ping(body)
                except ProtocolError as e:
                    self.protocol_error(str(e))
                    return
                self._control(encode_ping(sequence, pong=True))
            elif message_type == _PONG:
                # decode_ping, inline: this runs for every connection every idle period.
                if len(body) != 4:
                    self.protocol_error(f"PING/PONG body must be 4 bytes, not {len(body)}")
                    return
                if _U32(body)[0] == self.ping_sequence:
                    self.record.rtt = now - self.ping_sent_at
                    tracker = self.keepalive
                    if tracker.probes_unanswered:
                        # The timer waits an idle period again, rather than
                        # running at the interval only to find this answer.
                        tracker.answered(now)
                        self._schedule(tracker.next_deadline)
                if self.suspect:
                    self._liveness("alive")
            elif message_type == _BYE:
                self._bye_received(body)
                return
            elif message_type in self.rules.topology_types:
                output.topology_frame(message_type, body)
            else:
                name = message_type_name(message_type)
                topology = self.rules.hello.topology
                self.protocol_error(
                    "HELLO received twice"
                    if message_type == _HELLO
                    else f"{name} is not part of topology {topology}"
                )
                return
            # Stop if a handler closed the connection (ours or the application's).
            if self.phase is not _OPEN:
                return

    def _handshake(self, frames: list[tuple[int, bytes]], now: float) -> None:
        message_type, body = frames[0]
        if message_type == _BYE:
            self._bye_received(body)
            return
        try:
            hello = accept_hello(self.rules, message_type, body)
        except HandshakeFailed as e:
            self.close(e.reason, e.detail, e.fatal)
            return
        if self.peer_check is not None:
            refusal = self.peer_check(hello)
            if refusal is not None:
                self.close(CloseReason.REJECTED, refusal, fatal=True)
                return
        self.hello = hello
        if hello.extra.get("reliable") is True and self.max_data < self.max_body:
            # The peer wants application data on a datagram transport's
            # reliable channel: ours goes there too, so nothing it sends (an
            # echo of a large message) is refused on our side.
            self.max_data = self.max_body
            self.output.use_reliable_channel()
        # Never send more than either side accepts.
        if hello.max_frame < self.rules.max_frame:
            self.max_body = hello.max_frame - 1
            self.max_data = min(self.max_data, self.max_body)
        self.phase = _OPEN
        self.record.peer_keepalive = hello.keepalive
        tracker = self.keepalive
        if self.timer_at > tracker.next_deadline:
            # The timer waited for the handshake deadline; keepalive is due sooner.
            self._schedule(tracker.next_deadline)
        elif self.timer_at < tracker.next_deadline:
            # The timer waits for a handshake deadline sooner than keepalive's:
            # move it to when keepalive is next due (an idle period after this
            # HELLO), or every idle connection wakes once for nothing.
            tracker.next_deadline = tracker.last_received + self.rules.keepalive.idle
            self._schedule(tracker.next_deadline)
        self.output.opened(hello)
        if len(frames) > 1 and self.phase is _OPEN:
            self._dispatch(frames[1:], now)

    def _bye_received(self, body: bytes) -> None:
        self.bye_received = True
        reason, detail, fatal = decode_bye(body)
        self.phase = _CLOSING
        self.output.remote_ending(reason, detail, fatal)

    def _probe(self, now: float) -> None:
        record = self.record
        if self.keepalive.probes_unanswered >= 2:
            # The previous probe went unanswered for a whole interval.
            record.probes_unanswered += 1
            if not self.suspect:
                self._liveness("suspect")
                if self.phase is not _OPEN:
                    return
        record.probes_sent += 1
        sequence = self.ping_sequence = (self.ping_sequence + 1) & 0xFFFFFFFF
        self.ping_sent_at = now
        record.messages_out += 1
        # Corked: the probes that fall due together (a timer wheel slot) leave
        # together at the end of the reactor turn, back to back, so the peers
        # are woken (and answer) in a burst, and one read wakeup takes many
        # answers, rather than one wakeup each.
        self.output.transmit(encode_ping(sequence), True)

    def _keepalive_dead(self, now: float) -> None:
        # The last probe went unanswered too.
        self.record.probes_unanswered += 1
        settings = self.rules.keepalive
        silent = now - self.keepalive.last_received
        self.abandon(
            CloseReason.TIMEOUT,
            f"no answer to {settings.probes} keepalive probes; nothing received for "
            f"{silent:.3g} s (bound {settings.worst_case:g} s = idle {settings.idle:g} + "
            f"{settings.probes} x {settings.interval:g})",
        )

    def _liveness(self, state: str) -> None:
        self.suspect = state == "suspect"
        self.output.liveness_changed(state)

    def _end(self, reason: CloseReason, detail: str, fatal: bool, mode: CloseMode | None) -> None:
        self.phase = _CLOSING
        self.output.ending(reason, detail, fatal, mode)

    def _schedule(self, when: float) -> None:
        self.timer_at = when
        self.output.schedule(when)

    def _control(self, frame: bytes) -> None:
        # Every frame counts as a message, both ways: HELLO, PING, PONG, BYE too.
        self.record.messages_out += 1
        self.output.transmit(frame)

    def record_or_placeholder(self) -> ConnectionRecord:
        try:
            return self.record
        except AttributeError:
            return ConnectionRecord(id=-1, direction=Direction.OUTBOUND, peer="?")
