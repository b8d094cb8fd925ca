"""
Tests for :mod:`netmodels.runtime.dialer`: the :class:`Dialer` state machine
driven with a :class:`Clock`, a real connection manager and an endpoint whose
attempts the test settles by hand. Each test asserts on the recorded events:
``("state", state)`` on every transition and ``("delay", seconds)`` on every
hold-off scheduled.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.backoff import DEFAULT_RECONNECT_POLICY
from netmodels.core.connection import ConnectionLimits, ConnectionRecord, Direction
from netmodels.core.reasons import CloseReason
from netmodels.runtime.dialer import Dialer, DialerState, ResolvingEndpoint
from netmodels.runtime.manager import ConnectFailed, ConnectionManager, ManagedConnection

PEER = "server:1"
#: The default policy's first delays (jitter drawn as 0).
REFUSED_INITIAL = 0.5
RESET_INITIAL = 0.1
#: What the default Backoff takes off at most: half.
JITTER = 0.5
#: Far longer than any default delay.
FOREVER = 1000.0


class ManualEndpoint:
    """An endpoint whose attempts stay pending until the test settles them."""

    def __init__(self) -> None:
        self.attempts: list[tuple[defer.Deferred[Any], Factory[Any]]] = []

    def connect(self, factory: Factory[Any]) -> defer.Deferred[Any]:
        attempt: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append((attempt, factory))
        return attempt

    def refuse(self) -> None:
        attempt, _ = self.attempts[-1]
        attempt.errback(error.ConnectionRefusedError())

    def accept(self) -> ManagedConnection:
        attempt, factory = self.attempts[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(StringTransport())
        attempt.callback(protocol)
        assert isinstance(protocol, ManagedConnection)
        return protocol


def record(reason: CloseReason, fatal: bool = False) -> ConnectionRecord:
    return ConnectionRecord(id=99, direction=Direction.INBOUND, peer=PEER, reason=reason, fatal=fatal)


def drop(connection: ManagedConnection, why: Exception) -> None:
    """The connection ends, for ``why``."""
    connection.connectionLost(Failure(why))


class Harness:
    def __init__(self, keep_up: bool = True, draw: Any = lambda: 0.0, **options: Any) -> None:
        self.clock = Clock()
        self.manager = ConnectionManager(self.clock, ConnectionLimits())
        self.endpoint = ManualEndpoint()
        self.dialer = Dialer(
            self.manager,
            self.endpoint,  # type: ignore[arg-type]
            Factory.forProtocol(Protocol),
            PEER,
            self.clock,
            draw=draw,
            keep_up=keep_up,
            **options,
        )
        self.events: list[tuple[str, Any]] = []
        self._state = self.dialer.state
        self._calls: set[Any] = set()
        self.note()

    def note(self) -> None:
        """Record a transition, and any hold-off newly scheduled."""
        state = self.dialer.state
        if state is not self._state:
            self.events.append(("state", state))
            self._state = state
        for call in self.clock.getDelayedCalls():
            if call not in self._calls:
                self._calls.add(call)
                self.events.append(("delay", round(call.getTime() - self.clock.seconds(), 9)))

    def do(self, action: Any, *args: Any) -> Any:
        result = action(*args)
        self.note()
        return result

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.note()


class KeepUpTests(SynchronousTestCase):
    """The dialer behind Node.connect: keeps one connection up."""

    def test_refused_waits_then_dials_again(self) -> None:
        h = Harness()
        h.do(h.dialer.startService)
        h.do(h.endpoint.refuse)
        h.advance(REFUSED_INITIAL)
        h.do(h.endpoint.refuse)
        self.assertEqual(
            h.events,
            [
                ("state", DialerState.CONNECTING),
                ("state", DialerState.WAITING),
                ("delay", REFUSED_INITIAL),
                ("state", DialerState.CONNECTING),
                ("state", DialerState.WAITING),
                ("delay", REFUSED_INITIAL * 2),
            ],
        )

    def test_ready_resets_failures(self) -> None:
        """A handshake sets the failures back to 0: the next close waits the first delay."""
        h = Harness()
        h.do(h.dialer.startService)
        h.do(h.endpoint.refuse)
        h.advance(REFUSED_INITIAL)
        connection = h.do(h.endpoint.accept)
        self.assertEqual(h.dialer.failures, 1)
        h.do(connection.mark_open)
        self.assertEqual(h.dialer.failures, 0)
        h.do(drop, connection, error.ConnectionLost())
        self.assertEqual(
            h.events[-4:],
            [
                ("state", DialerState.CONNECTING),
                ("state", DialerState.CONNECTED),
                ("state", DialerState.WAITING),
                ("delay", RESET_INITIAL),
            ],
        )

    def test_close_without_handshake_grows(self) -> None:
        """A connection that never completed its handshake counts as one more failure."""
        h = Harness()
        h.do(h.dialer.startService)
        h.do(h.endpoint.refuse)
        h.advance(REFUSED_INITIAL)
        connection = h.do(h.endpoint.accept)
        h.do(drop, connection, error.ConnectionLost())
        self.assertEqual(h.events[-1], ("delay", RESET_INITIAL * 2))

    def test_fatal_gives_up(self) -> None:
        h = Harness()
        h.do(h.dialer.startService)
        connection = h.do(h.endpoint.accept)
        connection.note_remote_close(CloseReason.PROTOCOL_ERROR, "version", fatal=True)
        h.do(drop, connection, error.ConnectionDone())
        self.assertEqual(h.events[-1], ("state", DialerState.GAVE_UP))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.advance(FOREVER)
        self.assertEqual(len(h.endpoint.attempts), 1)

    def test_retry_fatal_after(self) -> None:
        """With ``retry_fatal_after`` a fatal close holds off that long instead of giving up."""
        h = Harness(retry_fatal_after=30.0)
        h.do(h.dialer.startService)
        connection = h.do(h.endpoint.accept)
        connection.note_remote_close(CloseReason.PROTOCOL_ERROR, "version", fatal=True)
        h.do(drop, connection, error.ConnectionDone())
        self.assertEqual(h.events[-2:], [("state", DialerState.WAITING), ("delay", 30.0)])


class EveryReasonTests(SynchronousTestCase):
    """The hold-off after each close reason is the policy's, first and grown."""

    def test_every_reason(self) -> None:
        for reason in CloseReason:
            backoff = DEFAULT_RECONNECT_POLICY.by_reason[reason]
            assert backoff is not None
            h = Harness(keep_up=False)
            h.do(h.dialer.lost, record(reason))
            # A second loss while waiting is one more failure: the delay grows.
            h.do(h.dialer.lost, record(reason))
            self.assertEqual(
                h.events,
                [
                    ("state", DialerState.WAITING),
                    ("delay", backoff.initial),
                    ("delay", backoff.initial * backoff.factor),
                ],
                reason,
            )
            self.assertEqual(len(h.clock.getDelayedCalls()), 1, reason)

    def test_fatal_for_every_reason(self) -> None:
        for reason in CloseReason:
            h = Harness(keep_up=False)
            h.do(h.dialer.lost, record(reason, fatal=True))
            self.assertEqual(h.events, [("state", DialerState.GAVE_UP)], reason)


