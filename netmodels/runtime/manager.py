"""
The RST-aware connection manager, shared by every topology.

One :class:`ConnectionManager` keeps a registry of every connection (inbound,
outbound and failed connect attempts), each with a :class:`ConnectionRecord`.
It observes connections by wrapping their factory (:meth:`~ConnectionManager.
wrap_factory`), so the protocols it watches need not subclass anything; it
captures the errno Twisted drops, applies connection limits, and records
exactly one :class:`~netmodels.core.reasons.CloseReason` for every close.

Closing on purpose is a stated policy (:data:`DEFAULT_CLOSE_POLICY`): every
local reason maps to a :class:`CloseMode` -- FIN, FIN then RST after a
deadline, or RST at once.
"""

from __future__ import annotations

import collections
import errno
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from netmodels.core.connection import (
    _CLOSING,
    DEFAULT_CLOSE_POLICY,
    CloseMode,
    ConnectionLimits,
    ConnectionRecord,
    ConnectionState,
    Direction,
)
from netmodels.core.reasons import CloseReason, Closure, Initiator
from netmodels.runtime.classify import classify_connect_failure, classify_connection_lost
from netmodels.transports.interfaces import IConnectionObserver, IDatagramTransport, ILivenessObserver
from netmodels.transports.tcp import send_around_buffer, watch_socket

__all__ = [
    "CORK_LIMIT",
    "RECORD_COUNTS",
    "ConnectFailed",
    "ConnectionManager",
    "ManagedConnection",
    "add_datagram_counts",
    "format_address",
]


_log = Logger(namespace="netmodels.manager")
_INFO = LogLevel.info


def _log_info(format: str, event: dict[str, Any]) -> None:
    """
    ``_log.info(format, **event)`` for the events of every connection
    (opened, closed), at less than half the cost: the event is the same
    dict, with the keys Twisted documents for every event, handed to the
    same observer; what is skipped is ``Logger.emit``'s check that the
    level is a valid one (a walk over all levels) and a copy of the fields.
    """
    event["log_logger"] = _log
    event["log_level"] = _INFO
    event["log_namespace"] = _log.namespace
    event["log_source"] = _log.source
    event["log_format"] = format
    event["log_time"] = time.time()
    _log.observer(event)


#: Bytes ``ManagedConnection.cork`` holds at most before writing them out:
#: Twisted's own buffer size, past which it pauses a producer.
CORK_LIMIT = 65536


_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS})


# Counter keys of opened connections, by direction (not formatted per connection).
_OPENED = {direction: f"opened_{direction}" for direction in Direction}


#: The counts of a record that :attr:`ConnectionManager.ended` sums.
RECORD_COUNTS = ("bytes_in", "bytes_out", "messages_in", "messages_out", "probes_sent", "probes_unanswered")


def _add_counts(totals: collections.Counter[str], record: ConnectionRecord) -> None:
    for name in RECORD_COUNTS:
        totals[name] += getattr(record, name)
    datagram = record.extra.get("datagram")
    if datagram is not None:
        add_datagram_counts(totals, datagram())


def add_datagram_counts(totals: collections.Counter[str], status: Mapping[str, Any]) -> None:
    """Add a datagram session's ``datagram_status()`` counts to ``totals`` (``unreliable_lost``, ...)."""
    totals["datagrams_in"] += status["datagrams_in"]
    totals["datagrams_out"] += status["datagrams_out"]
    totals["retransmissions"] += status["retransmissions"]
    for name, count in status["unreliable"].items():
        totals["unreliable_" + name] += count


class ConnectFailed(Exception):
    """A connect attempt failed; :attr:`record` says why, :attr:`cause` is Twisted's error."""

    def __init__(self, record: ConnectionRecord, cause: BaseException) -> None:
        super().__init__(f"connect to {record.peer} failed: {record.reason} ({record.detail or cause})")
        self.record = record
        self.cause = cause


