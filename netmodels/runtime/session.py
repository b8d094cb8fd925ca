"""
The netmodels protocol on a stream: one :class:`Session` per connection.

The protocol itself (handshake, dispatch, requests, keepalive decisions, BYE,
frame limits) is the sans-IO :class:`netmodels.core.session.SessionMachine`;
:class:`Session` is its Twisted adapter: it forwards what arrives and the
time, and carries out the machine's actions (writes, timers, ``Deferred``
answers, application callbacks, closing through the connection manager so
every close is recorded with its reason). It adds the slow-consumer policy.

It is also the :class:`~netmodels.runtime.interfaces.ISession` (an
:class:`~netmodels.runtime.interfaces.IPeer`) the application and the
topologies see.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core.connection import CloseMode, ConnectionRecord, ConnectionState, Direction
from netmodels.core.frames import Hello, MessageType
from netmodels.core.handshake import SessionRules, decode_bye, encode_bye
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason
from netmodels.core.requests import MessageTooLarge, PeerClosed, RemoteError, RequestTimeout
from netmodels.core.session import ISessionOutput, Phase, SessionMachine
from netmodels.runtime.interfaces import IApplication, ISession
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.timers import TimerWheel, _WheelTimer
from netmodels.transports.interfaces import ILivenessObserver
from netmodels.transports.tcp import SessionSocketOptions

if TYPE_CHECKING:
    from netmodels.runtime.secure import SessionSecurity

__all__ = [
    "MessageTooLarge",
    "PeerClosed",
    "RemoteError",
    "RequestTimeout",
    "Session",
    "SessionFactory",
    "SessionSettings",
    "SlowConsumerPolicy",
    "call_application",
    "decode_bye",
    "encode_bye",
]

_log = Logger(namespace="netmodels.session")

_OPEN = Phase.OPEN
_RST = CloseMode.RST
_INBOUND = Direction.INBOUND
#: Frames that carry application messages (limited by ``max_data_body``):
#: DATA, and the types a topology adds (``SessionSettings.data_types``).
DATA_TYPES = frozenset({int(MessageType.DATA)})
_REQUEST_TYPES = frozenset({int(MessageType.REQUEST), int(MessageType.RESPONSE), int(MessageType.ERROR)})
#: On a datagram transport, frame types that always take the unreliable
#: channel: a keepalive probe that is retransmitted would measure our
#: retransmissions, not the path.
_ALWAYS_UNRELIABLE = frozenset({int(MessageType.PING), int(MessageType.PONG)})
#: ... and with them application traffic, unless it asked for the reliable channel.
_UNRELIABLE_DATA = _ALWAYS_UNRELIABLE | DATA_TYPES | _REQUEST_TYPES
_NONE_UNRELIABLE: frozenset[int] = frozenset()
#: Closes worth a warning in the log (the peer misbehaved or died).
_WARN = {
    CloseReason.PROTOCOL_ERROR: "protocol error: ",
    CloseReason.REJECTED: "rejected: ",
    CloseReason.TIMEOUT: "",
}


def unreliable_types(
    transport: ManagedConnection, unreliable_data: frozenset[int] = _UNRELIABLE_DATA
) -> frozenset[int]:
    """
    The frame types a session writes on ``transport``'s unreliable channel:
    none on a stream; probes only once the reliable channel was asked for;
    else probes and ``unreliable_data`` (application data and requests).
    """
    if not transport.unreliable_channel:
        return _NONE_UNRELIABLE
    return _ALWAYS_UNRELIABLE if transport.reliable_data else unreliable_data


def call_application(method: Callable[..., Any], *args: Any) -> None:
    """Call an application callback; an exception is logged, never raised into the protocol."""
    try:
        method(*args)
    except Exception:
        _log.failure("application callback {name} failed", Failure(), name=method.__name__)


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
    #: Frame types that carry application messages: DATA and a topology's
    #: own (p2p's BROADCAST). Limited like DATA, and on a datagram transport
    #: sent on the unreliable channel unless the reliable one was asked for.
    data_types: frozenset[int] = DATA_TYPES
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
    #: Keys and rules for encrypted sessions (``None``: cleartext); see :mod:`netmodels.runtime.secure`.
    security: SessionSecurity | None = None

    @property
    def max_body(self) -> int:
        """The largest body a frame may carry (see :class:`~netmodels.core.handshake.SessionRules`)."""
        return self.rules.max_body

    @property
    def max_data_body(self) -> int:
        """The largest DATA body (and REQUEST/RESPONSE body plus its id) one message may carry."""
        return self.rules.max_data_body

    @cached_property
    def unreliable_data(self) -> frozenset[int]:
        """Frame types on a datagram transport's unreliable channel, unless the reliable one was asked for."""
        if self.data_types == DATA_TYPES:
            return _UNRELIABLE_DATA
        return _ALWAYS_UNRELIABLE | self.data_types | _REQUEST_TYPES

    @cached_property
    def socket_options(self) -> SessionSocketOptions:
        """``TCP_NODELAY`` and kernel keepalive, for each connection (and the node's listeners)."""
        keepalive = self.keepalive if self.kernel_keepalive else None
        return SessionSocketOptions(keepalive, self.user_timeout)

    @cached_property
    def hello_frame(self) -> bytes:
        """Our HELLO, encoded once for every connection."""
        return self.rules.hello_frame

    @cached_property
    def rules(self) -> SessionRules:
        """What the session machines of this node share (built once)."""
        return SessionRules(
            hello=self.hello,
            keepalive=self.keepalive,
            max_frame=self.max_frame,
            handshake_timeout=self.handshake_timeout,
            request_timeout=self.request_timeout,
            check_peer=self.check_peer,
            authenticate=self.authenticate,
            # The node's own dict, which its topology fills in at build time.
            topology_types=self.handlers,
            max_unreliable_body=self.max_unreliable_body,
            # The per-message path, with nothing in between: the
            # application's own method.
            deliver=self.application.message_received,
            resolve=_resolve,
            reject=_reject,
        )


