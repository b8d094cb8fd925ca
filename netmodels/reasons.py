"""
Why a connection ended: the close-reason vocabulary and its classifier.

The vocabulary is part of netmodels' public contract. Every closed connection,
and every connect attempt that failed, is recorded with exactly one
:class:`CloseReason`, an :class:`Initiator` and, where the kernel gave one, the
``errno`` name.

``initiator`` says which side's decision ended the connection: ``local`` when
this process (or its own kernel on its behalf, such as a kernel keepalive
expiry) decided; ``remote`` when the peer or the network did (FIN, RST, refusal,
ICMP unreachable).
"""

from __future__ import annotations

import enum
import errno as _errno

from attrs import frozen
from twisted.internet import error as _error

__all__ = [
    "CloseReason",
    "Closure",
    "Initiator",
    "classify_connect_failure",
    "classify_connection_lost",
    "errno_name",
]


class CloseReason(enum.StrEnum):
    """Why a connection ended. The string values are the wire/JSON names."""

    #: Orderly close: a FIN (or BYE then FIN) from either side.
    CLEAN = "clean"
    #: The peer sent RST (``ECONNRESET``, ``EPIPE``).
    RESET = "reset"
    #: We sent RST on purpose (``reset()``, ``abortConnection()``).
    ABORTED = "aborted"
    #: The connect attempt was refused (``ECONNREFUSED``).
    REFUSED = "refused"
    #: Keepalive declared the peer dead (application probes, kernel
    #: ``ETIMEDOUT``, ``TCP_USER_TIMEOUT``) or a connect attempt timed out.
    TIMEOUT = "timeout"
    #: No route to the peer (``EHOSTUNREACH``, ``ENETUNREACH``, DNS failure).
    UNREACHABLE = "unreachable"
    #: The peer broke the wire protocol (bad frame, unknown type, bad or
    #: missing HELLO, version mismatch).
    PROTOCOL_ERROR = "protocol-error"
    #: Our own limits or policy turned the connection away.
    REJECTED = "rejected"


class Initiator(enum.StrEnum):
    """Which side's decision ended a connection."""

    LOCAL = "local"
    REMOTE = "remote"


@frozen
class Closure:
    """The classified end of one connection or connect attempt."""

    reason: CloseReason
    initiator: Initiator
    errno: str | None = None
    detail: str = ""
    #: Retrying cannot help (version or topology mismatch, bad credentials):
    #: a reconnecting client stops and says why.
    fatal: bool = False


_ERRNO_REASONS: dict[int, tuple[CloseReason, Initiator]] = {
    _errno.ECONNRESET: (CloseReason.RESET, Initiator.REMOTE),
    _errno.EPIPE: (CloseReason.RESET, Initiator.REMOTE),
    _errno.ECONNABORTED: (CloseReason.RESET, Initiator.REMOTE),
    _errno.ETIMEDOUT: (CloseReason.TIMEOUT, Initiator.LOCAL),
    _errno.EHOSTUNREACH: (CloseReason.UNREACHABLE, Initiator.REMOTE),
    _errno.ENETUNREACH: (CloseReason.UNREACHABLE, Initiator.REMOTE),
    _errno.EHOSTDOWN: (CloseReason.UNREACHABLE, Initiator.REMOTE),
    _errno.ENETDOWN: (CloseReason.UNREACHABLE, Initiator.REMOTE),
    _errno.ECONNREFUSED: (CloseReason.REFUSED, Initiator.REMOTE),
}


def errno_name(number: int | None) -> str | None:
    """``104`` -> ``"ECONNRESET"``; ``None`` or unknown numbers give ``None``."""
    if number is None:
        return None
    return _errno.errorcode.get(number)


def classify_connection_lost(exc: BaseException, os_errno: int | None) -> Closure:
    """
    Classify the end of an established connection that we did not end ourselves.

    ``exc`` is the value of the failure Twisted passed to ``connectionLost``;
    ``os_errno`` is the errno captured from the failing ``recv``/``send``, since
    Twisted turns every socket error into a bare ``ConnectionLost`` and drops it.
    """
    if isinstance(exc, _error.ConnectionAborted):
        return Closure(CloseReason.ABORTED, Initiator.LOCAL)
    if os_errno is not None and os_errno in _ERRNO_REASONS:
        reason, initiator = _ERRNO_REASONS[os_errno]
        return Closure(reason, initiator, errno_name(os_errno))
    if isinstance(exc, _error.ConnectionDone):
        return Closure(CloseReason.CLEAN, Initiator.REMOTE)
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        reason, initiator = _ERRNO_REASONS[exc.errno]
        return Closure(reason, initiator, errno_name(exc.errno))
    if _is_tls_error(exc):
        return Closure(CloseReason.PROTOCOL_ERROR, Initiator.REMOTE, detail=f"TLS: {exc}")
    # A lost connection whose errno we could not see: an RST is by far the
    # likeliest cause (see the concepts page of the docs), and saying so beats "unknown".
    return Closure(CloseReason.RESET, Initiator.REMOTE, errno_name(os_errno), detail=str(exc))


def classify_connect_failure(exc: BaseException) -> Closure:
    """Classify a failed connect attempt (the failure of ``endpoint.connect``)."""
    os_errno = getattr(exc, "osError", None)
    if isinstance(exc, _error.ConnectionRefusedError):
        return Closure(CloseReason.REFUSED, Initiator.REMOTE, "ECONNREFUSED")
    if isinstance(exc, _error.TimeoutError | _error.TCPTimedOutError):
        return Closure(CloseReason.TIMEOUT, Initiator.LOCAL, "ETIMEDOUT", detail="connect timed out")
    if isinstance(exc, _error.DNSLookupError | _error.NoRouteError | _error.UnknownHostError):
        return Closure(CloseReason.UNREACHABLE, Initiator.REMOTE, errno_name(os_errno), str(exc))
    if isinstance(os_errno, int) and os_errno in _ERRNO_REASONS:
        reason, initiator = _ERRNO_REASONS[os_errno]
        return Closure(reason, initiator, errno_name(os_errno), str(exc))
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        reason, initiator = _ERRNO_REASONS[exc.errno]
        return Closure(reason, initiator, errno_name(exc.errno), str(exc))
    if _is_tls_error(exc):
        return Closure(CloseReason.PROTOCOL_ERROR, Initiator.REMOTE, detail=f"TLS: {exc}")
    return Closure(CloseReason.UNREACHABLE, Initiator.REMOTE, errno_name(os_errno), str(exc))


def _is_tls_error(exc: BaseException) -> bool:
    # Checked by module name so that pyOpenSSL stays an optional import.
    return type(exc).__module__.startswith("OpenSSL")
