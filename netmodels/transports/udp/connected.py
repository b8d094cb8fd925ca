"""
A listener's session on a socket of its own.

After the handshake, a listener bound to one address opens a second socket
on that address, connected to the new session's peer. The kernel then hands
the peer's datagrams to that socket (a connected socket is the closer
match), drops anyone else's there, and reports the ICMP errors the
session's datagrams draw (``refused``), as for a session that dialled. Its
reads skip the source address and its sends the parsing of one: about 40 %
of what a small datagram costs to read.

The listening socket is made shareable (``SO_REUSEADDR``) only once it is
bound, so binding a second listener to its port still fails. A listener on
a wildcard address keeps its sessions on its own socket: a connected socket
would answer from the address the kernel routes by, perhaps not the one the
peer sent to.
"""

from __future__ import annotations

import errno
import ipaddress
import resource
import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.transports._twisted_private import BurstTarget, burst_reader
from netmodels.transports.udp.transport import ROUTE_PREFIX, DatagramTransport, SessionSocket, data_route

__all__ = ["ConnectedSessionSocket", "descriptor_budget", "open_connected", "share_address"]

#: Sessions get sockets of their own while those hold at most this share of
#: the process's file descriptor limit; later ones share the listener's.
DESCRIPTOR_SHARE = 4
#: As ``udp.Port``: the bytes read per reactor pass, at most.
_MAX_THROUGHPUT = 256 * 1024


def descriptor_budget() -> int:
    """How many sessions may have a socket of their own in this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return int(soft) // DESCRIPTOR_SHARE


def bind_address(host: object) -> tuple[Any, ...] | None:
    """The ``bind`` address of a listener's ``getHost()``; ``None`` for a wildcard (or not IP)."""
    if isinstance(host, IPv4Address):
        address: tuple[Any, ...] = (host.host, host.port)
    elif isinstance(host, IPv6Address):
        address = (host.host, host.port, host.flowInfo, host.scopeID)
    else:
        return None
    try:
        if ipaddress.ip_address(host.host.split("%")[0]).is_unspecified:
            return None
    except ValueError:
        return None
    return address


def share_address(fileno: int, family: int) -> None:
    """Let sockets connected to peers bind the address of the bound listening socket ``fileno``."""
    # fromfd duplicates the descriptor; the option is the socket's, shared by both.
    with socket.fromfd(fileno, family, socket.SOCK_DGRAM) as listening:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def open_connected(
    address: tuple[Any, ...], peer: tuple[str, int], max_packet: int
) -> tuple[socket.socket, list[tuple[bytes, tuple[str, int]]]]:
    """
    A non-blocking socket bound to ``address`` and connected to ``peer``,
    and the datagrams it took before it was connected: for that moment it
    was one more unconnected socket on the address, and the kernel may have
    handed it others' datagrams, which belong to the listener. Raises
    ``OSError`` (out of descriptors, say).
    """
    family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind(address)
        sock.connect(peer)
        taken: list[tuple[bytes, tuple[str, int]]] = []
        while True:
            try:
                data, source = sock.recvfrom(max_packet)
            except (BlockingIOError, InterruptedError):
                break
            taken.append((data, source[:2]))
    except BaseException:
        sock.close()
        raise
    return sock, taken


class SessionOwner(Protocol):
    """The listener, as its sessions' own sockets see it."""

    counters: dict[str, int]

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None: ...

    def forget(self, session: DatagramTransport) -> None: ...


@implementer(IReadDescriptor)
class ConnectedSessionSocket(SessionSocket):
    """
    One session's own socket (see the module): its DATA goes to the session
    a read burst at once; anything else the peer sends (ACKs, segments, a
    resent OPEN) to the listener, as if the listening socket had read it.
    """

    def __init__(
        self,
        owner: SessionOwner,
        sock: socket.socket,
        reactor: IReactorFDSet,
        peer: tuple[str, int],
        max_packet: int,
        closed: Callable[[ConnectedSessionSocket], None],
    ) -> None:
        self.counters = owner.counters
        self.peer = peer
        self.session: DatagramTransport | None = None
        # Read by burst_reader on every read; -1 once closed (as udp.Port).
        self.maxPacketSize = max_packet
        self.maxThroughput = _MAX_THROUGHPUT
        self._owner = owner
        self._socket = sock
        self._send: Callable[[bytes], int] = sock.send
        self._reactor = reactor
        self._closed = closed
        self._routes: dict[bytes, BurstTarget] = {}
        self.doRead = burst_reader(sock, self, self, self._routes, ROUTE_PREFIX, peer)
        reactor.addReader(self)

    def attach(self, session: DatagramTransport) -> None:
        """Hand ``session`` its DATA from now on."""
        self.session = session
        self._routes[data_route(session.session_id)] = session

    # SessionSocket

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            self._send(data)
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                # An earlier datagram's ICMP port unreachable.
                self.connectionRefused()
            else:
                # A full socket buffer, or closed: dropped, as the network may.
                self.counters["send_dropped"] += 1

    def forget(self, session: DatagramTransport) -> None:
        self.close()
        self._owner.forget(session)

    # What the reader hands on

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self._owner.datagramReceived(data, addr)

    def connectionRefused(self) -> None:
        session = self.session
        if session is not None:
            session.refused()

    # IReadDescriptor

    def fileno(self) -> int:
        return self._socket.fileno()

    def logPrefix(self) -> str:
        return "netmodels UDP session"

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped the socket: Twisted's epoll reactor takes the
        EPOLLERR of an ICMP port unreachable (without EPOLLIN) for a lost
        connection, instead of letting the read report ECONNREFUSED.
        """
        self.close()
        self.connectionRefused()

    def close(self) -> None:
        """Stop reading and close the socket (once)."""
        if self.maxThroughput < 0:
            return
        self.maxThroughput = -1
        self._routes.clear()
        self._reactor.removeReader(self)
        self._socket.close()
        self._send = _closed_send
        self._closed(self)


def _closed_send(data: bytes) -> int:
    raise OSError(errno.EBADF, "the session's socket is closed")