def _resolve(token: object, response: bytes) -> None:
    # A request's token: its Deferred, or send_request's pair of callables.
    if type(token) is tuple:
        try:
            token[0](response)
        except Exception:
            _log.failure("response handler failed")
    else:
        token.callback(response)  # type: ignore[attr-defined]


def _reject(token: object, error: Exception) -> None:
    if type(token) is tuple:
        try:
            token[1](error)
        except Exception:
            _log.failure("request error handler failed")
    else:
        token.errback(error)  # type: ignore[attr-defined]


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

    @property
    def backlog(self) -> int:
        """Bytes written since Twisted paused us (0 while writable)."""
        return self._backlog

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


@implementer(ISession, ISessionOutput, IPushProducer, ILivenessObserver)
class Session(SlowConsumerPolicy, Protocol):
    """
    The netmodels wire protocol over one stream connection: the Twisted
    adapter of a :class:`~netmodels.core.session.SessionMachine`.
    """

    transport: ManagedConnection  # type: ignore[assignment]

    def __init__(self, settings: SessionSettings, clock: IReactorTime) -> None:
        # Every attribute is set here, in one order, including those Twisted
        # sets later: instances then share one key table (CPython's split
        # dicts), which matters at 10,000 connections.
        self.transport = None  # type: ignore[assignment]
        self.connected = 0
        self.settings = settings
        self.clock = clock
        self.application = settings.application
        self.record: ConnectionRecord | None = None
        #: The protocol, sans-IO; this object carries out its actions.
        self.machine = SessionMachine(settings.rules, self)
        # One timer for the handshake deadline and keepalive (on the node's
        # wheel), one for request deadlines (exact, on the clock).
        self._timer: IDelayedCall | _WheelTimer | None = None
        self._request_call: IDelayedCall | None = None
        #: False while Twisted holds more than its buffer size unsent for us.
        self.writable = True
        self._backlog = 0
        self._slow_call: IDelayedCall | None = None
        self._unreliable = _NONE_UNRELIABLE
        self._data_types = settings.data_types

    # IPeer

    @property
    def connection_id(self) -> int:
        return -1 if self.record is None else self.record.id

    @property
    def node_id(self) -> str | None:
        hello = self.machine.hello
        return None if hello is None else hello.node_id

    @property
    def role(self) -> str | None:
        hello = self.machine.hello
        return None if hello is None else hello.role

    @property
    def peer_hello(self) -> Hello | None:
        """The peer's HELLO, once accepted."""
        return self.machine.hello

    @property
    def bye_received(self) -> bool:
        """The peer said BYE: it closed on purpose (a bare FIN may be a crash)."""
        return self.machine.bye_received

    def send(self, payload: bytes) -> None:
        """Send one DATA message; see :meth:`netmodels.runtime.interfaces.IPeer.send`."""
        self.machine.send(payload)

    def request(self, payload: bytes, timeout: float | None = None) -> defer.Deferred[bytes]:
        """Send a REQUEST; see :meth:`netmodels.runtime.interfaces.IPeer.request`."""
        deferred: defer.Deferred[bytes] = defer.Deferred()
        try:
            self.machine.request(deferred, payload, self.clock.seconds(), timeout)
        except PeerClosed as e:
            return defer.fail(e)
        return deferred

    def send_request(
        self,
        payload: bytes,
        on_response: Callable[[bytes], object],
        on_error: Callable[[Exception], object],
        timeout: float | None = None,
    ) -> None:
        """
        Send a REQUEST, as :meth:`request` does, answered through callables
        instead of a ``Deferred``: ``on_response(response_bytes)``, or
        ``on_error(error)`` with ``RequestTimeout``, ``RemoteError`` or
        ``PeerClosed``. Exactly one of them is called, never from within
        this call. Raises ``MessageTooLarge`` over the peer's limit and
        ``PeerClosed`` when the session is not open (nor closing).

        For clients with many requests in flight: a ``Deferred`` per
        request costs about a microsecond, as much as the rest of the
        client's work on a request. An exception raised by either callable
        is logged; the session goes on.
        """
        self.machine.request((on_response, on_error), payload, self.clock.seconds(), timeout)

    def close(self) -> None:
        """Say BYE, then FIN (RST if the write buffer does not drain in time)."""
        self.machine.close(CloseReason.CLEAN)

    def reset(self) -> None:
        """RST now: recorded ``aborted`` here, ``reset`` at the peer."""
        self.machine.abort(CloseReason.ABORTED)

    # ISession

    def write_frame(self, frame: bytes, corked: bool = False) -> None:
        """
        Send an already encoded frame, for fan-out: a message sent to many
        peers is framed once. Raises ``MessageTooLarge`` over the peer's
        frame limit, and does nothing unless the session is open.
        ``corked``: written at the end of the reactor turn with the rest of
        a burst (see ``ManagedConnection.cork``).
        """
        machine = self.machine
        limit = machine.max_data if frame[4] in self._data_types else machine.max_body
        if len(frame) - 5 > limit:
            raise MessageTooLarge(f"frame of {len(frame) - 4} bytes exceeds the peer's limit of {limit + 1}")
        # This runs once per peer per message: the machine's phase, read directly.
        if machine.phase is not _OPEN:
            return
        machine.record.messages_out += 1
        self._send(frame, corked)

    def end(self, reason: CloseReason, detail: str = "", fatal: bool = False) -> None:
        """Say BYE with ``reason``, then close by the close policy; nothing once closing."""
        self.machine.close(reason, detail, fatal)

    def protocol_error(self, detail: str, fatal: bool = False) -> None:
        """The peer broke the protocol (a topology's frame did not parse): end with ``protocol-error``."""
        self.machine.protocol_error(detail, fatal)

    def abandon(self, reason: CloseReason, detail: str = "") -> None:
        """Close by the close policy without a BYE (the peer is deemed unreachable)."""
        self.machine.abandon(reason, detail)

    def resetKeepalive(self) -> None:
        """The transport heard the peer without passing data up (a datagram ACK): it is alive."""
        if self.record is not None:
            self.machine.traffic(self.clock.seconds())

    # Twisted

    def connectionMade(self) -> None:
        transport = self.transport
        self.record = transport.record
        self._unreliable = unreliable_types(transport, self.settings.unreliable_data)
        # An accepted connection inherits its options from the node's listener.
        self.settings.socket_options.apply(transport, transport.record.direction is _INBOUND)
        transport.registerProducer(self, True)
        self._begin()

    def _begin(self) -> None:
        """The connection is set up: start the protocol (a secure session handshakes first)."""
        self.machine.start(self.transport.record, self.clock.seconds())

    def dataReceived(self, data: bytes) -> None:
        self.machine.receive(data, self.clock.seconds())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._timer, self._request_call, self._slow_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._request_call = self._slow_call = None
        self.machine.connection_lost()

    # ISessionOutput: the machine's actions

    transmit = SlowConsumerPolicy._send

    def opened(self, hello: Hello) -> None:
        self.transport.mark_open(hello.node_id)
        call_application(self.application.peer_ready, self)

    def request_received(self, request_id: int, payload: bytes) -> None:
        machine = self.machine
        try:
            result = self.application.request_received(self, payload)
        except Exception as e:
            # The caller gets the error as RemoteError; here it is a line, not a traceback.
            _log.warn("request handler answered with an error: {error!r}", error=e)
            machine.respond_error(request_id, str(e))
            return
        if type(result) is bytes:
            # The usual answer, without isinstance's check against the Deferred ABC.
            machine.respond(request_id, result)
        elif isinstance(result, defer.Deferred):
            result.addCallbacks(
                partial(machine.respond, request_id),
                lambda failure: machine.respond_error(request_id, failure.getErrorMessage()),
            ).addErrback(lambda failure: _log.failure("responding failed", failure))
        else:
            machine.respond(request_id, result)

    def topology_frame(self, message_type: int, body: bytes) -> None:
        self.settings.handlers[message_type](self, body)

    def liveness_changed(self, state: str) -> None:
        callback = self.settings.on_liveness
        if callback is not None:
            call_application(callback, self, state)

    def use_reliable_channel(self) -> None:
        self._unreliable &= _ALWAYS_UNRELIABLE
        self.transport.use_reliable_channel()

    def ending(self, reason: CloseReason, detail: str, fatal: bool, mode: CloseMode | None) -> None:
        self._cancel_timer()
        what = _WARN.get(reason)
        if what is not None and mode is not _RST:
            _log.warn(
                "connection {id} to {peer}: {what}{detail}{closing}",
                id=self.connection_id,
                peer=self._peer_text(),
                what=what,
                detail=detail,
                closing="" if reason is CloseReason.TIMEOUT else "; closing",
            )
        self.transport.end(reason, detail, mode, fatal=fatal)

    def remote_ending(self, reason: CloseReason, detail: str, fatal: bool) -> None:
        self._cancel_timer()
        self.transport.note_remote_close(reason, detail, fatal)
        self.transport.end(CloseReason.CLEAN)

    def closed(self) -> None:
        call_application(self.application.peer_lost, self, self.machine.record_or_placeholder())

    def schedule(self, when: float) -> None:
        timer = self._timer
        if type(timer) is _WheelTimer:
            # The session's one wheel timer, moved (or re-armed from its own
            # callback) in place: no allocation per keepalive period.
            timer.rearm_at(when)
            return
        delay = max(0.0, when - self.clock.seconds())
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = (self.settings.timers or self.clock).callLater(delay, self._timer_fired)

    def schedule_requests(self, when: float) -> None:
        delay = max(0.0, when - self.clock.seconds())
        call = self._request_call
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._request_call = self.clock.callLater(delay, self._requests_fired)

    # Internals

    def _timer_fired(self) -> None:
        # The timer is kept: schedule() re-arms it (a wheel's) or replaces it.
        self.machine.timer_due(self.clock.seconds())

    def _requests_fired(self) -> None:
        self._request_call = None
        self.machine.requests_due(self.clock.seconds())

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _drop_slow_consumer(self, detail: str) -> None:
        self.machine.abort(CloseReason.REJECTED, detail)

    def _peer_text(self) -> str:
        return "?" if self.record is None else self.record.peer


class SessionFactory(Factory[Session]):
    """Builds a :class:`Session` per connection with the node's settings."""

    noisy = False

    def __init__(self, settings: SessionSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock

    @cached_property
    def protocol_class(self) -> type[Session]:
        """:class:`Session`, or with ``settings.security`` a ``SecureSession``."""
        if self.settings.security is None:
            return Session
        # Imported here: secure sessions are built on this module.
        from netmodels.runtime.secure import SecureSession

        return SecureSession

    def buildProtocol(self, addr: Any) -> Session:
        return self.protocol_class(self.settings, self.clock)