def format_address(address: IAddress | None) -> str:
    """``IPv4Address(TCP, '127.0.0.1', 80)`` -> ``"127.0.0.1:80"``; IPv6 in brackets."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        return str(name) if name else "unknown"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _transport_name(address: IAddress | None) -> str:
    # Constants, not str.lower(): every record keeps this string.
    kind = getattr(address, "type", None)
    if kind == "UDP":
        return "udp"
    if kind == "TCP":
        return "tcp"
    return "unix" if getattr(address, "name", None) is not None else "tcp"


# (wrapper class, what its transport provides) -> the declaration that
# ProtocolWrapper.makeConnection makes with directlyProvides, so that a
# wrapper provides what its transport does. zope.interface shares one
# declaration among such instances anyway; finding it again for every
# connection costs more than the rest of setting up the wrapper.
_PROVIDES: dict[tuple[type, Any], Any] = {}


def _provide_like(connection: ProtocolWrapper, transport: object) -> None:
    spec = providedBy(transport)
    key = (type(connection), spec)
    provides = _PROVIDES.get(key)
    if provides is not None:
        connection.__provides__ = provides  # type: ignore[attr-defined]
        return
    directlyProvides(connection, spec)
    if len(_PROVIDES) < 64:
        _PROVIDES[key] = connection.__provides__


@implementer(IConnectionObserver)
class ManagedConnection(ProtocolWrapper):
    """
    The manager's view of one live connection: wraps the real protocol and is
    its transport. Protocols reach it as ``self.transport`` to report state
    (:meth:`mark_open`) or end the connection with a reason (:meth:`end`).

    On a datagram transport (:class:`~netmodels.transports.interfaces.
    IDatagramTransport`) it has an unreliable channel too: the protocol
    says which writes take it (:meth:`write_unreliable`).
    """

    factory: _ManagedFactory
    # The TCP (or TLS, or memory) transport under us; Any because the
    # interfaces Twisted declares lack abortConnection and getHandle.
    transport: Any

    def __init__(self, factory: _ManagedFactory, wrapped: Protocol, record: ConnectionRecord):
        # Every attribute is set here, in one order (see Session.__init__).
        super().__init__(factory, wrapped)  # type: ignore[arg-type]
        self.transport = None
        self.connected = 0
        self.record = record
        self.manager = factory.manager
        self.host = record.peer
        self._os_errno: int | None = None
        self._pending: Closure | None = None
        self._abort_call: IDelayedCall | None = None
        self._close_callbacks: list[Callable[[ConnectionRecord], None]] | None = None
        self._producer: Any = None
        # Plain TCP: its socket, for writes that go straight to it while
        # Twisted's buffer is empty (see send_around_buffer).
        self._direct: socket.socket | None = None
        # Fan-out frames held until the end of the reactor turn (see cork()).
        self._corked: list[bytes] | None = None
        self._corked_size = 0
        #: The datagram transport under us, for its unreliable channel; None on a stream.
        self._datagram: IDatagramTransport | None = None
        self._corked_unreliable: list[bytes] | None = None
        #: Whether writes may take an unreliable channel (a datagram transport's).
        self.unreliable_channel = False
        # Told when the transport hears the peer without data (a datagram ACK).
        self._liveness: ILivenessObserver | None = wrapped if ILivenessObserver.providedBy(wrapped) else None
        # A connection turned away never connects the protocol it wraps.
        self._wrapped_connected = False

    # Twisted side

    def makeConnection(self, transport: Any) -> None:
        record = self.record
        peer = transport.getPeer()
        record.peer = format_address(peer)
        record.transport = _transport_name(peer)
        self.host = str(getattr(peer, "host", record.peer))
        self.transport = transport
        self.connected = 1
        self._direct = watch_socket(transport, self)
        if IDatagramTransport.providedBy(transport):
            self._datagram = transport
            self.unreliable_channel = True
            # A datagram session's loss, duplicate and retransmission counts,
            # computed when the status is read, not on every datagram.
            record.extra["datagram"] = transport.datagram_status
        manager = self.manager
        refusal = manager._admit(self)
        manager._opened(self)
        if refusal is not None:
            # Turned away before the application ever sees it.
            payload = self.factory.rejection_payload
            if payload is not None:
                record.messages_out += 1
                self.write(payload(CloseReason.REJECTED, refusal))
            self.end(CloseReason.REJECTED, refusal)
            return
        self._wrapped_connected = True
        # What ProtocolWrapper.makeConnection does (we are connected, and our
        # factory keeps no registry), with its interface declaration cached.
        _provide_like(self, transport)
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        if self.record.state is _CLOSING:
            # Closing on purpose: what the peer still sends is discarded.
            return
        self.record.bytes_in += len(data)
        try:
            self.wrappedProtocol.dataReceived(data)
        except Exception as e:
            # An application bug ends this connection, never the process or
            # the other connections.
            _log.failure("application error on connection {id}", Failure(), id=self.record.id)
            self.end(CloseReason.ABORTED, f"application error: {e!r}", CloseMode.RST)

    def write(self, data: bytes) -> None:
        corked = self._corked
        if corked is not None:
            # What was corked goes first, in the same send: order is kept.
            self._corked = None
            corked.append(data)
            data = b"".join(corked)
        self.record.bytes_out += len(data)
        direct = self._direct
        if direct is not None:
            # Twisted would buffer this and send it on the next reactor pass;
            # with nothing queued, sending now saves a pass and an epoll
            # round on every request/response. Leftovers go the usual way.
            data = send_around_buffer(self.transport, direct, self, data)
            if not data:
                return
        self.transport.write(data)

    def cork(self, data: bytes) -> None:
        """
        Write ``data`` at the end of this reactor turn, together with whatever
        else is corked until then: a fan-out burst of N messages costs one
        ``write`` (and one ``send``) per connection, not N. Any other write
        sends what is corked first, so the order of writes is kept.
        """
        corked = self._corked
        if corked is None:
            self._corked = [data]
            self._corked_size = len(data)
            self.manager._cork(self)
            return
        corked.append(data)
        self._corked_size += len(data)
        if self._corked_size >= CORK_LIMIT:
            # Hand a long burst to Twisted now, so its pause signal (and
            # the slow-consumer policy) still applies within the turn.
            self.uncork()

    def uncork(self) -> None:
        """Write what :meth:`cork` holds now."""
        corked = self._corked
        if corked is not None:
            self._corked = None
            if not self.record.closed:
                self.write(b"".join(corked))
        corked = self._corked_unreliable
        if corked is not None:
            self._corked_unreliable = None
            if not self.record.closed:
                self.write_unreliable(b"".join(corked))

    def write_unreliable(self, frames: bytes, corked: bool = False) -> None:
        """
        Write whole ``frames`` on the transport's unreliable channel (each
        may be lost; as few datagrams as hold them), or as :meth:`write`
        (:meth:`cork` if ``corked``) where there is none.
        """
        datagram = self._datagram
        if datagram is None:
            if corked:
                self.cork(frames)
            else:
                self.write(frames)
            return
        if corked:
            # Frames corked together share datagrams: a fan-out burst costs
            # one datagram per peer where it fits, not one per message.
            pending = self._corked_unreliable
            if pending is None:
                self._corked_unreliable = [frames]
                self.manager._cork(self)
            else:
                pending.append(frames)
            return
        self.record.bytes_out += len(frames)
        datagram.write_unreliable(frames)

    @property
    def reliable_data(self) -> bool:
        """Whether application data takes the reliable channel (always, on a stream)."""
        return self._datagram is None or bool(self._datagram.reliable)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer = None
        self.transport.unregisterProducer()

    def writeSequence(self, data: Any) -> None:
        self.uncork()
        data = list(data)
        self.record.bytes_out += sum(len(chunk) for chunk in data)
        self.transport.writeSequence(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._corked = self._corked_unreliable = None
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        assert reason.value is not None
        closure = self._pending or classify_connection_lost(reason.value, self._os_errno)
        self.manager._closed(self, closure)
        for callback in self._close_callbacks or ():
            callback(self.record)
        if self._wrapped_connected:
            ProtocolWrapper.connectionLost(self, reason)

    def record_errno(self, number: int) -> None:
        """The errno of a failed read or write (see :func:`netmodels.transports.tcp.capture_errno`)."""
        # The first hard error is the cause (ECONNRESET); later ones follow
        # from it (EPIPE on the next write) and transient ones mean nothing.
        if self._os_errno is None and number not in _TRANSIENT_ERRNOS:
            self._os_errno = number

    def resetKeepalive(self) -> None:
        """The transport heard the peer without passing data up (a datagram ACK): it is alive."""
        if self._liveness is not None:
            self._liveness.resetKeepalive()

    # Public side

    def mark_handshaking(self) -> None:
        """The protocol started its handshake."""
        if self.record.state is ConnectionState.CONNECTING:
            self.record.state = ConnectionState.HANDSHAKING

    def use_reliable_channel(self) -> None:
        """Tell a datagram transport that application data now takes its reliable channel."""
        if self._datagram is not None:
            self._datagram.use_reliable_channel()

    def mark_open(self, peer_id: str | None = None) -> None:
        """The protocol's handshake is done; the connection carries traffic."""
        record = self.record
        if peer_id is not None:
            record.peer_id = peer_id
        if record.state in (ConnectionState.CONNECTING, ConnectionState.HANDSHAKING):
            record.state = ConnectionState.OPEN
            self.manager._notify("ready", self)

    def on_close(self, callback: Callable[[ConnectionRecord], None]) -> None:
        """Call ``callback(record)`` once the connection has closed and been recorded."""
        if self._close_callbacks is None:
            self._close_callbacks = []
        self._close_callbacks.append(callback)

    def note_remote_close(self, reason: CloseReason, detail: str = "", fatal: bool = False) -> None:
        """The peer announced why it is closing (a BYE): record that reason."""
        if self._pending is None:
            self._pending = Closure(reason, Initiator.REMOTE, detail=detail, fatal=fatal)

    def end(
        self,
        reason: CloseReason,
        detail: str = "",
        mode: CloseMode | None = None,
        fatal: bool = False,
    ) -> None:
        """
        End the connection because of ``reason`` (recorded with initiator
        ``local``), closing the way ``mode`` says, or by the manager's policy.
        The first decision wins: a later ``end`` only escalates FIN to RST.
        """
        if mode is None:
            mode = self.manager.close_policy.get(reason, CloseMode.FIN_THEN_ABORT)
        if self._pending is None:
            self._pending = Closure(reason, Initiator.LOCAL, detail=detail, fatal=fatal)
        if not self.record.closed:
            self.record.state = ConnectionState.CLOSING
            self._close_transport(mode)

    def close(self, deadline: float | None = None) -> None:
        """Orderly close (FIN); RST if the write buffer has not drained by ``deadline``."""
        self.end(CloseReason.CLEAN, mode=CloseMode.FIN_THEN_ABORT)
        if deadline is not None and self._abort_call is not None:
            self._abort_call.reset(deadline)

    def reset(self, detail: str = "") -> None:
        """Abortive close: RST now. The peer sees ``ECONNRESET``."""
        self.end(CloseReason.ABORTED, detail, CloseMode.RST)

    def _close_transport(self, mode: CloseMode) -> None:
        transport = self.transport
        if transport is None:
            return
        if mode is CloseMode.RST:
            self._corked = self._corked_unreliable = None
            transport.abortConnection()
            return
        self.uncork()
        self.disconnecting = 1
        if self._producer is not None:
            # ITransport.loseConnection waits for a registered producer to
            # be unregistered (TLS does wait): closing means we are done.
            self._producer = None
            transport.unregisterProducer()
        transport.loseConnection()
        if mode is CloseMode.FIN_THEN_ABORT and self._abort_call is None:
            self._abort_call = self.manager.clock.callLater(
                self.manager.close_deadline, self._abort_after_deadline
            )

    def _abort_after_deadline(self) -> None:
        self._abort_call = None
        if self.record.closed or self.transport is None:
            return
        pending = self._pending
        detail = f"write buffer did not drain within {self.manager.close_deadline:g} s"
        if pending is None or pending.reason is CloseReason.CLEAN:
            self._pending = Closure(CloseReason.ABORTED, Initiator.LOCAL, detail=detail)
        self.transport.abortConnection()


