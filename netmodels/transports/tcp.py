"""
TCP socket details Twisted does not expose: the errno of a failed read or
write, per-socket kernel keepalive, ``TCP_USER_TIMEOUT`` and ``TCP_NODELAY``.

Twisted's ``tcp.Connection.doRead``/``writeSomeData`` turn every ``OSError``
into a bare ``ConnectionLost`` and drop the errno, so an RST and a kernel
keepalive expiry look identical. :func:`capture_errno` wraps the connection's
socket object so that the failing ``recv``/``send`` records its errno first.
What that (and :func:`direct_writer`) relies on in Twisted's internals is in
:mod:`netmodels.transports._twisted_private`, each behind a feature check.
"""

from __future__ import annotations

import math
import socket
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import tcp

from netmodels.core.keepalive import KeepaliveSettings
from netmodels.transports import _twisted_private as private
from netmodels.transports._twisted_private import send_around_buffer
from netmodels.transports.interfaces import IErrnoSource

__all__ = [
    "ACCEPT_AHEAD",
    "ErrnoObserver",
    "SessionSocketOptions",
    "accept_ahead",
    "apply_kernel_keepalive",
    "capture_errno",
    "direct_writer",
    "find_tcp_connection",
    "send_around_buffer",
    "set_no_delay",
    "unsent_bytes",
    "watch_socket",
]


#: Connections a listener holds at most, accepted but not set up yet
#: (see :func:`accept_ahead`).
ACCEPT_AHEAD = 8192


def accept_ahead(port: object, limit: int = ACCEPT_AHEAD) -> bool:
    """
    Have a listening TCP ``port`` accept every connection the kernel holds
    whenever it accepts one, holding up to ``limit`` of them until it sets
    them up: a burst of connects larger than the listen backlog then
    waits in the process, in order, instead of overflowing the kernel's
    queue, where each connect that overflows it waits a second for its
    SYN to be sent again. ``False`` for other ports (UDP, fakes).
    """
    return private.accept_ahead(port, limit)


def find_tcp_connection(transport: object) -> tcp.Connection | None:
    """
    The ``tcp.Connection`` under ``transport``, looking through wrappers
    (``ProtocolWrapper``, TLS) that keep the next layer in ``.transport``.
    ``None`` for transports without one (memory, stdio, UNIX datagrams).
    """
    for _ in range(8):
        if isinstance(transport, tcp.Connection):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


class ErrnoObserver(Protocol):
    def record_errno(self, number: int) -> None: ...


class _ErrnoRecordingSocket:
    """A socket proxy that reports the errno of a failed ``recv``/``send``."""

    __slots__ = ("_observer", "_socket")

    def __init__(self, sock: socket.socket, observer: ErrnoObserver) -> None:
        self._socket = sock
        # The observer itself, not a bound method: one object less per connection.
        self._observer = observer

    def recv(self, size: int) -> bytes:
        try:
            return self._socket.recv(size)
        except OSError as e:
            if e.errno is not None:
                self._observer.record_errno(e.errno)
            raise

    def send(self, data: Any) -> int:
        try:
            return self._socket.send(data)
        except OSError as e:
            if e.errno is not None:
                self._observer.record_errno(e.errno)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def capture_errno(transport: object, observer: ErrnoObserver) -> bool:
    """
    Arrange for ``observer.record_errno(errno)`` to be called when a ``recv`` or ``send``
    on ``transport``'s TCP socket fails (``EAGAIN`` included; the caller keeps
    the last one). Returns ``False`` when there is no TCP socket to watch, or
    this Twisted's ``tcp.Connection`` does not do its I/O where we can watch.
    """
    connection = find_tcp_connection(transport)
    if connection is None:
        # Fakes (netmodels.testing.MemoryTransport) report errnos themselves.
        if not IErrnoSource.providedBy(transport):
            return False
        transport.set_errno_observer(observer.record_errno)
        return True
    if isinstance(private.socket_of(connection), _ErrnoRecordingSocket):
        return True
    return private.swap_socket(connection, lambda sock: _ErrnoRecordingSocket(sock, observer))


def _unwrapped(sock: Any) -> socket.socket | None:
    if isinstance(sock, _ErrnoRecordingSocket):
        sock = sock._socket
    return sock if isinstance(sock, socket.socket) else None


def direct_writer(transport: object, observer: ErrnoObserver) -> Callable[[bytes], bytes] | None:
    """
    If ``transport`` *is* a plain ``tcp.Connection``: a function that sends
    bytes on its socket at once while Twisted's buffer is empty, saving a
    reactor pass, and returns what is left for ``transport.write``. ``None``
    otherwise (see :func:`netmodels.transports._twisted_private.direct_writer`).
    """
    if not isinstance(transport, tcp.Connection):
        return None
    sock = _unwrapped(private.socket_of(transport))
    if sock is None:
        return None
    return private.direct_writer(transport, sock, observer)


#: Types of transport that :func:`watch_socket` has found to be plain TCP
#: connections it can watch and send around the buffer of: their later
#: instances (every accepted connection) skip the checks.
_PLAIN_TCP_TYPES: set[type] = set()


