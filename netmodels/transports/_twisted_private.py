"""
Every use netmodels makes of Twisted's undocumented internals, in one place.

Each is behind a feature check, so that a Twisted that changes them costs a
feature (the errno of an RST, a send without a reactor pass), never a crash:

- ``tcp.Connection`` reads and writes through its ``socket`` attribute, which
  :func:`swap_socket` replaces with a proxy that records errnos;
- its write buffer is ``dataBuffer``/``offset``/``_tempDataLen``, read by
  :func:`send_around_buffer` (to send around an empty buffer) and
  :func:`unsent_bytes`;
- ``tcp.Port`` keeps its listening socket in ``socket``, where
  :func:`listening_socket` finds it to set options its connections inherit,
  and each ``tcp.Server`` it accepts keeps the port in ``server``, where
  :func:`listener_of` finds it; ``tcp.Port.doRead`` accepts through that
  socket's ``accept()`` (in ``tcp._accept``), which :func:`accept_ahead`
  replaces with one that first takes all the kernel holds;
- ``udp.Port`` keeps its socket in ``socket``, which :func:`raw_sendto` uses
  to skip Twisted's per-call address validation (and :func:`raw_send`, on a
  port connected as ``_connectedAddr`` says, its checks), and reads it in ``doRead``
  (``recvfrom`` in a loop up to ``maxThroughput`` bytes), which
  :func:`read_in_bursts` replaces on one port with a loop that hands a
  session all its DATA datagrams of one read burst at once.

``tests/test_twisted_private.py`` checks each against the installed Twisted,
and that each degrades when its check fails.
"""

from __future__ import annotations

import collections
import errno
import socket
from collections.abc import Callable
from functools import partial
from types import FunctionType
from typing import Any, Protocol

from twisted.internet import tcp, udp
from twisted.python import log

__all__ = [
    "BUFFER_ATTRIBUTES",
    "SOCKET_IO",
    "accept_ahead",
    "burst_reader",
    "can_send_around_buffer",
    "direct_writer",
    "io_goes_through_socket",
    "listener_of",
    "listening_socket",
    "raw_send",
    "raw_sendto",
    "read_in_bursts",
    "send_around_buffer",
    "socket_of",
    "swap_socket",
    "unsent_bytes",
]


class _ErrnoObserver(Protocol):
    def record_errno(self, number: int) -> None: ...


class BurstTarget(Protocol):
    """What :func:`read_in_bursts` hands the datagrams of a route to."""

    peer_address: tuple[str, int]

    def data_burst(self, batch: list[bytes]) -> None: ...


#: Methods of ``tcp.Connection`` that must do their I/O through ``self.socket``.
SOCKET_IO = ("doRead", "writeSomeData")
#: ``tcp.Connection``'s write buffer, as ``abstract.FileDescriptor`` keeps it.
BUFFER_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataLen", "connected", "disconnecting")


def io_goes_through_socket(connection_class: type = tcp.Connection) -> bool:
    """Whether ``connection_class`` reads and writes through ``self.socket`` (Python bytecode says)."""
    for name in SOCKET_IO:
        method = getattr(connection_class, name, None)
        if not isinstance(method, FunctionType) or "socket" not in method.__code__.co_names:
            return False
    return True


_SOCKET_IO = io_goes_through_socket()


def socket_of(connection: tcp.Connection) -> socket.socket | None:
    """The socket object ``connection`` does its I/O through (a proxy if swapped), if any."""
    # getattr, not __dict__: reading an instance's __dict__ makes CPython
    # build it as a dict object, one more for the collector per connection.
    sock: socket.socket | None = getattr(connection, "socket", None)
    return sock


def listening_socket(port: object) -> socket.socket | None:
    """The listening socket of a ``tcp.Port``; ``None`` for other ports (UDP, fakes)."""
    if not isinstance(port, tcp.Port):
        return None
    sock = port.__dict__.get("socket")
    return sock if isinstance(sock, socket.socket) else None


