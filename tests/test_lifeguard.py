"""
Lifeguard's bookkeeping (netmodels.topologies.p2p.lifeguard) on its own: local health
and suspicion timeouts, fed events and times.

How SWIM uses them (a suspicion's timeout, measured through packets) is in tests/test_swim.py.
"""

from __future__ import annotations

import math

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from netmodels.topologies.p2p.lifeguard import LocalHealth, Suspicion, suspicion_bounds
from netmodels.topologies.p2p.timer_heap import ITimer


@implementer(ITimer)
class RecordedTimer:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class LocalHealthTests(SynchronousTestCase):
    def test_failed_probes_without_nacks_raise_it_up_to_the_maximum(self) -> None:
        health = LocalHealth(maximum=8)
        health.probe_failed(expected_nacks=3, nacks=1)
        self.assertEqual(health.score, 2)
        health.probe_failed(expected_nacks=3, nacks=0)
        health.probe_failed(expected_nacks=3, nacks=0)
        self.assertEqual(health.score, 7)

    def test_a_failed_probe_with_every_nack_or_no_helper_says_nothing(self) -> None:
        health = LocalHealth(maximum=8)
        health.probe_failed(expected_nacks=3, nacks=3)
        health.probe_failed(expected_nacks=0, nacks=0)
        self.assertEqual(health.score, 0)

    def test_refuting_raises_it_and_each_success_lowers_it_to_zero(self) -> None:
        health = LocalHealth(maximum=8)
        health.refuted()
        health.refuted()
        self.assertEqual(health.score, 2)
        for _ in range(3):
            health.probe_succeeded()
        self.assertEqual(health.score, 0)

    def test_it_stretches_times_by_score_plus_one(self) -> None:
        health = LocalHealth(maximum=8)
        self.assertEqual(health.scale(0.5), 0.5)
        health.refuted()
        health.refuted()
        self.assertEqual(health.scale(0.5), 1.5)


class SuspicionBoundsTests(SynchronousTestCase):
    def test_the_shortest_grows_with_log10_of_the_cluster_above_its_floor(self) -> None:
        # 2.5 periods per decade, never under 5 periods: from 100 members up the floor changes nothing.
        self.assertEqual(suspicion_bounds(10, 1.0, 2.5, 5.0, 6.0), (5.0, 30.0))
        self.assertEqual(suspicion_bounds(1000, 1.0, 2.5, 5.0, 6.0), (7.5, 45.0))
        self.assertEqual(suspicion_bounds(1000, 0.5, 2.5, 5.0, 6.0), (3.75, 22.5))

    def test_a_cluster_under_ten_counts_as_ten(self) -> None:
        self.assertEqual(suspicion_bounds(2, 1.0, 4.0, 0.0, 6.0), (4.0, 24.0))


class SuspicionTests(SynchronousTestCase):
    def suspicion(self, expected: int = 2) -> Suspicion:
        return Suspicion("c", 10.0, 4.0, 24.0, expected, {"c"})

    def test_unconfirmed_it_lasts_the_maximum(self) -> None:
        self.assertEqual(self.suspicion().timeout(), 24.0)

    def test_confirmations_shrink_it_to_the_minimum(self) -> None:
        suspicion = self.suspicion()
        self.assertTrue(suspicion.confirm("d"))
        # max - (max - min) * log(confirmations + 1) / log(expected + 1)
        self.assertEqual(suspicion.timeout(), 24.0 - 20.0 * math.log(2) / math.log(3))
        self.assertTrue(suspicion.confirm("e"))
        self.assertEqual(suspicion.timeout(), 4.0)
        self.assertTrue(suspicion.confirm("f"))
        self.assertEqual(suspicion.timeout(), 4.0)

    def test_the_same_accuser_twice_is_no_confirmation(self) -> None:
        suspicion = self.suspicion()
        self.assertFalse(suspicion.confirm("c"))
        self.assertTrue(suspicion.confirm("d"))
        self.assertFalse(suspicion.confirm("d"))
        self.assertEqual(suspicion.accusers, {"c", "d"})

    def test_expecting_no_confirmation_it_lasts_the_minimum(self) -> None:
        self.assertEqual(self.suspicion(expected=0).timeout(), 4.0)

    def test_each_arming_replaces_the_timer_at_the_deadline_left(self) -> None:
        suspicion = self.suspicion()
        timers: list[RecordedTimer] = []

        def after(delay: float) -> RecordedTimer:
            timers.append(RecordedTimer(delay))
            return timers[-1]

        suspicion.arm(12.0, after)
        suspicion.confirm("d")
        suspicion.confirm("e")
        suspicion.arm(13.0, after)
        # Past its deadline already: at once.
        suspicion.arm(15.0, after)
        self.assertEqual([(t.delay, t.cancelled) for t in timers], [(22.0, True), (1.0, True), (0.0, False)])
        suspicion.cancel()
        self.assertTrue(timers[-1].cancelled)
