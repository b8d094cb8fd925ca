"""
A timer wheel: thousands of coarse timers (keepalive, handshake deadlines)
on one reactor timer.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from types import MethodType
from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["TimerWheel"]


_log = Logger(namespace="netmodels.keepalive")

_NO_TARGET = object()


#: A wheel timer's states.
_PENDING, _CALLED, _CANCELLED = 0, 1, 2


class _WheelTimer:
    """One timer of a :class:`TimerWheel`; answers like an ``IDelayedCall``."""

    # One state field, not two flags: the slot below costs no memory.
    __slots__ = ("function", "slot", "state", "target", "wheel", "when")

    def __init__(self, wheel: TimerWheel, when: float, callback: Callable[[], object]) -> None:
        self.wheel = wheel
        self.when = when
        #: The wheel slot it waits in; entries left in other slots (moved by
        #: reset() or rearm_at()) are skipped there.
        self.slot = 0
        # A bound method is kept as its function and object: one object less
        # per pending timer, which at 10,000 connections is most of them.
        if isinstance(callback, MethodType):
            self.function: Callable[..., object] = callback.__func__
            self.target: object = callback.__self__
        else:
            self.function = callback
            self.target = _NO_TARGET
        self.state = _PENDING

    @property
    def called(self) -> bool:
        return self.state == _CALLED

    @property
    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def fire(self) -> None:
        if self.target is _NO_TARGET:
            self.function()
        else:
            self.function(self.target)

    def getTime(self) -> float:
        return self.when

    def active(self) -> bool:
        return self.state == _PENDING

    def cancel(self) -> None:
        if self.state == _PENDING:
            self.state = _CANCELLED
            self.wheel._retire()

    def reset(self, delay: float) -> None:
        self.when = self.wheel.clock.seconds() + delay
        self.wheel._insert(self)

    def rearm_at(self, when: float) -> None:
        """
        Fire at clock time ``when``, whether this timer is pending, has fired
        or was cancelled: an owner that is due again and again (keepalive)
        keeps one timer for its whole life, and its callback re-arms it
        without allocating.
        """
        wheel = self.wheel
        if self.state:
            self.state = _PENDING
            wheel._live += 1
        self.when = when
        wheel._insert(self)


class TimerWheel:
    """
    Many timers, one reactor call at a time: each deadline is rounded up to a
    multiple of ``granularity`` and the timers of one slot fire together.

    A node's sessions share one wheel for keepalive, so 10,000 idle
    connections hold a small slot entry each instead of a ``DelayedCall``,
    and probes due close together go out in one reactor pass. Timers fire at
    most ``granularity`` late, never early. The default, 1/64 s, is a power
    of two so that round deadlines stay exact.
    """

    def __init__(self, clock: IReactorTime, granularity: float = 1 / 64) -> None:
        self.clock = clock
        self.granularity = granularity
        self._slots: dict[int, list[_WheelTimer]] = {}
        self._order: list[int] = []
        self._call: IDelayedCall | None = None
        self._call_slot: int | None = None
        self._firing = False
        #: While firing, the last slot this call fires.
        self._fire_limit = 0
        self._live = 0

    def callLater(self, delay: float, callback: Callable[[], object]) -> _WheelTimer:
        """Call ``callback()`` after ``delay`` seconds (at most ``granularity`` more)."""
        timer = _WheelTimer(self, self.clock.seconds() + delay, callback)
        self._live += 1
        self._insert(timer)
        return timer

    def _retire(self) -> None:
        # A timer was cancelled or called. With none left, nothing may keep
        # the reactor busy (or a test's reactor dirty).
        self._live -= 1
        if self._live == 0:
            self._slots.clear()
            self._order.clear()
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = self._call_slot = None

    def _insert(self, timer: _WheelTimer) -> None:
        slot = math.ceil(timer.when / self.granularity)
        if self._firing and slot <= self._fire_limit:
            # Armed from a callback for a time already reached (a timer that
            # ran late re-armed for its due time): the next slot, so the
            # reactor reads what arrived meanwhile before it fires again.
            slot = self._fire_limit + 1
        timer.slot = slot
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [timer]
            heapq.heappush(self._order, slot)
        else:
            bucket.append(timer)
        if not self._firing:
            self._arm()

    def _arm(self) -> None:
        if not self._order:
            return
        first = self._order[0]
        if self._call_slot is not None and self._call_slot <= first:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call_slot = first
        self._call = self.clock.callLater(
            max(0.0, first * self.granularity - self.clock.seconds()), self._fire
        )

    def _fire(self) -> None:
        self._call = self._call_slot = None
        self._firing = True
        try:
            granularity = self.granularity
            limit = self._fire_limit = math.floor(self.clock.seconds() / granularity)
            order = self._order
            while order and order[0] <= limit:
                slot = heapq.heappop(order)
                for timer in self._slots.pop(slot, ()):
                    # Skip cancelled timers and entries left behind by a move
                    # (reset(), rearm_at()).
                    if timer.state or timer.slot != slot:
                        continue
                    timer.state = _CALLED
                    self._live -= 1
                    # timer.fire(), inlined: this runs for every connection every keepalive period.
                    target = timer.target
                    try:
                        if target is _NO_TARGET:
                            timer.function()
                        else:
                            timer.function(target)
                    except Exception:
                        _log.failure("timer callback failed")
        finally:
            self._firing = False
        self._arm()
