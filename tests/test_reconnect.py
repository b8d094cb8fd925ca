"""
Tests for reconnecting: the pure :class:`ReconnectPolicy`, and
:class:`Dialer` driving a client node on a
:class:`~netmodels.testing.MemoryNetwork`.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.backoff import Backoff, ReconnectPolicy
from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.core.frames import PROTOCOL_VERSION
from netmodels.core.reasons import CloseReason
from netmodels.runtime.dialer import DialerState
from netmodels.runtime.session import encode_bye
from tests.test_testing import (
    ADDRESS,
    EPSILON,
    Pair,
    WireTap,
    advance_by,
    advance_to,
    with_hello,
)

#: The default policy's backoff for a refused connect: 0.5 s doubling to 30 s.
REFUSED_INITIAL = 0.5
REFUSED_MAXIMUM = 30.0
#: ... for a reset: 0.1 s doubling to 10 s.
RESET_INITIAL = 0.1
#: Every default backoff doubles.
FACTOR = 2.0
#: Every default backoff takes off up to half of the delay as jitter.
JITTER = 0.5

#: Jitter draws at the two ends of random.random()'s range.
NO_JITTER = lambda: 0.0  # noqa: E731
FULL_JITTER = lambda: 1.0  # noqa: E731

#: Failures enough to reach any default maximum.
MANY_ATTEMPTS = 20

#: Far longer than any default delay.
FOREVER = 1000.0


def record(reason: CloseReason | None, fatal: bool = False) -> ConnectionRecord:
    """A closed outbound record with ``reason``."""
    return ConnectionRecord(id=1, direction=Direction.OUTBOUND, peer=ADDRESS, reason=reason, fatal=fatal)


class BackoffTests(SynchronousTestCase):
    """Backoff: exponential, capped, jitter only shortens."""

    def test_exponential(self) -> None:
        """Without jitter the delay is initial * factor ** attempt."""
        backoff = Backoff(1.0, 3.0, 1000.0)
        self.assertEqual([backoff.delay(n, NO_JITTER) for n in range(4)], [1.0, 3.0, 9.0, 27.0])

    def test_capped(self) -> None:
        """The delay never exceeds the maximum."""
        backoff = Backoff(1.0, 2.0, 5.0)
        self.assertEqual(backoff.delay(MANY_ATTEMPTS, NO_JITTER), 5.0)

    def test_huge_attempt_count(self) -> None:
        """A very large attempt count neither overflows nor exceeds the maximum."""
        self.assertEqual(Backoff(1.0, 2.0, 5.0).delay(10**6, NO_JITTER), 5.0)


class ReconnectPolicyTests(SynchronousTestCase):
    """The default policy, by close reason."""

    policy = ReconnectPolicy()

    def delays(self, reason: CloseReason, attempts: int, draw=NO_JITTER) -> list[float | None]:
        return [self.policy.next_delay(record(reason), n, draw) for n in range(attempts)]

    def test_refused_backs_off_exponentially(self) -> None:
        """A refused connect waits 0.5 s, then twice as long each time."""
        self.assertEqual(
            self.delays(CloseReason.REFUSED, 6),
            [REFUSED_INITIAL * FACTOR**n for n in range(6)],
        )

    def test_refused_capped_at_maximum(self) -> None:
        """A refused connect never waits more than its maximum."""
        delays = self.delays(CloseReason.REFUSED, MANY_ATTEMPTS)
        self.assertEqual(max(delays), REFUSED_MAXIMUM)
        self.assertEqual(delays[-1], REFUSED_MAXIMUM)

    def test_jitter_lower_bound(self) -> None:
        """A draw of 1 takes off the full jitter: half the delay."""
        self.assertEqual(
            self.delays(CloseReason.REFUSED, 3, FULL_JITTER),
            [REFUSED_INITIAL * FACTOR**n * (1 - JITTER) for n in range(3)],
        )

    def test_jitter_upper_bound(self) -> None:
        """A draw of 0 takes nothing off: the full delay."""
        self.assertEqual(self.delays(CloseReason.REFUSED, 1, NO_JITTER), [REFUSED_INITIAL])

    def test_fatal_stops(self) -> None:
        """A fatal record means stop, whatever its reason."""
        for reason in CloseReason:
            self.assertIsNone(self.policy.next_delay(record(reason, fatal=True), 0, NO_JITTER))

    def test_reset_retries_sooner_than_refused(self) -> None:
        """After a reset the first retry comes sooner than after a refusal."""
        self.assertEqual(self.delays(CloseReason.RESET, 1), [RESET_INITIAL])
        self.assertLess(RESET_INITIAL, REFUSED_INITIAL)

    def test_no_reason_treated_as_reset(self) -> None:
        """A record without a reason is retried as after a reset."""
        self.assertEqual(self.policy.next_delay(record(None), 0, NO_JITTER), RESET_INITIAL)

    def test_every_reason_retries(self) -> None:
        """Each non-fatal reason has a positive delay in the default policy."""
        for reason in CloseReason:
            delay = self.policy.next_delay(record(reason), 0, NO_JITTER)
            self.assertTrue(delay is not None and delay > 0, (reason, delay))

    def test_none_backoff_stops(self) -> None:
        """A reason mapped to None in a custom policy stops retrying."""
        policy = ReconnectPolicy({CloseReason.REJECTED: None})
        self.assertIsNone(policy.next_delay(record(CloseReason.REJECTED), 0, NO_JITTER))

    def test_fallback(self) -> None:
        """A reason missing from a custom policy uses the fallback."""
        policy = ReconnectPolicy({}, fallback=Backoff(7.0))
        self.assertEqual(policy.next_delay(record(CloseReason.CLEAN), 0, NO_JITTER), 7.0)


class KeepUpDialerTests(SynchronousTestCase):
    """Dialer against a server node that may not be listening yet."""

    def test_refused_then_waits(self) -> None:
        """A refused first attempt leaves the client waiting the refused backoff."""
        pair = Pair(listen=False)
        pair.start()
        self.assertEqual(
            (pair.dialer.state, pair.dialer.next_attempt_at, pair.dialer.last_record.reason),
            (DialerState.WAITING, REFUSED_INITIAL, CloseReason.REFUSED),
        )

    def test_no_attempt_before_delay(self) -> None:
        """No second attempt is made before the delay has passed."""
        pair = Pair(listen=False)
        pair.start()
        pair.listen()
        advance_to(pair.clock, REFUSED_INITIAL - EPSILON)
        self.assertEqual((pair.client.manager.counters["connect_attempts"], pair.client.peers()), (1, []))

    def test_connects_once_listener_appears(self) -> None:
        """When the listener appears, the next attempt connects and handshakes."""
        pair = Pair(listen=False)
        pair.start()
        pair.listen()
        advance_to(pair.clock, REFUSED_INITIAL)
        self.assertEqual(pair.dialer.state, DialerState.CONNECTED)
        self.assertEqual([peer.node_id for peer in pair.client.peers()], ["server"])

    def test_refusals_grow_delay(self) -> None:
        """Each refusal in a row doubles the wait."""
        pair = Pair(listen=False)
        pair.start()
        waits = []
        for _ in range(4):
            waits.append(pair.dialer.next_attempt_at - pair.clock.seconds())
            advance_to(pair.clock, pair.dialer.next_attempt_at)
        self.assertEqual(waits, [REFUSED_INITIAL * FACTOR**n for n in range(4)])

    def refused_then_connected(self, refusals: int) -> Pair:
        """A pair whose client was refused ``refusals`` times, then connected."""
        pair = Pair(listen=False)
        pair.start()
        for _ in range(refusals - 1):
            advance_to(pair.clock, pair.dialer.next_attempt_at)
        pair.listen()
        advance_to(pair.clock, pair.dialer.next_attempt_at)
        assert pair.client.peers(), "the client should be connected by now"
        return pair

    def test_failures_reset_after_handshake(self) -> None:
        """Once a connection completes its handshake, the failure count is back to 0."""
        pair = self.refused_then_connected(3)
        self.assertEqual((pair.dialer.failures, pair.dialer.status()["failures"]), (0, 0))

    def test_backoff_restarts_after_handshaken_connection(self) -> None:
        """When a handshaken connection drops, the retry uses the first delay, not a grown one."""
        pair = self.refused_then_connected(3)
        pair.link.reset(1)
        self.assertEqual(pair.dialer.next_attempt_at, pair.clock.seconds() + RESET_INITIAL)

    def test_reconnects_after_reset(self) -> None:
        """After the server resets the connection, the client is connected again."""
        pair = self.refused_then_connected(1)
        pair.link.reset(1)
        advance_by(pair.clock, RESET_INITIAL)
        self.assertEqual(len(pair.client.peers()), 1)
        self.assertEqual(len(pair.network.links), 2)

    def test_status(self) -> None:
        """status() says where the client stands, JSON-ready."""
        pair = Pair(listen=False)
        pair.start()
        self.assertEqual(
            pair.dialer.status(),
            {
                "peer": ADDRESS,
                "state": "waiting",
                "failures": 1,
                "next_attempt_in": REFUSED_INITIAL,
                "last_reason": "refused",
                "last_detail": pair.dialer.last_record.detail,
            },
        )


class GiveUpTests(SynchronousTestCase):
    """A fatal close (version or role mismatch) stops the client for good."""

    def assertGaveUp(self, pair: Pair) -> None:
        """Gave up, nothing scheduled, and no further attempt however long one waits."""
        self.assertEqual(pair.dialer.state, DialerState.GAVE_UP)
        self.assertEqual(pair.clock.getDelayedCalls(), [])
        pair.clock.advance(FOREVER)
        self.assertEqual(pair.client.manager.counters["connect_attempts"], 1)

    def test_version_mismatch(self) -> None:
        """A server refusing our protocol version makes the client give up."""
        pair = Pair(client_factory=lambda node: with_hello(node, version=PROTOCOL_VERSION + 1))
        pair.start()
        self.assertGaveUp(pair)

    def test_role_mismatch(self) -> None:
        """A client that dialed another client gives up."""
        pair = Pair(server_role="client")
        pair.start()
        self.assertGaveUp(pair)

    def test_gave_up_status(self) -> None:
        """status() says why it gave up."""
        pair = Pair(server_role="client")
        pair.start()
        status = pair.dialer.status()
        self.assertEqual(
            (status["state"], status["last_reason"], status["next_attempt_in"]),
            ("gave-up", "protocol-error", None),
        )

    def test_non_fatal_protocol_error_retries(self) -> None:
        """A protocol error not marked fatal is retried."""
        pair = Pair()
        pair.start()
        pair.link.server.write(encode_bye(CloseReason.PROTOCOL_ERROR, "garbled"))
        pair.clock.advance(0)
        self.assertEqual(pair.dialer.state, DialerState.WAITING)


class StopTests(SynchronousTestCase):
    """stopService: cancels a pending retry, or closes the connection and waits for it."""

    def test_stop_while_waiting_cancels_timer(self) -> None:
        """Stopping while waiting to retry cancels the retry: nothing stays scheduled."""
        pair = Pair(listen=False)
        pair.start()
        self.successResultOf(pair.client.stopService())
        self.assertEqual(pair.dialer.state, DialerState.STOPPED)
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_no_attempt_after_stop(self) -> None:
        """After a stop while waiting, no attempt is ever made again."""
        pair = Pair(listen=False)
        pair.start()
        pair.client.stopService()
        pair.listen()
        pair.clock.advance(FOREVER)
        self.assertEqual(pair.client.manager.counters["connect_attempts"], 1)

    def test_stop_while_connected_waits_for_close(self) -> None:
        """Stopping while connected returns a Deferred that fires once the connection closed."""
        pair = Pair()
        pair.start()
        stopped = pair.dialer.stopService()
        self.assertNoResult(stopped)
        pair.clock.advance(0)
        self.successResultOf(stopped)
        self.assertTrue(pair.client.manager.history[0].closed)

    def test_stop_while_connected_is_clean(self) -> None:
        """The server records the stop as a clean close by its peer; nothing is left scheduled."""
        pair = Pair()
        pair.start()
        pair.dialer.stopService()
        pair.clock.advance(0)
        record = pair.server.manager.history[0]
        self.assertEqual((record.reason, record.initiator), (CloseReason.CLEAN, "remote"))
        self.successResultOf(pair.server.stopService())
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_stop_while_connected_says_bye(self) -> None:
        """Stopping the client while connected says BYE before the FIN."""
        pair = Pair()
        pair.start()
        tap = WireTap(pair.link.client, pair.clock)
        pair.dialer.stopService()
        pair.clock.advance(0)
        self.assertEqual(tap.kinds(), ["BYE", "fin"])

    def test_node_stop_says_bye(self) -> None:
        """Stopping the client node says BYE, then FIN, and its Deferred fires."""
        pair = Pair()
        pair.start()
        tap = WireTap(pair.link.client, pair.clock)
        stopped = pair.client.stopService()
        pair.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(tap.kinds(), ["BYE", "fin"])

    def test_no_reconnect_after_stop(self) -> None:
        """After stopping while connected, the client never dials again."""
        pair = Pair()
        pair.start()
        pair.dialer.stopService()
        pair.clock.advance(FOREVER)
        self.assertEqual(
            (pair.dialer.state, pair.client.manager.counters["connect_attempts"]),
            (DialerState.STOPPED, 1),
        )
