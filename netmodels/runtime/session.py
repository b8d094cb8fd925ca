"""
The netmodels protocol on a stream: one :class:`Session` per connection.

A session sends its HELLO at once, expects the peer's HELLO before the
handshake deadline, then carries DATA, REQUEST/RESPONSE/ERROR, keepalive
PING/PONG and BYE. Framing is :class:`netmodels.core.frames.FrameDecoder`; keepalive
is :class:`netmodels.runtime.keepalive.KeepaliveMixin`; closing goes through the
connection manager so every close is recorded with its reason.

It is also the :class:`~netmodels.runtime.interfaces.IPeer` the application sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from attrs import field, frozen
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core import frames as wire
from netmodels.core.connection import CloseMode, ConnectionRecord, ConnectionState, Direction
from netmodels.core.frames import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    MessageType,
    ProtocolError,
    decode_correlated,
    decode_hello,
    decode_ping,
    encode_correlated,
    encode_frame,
    encode_hello,
    encode_ping,
    message_type_name,
)
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason
from netmodels.runtime.interfaces import IApplication, IPeer
from netmodels.runtime.keepalive import KeepaliveMixin
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.timers import TimerWheel
from netmodels.transports.interfaces import ILivenessObserver
from netmodels.transports.tcp import apply_kernel_keepalive, set_no_delay

__all__ = [
    "MessageTooLarge",
    "PeerClosed",
    "RemoteError",
    "RequestTimeout",
    "Session",
    "SessionFactory",
    "SessionSettings",
    "SlowConsumerPolicy",
    "encode_bye",
]

_log = Logger(namespace="netmodels.session")

# Plain ints: the decoder yields ints, and comparing them with IntEnum members
# is slower on the per-message path.
_DATA = int(MessageType.DATA)
_REQUEST = int(MessageType.REQUEST)
_RESPONSE = int(MessageType.RESPONSE)
_ERROR = int(MessageType.ERROR)
_PING = int(MessageType.PING)
_PONG = int(MessageType.PONG)
_HELLO = int(MessageType.HELLO)
_BYE = int(MessageType.BYE)
_OPEN = ConnectionState.OPEN
#: Frames that carry application messages (limited by ``max_data_body``).
_DATA_TYPES = frozenset({_DATA, int(MessageType.BROADCAST)})
#: On a datagram transport, frame types that always take the unreliable
#: channel: a keepalive probe that is retransmitted would measure our
#: retransmissions, not the path.
_ALWAYS_UNRELIABLE = frozenset({_PING, _PONG})
#: ... and with them application traffic, unless it asked for the reliable channel.
_UNRELIABLE_DATA = _ALWAYS_UNRELIABLE | _DATA_TYPES | {_REQUEST, _RESPONSE, _ERROR}
_NONE_UNRELIABLE: frozenset[int] = frozenset()


def unreliable_types(transport: ManagedConnection) -> frozenset[int]:
    """The frame types a session writes on ``transport``'s unreliable channel (none on a stream)."""
    if not transport.unreliable_channel:
        return _NONE_UNRELIABLE
    return _ALWAYS_UNRELIABLE if transport.reliable_data else _UNRELIABLE_DATA


class MessageTooLarge(ValueError):
    """The application tried to send more than the frame limit allows."""


class PeerClosed(ConnectionError):
    """The connection ended; :attr:`record` says why."""

    def __init__(self, record: ConnectionRecord) -> None:
        super().__init__(f"connection {record.id} to {record.peer} ended: {record.reason}")
        self.record = record


class RequestTimeout(TimeoutError):
    """No response arrived within the request timeout."""


class RemoteError(Exception):
    """The peer's application failed the request; the message is its text."""


def encode_bye(reason: CloseReason, detail: str = "", fatal: bool = False) -> bytes:
    """A BYE frame saying why we close, so the peer records the same reason."""
    return wire.encode_bye(str(reason), detail, fatal)


def decode_bye(body: bytes) -> tuple[CloseReason, str, bool]:
    reason, detail, fatal = wire.decode_bye(body)
    try:
        return CloseReason(reason), detail, fatal
    except ValueError:
        return CloseReason.CLEAN, f"{reason}: {detail}", fatal


#: Shared by sessions with no request in flight (most of them), saving a dict each.
_NO_REQUESTS: dict[int, tuple[defer.Deferred[bytes], float]] = {}


