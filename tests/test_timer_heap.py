"""
The timers of SWIM's sans-IO core (netmodels.topologies.p2p.timer_heap), fed the time.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from netmodels.topologies.p2p.timer_heap import ITimer, TimerHeap


class TimerHeapTests(SynchronousTestCase):
    def test_due_timers_run_by_time_then_in_the_order_started(self) -> None:
        heap = TimerHeap()
        ran: list[str] = []
        for name, delay in (("late", 2.0), ("first", 1.0), ("second", 1.0), ("never", 5.0)):
            heap.after(10.0, delay, lambda name=name: ran.append(name))
        self.assertEqual(heap.next_deadline(), 11.0)
        heap.run_due(12.0)
        self.assertEqual((ran, heap.next_deadline()), (["first", "second", "late"], 15.0))

    def test_a_cancelled_timer_never_runs_and_is_no_deadline(self) -> None:
        heap = TimerHeap()
        ran: list[str] = []
        timer = heap.after(0.0, 1.0, lambda: ran.append("cancelled"))
        heap.after(0.0, 2.0, lambda: ran.append("kept"))
        self.assertTrue(verifyObject(ITimer, timer))
        timer.cancel()
        self.assertEqual(heap.next_deadline(), 2.0)
        heap.run_due(3.0)
        self.assertEqual((ran, heap.next_deadline()), (["kept"], None))

    def test_a_timer_started_by_a_running_one_runs_if_due(self) -> None:
        heap = TimerHeap()
        ran: list[float] = []

        def again() -> None:
            ran.append(len(ran))
            heap.after(1.0, 0.5 * len(ran), again)

        heap.after(0.0, 1.0, again)
        heap.run_due(2.0)
        # Due at 1.0, 1.5 and 2.0; the next, at 2.5, waits.
        self.assertEqual((ran, heap.next_deadline()), ([0, 1, 2], 2.5))

    def test_cleared_nothing_runs(self) -> None:
        heap = TimerHeap()
        ran: list[str] = []
        heap.after(0.0, 1.0, lambda: ran.append("x"))
        heap.clear()
        heap.run_due(5.0)
        self.assertEqual((ran, heap.next_deadline()), ([], None))
