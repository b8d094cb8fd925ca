"""
Every use netmodels makes of Twisted's undocumented internals, in one place.

Each is behind a feature check, so that a Twisted that changes them costs a
feature (the errno of an RST, a send without a reactor pass), never a crash:

- ``tcp.Connection`` reads and writes through its ``socket`` attribute, which
  :func:`swap_socket` replaces with a proxy that records errnos;
- its write buffer is ``dataBuffer``/``offset``/``_tempDataLen``, read by
  :func:`direct_writer` (to send around an empty buffer) and
  :func:`unsent_bytes`;
- ``tcp.Port`` keeps its listening socket in ``socket``, where
  :func:`listening_socket` finds it to set options its connections inherit;
- ``udp.Port`` keeps its socket in ``socket``, which :func:`raw_sendto` uses
  to skip Twisted's per-call address validation.

``tests/test_twisted_private.py`` checks each against the installed Twisted,
and that each degrades when its check fails.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import FunctionType
from typing import Any, Protocol

from twisted.internet import tcp, udp

__all__ = [
    "BUFFER_ATTRIBUTES",
    "SOCKET_IO",
    "direct_writer",
    "io_goes_through_socket",
    "listening_socket",
    "raw_sendto",
    "socket_of",
    "swap_socket",
    "unsent_bytes",
]


class _ErrnoObserver(Protocol):
    def record_errno(self, number: int) -> None: ...


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
    sock = connection.__dict__.get("socket")
    return sock if sock is not None else None


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


def direct_writer(
    transport: object, sock: socket.socket, observer: _ErrnoObserver
) -> Callable[[bytes], bytes] | None:
    """
    For a plain ``tcp.Connection`` (not TLS or another wrapper, whose bytes
    must not be bypassed): a function that sends ``data`` on ``sock`` at once
    when Twisted's buffer is empty, and returns what is left for
    ``transport.write`` (all of it while anything is buffered). Errnos of a
    failed send go to ``observer`` (the kernel reports an RST once, and the
    read that ends the connection then only sees EOF). ``None`` when
    ``transport`` is not one, or its buffer is not where we look.
    """
    if not isinstance(transport, tcp.Connection) or not _has_buffer(transport):
        return None
    connection = transport
    send = sock.send

    def write_around_buffer(data: bytes) -> bytes:
        if (
            connection._tempDataLen
            or connection.offset != len(connection.dataBuffer)
            or not connection.connected
            or connection.disconnecting
        ):
            return data
        try:
            sent = send(data)
        except OSError as e:
            if e.errno is not None:
                observer.record_errno(e.errno)
            return data
        return data[sent:] if sent != len(data) else b""

    return write_around_buffer


def raw_sendto(port: object) -> Callable[[bytes, tuple[str, int]], object] | None:
    """``sendto`` of a listening ``udp.Port``'s socket; ``None`` for other ports (and fakes)."""
    if not isinstance(port, udp.Port):
        return None
    sock = port.__dict__.get("socket")
    if not isinstance(sock, socket.socket):
        return None
    sendto: Callable[[bytes, tuple[str, int]], object] = sock.sendto
    return sendto