@frozen(slots=False)
class SessionSettings:
    """Everything a session needs to know of its node, fixed at start-up."""

    hello: Hello
    keepalive: KeepaliveSettings
    application: IApplication
    max_frame: int
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0
    #: ``TCP_USER_TIMEOUT`` in seconds; ``None`` leaves the kernel default.
    user_timeout: float | None = None
    kernel_keepalive: bool = True
    #: ``None`` if a peer's HELLO is acceptable, else why not (made fatal).
    check_peer: Callable[[Hello], str | None] = lambda hello: None
    #: ``None`` if a peer's HELLO carries acceptable credentials, else why not:
    #: closed with reason ``rejected`` (fatal) before the application sees it.
    authenticate: Callable[[Hello], str | None] = lambda hello: None
    #: Handlers for a topology's own message types (PEERS, BROADCAST, ...).
    #: Any other type after the handshake is a protocol error.
    handlers: Mapping[int, Callable[[Session, bytes], None]] = field(factory=dict)
    #: Slow-consumer policy. Twisted pauses us once 64 KiB wait unsent; while
    #: paused, at most ``max_backlog`` more bytes are accepted and the pause
    #: may last ``slow_consumer_deadline`` seconds; past either, the peer is
    #: dropped with RST and reason ``rejected``.
    max_backlog: int = 4 * 1024 * 1024
    slow_consumer_deadline: float = 10.0
    #: Called with ``"suspect"`` when a keepalive probe went unanswered for an
    #: interval, and ``"alive"`` when the peer answers again.
    on_liveness: Callable[[Session, str], None] | None = None
    #: A wheel shared by the node's sessions for keepalive (``None``: the clock).
    timers: TimerWheel | None = None
    #: Largest application message body the transport carries unframed by
    #: the stream (one UDP datagram); ``None``: the frame limit.
    max_unreliable_body: int | None = None

    @cached_property
    def max_body(self) -> int:
        """The largest body a frame may carry (one int shared by every session)."""
        return self.max_frame - 1

    @cached_property
    def max_data_body(self) -> int:
        """The largest DATA body (and REQUEST/RESPONSE body plus its id) one message may carry."""
        if self.max_unreliable_body is None:
            return self.max_body
        return min(self.max_body, self.max_unreliable_body)

    @cached_property
    def hello_frame(self) -> bytes:
        """Our HELLO, encoded once for every connection."""
        return encode_hello(self.hello)


class SlowConsumerPolicy:
    """
    The slow-consumer policy, as an ``IPushProducer`` registered on the
    transport, for any protocol that writes to a peer that may stop reading.

    Twisted calls :meth:`pauseProducing` once its buffer holds 64 KiB unsent.
    While paused, writes (all through :meth:`_send`) may add at most
    ``settings.max_backlog`` bytes, and the pause may last
    ``settings.slow_consumer_deadline`` seconds; past either, the peer is
    dropped with RST and reason ``rejected``: what waits unsent can never be
    delivered, and the memory is freed at once. So a peer that stops reading
    never grows our memory without bound, and never slows the others.
    """

    settings: SessionSettings
    clock: IReactorTime
    transport: ManagedConnection
    writable: bool
    _backlog: int
    _slow_call: IDelayedCall | None
    #: Frame types written on the transport's unreliable channel (see :func:`unreliable_types`).
    _unreliable: frozenset[int] = _NONE_UNRELIABLE

    def pauseProducing(self) -> None:
        if not self.writable:
            return
        self.writable = False
        self._backlog = 0
        deadline = self.settings.slow_consumer_deadline
        self._slow_call = self.clock.callLater(deadline, self._slow_consumer, f"paused over {deadline:g} s")

    def resumeProducing(self) -> None:
        self.writable = True
        self._backlog = 0
        if self._slow_call is not None and self._slow_call.active():
            self._slow_call.cancel()
        self._slow_call = None

    def stopProducing(self) -> None:
        pass

    def _send(self, data: bytes, corked: bool = False) -> None:
        """Write ``data``, counted against the backlog while paused."""
        if not self.writable:
            self._grow_backlog(len(data))
        unreliable = self._unreliable
        if unreliable and data[4] in unreliable:
            self.transport.write_unreliable(data, corked)
        elif corked:
            self.transport.cork(data)
        else:
            self.transport.write(data)

    def _grow_backlog(self, size: int) -> None:
        self._backlog += size
        if self._backlog > self.settings.max_backlog:
            self._slow_consumer(f"more than {self.settings.max_backlog} bytes waiting")

    def _slow_consumer(self, why: str) -> None:
        # Over the backlog cap, the deadline's timer is still pending: cancel it.
        call, self._slow_call = self._slow_call, None
        if call is not None and call.active():
            call.cancel()
        record = self.transport.record
        if record.closed or record.state is ConnectionState.CLOSING:
            return
        detail = f"slow consumer: not reading ({why})"
        _log.warn(
            "connection {id} to {peer}: {detail}; dropping", id=record.id, peer=record.peer, detail=detail
        )
        self._drop_slow_consumer(detail)

    def _drop_slow_consumer(self, detail: str) -> None:
        self.transport.end(CloseReason.REJECTED, detail, CloseMode.RST)