class OnDemandTests(SynchronousTestCase):
    """keep_up=False: the owner dials; the dialer holds off after failures."""

    def test_hold_off_ends_idle(self) -> None:
        h = Harness(keep_up=False)
        attempt = h.do(h.dialer.dial)
        results: list[Any] = []
        attempt.addBoth(results.append)
        h.do(h.endpoint.refuse)
        self.assertIsInstance(results[0].value, ConnectFailed)
        self.assertIsNone(h.do(h.dialer.dial), "no dial while holding off")
        h.advance(REFUSED_INITIAL)
        self.assertEqual(
            h.events,
            [
                ("state", DialerState.CONNECTING),
                ("state", DialerState.WAITING),
                ("delay", REFUSED_INITIAL),
                ("state", DialerState.IDLE),
            ],
        )
        self.assertEqual(len(h.endpoint.attempts), 1)

    def test_connection_handed_over(self) -> None:
        """A connection made is the attempt's result, and the dialer is idle again."""
        h = Harness(keep_up=False)
        results: list[Any] = []
        h.do(h.dialer.dial).addBoth(results.append)
        connection = h.do(h.endpoint.accept)
        self.assertEqual(results, [connection])
        self.assertEqual(h.events, [("state", DialerState.CONNECTING), ("state", DialerState.IDLE)])

    def test_owner_reports_ready_and_loss(self) -> None:
        """reset() when the owner's connection is ready; lost() when it ends: the first delay."""
        h = Harness(keep_up=False)
        refused = h.do(h.dialer.dial)
        h.do(h.endpoint.refuse)
        self.failureResultOf(refused, ConnectFailed)
        h.advance(REFUSED_INITIAL)
        h.do(h.dialer.dial)
        h.do(h.endpoint.accept)
        self.assertEqual(h.dialer.failures, 1)
        h.do(h.dialer.reset)
        h.do(h.dialer.lost, record(CloseReason.RESET))
        self.assertEqual(h.events[-2:], [("state", DialerState.WAITING), ("delay", RESET_INITIAL)])

    def test_reset_cuts_hold_off(self) -> None:
        h = Harness(keep_up=False)
        h.do(h.dialer.lost, record(CloseReason.REJECTED))
        h.do(h.dialer.reset)
        self.assertEqual(
            h.events, [("state", DialerState.WAITING), ("delay", 5.0), ("state", DialerState.IDLE)]
        )
        self.assertEqual((h.dialer.failures, h.clock.getDelayedCalls()), (0, []))

    def test_stop_leaves_the_connection_up(self) -> None:
        h = Harness(keep_up=False)
        h.do(h.dialer.dial)
        connection = h.do(h.endpoint.accept)
        self.successResultOf(h.do(h.dialer.stop))
        self.assertFalse(connection.record.closed)

    def test_stop_while_connecting_on_demand(self) -> None:
        """The owner's attempt fails (cancelled); nothing is scheduled."""
        h = Harness(keep_up=False)
        attempt = h.do(h.dialer.dial)
        self.successResultOf(h.do(h.dialer.stop))
        self.failureResultOf(attempt, ConnectFailed)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_resolving_endpoint_failure_is_a_failed_attempt(self) -> None:
        """An endpoint that does not resolve fails the attempt, recorded as unreachable."""

        def resolve() -> Any:
            raise ValueError("no such endpoint")

        clock = Clock()
        manager = ConnectionManager(clock, ConnectionLimits())
        dialer = Dialer(
            manager,
            ResolvingEndpoint(resolve),
            Factory.forProtocol(Protocol),
            PEER,
            clock,
            draw=lambda: 0.0,
            keep_up=False,
        )
        self.failureResultOf(dialer.dial(), ConnectFailed)
        self.assertEqual(
            (dialer.state, dialer.last_record and dialer.last_record.reason),
            (DialerState.WAITING, CloseReason.UNREACHABLE),
        )


