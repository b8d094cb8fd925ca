"""Application.repeat: periodic work on the node's clock, stopped by stop()."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from netmodels.runtime.application import Application
from tests.test_testing import make_node


class RepeatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.application = Application()
        self.application.start(make_node(self.clock, "server", "server"))
        self.calls: list[float] = []

    def test_every_interval_on_the_node_clock(self) -> None:
        self.application.repeat(2.0, lambda: self.calls.append(self.clock.seconds()))
        self.clock.pump([1.0] * 7)
        self.assertEqual(self.calls, [2.0, 4.0, 6.0])

    def test_stop_stops_every_repeat(self) -> None:
        self.application.repeat(1.0, lambda: self.calls.append(1))
        self.application.repeat(3.0, lambda: self.calls.append(3))
        self.application.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.calls, [])

    def test_no_interval_means_never(self) -> None:
        self.application.repeat(0, lambda: self.calls.append(0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