def swap_socket(connection: tcp.Connection, proxy: Callable[[Any], Any]) -> bool:
    """
    Replace ``connection``'s socket with ``proxy(socket)``; ``False`` (and
    nothing done) when this Twisted does not do its I/O through it.
    """
    if not _SOCKET_IO:
        return False
    sock = socket_of(connection)
    if sock is None:
        return False
    connection.socket = proxy(sock)
    return True


def _has_buffer(connection: object) -> bool:
    return all(hasattr(connection, name) for name in BUFFER_ATTRIBUTES)


def unsent_bytes(connection: tcp.Connection) -> int | None:
    """Bytes in Twisted's write buffer for ``connection``; ``None`` if this Twisted keeps it otherwise."""
    if not _has_buffer(connection):
        return None
    return len(connection.dataBuffer) - connection.offset + connection._tempDataLen


def can_send_around_buffer(transport: object) -> bool:
    """
    Whether :func:`send_around_buffer` may be used on ``transport``: a plain
    ``tcp.Connection`` (not TLS or another wrapper, whose bytes must not be
    bypassed) whose buffer is where we look.
    """
    return isinstance(transport, tcp.Connection) and _has_buffer(transport)


def send_around_buffer(
    connection: tcp.Connection, sock: socket.socket, observer: _ErrnoObserver, data: bytes
) -> bytes:
    """
    Send ``data`` on ``sock`` (``connection``'s own socket) at once when
    Twisted's buffer is empty, and return what is left for
    ``connection.write`` (all of it while anything is buffered). Errnos of a
    failed send go to ``observer`` (the kernel reports an RST once, and the
    read that ends the connection then only sees EOF). Only for a
    ``connection`` that passed :func:`can_send_around_buffer`.

    A function, not a closure per connection: a closure and its cells are
    five objects more for every connection, and the garbage collector
    walks each of them.
    """
    if (
        connection._tempDataLen
        or connection.offset != len(connection.dataBuffer)
        or not connection.connected
        or connection.disconnecting
    ):
        return data
    try:
        sent = sock.send(data)
    except OSError as e:
        if e.errno is not None:
            observer.record_errno(e.errno)
        return data
    return data[sent:] if sent != len(data) else b""


def direct_writer(
    transport: object, sock: socket.socket, observer: _ErrnoObserver
) -> Callable[[bytes], bytes] | None:
    """
    :func:`send_around_buffer` bound to ``transport``, ``sock`` and
    ``observer``: a function that sends ``data`` at once when Twisted's
    buffer is empty and returns what is left. ``None`` when ``transport``
    is not a plain ``tcp.Connection``, or its buffer is not where we look.
    """
    if not can_send_around_buffer(transport):
        return None
    return partial(send_around_buffer, transport, sock, observer)  # type: ignore[arg-type]


def listener_of(connection: object) -> object | None:
    """The ``tcp.Port`` that accepted ``connection`` (a ``tcp.Server``); ``None`` for others."""
    if not isinstance(connection, tcp.Server):
        return None
    return getattr(connection, "server", None)


# tcp.Port.doRead accepts through self.socket, by way of tcp._accept, which
# calls the listening socket's accept().
_PORT_ACCEPTS = (
    isinstance(getattr(tcp.Port, "doRead", None), FunctionType)
    and "socket" in tcp.Port.doRead.__code__.co_names
    and isinstance(getattr(tcp, "_accept", None), FunctionType)
    and "accept" in tcp._accept.__code__.co_names
)


#: How many held connections an accepting port hands out between two looks
#: at the kernel's queue.
_DRAIN_EVERY = 16


