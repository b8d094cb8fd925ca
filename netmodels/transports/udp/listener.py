"""
The listening side of UDP sessions: one socket, a stateless-cookie
handshake, sessions demultiplexed by id, and TIME_WAIT for closed ones.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorFDSet, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory
from zope.interface import implementer

from netmodels.core import datagram
from netmodels.core.datagram import DATA_HEADER, CookieJar, Kind, MalformedDatagram, Packet
from netmodels.transports._twisted_private import BurstTarget, raw_sendto, read_in_bursts
from netmodels.transports.udp.connected import (
    ConnectedSessionSocket,
    bind_address,
    descriptor_budget,
    open_connected,
    share_address,
)
from netmodels.transports.udp.options import DatagramOptions, address_label
from netmodels.transports.udp.transport import (
    DATA_KIND,
    ROUTE_PREFIX,
    SESSION_ID,
    DatagramTransport,
    SessionSocket,
    data_route,
    new_session,
)

__all__ = ["DatagramListeningPort", "Listener"]

#: A closed session's id is remembered this long, to acknowledge a resent FIN
#: instead of answering it with RESET (TCP's TIME_WAIT).
_TIME_WAIT = 10.0
#: RESETs a listening socket sends per second to unknown session ids, at most.
_RESET_RATE = 100.0
#: Seconds a stopping listener waits for its sessions to close before aborting them.
_STOP_DEADLINE = 10.0


class Listener(DatagramProtocol, SessionSocket):
    """The listening socket: handshakes without state, then sessions by id."""

    noisy = False

    def __init__(
        self,
        factory: Factory[Any],
        options: DatagramOptions,
        clock: IReactorTime,
        reactor: IReactorFDSet | None = None,
    ) -> None:
        """``reactor`` reads sessions' own sockets (see ``connected``); without it they share ours."""
        self.factory = factory
        self.options = options
        self.clock = clock
        self.cookies = CookieJar(clock.seconds)
        self.sessions: dict[int, DatagramTransport] = {}
        #: DATA prefix -> session, for the port's reader (see ``read_in_bursts``).
        self.data_routes: dict[bytes, BurstTarget] = {}
        #: (address, nonce) -> session: a resent OPEN gets the same ACCEPT.
        self.opened: dict[tuple[tuple[str, int], int], DatagramTransport] = {}
        self.time_wait: dict[int, float] = {}
        self.accepting = True
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "datagrams_in",
                "malformed",
                "oversized",
                "bad_version",
                "bad_cookie",
                "forged",
                "unknown_session",
                "resets_sent",
                "cookies_sent",
                "sessions_opened",
                "handshake_bytes_in",
                "handshake_bytes_out",
                "send_dropped",
                "shared_sessions",
            ),
            0,
        )
        self._reset_tokens = _RESET_RATE
        self._reset_refilled = clock.seconds()
        self._max_datagram = options.max_datagram
        self.host: IAddress | None = None
        self._idle: defer.Deferred[None] | None = None
        # A real port's socket directly: Twisted's write validates the
        # address on every call, and ours came from recvfrom.
        self._sendto: Callable[[bytes, tuple[str, int]], object] | None = None
        self._reactor = reactor
        #: Where sessions' own sockets bind (our address), if they get them.
        self._own_address: tuple[Any, ...] | None = None
        self.own_sockets: set[ConnectedSessionSocket] = set()
        #: How many sessions may have a socket of their own at once (see ``connected``).
        self.own_socket_budget = 0

    def startProtocol(self) -> None:
        self._sendto = raw_sendto(self.transport)
        # Each session gets the DATA of a read burst at once (else datagramReceived, one at a time).
        read_in_bursts(self.transport, self.data_routes, ROUTE_PREFIX)
        if self._reactor is not None:
            address = bind_address(self.transport.getHost())  # type: ignore[union-attr]
            if address is not None:
                family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
                try:
                    share_address(self.transport.fileno(), family)  # type: ignore[union-attr]
                except OSError:
                    return
                self._own_address = address
                self.own_socket_budget = descriptor_budget()

    def _own_socket(
        self, peer: tuple[str, int]
    ) -> tuple[ConnectedSessionSocket | None, list[tuple[bytes, tuple[str, int]]]]:
        """A socket of its own for a new session with ``peer``, if we can; and what it took for us."""
        address = self._own_address
        if address is None or self._reactor is None:
            return None, []
        try:
            if len(self.own_sockets) < self.own_socket_budget:
                sock, taken = open_connected(address, peer, self._max_datagram + 1)
            else:
                sock = None
        except OSError:
            sock = None  # out of descriptors, say
        if sock is None:
            # This session shares our socket: slower, and deaf to ICMP errors.
            self.counters["shared_sessions"] += 1
            return None, []
        own = ConnectedSessionSocket(
            self, sock, self._reactor, peer, self._max_datagram + 1, self.own_sockets.discard
        )
        self.own_sockets.add(own)
        return own, taken

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            sendto = self._sendto
            if sendto is not None:
                sendto(data, address)
            else:
                self.transport.write(data, address)  # type: ignore[union-attr]
        except OSError:
            # A full socket buffer drops a datagram, as the network may:
            # the reliable channel resends it; the unreliable one loses it.
            self.counters["send_dropped"] += 1

    def forget(self, session: DatagramTransport) -> None:
        self.data_routes.pop(data_route(session.session_id), None)
        if self.sessions.pop(session.session_id, None) is not None:
            self.time_wait[session.session_id] = self.clock.seconds() + _TIME_WAIT
            if session.opened_by is not None:
                self.opened.pop(session.opened_by, None)
        if not self.sessions and self._idle is not None:
            idle, self._idle = self._idle, None
            idle.callback(None)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        counters = self.counters
        counters["datagrams_in"] += 1
        if len(data) > self._max_datagram:
            counters["oversized"] += 1
            return
        if len(data) >= DATA_HEADER and data[0] == DATA_KIND:
            # The common case, without building a Packet.
            session = self.sessions.get(SESSION_ID.unpack_from(data, 1)[0])
            if session is not None and session.peer_address == addr:
                session.data_received(data)
                return
        try:
            packet = datagram.parse(data)
        except MalformedDatagram:
            counters["malformed"] += 1
            return
        kind = packet.kind
        if kind is Kind.DATA or kind is Kind.SEGMENT or kind is Kind.ACK or kind is Kind.RESET:
            session = self.sessions.get(packet.session)
            if session is None:
                self._unknown_session(packet, addr)
            elif session.peer_address != addr:
                # A valid id from another address: forged, or a NAT rebinding
                # we do not follow. Either way it must not touch the session.
                counters["forged"] += 1
            else:
                session.datagram_received(packet)
        elif kind is Kind.INIT:
            self._init(packet, data, addr)
        elif kind is Kind.OPEN:
            self._open(packet, data, addr)
        else:
            counters["malformed"] += 1

    def _init(self, packet: Packet, data: bytes, addr: tuple[str, int]) -> None:
        if packet.version != datagram.DATAGRAM_VERSION:
            self.counters["bad_version"] += 1
            return
        if not self.accepting:
            return
        cookie = self.cookies.mint(address_label(addr), packet.nonce)
        # Never more than 3x what an unproven address sent (it is 29 vs 64).
        assert len(cookie) <= 3 * len(data)
        self.counters["cookies_sent"] += 1
        self.counters["handshake_bytes_in"] += len(data)
        self.counters["handshake_bytes_out"] += len(cookie)
        self.send(cookie, addr)

    def _open(self, packet: Packet, data: bytes, addr: tuple[str, int]) -> None:
        existing = self.opened.get((addr, packet.nonce))
        if existing is not None:
            # Our ACCEPT was lost: the same answer again.
            self.send(datagram.encode_accept(packet.nonce, existing.session_id), addr)
            return
        if packet.version != datagram.DATAGRAM_VERSION:
            self.counters["bad_version"] += 1
            return
        self.counters["handshake_bytes_in"] += len(data)
        refusal = self.cookies.check(address_label(addr), packet)
        if refusal is not None:
            self.counters["bad_cookie"] += 1
            return
        if not self.accepting:
            return
        session_id = secrets.randbits(64)
        while session_id in self.sessions or session_id in self.time_wait:
            session_id = secrets.randbits(64)
        accept = datagram.encode_accept(packet.nonce, session_id)
        self.counters["handshake_bytes_out"] += len(accept)
        own, taken = self._own_socket(addr)
        sock: SessionSocket = self if own is None else own
        # ACCEPT first, from the session's socket: its HELLO must not overtake it.
        sock.send(accept, addr)
        assert self.host is not None
        session = new_session(self.factory, sock, session_id, addr, self.host, self.options, self.clock)
        if session is None:
            sock.send(datagram.encode_reset(session_id), addr)
            if own is not None:
                own.close()
        else:
            self.counters["sessions_opened"] += 1
            if session.connected:
                self.sessions[session_id] = session
                self.data_routes[data_route(session_id)] = session
                session.opened_by = (addr, packet.nonce)
                self.opened[session.opened_by] = session
                if own is not None:
                    own.attach(session)
            self._expire_time_wait()
        for data, source in taken:
            self.datagramReceived(data, source)

    def _unknown_session(self, packet: Packet, addr: tuple[str, int]) -> None:
        self.counters["unknown_session"] += 1
        if packet.kind is Kind.RESET:
            return
        expires = self.time_wait.get(packet.session)
        if expires is not None and expires > self.clock.seconds():
            if packet.kind is Kind.SEGMENT and packet.flags & datagram.FIN:
                # The peer missed our ACK of its FIN.
                self.send(datagram.encode_ack(packet.session, packet.sequence + 1, 0), addr)
            return
        # Like a TCP RST for a segment of no connection: the peer learns at
        # once that we restarted or forgot it. RESET is smaller than what
        # it answers, and rate-limited, so it amplifies nothing.
        now = self.clock.seconds()
        self._reset_tokens = min(_RESET_RATE, self._reset_tokens + (now - self._reset_refilled) * _RESET_RATE)
        self._reset_refilled = now
        if self._reset_tokens < 1:
            return
        self._reset_tokens -= 1
        self.counters["resets_sent"] += 1
        self.send(datagram.encode_reset(packet.session), addr)

    def _expire_time_wait(self) -> None:
        if len(self.time_wait) < 1024:
            return
        now = self.clock.seconds()
        self.time_wait = {sid: due for sid, due in self.time_wait.items() if due > now}

    def wait_idle(self) -> defer.Deferred[None]:
        if not self.sessions:
            return defer.succeed(None)
        if self._idle is None:
            self._idle = defer.Deferred()
        return self._idle


@implementer(IListeningPort)
class DatagramListeningPort:
    """The ``IListeningPort`` of a UDP server endpoint."""

    def __init__(self, port: Any, listener: Listener, clock: IReactorTime) -> None:
        self._port = port
        self.listener = listener
        self._clock = clock

    @property
    def counters(self) -> dict[str, int]:
        """Datagrams dropped by kind of fault, handshakes, RESETs sent."""
        return self.listener.counters

    def startListening(self) -> None:
        pass

    def stopListening(self) -> defer.Deferred[None]:
        """
        Stop accepting sessions; close the socket once the sessions on it have
        ended (they share it), aborting those still open after a deadline.
        """
        listener = self.listener
        listener.accepting = False
        idle = listener.wait_idle()
        deadline = self._clock.callLater(_STOP_DEADLINE, self._abort_all)

        def close(_: object) -> defer.Deferred[None] | None:
            if deadline.active():
                deadline.cancel()
            result: defer.Deferred[None] | None = self._port.stopListening()
            return result

        return idle.addCallback(close)

    def _abort_all(self) -> None:
        for session in list(self.listener.sessions.values()):
            session.abortConnection()

    def getHost(self) -> IAddress:
        host: IAddress = self._port.getHost()
        return host