class StopTests(SynchronousTestCase):
    """Stop in each state: nothing stays scheduled, no attempt follows."""

    def assertStoppedForGood(self, h: Harness) -> None:
        self.assertEqual(h.dialer.state, DialerState.STOPPED)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        before = len(h.endpoint.attempts)
        h.advance(FOREVER)
        self.assertEqual(len(h.endpoint.attempts), before)
        self.assertIsNone(h.dialer.dial())

    def test_stop_idle(self) -> None:
        h = Harness()
        self.successResultOf(h.do(h.dialer.stopService))
        self.assertStoppedForGood(h)

    def test_stop_connecting(self) -> None:
        """The pending attempt is cancelled (recorded as aborted) and nothing follows."""
        h = Harness()
        h.do(h.dialer.startService)
        self.successResultOf(h.do(h.dialer.stopService))
        self.assertEqual(h.manager.history[-1].reason, CloseReason.ABORTED)
        self.assertStoppedForGood(h)

    def test_stop_connected(self) -> None:
        """Keep-up: the connection is closed, and the stop fires once it has."""
        h = Harness()
        h.do(h.dialer.startService)
        connection = h.do(h.endpoint.accept)
        stopped = h.do(h.dialer.stopService)
        self.assertNoResult(stopped)
        h.do(drop, connection, error.ConnectionDone())
        self.successResultOf(stopped)
        self.assertStoppedForGood(h)

    def test_stop_waiting(self) -> None:
        h = Harness()
        h.do(h.dialer.startService)
        h.do(h.endpoint.refuse)
        self.successResultOf(h.do(h.dialer.stopService))
        self.assertEqual(h.events[-1], ("state", DialerState.STOPPED))
        self.assertStoppedForGood(h)

    def test_stop_gave_up(self) -> None:
        h = Harness(keep_up=False)
        h.do(h.dialer.lost, record(CloseReason.PROTOCOL_ERROR, fatal=True))
        self.successResultOf(h.do(h.dialer.stop))
        self.assertStoppedForGood(h)


class DefaultDrawTests(SynchronousTestCase):
    """The shipped jitter (random.random): every other test draws 0."""

    def test_spread_within_bounds(self) -> None:
        """With the default draw, refused delays lie in [base * (1 - jitter), base] and differ."""
        state = random.getstate()
        self.addCleanup(random.setstate, state)
        random.seed(1234)
        delays = []
        for _ in range(50):
            h = Harness(keep_up=False, draw=random.random)
            h.dialer.lost(record(CloseReason.REFUSED))
            [call] = h.clock.getDelayedCalls()
            delays.append(call.getTime())
        for delay in delays:
            self.assertTrue(REFUSED_INITIAL * (1 - JITTER) <= delay <= REFUSED_INITIAL, delay)
        self.assertGreater(len(set(delays)), 40)
        self.assertLess(min(delays), REFUSED_INITIAL * (1 - JITTER / 2))
        self.assertGreater(max(delays), REFUSED_INITIAL * (1 - JITTER / 2))

    def test_default_is_random_random(self) -> None:
        """A dialer built without a draw takes its jitter from random.random."""
        state = random.getstate()
        self.addCleanup(random.setstate, state)
        random.seed(99)
        expected = REFUSED_INITIAL * (1 - JITTER * random.random())
        random.seed(99)
        clock = Clock()
        dialer = Dialer(
            ConnectionManager(clock, ConnectionLimits()),
            ManualEndpoint(),  # type: ignore[arg-type]
            Factory.forProtocol(Protocol),
            PEER,
            clock,
            keep_up=False,
        )
        dialer.lost(record(CloseReason.REFUSED))
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), expected)