def watch_socket(transport: object, observer: ErrnoObserver) -> socket.socket | None:
    """
    :func:`capture_errno` on ``transport`` for ``observer``; and if
    ``transport`` *is* a plain ``tcp.Connection``, its socket, for
    :func:`send_around_buffer` to send on at once while Twisted's buffer is
    empty (``None`` otherwise). What :func:`direct_writer` does, without a
    function object per connection.
    """
    kind = type(transport)
    if kind in _PLAIN_TCP_TYPES:
        sock = transport.socket  # type: ignore[attr-defined]
        if type(sock) is socket.socket:
            transport.socket = _ErrnoRecordingSocket(sock, observer)  # type: ignore[attr-defined]
            return sock
    capture_errno(transport, observer)
    if not private.can_send_around_buffer(transport):
        return None
    watched = private.socket_of(transport)  # type: ignore[arg-type]
    if isinstance(watched, _ErrnoRecordingSocket) and len(_PLAIN_TCP_TYPES) < 8:
        _PLAIN_TCP_TYPES.add(kind)
    return _unwrapped(watched)


def unsent_bytes(transport: object) -> int | None:
    """Bytes Twisted holds unsent for ``transport``'s TCP connection; ``None`` if unknown."""
    connection = find_tcp_connection(transport)
    return None if connection is None else private.unsent_bytes(connection)


def _raw_socket(transport: object) -> socket.socket | None:
    connection = find_tcp_connection(transport)
    if connection is None:
        return None
    sock = _unwrapped(private.socket_of(connection))
    if sock is None:
        return None
    # UNIX sockets ride on tcp.Connection too, without TCP options.
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def set_no_delay(transport: object) -> None:
    """``TCP_NODELAY``: small request/response messages go out at once."""
    sock = _raw_socket(transport)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def apply_kernel_keepalive(
    transport: object, settings: KeepaliveSettings, user_timeout: float | None
) -> bool:
    """
    Turn on the kernel's keepalive for ``transport`` with ``settings``
    (``SO_KEEPALIVE``, ``TCP_KEEPIDLE``, ``TCP_KEEPINTVL``, ``TCP_KEEPCNT``) and
    set ``TCP_USER_TIMEOUT`` to ``user_timeout`` seconds (``None`` or 0 leaves
    it off).

    The kernel counts in whole seconds, so fractions round up (at least 1 s);
    the application probes keep the exact bound. ``TCP_USER_TIMEOUT`` bounds
    the case kernel keepalive cannot cover: data sent and never acknowledged
    (a peer that vanished mid-write, or one that stopped reading). Returns
    ``False`` when the transport has no TCP socket.
    """
    sock = _raw_socket(transport)
    if sock is None:
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, math.ceil(settings.idle)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, math.ceil(settings.interval)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.probes)
    if user_timeout:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, math.ceil(user_timeout * 1000)))
    return True


class SessionSocketOptions:
    """
    The TCP options a session sets on its connection: ``TCP_NODELAY`` and,
    with kernel keepalive, what :func:`apply_kernel_keepalive` sets.

    Linux copies a listening socket's options to each connection it accepts,
    so a node sets them once on its listener (:meth:`apply_to_listener`),
    and an accepted connection is checked for one option instead of having
    six set (:meth:`apply`). The one checked is the one set last, and is off
    by default: a connection that was accepted before the listener had it,
    or on a system that does not copy options, gets them set as before.
    Once a connection of a listener is seen to have inherited them, the
    later ones of that listener have too (the kernel queues connections in
    the order it made them), and are not checked: no system call at all.
    """

    __slots__ = ("_inheriting", "_marker", "_options")

    def __init__(self, keepalive: KeepaliveSettings | None, user_timeout: float | None) -> None:
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        if keepalive is not None:
            options += [
                (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, math.ceil(keepalive.idle))),
                (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, math.ceil(keepalive.interval))),
                (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.probes),
            ]
            if user_timeout:
                timeout = max(1, math.ceil(user_timeout * 1000))
                options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout))
            options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        self._options = tuple(options)
        self._marker = options[-1]
        # The listeners these options were set on: True once one of their
        # connections was seen to have inherited them.
        self._inheriting: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()

    def _set(self, sock: socket.socket) -> None:
        for level, name, value in self._options:
            sock.setsockopt(level, name, value)

    def apply(self, transport: object, accepted: bool = False) -> bool:
        """
        Set the options on ``transport``'s TCP socket; for an ``accepted``
        one, only those it did not inherit from its listener. ``False`` when
        there is no TCP socket.
        """
        listener = None
        if accepted:
            connection = find_tcp_connection(transport)
            listener = None if connection is None else private.listener_of(connection)
            if listener is not None and self._inheriting.get(listener):
                return True
        sock = _raw_socket(transport)
        if sock is None:
            return False
        if accepted:
            level, name, value = self._marker
            if sock.getsockopt(level, name) == value:
                if listener is not None and listener in self._inheriting:
                    self._inheriting[listener] = True
                return True
        self._set(sock)
        return True

    def apply_to_listener(self, port: object) -> bool:
        """Set the options on a listening TCP ``port``, for its connections to inherit."""
        sock = private.listening_socket(port)
        if sock is None or sock.type != socket.SOCK_STREAM:
            return False
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        self._set(sock)
        self._inheriting[port] = False
        return True
