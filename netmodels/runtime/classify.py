"""
Classifying how Twisted reports the end of a connection, or a failed
connect, as a :class:`~netmodels.core.reasons.Closure`.
"""

from __future__ import annotations

from twisted.internet import error as _error

from netmodels.core.reasons import ERRNO_REASONS, CloseReason, Closure, Initiator, errno_name

__all__ = ["classify_connect_failure", "classify_connection_lost"]


def classify_connection_lost(exc: BaseException, os_errno: int | None) -> Closure:
    """
    Classify the end of an established connection that we did not end ourselves.

    ``exc`` is the value of the failure Twisted passed to ``connectionLost``;
    ``os_errno`` is the errno captured from the failing ``recv``/``send``, since
    Twisted turns every socket error into a bare ``ConnectionLost`` and drops it.
    """
    if isinstance(exc, _error.ConnectionAborted):
        return Closure(CloseReason.ABORTED, Initiator.LOCAL)
    if os_errno is not None and os_errno in ERRNO_REASONS:
        reason, initiator = ERRNO_REASONS[os_errno]
        return Closure(reason, initiator, errno_name(os_errno))
    if isinstance(exc, _error.ConnectionDone):
        return Closure(CloseReason.CLEAN, Initiator.REMOTE)
    if isinstance(exc, OSError) and exc.errno in ERRNO_REASONS:
        reason, initiator = ERRNO_REASONS[exc.errno]
        return Closure(reason, initiator, errno_name(exc.errno))
    if _is_tls_error(exc):
        return _tls_closure(exc)
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
    if isinstance(os_errno, int) and os_errno in ERRNO_REASONS:
        reason, initiator = ERRNO_REASONS[os_errno]
        return Closure(reason, initiator, errno_name(os_errno), str(exc))
    if isinstance(exc, OSError) and exc.errno in ERRNO_REASONS:
        reason, initiator = ERRNO_REASONS[exc.errno]
        return Closure(reason, initiator, errno_name(exc.errno), str(exc))
    if _is_tls_error(exc):
        return _tls_closure(exc)
    return Closure(CloseReason.UNREACHABLE, Initiator.REMOTE, errno_name(os_errno), str(exc))


#: What OpenSSL says when a certificate is missing or not trusted (either side's verdict).
_CERTIFICATE_FAILURES = (
    "certificate verify failed",
    "certificate required",
    "unknown ca",
    "bad certificate",
    "certificate unknown",
    "peer did not return a certificate",
)


def _tls_closure(exc: BaseException) -> Closure:
    """A certificate the other side refused is ``rejected`` (fatal); other TLS failures a protocol error."""
    text = str(exc)
    if any(failure in text.lower() for failure in _CERTIFICATE_FAILURES):
        return Closure(
            CloseReason.REJECTED, Initiator.REMOTE, detail=f"TLS: authentication failed: {text}", fatal=True
        )
    return Closure(CloseReason.PROTOCOL_ERROR, Initiator.REMOTE, detail=f"TLS: {text}")


def _is_tls_error(exc: BaseException) -> bool:
    # Checked by module name so that pyOpenSSL stays an optional import.
    return type(exc).__module__.startswith("OpenSSL")
