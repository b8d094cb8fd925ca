"""
TCP socket details Twisted does not expose: the errno of a failed read or
write, per-socket kernel keepalive, ``TCP_USER_TIMEOUT`` and ``TCP_NODELAY``.

Twisted's ``tcp.Connection.doRead``/``writeSomeData`` turn every ``OSError``
into a bare ``ConnectionLost`` and drop the errno, so an RST and a kernel
keepalive expiry look identical. :func:`capture_errno` wraps the connection's
socket object so that the failing ``recv``/``send`` records its errno first.
It relies on ``tcp.Connection`` reading and writing through its ``socket``
attribute, which the test suite checks against the installed Twisted.
"""

from __future__ import annotations

import math
import socket
from typing import Any, Protocol

from twisted.internet import tcp

from netmodels.core.keepalive import KeepaliveSettings

__all__ = [
    "ErrnoObserver",
    "apply_kernel_keepalive",
    "capture_errno",
    "direct_send",
    "find_tcp_connection",
    "set_no_delay",
]


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
    the last one). Returns ``False`` when there is no TCP socket to watch.
    """
    connection = find_tcp_connection(transport)
    if connection is None:
        # Fakes (netmodels.testing.MemoryTransport) report errnos themselves.
        observe = getattr(transport, "set_errno_observer", None)
        if observe is None:
            return False
        observe(observer.record_errno)
        return True
    sock = connection.socket
    if isinstance(sock, _ErrnoRecordingSocket):
        return True
    connection.socket = _ErrnoRecordingSocket(sock, observer)  # type: ignore[assignment]
    return True


#: What :func:`direct_send` relies on in ``tcp.Connection``; checked, not assumed.
_BUFFER_ATTRIBUTES = ("_tempDataLen", "offset", "dataBuffer", "connected", "disconnecting")


def direct_send(transport: object) -> socket.socket | None:
    """
    The raw socket to ``send`` on, if ``transport`` *is* a plain
    ``tcp.Connection`` (not TLS or another wrapper, whose bytes must not be
    bypassed) with the write-buffer attributes the caller checks before
    sending around Twisted's buffer; otherwise ``None``.
    """
    if not isinstance(transport, tcp.Connection):
        return None
    if not all(hasattr(transport, name) for name in _BUFFER_ATTRIBUTES):
        return None
    sock = transport.socket
    if isinstance(sock, _ErrnoRecordingSocket):
        sock = sock._socket
    return sock


def _raw_socket(transport: object) -> socket.socket | None:
    connection = find_tcp_connection(transport)
    if connection is None:
        return None
    sock = connection.socket
    if isinstance(sock, _ErrnoRecordingSocket):
        sock = sock._socket
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
