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

__all__ = ["ERRNO_REASONS", "CloseReason", "Closure", "Initiator", "errno_name"]


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


#: What a socket errno means for a connection: its close reason and initiator.
#: Part of the contract (tests/test_reasons.py spells it out entry by entry).
ERRNO_REASONS: dict[int, tuple[CloseReason, Initiator]] = {
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