class _AcceptAhead:
    """
    A listening socket whose ``accept()`` first takes every connection the
    kernel holds (up to ``limit`` held here), then hands out the oldest.
    Whatever else is asked of it goes to the socket.
    """

    __slots__ = ("_held", "_limit", "_socket", "_undrained")

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self._socket = sock
        self._limit = limit
        self._held: collections.deque[tuple[socket.socket, Any]] = collections.deque()
        # Connections handed out from those held since the kernel's queue
        # was last emptied.
        self._undrained = 0

    def accept(self) -> tuple[socket.socket, Any]:
        held = self._held
        if held and self._undrained < _DRAIN_EVERY:
            # Emptied a few connection set-ups ago: the kernel's queue can
            # have grown little since, and emptying it costs a system call
            # that fails (EAGAIN) when there is nothing more.
            self._undrained += 1
            return held.popleft()
        self._undrained = 1
        accept = self._socket.accept
        try:
            while len(held) < self._limit:
                held.append(accept())
        except OSError:
            # EAGAIN: the kernel holds no more. Any other error (EMFILE, ...)
            # comes back on a later accept(), once nothing is held, and
            # Twisted deals with it as it would have.
            if not held:
                raise
        return held.popleft()

    def close(self) -> None:
        held = self._held
        while held:
            held.popleft()[0].close()
        self._socket.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def accept_ahead(port: object, limit: int) -> bool:
    """
    Make a listening ``tcp.Port`` take every connection the kernel holds
    each time it accepts one (up to ``limit`` held in the process), and set
    them up as Twisted does, ``numberAccepts`` per reactor pass.

    The kernel holds at most ``backlog`` connections that were not
    accepted yet, and drops a SYN when full: that client's ``connect``
    then waits a whole second for its retransmission. Twisted accepts a
    connection only as fast as it sets connections up, so a burst of
    connects much larger than the backlog overflows it. Taken at once,
    they wait here instead, in order. Closing the port closes those still
    held. ``False`` (and nothing done) when ``port`` is not a ``tcp.Port``
    that accepts as this expects.
    """
    if not _PORT_ACCEPTS or not isinstance(port, tcp.Port):
        return False
    sock = getattr(port, "socket", None)
    if not isinstance(sock, socket.socket):
        return False
    listener = _AcceptAhead(sock, limit)
    port.socket = listener
    accept_some = port.doRead
    reactor: Any = port.reactor
    pending: list[Any] = []

    def listening() -> bool:
        return bool(port.connected) and not port.disconnecting

    def again() -> None:
        pending.clear()
        if listening():
            do_read()

    def do_read() -> None:
        accept_some()
        # The listening socket is readable only while the kernel holds
        # connections: those held here are set up on the next pass.
        if listener._held and not pending and listening():
            pending.append(reactor.callLater(0, again))

    port.doRead = do_read  # type: ignore[method-assign]
    return True


def raw_send(port: object) -> Callable[[bytes], object] | None:
    """
    ``send`` of a connected ``udp.Port``'s socket; ``None`` for other ports
    (unconnected ones, fakes). Twisted's ``write`` checks the address and
    catches errnos on every call; the caller handles ``OSError`` itself.
    """
    if not isinstance(port, udp.Port) or not getattr(port, "_connectedAddr", None):
        return None
    sock = port.__dict__.get("socket")
    if not isinstance(sock, socket.socket):
        return None
    send: Callable[[bytes], object] = sock.send
    return send


def raw_sendto(port: object) -> Callable[[bytes, tuple[str, int]], object] | None:
    """``sendto`` of a listening ``udp.Port``'s socket; ``None`` for other ports (and fakes)."""
    if not isinstance(port, udp.Port):
        return None
    sock = port.__dict__.get("socket")
    if not isinstance(sock, socket.socket):
        return None
    sendto: Callable[[bytes, tuple[str, int]], object] = sock.sendto
    return sendto


#: The attributes of ``udp.Port`` that its ``doRead`` works with.
_UDP_READ_NAMES = ("socket", "recvfrom", "maxThroughput", "maxPacketSize", "protocol", "datagramReceived")
_UDP_READS_SOCKET = isinstance(getattr(udp.Port, "doRead", None), FunctionType) and all(
    name in udp.Port.doRead.__code__.co_names for name in _UDP_READ_NAMES
)
_READ_IGNORE = frozenset(getattr(udp, "_sockErrReadIgnore", (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)))
_READ_REFUSE = frozenset(getattr(udp, "_sockErrReadRefuse", (errno.ECONNREFUSED,)))