@implementer(IPeer, IPushProducer, ILivenessObserver)
class Session(SlowConsumerPolicy, Protocol, KeepaliveMixin):
    """The netmodels wire protocol over one stream connection."""

    transport: ManagedConnection  # type: ignore[assignment]

    def __init__(self, settings: SessionSettings, clock: IReactorTime) -> None:
        # Every attribute is set here, in one order, including those the
        # mixin and Twisted set later: instances then share one key table
        # (CPython's split dicts), which matters at 10,000 connections.
        self.transport = None  # type: ignore[assignment]
        self.connected = 0
        self.settings = settings
        self.clock = clock
        self.keepaliveTimers = settings.timers
        self._keepalive_tracker = None
        self._keepalive_call = None
        self.application = settings.application
        self.peer_hello: Hello | None = None
        self.record: ConnectionRecord | None = None
        self._decoder = FrameDecoder(settings.max_frame)
        self._max_body = settings.max_body
        #: Application messages may be limited further (a datagram each).
        self._max_data = settings.max_data_body
        self._handshake_deadline = 0.0
        self._pending: dict[int, tuple[defer.Deferred[bytes], float]] = _NO_REQUESTS
        self._next_request_id = 1
        self._request_call: IDelayedCall | None = None
        self._request_due = 0.0
        self._ping_sequence = 0
        self._ping_sent_at = 0.0
        self._ready = False
        self._suspect = False
        #: The peer said BYE: it closed on purpose (a bare FIN may be a crash).
        self.bye_received = False
        #: False while Twisted holds more than its buffer size unsent for us.
        self.writable = True
        self._backlog = 0
        self._slow_call: IDelayedCall | None = None
        self._unreliable = _NONE_UNRELIABLE

    # IPeer

    @property
    def connection_id(self) -> int:
        return -1 if self.record is None else self.record.id

    @property
    def node_id(self) -> str | None:
        return None if self.peer_hello is None else self.peer_hello.node_id

    @property
    def role(self) -> str | None:
        return None if self.peer_hello is None else self.peer_hello.role

    def send(self, payload: bytes) -> None:
        """Send one DATA message; see :meth:`netmodels.runtime.interfaces.IPeer.send`."""
        if len(payload) > self._max_data:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds the {self._limit_name} of {self._max_data}"
            )
        record = self.record
        if record is None or not self._ready or record.closed:
            raise PeerClosed(self._record_or_placeholder())
        record.messages_out += 1
        self._send(encode_frame(_DATA, payload))

    def request(self, payload: bytes, timeout: float | None = None) -> defer.Deferred[bytes]:
        """Send a REQUEST; see :meth:`netmodels.runtime.interfaces.IPeer.request`."""
        if len(payload) + 4 > self._max_data:
            raise MessageTooLarge(
                f"request of {len(payload)} bytes exceeds the {self._limit_name} of {self._max_data - 4}"
            )
        record = self.record
        if record is None or not self._ready or record.closed:
            return defer.fail(PeerClosed(self._record_or_placeholder()))
        request_id = self._next_request_id
        self._next_request_id = (request_id + 1) & 0xFFFFFFFF or 1
        deferred: defer.Deferred[bytes] = defer.Deferred()
        wait = self.settings.request_timeout if timeout is None else timeout
        deadline = self.clock.seconds() + wait
        if self._pending is _NO_REQUESTS:
            self._pending = {}
        self._pending[request_id] = (deferred, deadline)
        call = self._request_call
        if call is None:
            self._request_call = self.clock.callLater(wait, self._expire_requests)
            self._request_due = deadline
        elif deadline < self._request_due:
            call.reset(wait)
            self._request_due = deadline
        record.messages_out += 1
        self._send(encode_correlated(_REQUEST, request_id, payload))
        return deferred

    def write_frame(self, frame: bytes, corked: bool = False) -> None:
        """
        Send an already encoded frame, for fan-out: a message sent to many
        peers is framed once. Raises ``MessageTooLarge`` over the peer's
        frame limit, and does nothing once the connection is closing.
        ``corked``: written at the end of the reactor turn with the rest of
        a burst (see ``ManagedConnection.cork``).
        """
        limit = self._max_data if frame[4] in _DATA_TYPES else self._max_body
        if len(frame) - 5 > limit:
            raise MessageTooLarge(f"frame of {len(frame) - 4} bytes exceeds the peer's limit of {limit + 1}")
        # Ready and not closing, in one comparison: this runs once per peer per message.
        record = self.record
        if record is None or record.state is not _OPEN or not self._ready:
            return
        record.messages_out += 1
        self._send(frame, corked)

    def close(self) -> None:
        """Say BYE, then FIN (RST if the write buffer does not drain in time)."""
        self._end(CloseReason.CLEAN)

    def reset(self) -> None:
        """RST now: recorded ``aborted`` here, ``reset`` at the peer."""
        if self.record is not None and not self.record.closed:
            self.transport.reset()

    # Twisted

    def connectionMade(self) -> None:
        transport = self.transport
        self.record = transport.record
        self._unreliable = unreliable_types(transport)
        settings = self.settings
        set_no_delay(transport)
        transport.registerProducer(self, True)
        if settings.kernel_keepalive:
            apply_kernel_keepalive(transport, settings.keepalive, settings.user_timeout)
        self._write_control(settings.hello_frame)
        # One timer per connection serves the handshake deadline and keepalive.
        self._handshake_deadline = self.clock.seconds() + settings.handshake_timeout
        self.setKeepalive(settings.keepalive, first_check=settings.handshake_timeout)

    def dataReceived(self, data: bytes) -> None:
        tracker = self._keepalive_tracker
        if tracker is not None:
            tracker.last_received = self.clock.seconds()
        decoder = self._decoder
        frames = decoder.feed(data)
        if frames:
            record = self.record
            if record is not None:
                record.messages_in += len(frames)
            if self._ready:
                self._dispatch(frames)
            else:
                self._handshake(frames)
        if decoder.error is not None:
            self._protocol_error(str(decoder.error))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setKeepalive(None)
        for call in (self._request_call, self._slow_call):
            if call is not None and call.active():
                call.cancel()
        self._request_call = self._slow_call = None
        record = self._record_or_placeholder()
        pending, self._pending = self._pending, _NO_REQUESTS
        for deferred, _ in pending.values():
            deferred.errback(PeerClosed(record))
        if self._ready:
            self._ready = False
            self._call_application(self.application.peer_lost, self, record)

    # Keepalive

    def keepaliveProbe(self) -> None:
        if self._closing():
            # Closing on purpose: the close deadline bounds it, not keepalive.
            self.setKeepalive(None)
            return
        tracker = self._keepalive_tracker
        if tracker is not None and tracker.probes_unanswered >= 2 and not self._suspect:
            # A probe went unanswered for a whole interval.
            self._liveness("suspect")
        self._ping_sequence = (self._ping_sequence + 1) & 0xFFFFFFFF
        self._ping_sent_at = self.clock.seconds()
        self._write_control(encode_ping(self._ping_sequence))

    def keepaliveTimeout(self) -> None:
        if self._closing():
            return
        settings = self.settings.keepalive
        tracker = self._keepalive_tracker
        silent = 0.0 if tracker is None else self.clock.seconds() - tracker.last_received
        detail = (
            f"no answer to {settings.probes} keepalive probes; nothing received for "
            f"{silent:.3g} s (bound {settings.worst_case:g} s = idle {settings.idle:g} + "
            f"{settings.probes} x {settings.interval:g})"
        )
        _log.warn(
            "connection {id} to {peer}: {detail}",
            id=self.connection_id,
            peer=self._peer_text(),
            detail=detail,
        )
        self.transport.end(CloseReason.TIMEOUT, detail)

    # Internals

    def _dispatch(self, frames: list[tuple[int, bytes]]) -> None:
        message_received = self.application.message_received
        handlers = self.settings.handlers
        record = self.record
        for message_type, body in frames:
            if message_type == _DATA:
                message_received(self, body)
            elif message_type == _REQUEST:
                self._request_received(body)
            elif message_type in (_RESPONSE, _ERROR):
                self._response_received(message_type, body)
            elif message_type == _PING:
                sequence = self._sequence(body)
                if sequence >= 0:
                    self._write_control(encode_ping(sequence, pong=True))
            elif message_type == _PONG:
                if self._sequence(body) == self._ping_sequence and self.record is not None:
                    self.record.rtt = self.clock.seconds() - self._ping_sent_at
                if self._suspect:
                    self._liveness("alive")
            elif message_type == _BYE:
                self._bye_received(body)
                return
            elif message_type in handlers:
                handlers[message_type](self, body)
            else:
                name = message_type_name(message_type)
                self._protocol_error(
                    "HELLO received twice"
                    if message_type == _HELLO
                    else f"{name} is not part of topology {self.settings.hello.topology}"
                )
                return
            # Stop if a handler closed the connection (ours or the application's).
            if record is not None and record.state is not _OPEN:
                return

    def _sequence(self, body: bytes) -> int:
        try:
            return decode_ping(body)
        except ProtocolError as e:
            self._protocol_error(str(e))
            return -1

    def _handshake(self, frames: list[tuple[int, bytes]]) -> None:
        message_type, body = frames[0]
        if message_type == _BYE:
            self._bye_received(body)
            return
        if message_type != _HELLO:
            self._protocol_error(f"expected HELLO, got {message_type_name(message_type)}")
            return
        try:
            hello = decode_hello(body)
        except ProtocolError as e:
            self._protocol_error(str(e))
            return
        if hello.version != PROTOCOL_VERSION:
            self._protocol_error(
                f"peer speaks protocol version {hello.version}, we speak {PROTOCOL_VERSION}",
                fatal=True,
            )
            return
        refusal = self.settings.check_peer(hello)
        if refusal is not None:
            self._protocol_error(refusal, fatal=True)
            return
        rejection = self.settings.authenticate(hello)
        if rejection is not None:
            _log.warn(
                "connection {id} to {peer}: rejected: {detail}; closing",
                id=self.connection_id,
                peer=self._peer_text(),
                detail=rejection,
            )
            self._end(CloseReason.REJECTED, rejection, fatal=True)
            return
        self.peer_hello = hello
        if hello.extra.get("reliable") is True and self._max_data < self._max_body:
            # The peer wants application data on a datagram transport's
            # reliable channel: ours goes there too, so nothing it sends (an
            # echo of a large message) is refused on our side.
            self._max_data = self._max_body
            self._unreliable &= _ALWAYS_UNRELIABLE
            self.transport.use_reliable_channel()
        # Never send more than either side accepts.
        if hello.max_frame < self.settings.max_frame:
            self._max_body = hello.max_frame - 1
            self._max_data = min(self._max_data, self._max_body)
        self._ready = True
        record = self.record
        if record is not None:
            record.peer_keepalive = hello.keepalive
        # The timer waited for the handshake deadline; keepalive may be due sooner.
        call = self._keepalive_call
        tracker = self._keepalive_tracker
        if call is not None and tracker is not None and call.getTime() > tracker.next_deadline:
            call.reset(max(0.0, tracker.next_deadline - self.clock.seconds()))
        self.transport.mark_open(hello.node_id)
        self._call_application(self.application.peer_ready, self)
        if len(frames) > 1 and self._ready:
            self._dispatch(frames[1:])

    def _request_received(self, body: bytes) -> None:
        try:
            request_id, payload = decode_correlated(body)
        except ProtocolError as e:
            self._protocol_error(str(e))
            return
        try:
            result = self.application.request_received(self, payload)
        except Exception as e:
            # The caller gets the error as RemoteError; here it is a line, not a traceback.
            _log.warn("request handler answered with an error: {error!r}", error=e)
            self._respond(request_id, _ERROR, str(e).encode("utf-8", "replace"))
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(
                lambda response: self._respond_with(request_id, response),
                lambda failure: self._respond(
                    request_id, _ERROR, failure.getErrorMessage().encode("utf-8", "replace")
                ),
            ).addErrback(lambda failure: _log.failure("responding failed", failure))
        else:
            self._respond_with(request_id, result)

    def _respond_with(self, request_id: int, response: object) -> None:
        if isinstance(response, bytes):
            self._respond(request_id, _RESPONSE, response)
        else:
            text = f"application returned {type(response).__name__}, not bytes"
            self._respond(request_id, _ERROR, text.encode())

    def _respond(self, request_id: int, message_type: int, body: bytes) -> None:
        record = self.record
        if record is None or record.closed or record.state is ConnectionState.CLOSING:
            return
        if len(body) + 4 > self._max_data:
            message_type = _ERROR
            body = f"response exceeds the {self._limit_name}".encode()
        self._write_control(encode_correlated(message_type, request_id, body))

    def _response_received(self, message_type: int, body: bytes) -> None:
        try:
            request_id, payload = decode_correlated(body)
        except ProtocolError as e:
            self._protocol_error(str(e))
            return
        entry = self._pending.pop(request_id, None)
        if entry is None:
            # A response after its request timed out: dropped, not an error.
            return
        if message_type == _RESPONSE:
            entry[0].callback(payload)
        else:
            entry[0].errback(RemoteError(payload.decode("utf-8", "replace")))

    def _expire_requests(self) -> None:
        # One timer per session, at the earliest deadline, instead of a timer
        # per request: a request costs a dict insert and pop, nothing more.
        self._request_call = None
        now = self.clock.seconds()
        pending = self._pending
        expired = [rid for rid, (_, deadline) in pending.items() if deadline <= now]
        failed = [(rid, pending.pop(rid)[0]) for rid in expired]
        if pending:
            earliest = min(deadline for _, deadline in pending.values())
            self._request_call = self.clock.callLater(max(0.0, earliest - now), self._expire_requests)
            self._request_due = earliest
        # Last, as an errback may send a new request (which re-arms the timer).
        for request_id, deferred in failed:
            deferred.errback(RequestTimeout(f"request {request_id} got no response in time"))

    def _bye_received(self, body: bytes) -> None:
        self.bye_received = True
        reason, detail, fatal = decode_bye(body)
        self.transport.note_remote_close(reason, detail, fatal)
        self.transport.end(CloseReason.CLEAN)

    def _liveness(self, state: str) -> None:
        self._suspect = state == "suspect"
        callback = self.settings.on_liveness
        if callback is not None:
            self._call_application(callback, self, state)

    def _keepaliveDue(self) -> None:
        if not self._ready:
            now = self.clock.seconds()
            if now < self._handshake_deadline:
                self._keepalive_call = (self.keepaliveTimers or self.clock).callLater(
                    self._handshake_deadline - now, self._keepaliveDue
                )
                return
            self._keepalive_call = None
            self._handshake_expired()
            return
        super()._keepaliveDue()
        tracker = self._keepalive_tracker
        if self._suspect and tracker is not None and tracker.probes_unanswered == 0:
            self._liveness("alive")

    def _handshake_expired(self) -> None:
        self._protocol_error(
            f"no HELLO within the handshake deadline of {self.settings.handshake_timeout:g} s"
        )

    def _protocol_error(self, detail: str, fatal: bool = False) -> None:
        if self._closing():
            return
        _log.warn(
            "connection {id} to {peer}: protocol error: {detail}; closing",
            id=self.connection_id,
            peer=self._peer_text(),
            detail=detail,
        )
        self._end(CloseReason.PROTOCOL_ERROR, detail, fatal)

    def _end(self, reason: CloseReason, detail: str = "", fatal: bool = False) -> None:
        if self._closing():
            return
        self.setKeepalive(None)
        self._write_control(encode_bye(reason, detail, fatal))
        self.transport.end(reason, detail, fatal=fatal)

    def _closing(self) -> bool:
        record = self.record
        return record is not None and (record.closed or record.state is ConnectionState.CLOSING)

    def _write_control(self, frame: bytes) -> None:
        # Every frame counts as a message, both ways: HELLO, PING, PONG, BYE too.
        record = self.record
        if record is not None:
            record.messages_out += 1
        self._send(frame)

    def _drop_slow_consumer(self, detail: str) -> None:
        self.setKeepalive(None)
        super()._drop_slow_consumer(detail)

    def _call_application(self, method: Callable[..., Any], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            _log.failure("application callback {name} failed", Failure(), name=method.__name__)

    @property
    def _limit_name(self) -> str:
        return "frame limit" if self._max_data == self._max_body else "datagram limit"

    def _peer_text(self) -> str:
        return "?" if self.record is None else self.record.peer

    def _record_or_placeholder(self) -> ConnectionRecord:
        return self.record or ConnectionRecord(id=-1, direction=Direction.OUTBOUND, peer="?")


class SessionFactory(Factory[Session]):
    """Builds a :class:`Session` per connection with the node's settings."""

    noisy = False

    def __init__(self, settings: SessionSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock

    def buildProtocol(self, addr: Any) -> Session:
        return Session(self.settings, self.clock)
