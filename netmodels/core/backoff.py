"""
Backoff and the reconnect policy, sans-IO: how long to wait before the next attempt, chosen by close reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import field, frozen

from netmodels.core.connection import ConnectionRecord
from netmodels.core.reasons import CloseReason

__all__ = ["DEFAULT_RECONNECT_POLICY", "Backoff", "ReconnectPolicy"]


@frozen
class Backoff:
    """``initial * factor ** attempt`` capped at ``maximum``, minus up to ``jitter`` of it."""

    initial: float
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.5

    def delay(self, attempt: int, draw: Callable[[], float]) -> float:
        """The delay before try ``attempt + 1`` (``attempt`` = failures so far, from 0)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * draw())


@frozen
class ReconnectPolicy:
    """Which :class:`Backoff` follows each close reason; ``None`` means stop."""

    by_reason: Mapping[CloseReason, Backoff | None] = field(factory=lambda: dict(_DEFAULT_BACKOFFS))
    #: For reasons not in ``by_reason``.
    fallback: Backoff = Backoff(1.0, 2.0, 60.0)

    def next_delay(self, record: ConnectionRecord, attempt: int, draw: Callable[[], float]) -> float | None:
        if record.fatal:
            return None
        reason = record.reason or CloseReason.RESET
        backoff = self.by_reason.get(reason, self.fallback)
        if backoff is None:
            return None
        return backoff.delay(attempt, draw)


_DEFAULT_BACKOFFS: dict[CloseReason, Backoff | None] = {
    # Nobody listens: back off, the server may take a while to come back.
    CloseReason.REFUSED: Backoff(0.5, 2.0, 30.0),
    # The peer reset us (a restart, a middlebox): try again soon.
    CloseReason.RESET: Backoff(0.1, 2.0, 10.0),
    CloseReason.CLEAN: Backoff(0.5, 2.0, 30.0),
    CloseReason.ABORTED: Backoff(0.5, 2.0, 30.0),
    CloseReason.TIMEOUT: Backoff(1.0, 2.0, 30.0),
    CloseReason.UNREACHABLE: Backoff(2.0, 2.0, 60.0),
    # The server is full: do not add to its load.
    CloseReason.REJECTED: Backoff(5.0, 2.0, 120.0),
    # Non-fatal protocol errors (a corrupted stream) may clear; fatal ones
    # (version mismatch) stop through ``ConnectionRecord.fatal``.
    CloseReason.PROTOCOL_ERROR: Backoff(5.0, 2.0, 300.0),
}


DEFAULT_RECONNECT_POLICY = ReconnectPolicy()
