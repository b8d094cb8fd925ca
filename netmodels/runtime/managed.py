"""
One managed connection: :class:`ManagedConnection`, the protocol wrapper a
:class:`~netmodels.runtime.manager.ConnectionManager` puts around every
connection it watches. It records the connection's traffic and errno, admits
or rejects it, writes around Twisted's buffer, corks fan-out bursts and closes
by the close policy; the manager keeps the registry and the counters.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import tcp
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from netmodels.core.connection import (
    _CLOSED,
    _CLOSING,
    _FAILED,
    CloseMode,
    ConnectionRecord,
    ConnectionState,
    Direction,
)
from netmodels.core.reasons import CloseReason, Closure, Initiator
from netmodels.runtime.classify import classify_connection_lost
from netmodels.transports.interfaces import IConnectionObserver, IDatagramTransport, ILivenessObserver
from netmodels.transports.tcp import send_around_buffer, watch_socket

if TYPE_CHECKING:
    from netmodels.runtime.manager import ConnectionManager

__all__ = ["CORK_LIMIT", "ManagedConnection", "format_address"]

_log = Logger(namespace="netmodels.manager")

#: Bytes ``ManagedConnection.cork`` holds at most before writing them out:
#: Twisted's own buffer size, past which it pauses a producer.
CORK_LIMIT = 65536


_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS})


def format_address(address: IAddress | None) -> str:
    """``IPv4Address(TCP, '127.0.0.1', 80)`` -> ``"127.0.0.1:80"``; IPv6 in brackets."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        return str(name) if name else "unknown"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_TCP_SERVER = tcp.Server


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
        if type(transport) is _TCP_SERVER and record.direction is Direction.INBOUND:
            # Accepted by a tcp.Port, whose buildProtocol named the record
            # after the very address getPeer() would build again.
            record.transport = "tcp"
            self.host = transport.client[0]  # type: ignore[assignment]
        else:
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
        # record.closed, inline: this runs for every keepalive probe.
        state = self.record.state
        if state is _CLOSED or state is _FAILED:
            self._corked = self._corked_unreliable = None
            return
        corked = self._corked
        if corked is not None:
            self._corked = None
            self.write(b"".join(corked))
        corked = self._corked_unreliable
        if corked is not None:
            self._corked_unreliable = None
            if not self.record.closed:  # the write above may have ended it
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