def read_in_bursts(
    port: object, routes: dict[bytes, BurstTarget], prefix: int, peer: tuple[str, int] | None = None
) -> bool:
    """
    Read ``port`` (a ``udp.Port``) as Twisted does, except that a datagram
    whose first ``prefix`` bytes are a key of ``routes`` (and which comes
    from that target's ``peer_address``) is not handed to the protocol: the
    target gets all of them from one read burst in one ``data_burst`` call,
    in arrival order. Any other datagram goes to ``datagramReceived`` as
    usual, after what was collected before it, so a target sees its
    datagrams in order whichever way they come.

    ``peer``: the address the port's socket is connected to (see
    :func:`burst_reader`).

    ``False`` (and nothing done) when ``port`` is not a ``udp.Port`` whose
    ``doRead`` reads ``socket`` as this expects.
    """
    if not _UDP_READS_SOCKET or not isinstance(port, udp.Port):
        return False
    sock = port.__dict__.get("socket")
    if not isinstance(sock, socket.socket):
        return False
    port.doRead = burst_reader(  # type: ignore[method-assign]
        sock,
        port,
        port.protocol,
        routes,
        prefix,
        peer,
        lambda: peer is not None or bool(port._connectedAddr),
    )
    return True


class ReadLimits(Protocol):
    """How much one read takes: ``udp.Port``'s attributes of the same names."""

    maxPacketSize: int
    #: Bytes read per call, at most; -1 once closed.
    maxThroughput: int


class DatagramSink(Protocol):
    """What :func:`burst_reader` hands the datagrams of no route to (a ``DatagramProtocol``)."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None: ...

    def connectionRefused(self) -> None: ...


def burst_reader(
    sock: socket.socket,
    limits: ReadLimits,
    sink: DatagramSink,
    routes: dict[bytes, BurstTarget],
    prefix: int,
    peer: tuple[str, int] | None = None,
    refusals: Callable[[], bool] = lambda: True,
) -> Callable[[], None]:
    """
    A ``doRead`` for the non-blocking datagram socket ``sock``, routing as
    :func:`read_in_bursts` describes; ``sink`` gets the rest, and
    ``connectionRefused`` for an ICMP error when ``refusals()`` says the
    socket reports them (a connected one).

    ``peer``: the address ``sock`` is connected to. The kernel then drops
    datagrams from anywhere else, so reads skip the source address
    (``recv``, not ``recvfrom``: building the address is about 40 % of a
    small datagram's read) and every datagram comes from ``peer``.
    """
    recvfrom = sock.recvfrom
    recv = sock.recv
    ipv6 = sock.family == socket.AF_INET6

    def flush(target: BurstTarget, batch: list[bytes]) -> None:
        try:
            target.data_burst(batch)
        except BaseException:
            log.err()

    def do_read() -> None:
        size = limits.maxPacketSize
        limit = limits.maxThroughput
        lookup = routes.get
        read = 0
        target: BurstTarget | None = None
        batch: list[bytes] = []
        addr: tuple[str, int]
        try:
            while read < limit:
                try:
                    if peer is None:
                        data, addr = recvfrom(size)
                        if ipv6:
                            addr = addr[:2]
                    else:
                        data = recv(size)
                        addr = peer
                except OSError as e:
                    number = e.args[0]
                    if number in _READ_IGNORE:
                        return
                    if number in _READ_REFUSE:
                        if target is not None:
                            flush(target, batch)
                            target = None
                        if refusals():
                            sink.connectionRefused()
                        return
                    raise
                read += len(data)
                routed = lookup(data[:prefix])
                if routed is not None and (peer is not None or routed.peer_address == addr):
                    if routed is target:
                        batch.append(data)
                        continue
                    if target is not None:
                        flush(target, batch)
                        # What ran may have closed the socket (-1).
                        limit = limits.maxThroughput
                    target = routed
                    batch = [data]
                    continue
                if target is not None:
                    flush(target, batch)
                    target = None
                try:
                    sink.datagramReceived(data, addr)
                except BaseException:
                    log.err()
                limit = limits.maxThroughput
        finally:
            if target is not None:
                # flush(), inline: at one datagram per read this runs for every datagram.
                try:
                    target.data_burst(batch)
                except BaseException:
                    log.err()

    return do_read