class _ManagedFactory(WrappingFactory):
    protocol = ManagedConnection
    noisy = False

    def __init__(
        self,
        manager: ConnectionManager,
        wrapped: Factory[Any],
        direction: Direction,
        record: ConnectionRecord | None = None,
        rejection_payload: Callable[[CloseReason, str], bytes] | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.manager = manager
        self.direction = direction
        self.rejection_payload = rejection_payload
        self._record = record

    def buildProtocol(self, addr: IAddress) -> ManagedConnection | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        record = self._record
        self._record = None
        if record is None:
            record = self.manager._new_record(self.direction, format_address(addr))
        return ManagedConnection(self, wrapped, record)

    def registerProtocol(self, p: Any) -> None:
        pass

    def unregisterProtocol(self, p: Any) -> None:
        pass


class ConnectionManager:
    """
    The registry of connections of one node.

    :param clock: the reactor's time, for close deadlines (injected).
    :param limits: inbound limits; over them connections are ``rejected``.
    :param history: how many closed connections and failed connects to keep.
    :param close_policy: which :class:`CloseMode` each local reason uses.
    :param close_deadline: seconds an orderly close may take before RST.
    :param wall_clock: Unix time for ``opened_at``/``closed_at``.
    :param name: the node's id, for log lines.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limits: ConnectionLimits = ConnectionLimits(),
        history: int = 256,
        close_policy: Mapping[CloseReason, CloseMode] = DEFAULT_CLOSE_POLICY,
        close_deadline: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
        name: str = "",
    ) -> None:
        self.clock = clock
        #: Prefixes log lines, to tell several nodes in one process apart.
        self.name = name
        self.limits = limits
        self.close_policy = dict(close_policy)
        self.close_deadline = close_deadline
        self._wall_clock = wall_clock
        self._next_id = 1
        self.live: dict[int, ManagedConnection] = {}
        self.pending_connects: dict[int, ConnectionRecord] = {}
        self.history: collections.deque[ConnectionRecord] = collections.deque(maxlen=history)
        self.counters: collections.Counter[str] = collections.Counter()
        #: Every close and failed connect since start, by reason, initiator
        #: and direction (``history`` forgets; this does not).
        self.closes: collections.Counter[tuple[CloseReason, Initiator, Direction]] = collections.Counter()
        #: What the connections that have ended carried, summed when each
        #: ended: ``bytes_in``, ``messages_out``, ``probes_sent``, ... and, for
        #: datagram sessions, their ``datagram_status`` counts. With the live
        #: records' own counts, these are totals since start (for metrics).
        self.ended: collections.Counter[str] = collections.Counter()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._inbound = 0
        self._observers: list[Callable[[str, ManagedConnection | ConnectionRecord], None]] = []
        #: Connections holding corked writes until the end of the reactor turn.
        self._corked: list[ManagedConnection] = []

    # Wiring

    def wrap_factory(
        self,
        factory: Factory[Any],
        direction: Direction = Direction.INBOUND,
        rejection_payload: Callable[[CloseReason, str], bytes] | None = None,
    ) -> WrappingFactory:
        """A factory that builds ``factory``'s protocols under this manager."""
        return _ManagedFactory(self, factory, direction, rejection_payload=rejection_payload)

    def connect(
        self, endpoint: IStreamClientEndpoint, factory: Factory[Any], peer: str
    ) -> defer.Deferred[ManagedConnection]:
        """
        Connect ``endpoint`` with ``factory``, recording the attempt; a failed
        attempt stays in the history with its reason (``refused``, ...). The
        result is the :class:`ManagedConnection`; a failure is
        :class:`ConnectFailed`, holding the record.
        """
        record = self._new_record(Direction.OUTBOUND, peer)
        self.pending_connects[record.id] = record
        self.counters["connect_attempts"] += 1
        managed = _ManagedFactory(self, factory, Direction.OUTBOUND, record)
        attempt = endpoint.connect(managed)

        def failed(failure: Failure) -> Failure:
            self.pending_connects.pop(record.id, None)
            cause = failure.value
            assert cause is not None
            closure = classify_connect_failure(cause)
            if isinstance(failure.value, defer.CancelledError):
                closure = Closure(CloseReason.ABORTED, Initiator.LOCAL, detail="connect cancelled")
            record.state = ConnectionState.FAILED
            self._finish(record, closure)
            self.counters["connect_failures"] += 1
            _log.info(
                "[{node}] connect to {peer} failed: {reason}{errno_text}{detail_text}",
                node=self.name,
                peer=record.peer,
                reason=str(closure.reason),
                errno_text=f" ({closure.errno})" if closure.errno else "",
                detail_text=f": {closure.detail}" if closure.detail else "",
                record=record,
                event="connect-failed",
            )
            self._notify("failed", record)
            return Failure(ConnectFailed(record, cause))

        def connected(protocol: ManagedConnection) -> ManagedConnection:
            self.pending_connects.pop(record.id, None)
            return protocol

        return attempt.addCallbacks(connected, failed)

    def subscribe(self, observer: Callable[[str, Any], None]) -> None:
        """
        Call ``observer(event, subject)`` on ``"opened"``, ``"ready"`` and
        ``"closed"`` (subject: the :class:`ManagedConnection`) and ``"failed"``
        (subject: the :class:`ConnectionRecord` of a failed connect).
        """
        self._observers.append(observer)

    # Queries

    def records(self) -> Iterator[ConnectionRecord]:
        """Every known record: pending connects, live connections, then history."""
        yield from self.pending_connects.values()
        for connection in self.live.values():
            yield connection.record
        yield from reversed(self.history)

    def find(self, connection_id: int) -> ManagedConnection | None:
        """The live connection with ``connection_id``, if any."""
        return self.live.get(connection_id)

    def _cork(self, connection: ManagedConnection) -> None:
        if not self._corked:
            self.clock.callLater(0, self._uncork_all)
        self._corked.append(connection)

    def _uncork_all(self) -> None:
        corked, self._corked = self._corked, []
        for connection in corked:
            connection.uncork()

    # Commands

    def reset(self, connection: ManagedConnection) -> None:
        """Close ``connection`` with RST; recorded as ``aborted``."""
        connection.reset()

    def close(self, connection: ManagedConnection, deadline: float | None = None) -> None:
        """Close with FIN; RST if it has not finished by ``deadline`` seconds."""
        connection.close(deadline)

    def close_all(self, reason: CloseReason = CloseReason.CLEAN, detail: str = "") -> None:
        """End every live connection with ``reason``, by the close policy."""
        for connection in list(self.live.values()):
            connection.end(reason, detail)

    # Internal, called by ManagedConnection

    def _new_record(self, direction: Direction, peer: str) -> ConnectionRecord:
        record = ConnectionRecord(id=self._next_id, direction=direction, peer=peer)
        self._next_id += 1
        return record

    def _admit(self, connection: ManagedConnection) -> str | None:
        if connection.record.direction is not Direction.INBOUND:
            return None
        limits = self.limits
        if limits.max_connections is not None and self._inbound >= limits.max_connections:
            return f"connection limit of {limits.max_connections} reached"
        host = connection.host
        if limits.max_per_address is not None and self._per_address[host] >= limits.max_per_address:
            return f"limit of {limits.max_per_address} connections from {host} reached"
        return None

    def _opened(self, connection: ManagedConnection) -> None:
        record = connection.record
        record.opened_at = self._wall_clock()
        record.state = ConnectionState.HANDSHAKING
        self.live[record.id] = connection
        if record.direction is Direction.INBOUND:
            self._inbound += 1
            self._per_address[connection.host] += 1
        self.counters[_OPENED[record.direction]] += 1
        _log_info(
            "[{node}] connection {id} opened: {direction} {peer}",
            {
                "node": self.name,
                "id": record.id,
                "direction": str(record.direction),
                "peer": record.peer,
                "record": record,
                "event": "opened",
            },
        )
        self._notify("opened", connection)

    def _closed(self, connection: ManagedConnection, closure: Closure) -> None:
        record = connection.record
        if record.closed:
            return
        if self.live.pop(record.id, None) is not None and record.direction is Direction.INBOUND:
            self._inbound -= 1
            host = connection.host
            self._per_address[host] -= 1
            if self._per_address[host] <= 0:
                del self._per_address[host]
        record.state = ConnectionState.CLOSED
        self._finish(record, closure)
        _log_info(
            "[{node}] connection {id} to {peer} closed: {reason} ({initiator}{errno_text}){detail_text}",
            {
                "node": self.name,
                "id": record.id,
                "peer": record.peer,
                "reason": str(closure.reason),
                "initiator": str(closure.initiator),
                "errno_text": f", {closure.errno}" if closure.errno else "",
                "detail_text": f": {closure.detail}" if closure.detail else "",
                "record": record,
                "event": "closed",
            },
        )
        self._notify("closed", connection)

    def _finish(self, record: ConnectionRecord, closure: Closure) -> None:
        record.closed_at = self._wall_clock()
        record.reason = closure.reason
        record.initiator = closure.initiator
        record.errno = closure.errno
        record.fatal = closure.fatal
        if closure.detail:
            record.detail = closure.detail
        self.history.append(record)
        self.counters[str(closure.reason)] += 1
        # Once per connection, never per message: totals outlive the history.
        self.closes[closure.reason, closure.initiator, record.direction] += 1
        _add_counts(self.ended, record)

    def _notify(self, event: str, subject: Any) -> None:
        for observer in list(self._observers):
            try:
                observer(event, subject)
            except Exception:
                _log.failure("connection observer failed on {event}", event=event)
