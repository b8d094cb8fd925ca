"""
Timers for a sans-IO core (:mod:`.swim`): actions kept by when they are due,
run when the core is fed the time. Its adapter keeps one real timer at
:meth:`TimerHeap.next_deadline`; a simulation just feeds that time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from attrs import define
from zope.interface import Interface, implementer

__all__ = ["ITimer", "Timer", "TimerHeap"]


class ITimer(Interface):
    """A timer on its owner's clock."""

    def cancel() -> None:
        """It will not run."""


@implementer(ITimer)
@define(eq=False)
class Timer:
    """An action due at ``when``, unless cancelled."""

    when: float
    action: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerHeap:
    """Timers by when they are due, and among those due at once, in the order they were started."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = 0

    def after(self, now: float, delay: float, action: Callable[[], None]) -> Timer:
        """Run ``action`` ``delay`` seconds after ``now``."""
        timer = Timer(now + delay, action)
        self._order += 1
        heapq.heappush(self._heap, (timer.when, self._order, timer))
        return timer

    def run_due(self, now: float) -> None:
        """Run every timer due at ``now``, those the running ones start included."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if not timer.cancelled:
                timer.action()

    def next_deadline(self) -> float | None:
        """When :meth:`run_due` has something to do next."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def clear(self) -> None:
        """Forget every timer."""
        self._heap.clear()
