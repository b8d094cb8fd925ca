"""The dialling side of a UDP session: its own connected socket, and the client handshake."""

from __future__ import annotations

import errno
import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.python.failure import Failure

from netmodels.core import datagram
from netmodels.core.datagram import DATA_HEADER, Kind, MalformedDatagram
from netmodels.transports._twisted_private import BurstTarget, raw_send, read_in_bursts
from netmodels.transports.udp.options import DatagramOptions, udp_address
from netmodels.transports.udp.transport import (
    DATA_KIND,
    ROUTE_PREFIX,
    SESSION_ID,
    DatagramTransport,
    SessionSocket,
    data_route,
    new_session,
)

__all__ = ["Dialler"]

#: Handshake retransmissions: first after this long, doubling, at most _HANDSHAKE_MAX.
_HANDSHAKE_RTO = 0.25
_HANDSHAKE_MAX = 2.0


class Dialler(DatagramProtocol, SessionSocket):
    """The socket of one outbound session: handshake, then the session's datagrams."""

    noisy = False

    def __init__(
        self,
        factory: Factory[Any],
        peer: tuple[str, int],
        options: DatagramOptions,
        clock: IReactorTime,
        result: defer.Deferred[Any],
    ) -> None:
        self.factory = factory
        self.peer = peer
        self.options = options
        self.clock = clock
        self.result = result
        self.nonce = secrets.randbits(64)
        self.session: DatagramTransport | None = None
        self.counters: dict[str, int] = {"malformed": 0, "forged": 0, "send_dropped": 0}
        #: The session's DATA prefix, for the port's reader (see ``read_in_bursts``).
        self.data_routes: dict[bytes, BurstTarget] = {}
        self._message = datagram.encode_init(self.nonce)
        self._resend_delay = _HANDSHAKE_RTO
        self._resend_call: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._done = False
        self._raw_send: Callable[[bytes], object] | None = None

    def begin(self) -> None:
        # The socket is connected: the kernel checks the source, the reader need not.
        read_in_bursts(self.transport, self.data_routes, ROUTE_PREFIX, peer=self.peer)
        # A real port's socket directly: Twisted's write checks the address on every call.
        self._raw_send = raw_send(self.transport)
        self._deadline = self.clock.callLater(self.options.connect_timeout, self._timed_out)
        self._transmit()

    def _transmit(self) -> None:
        self._resend_call = None
        self.send(self._message, self.peer)
        self._resend_call = self.clock.callLater(self._resend_delay, self._transmit)
        self._resend_delay = min(_HANDSHAKE_MAX, self._resend_delay * 2)

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        send = self._raw_send
        if send is not None:
            try:
                send(data)
            except OSError as e:
                if e.errno == errno.ECONNREFUSED:
                    # An earlier datagram's ICMP port unreachable (Twisted's write says so too).
                    self.connectionRefused()
                else:
                    self.counters["send_dropped"] += 1
            return
        transport = self.transport
        if transport is None:
            # The socket is gone (see stopProtocol): nothing can be sent.
            self.counters["send_dropped"] += 1
            return
        try:
            transport.write(data)  # type: ignore[call-arg]
        except OSError:
            self.counters["send_dropped"] += 1  # as the network may drop it; retransmission covers it

    def stopProtocol(self) -> None:
        """
        The socket closed. When we closed it, the session is already gone;
        otherwise the reactor closed it: Twisted's epoll reactor takes the
        EPOLLERR that an ICMP port unreachable raises on a connected socket
        (without EPOLLIN) for a disconnection, and closes the port instead of
        reading the ECONNREFUSED (``connectionRefused`` is then never called).
        Either way nothing can be sent on it any more: the peer refused us.
        """
        self._raw_send = None
        if self.session is not None:
            self.session.refused()
        elif not self._done:
            self._fail(error.ConnectionRefusedError("ICMP port unreachable (socket error)"))

    def forget(self, session: DatagramTransport) -> None:
        self.session = None
        self.data_routes.clear()
        self._close_socket()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        session = self.session
        if (
            session is not None
            and len(data) >= DATA_HEADER
            and data[0] == DATA_KIND
            and SESSION_ID.unpack_from(data, 1)[0] == session.session_id
        ):
            session.data_received(data)
            return
        try:
            packet = datagram.parse(data)
        except MalformedDatagram:
            self.counters["malformed"] += 1
            return
        if session is not None:
            if packet.session == session.session_id and packet.kind not in (Kind.ACCEPT, Kind.COOKIE):
                session.datagram_received(packet)
            elif packet.kind is not Kind.ACCEPT:
                self.counters["forged"] += 1
            return
        if self._done or packet.nonce != self.nonce:
            self.counters["forged"] += 1
            return
        if packet.kind is Kind.COOKIE:
            self._message = datagram.encode_open(packet.nonce, packet.issued, packet.mac)
            self._resend_delay = _HANDSHAKE_RTO
            self._cancel_resend()
            self._transmit()
        elif packet.kind is Kind.ACCEPT:
            self._established(packet.session)

    def _established(self, session_id: int) -> None:
        self._finish()
        host = self.transport.getHost()  # type: ignore[union-attr]
        session = new_session(
            self.factory,
            self,
            session_id,
            self.peer,
            udp_address(host.host, host.port),
            self.options,
            self.clock,
        )
        # Setting the session up runs the protocol's code, which may cancel
        # the dial (``cancel`` cannot undo it: the dial counts as done, and
        # the Deferred fails itself): then nobody wants the session.
        cancelled = self.result.called
        if session is None:
            self.send(datagram.encode_reset(session_id), self.peer)
            self._close_socket()
            if not cancelled:
                self.result.errback(error.ConnectError("factory refused the connection"))
            return
        if cancelled:
            if session.connected:
                session.abortConnection()  # RESET: the peer's session ends too
            return
        if session.connected:
            self.session = session
            self.data_routes[data_route(session_id)] = session
        self.result.callback(session.protocol if session.connected else None)

    def connectionRefused(self) -> None:
        if self.session is not None:
            self.session.refused()
        elif not self._done:
            self._fail(error.ConnectionRefusedError("ICMP port unreachable"))

    def _timed_out(self) -> None:
        self._deadline = None
        self._fail(error.TimeoutError(f"no answer within {self.options.connect_timeout:g} s"))

    def cancel(self) -> None:
        self._fail(defer.CancelledError())

    def _fail(self, reason: Exception) -> None:
        if self._done:
            return
        self._finish()
        self._close_socket()
        self.result.errback(Failure(reason))

    def _finish(self) -> None:
        self._done = True
        self._cancel_resend()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _cancel_resend(self) -> None:
        if self._resend_call is not None and self._resend_call.active():
            self._resend_call.cancel()
        self._resend_call = None

    def _close_socket(self) -> None:
        self._raw_send = None
        transport = self.transport
        if transport is not None:
            self.transport = None
            transport.stopListening()
