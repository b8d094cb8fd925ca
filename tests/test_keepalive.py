"""
Tests for :mod:`netmodels.core.keepalive`: the settings, the sans-IO tracker and
the Twisted mixin (driven by a fake clock).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.keepalive import (
    LINUX_DEFAULTS,
    KeepaliveAction,
    KeepaliveSettings,
    KeepaliveTracker,
    describe_duration,
)
from netmodels.runtime.keepalive import KeepaliveMixin
from netmodels.runtime.timers import TimerWheel

#: The settings most tests use: probe after 10 s of silence, every 5 s, 3 times.
IDLE = 10.0
INTERVAL = 5.0
PROBES = 3
SETTINGS = KeepaliveSettings(IDLE, INTERVAL, PROBES)

#: Seconds of silence after which the peer must be declared dead.
WORST_CASE = IDLE + INTERVAL * PROBES

#: When each probe is due, counting from the last traffic.
PROBE_TIMES = [IDLE + INTERVAL * n for n in range(PROBES)]

#: A time just short of a deadline.
EPSILON = 0.001

#: When the tracker and the mixin start.
START = 0.0

INVALID_DURATIONS = (0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "10", None)
INVALID_PROBES = (0, -1, 128, True, False, 3.0, "3", None)


def short_repr(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class SettingsValidationTests(SynchronousTestCase):
    """KeepaliveSettings accepts only positive finite durations and 1-127 probes."""

    def assertRejected(self, idle: object, interval: object, probes: object) -> None:
        """KeepaliveSettings(idle, interval, probes) raises ValueError, nothing else."""
        case = ", ".join(short_repr(value) for value in (idle, interval, probes))
        try:
            settings = KeepaliveSettings(idle, interval, probes)  # type: ignore[arg-type]
        except ValueError:
            return
        except Exception as e:
            self.fail(f"KeepaliveSettings({case}) raised {type(e).__name__}: {e}")
        self.fail(f"KeepaliveSettings({case}) accepted: {settings!r}")

    def test_valid_settings(self) -> None:
        """Whole and fractional seconds and 1 to 127 probes are accepted."""
        for idle, interval, probes in ((10, 5, 3), (0.5, 0.25, 1), (7200, 75, 127)):
            settings = KeepaliveSettings(idle, interval, probes)
            self.assertEqual((settings.idle, settings.interval, settings.probes), (idle, interval, probes))

    def test_idle_rejected(self) -> None:
        """Zero, negative, NaN, infinite or non-numeric idle raises ValueError."""
        for idle in INVALID_DURATIONS:
            self.assertRejected(idle, INTERVAL, PROBES)

    def test_interval_rejected(self) -> None:
        """Zero, negative, NaN, infinite or non-numeric interval raises ValueError."""
        for interval in INVALID_DURATIONS:
            self.assertRejected(IDLE, interval, PROBES)

    def test_probes_rejected(self) -> None:
        """Probes of 0, 128, a bool, a float or a string raise ValueError."""
        for probes in INVALID_PROBES:
            self.assertRejected(IDLE, INTERVAL, probes)

    def test_bool_durations_rejected(self) -> None:
        """
        A bool is not a duration, as it is not a probe count: a HELLO with
        ``"idle": true`` is refused, not read as 1 second.
        """
        self.assertRejected(True, INTERVAL, PROBES)
        self.assertRejected(IDLE, True, PROBES)

    def test_huge_integer_rejected_with_value_error(self) -> None:
        """
        An integer too large for a float is rejected with ValueError (not the
        ``OverflowError`` that ``math.isfinite`` raises for it).
        """
        self.assertRejected(10**400, INTERVAL, PROBES)

    def test_error_names_the_field(self) -> None:
        """The ValueError says which field was wrong."""
        e = self.assertRaises(ValueError, KeepaliveSettings, IDLE, -1, PROBES)
        self.assertIn("interval", str(e))


class SettingsDescriptionTests(SynchronousTestCase):
    """worst_case and the human-readable descriptions."""

    def test_worst_case(self) -> None:
        """worst_case is idle + interval * probes, as a float."""
        self.assertEqual(SETTINGS.worst_case, 25.0)
        self.assertIsInstance(KeepaliveSettings(10, 5, 3).worst_case, float)

    def test_linux_worst_case(self) -> None:
        """The Linux defaults 7200/75/9 detect a dead peer within 7875 s."""
        self.assertEqual(LINUX_DEFAULTS, KeepaliveSettings(7200, 75, 9))
        self.assertEqual(LINUX_DEFAULTS.worst_case, 7875.0)

    def test_describe_linux(self) -> None:
        """7200/75/9 is described as 2 h 11 min 15 s."""
        self.assertIn("2 h 11 min 15 s", KeepaliveSettings(7200, 75, 9).describe())

    def test_describe_short(self) -> None:
        """10/5/3 is described as 25 s."""
        self.assertIn("25 s", KeepaliveSettings(10, 5, 3).describe())

    def test_describe_shows_the_parts(self) -> None:
        """The description names idle, probes and interval."""
        self.assertIn("idle 10 s + 3 probes x 5 s", SETTINGS.describe())

    def test_describe_duration(self) -> None:
        """Durations are written in h, min and s, dropping zero parts."""
        cases = {
            4.5: "4.5 s",
            60: "1 min",
            3600: "1 h",
            3661: "1 h 1 min 1 s",
            90.5: "1 min 30.5 s",
        }
        for seconds, text in cases.items():
            self.assertEqual(describe_duration(seconds), text)

    def test_as_dict(self) -> None:
        """as_dict gives the three numbers and the bound."""
        self.assertEqual(
            SETTINGS.as_dict(),
            {"idle": IDLE, "interval": INTERVAL, "probes": PROBES, "worst_case": WORST_CASE},
        )


class SettingsParseTests(SynchronousTestCase):
    """KeepaliveSettings.parse reads presets and IDLE,INTERVAL,PROBES."""

    def test_linux_preset(self) -> None:
        """'linux' is the kernel's 7200,75,9."""
        self.assertEqual(KeepaliveSettings.parse("linux"), KeepaliveSettings(7200, 75, 9))

    def test_preset_case_and_space_insensitive(self) -> None:
        """Preset names ignore case and surrounding spaces."""
        self.assertEqual(KeepaliveSettings.parse("  Linux "), LINUX_DEFAULTS)

    def test_whole_numbers(self) -> None:
        """'10,5,3' parses to idle 10, interval 5, probes 3."""
        self.assertEqual(KeepaliveSettings.parse("10,5,3"), KeepaliveSettings(10, 5, 3))

    def test_fractions(self) -> None:
        """'0.5,0.25,4' keeps fractional seconds."""
        self.assertEqual(KeepaliveSettings.parse("0.5,0.25,4"), KeepaliveSettings(0.5, 0.25, 4))

    def test_spaces_around_numbers(self) -> None:
        """Spaces around the numbers are allowed."""
        self.assertEqual(KeepaliveSettings.parse(" 10 , 5 , 3 "), SETTINGS)

    def assertParseError(self, text: str, expected: str) -> None:
        e = self.assertRaises(ValueError, KeepaliveSettings.parse, text)
        self.assertIn(expected, str(e), f"parse({text!r})")

    def test_wrong_number_of_parts(self) -> None:
        """Other than three parts (or an unknown preset) says what was expected."""
        for text in ("", "10,5", "10,5,3,1", "bogus"):
            self.assertParseError(text, "expected IDLE,INTERVAL,PROBES")

    def test_wrong_number_lists_presets(self) -> None:
        """The usage error lists the preset names."""
        self.assertParseError("bogus", "linux")

    def test_non_numeric_durations(self) -> None:
        """Non-numeric idle or interval says they must be seconds."""
        for text in ("ten,5,3", "10,five,3"):
            self.assertParseError(text, "IDLE and INTERVAL must be numbers of seconds")

    def test_non_integer_probes(self) -> None:
        """Probes that are not a whole number say so."""
        for text in ("10,5,three", "10,5,3.5"):
            self.assertParseError(text, "PROBES must be a whole number")

    def test_out_of_range_values(self) -> None:
        """Parsed values are validated like constructed ones."""
        for text, field in (("0,5,3", "idle"), ("10,-5,3", "interval"), ("10,5,0", "probes")):
            self.assertParseError(text, field)

    def test_nan_and_inf_rejected(self) -> None:
        """'nan' and 'inf' parse as floats but are rejected as durations."""
        for text in ("nan,5,3", "10,inf,3"):
            self.assertRaises(ValueError, KeepaliveSettings.parse, text)


class TrackerTests(SynchronousTestCase):
    """KeepaliveTracker, the sans-IO decision core, fed the time by hand."""

    def setUp(self) -> None:
        self.tracker = KeepaliveTracker(SETTINGS, START)

    def run_deadlines(self, count: int) -> list[tuple[float, KeepaliveAction]]:
        """Call due() at each next_deadline ``count`` times, recording (time, action)."""
        steps = []
        for _ in range(count):
            now = self.tracker.next_deadline
            steps.append((now, self.tracker.due(now)))
        return steps

    def test_first_deadline_is_idle(self) -> None:
        """A new tracker's first deadline is idle seconds from its start."""
        self.assertEqual(self.tracker.next_deadline, START + IDLE)

    def test_silence_probes_then_dead(self) -> None:
        """With no traffic: PROBE at 10, 15 and 20, DEAD at 25."""
        self.assertEqual(
            self.run_deadlines(PROBES + 1),
            [
                (10.0, KeepaliveAction.PROBE),
                (15.0, KeepaliveAction.PROBE),
                (20.0, KeepaliveAction.PROBE),
                (25.0, KeepaliveAction.DEAD),
            ],
        )

    def test_dead_at_worst_case(self) -> None:
        """DEAD comes exactly worst_case seconds after the last traffic."""
        now, action = self.run_deadlines(PROBES + 1)[-1]
        self.assertEqual(action, KeepaliveAction.DEAD)
        self.assertEqual(now - START, SETTINGS.worst_case)

    def test_no_deadline_after_dead(self) -> None:
        """After DEAD there is no further deadline."""
        self.run_deadlines(PROBES + 1)
        self.assertEqual(self.tracker.next_deadline, math.inf)

    def test_probes_counted(self) -> None:
        """Each unanswered probe is counted."""
        self.run_deadlines(2)
        self.assertEqual(self.tracker.probes_unanswered, 2)

    def test_traffic_between_probes_returns_to_wait(self) -> None:
        """Traffic after a probe means WAIT, with the next deadline idle after it."""
        self.run_deadlines(1)
        answered_at = IDLE + 2
        self.tracker.traffic(answered_at)
        self.assertEqual(self.tracker.due(self.tracker.next_deadline), KeepaliveAction.WAIT)
        self.assertEqual(self.tracker.next_deadline, answered_at + IDLE)
        self.assertEqual(self.tracker.probes_unanswered, 0)

    def test_traffic_while_idle_pushes_deadline(self) -> None:
        """Traffic before the first probe means WAIT until idle after that traffic."""
        received_at = IDLE - 3
        self.tracker.traffic(received_at)
        self.assertEqual(self.tracker.due(START + IDLE), KeepaliveAction.WAIT)
        self.assertEqual(self.tracker.next_deadline, received_at + IDLE)

    def test_traffic_only_stores_the_time(self) -> None:
        """traffic() records the time and leaves the deadline for due() to move."""
        self.tracker.traffic(IDLE - 1)
        self.assertEqual(self.tracker.last_received, IDLE - 1)
        self.assertEqual(self.tracker.next_deadline, START + IDLE)

    def test_dead_measured_from_last_traffic(self) -> None:
        """After traffic mid-probing, DEAD comes worst_case after that traffic."""
        self.run_deadlines(1)
        answered_at = IDLE + 2
        self.tracker.traffic(answered_at)
        steps = self.run_deadlines(PROBES + 2)
        self.assertEqual(steps[0][1], KeepaliveAction.WAIT)
        self.assertEqual(steps[-1], (answered_at + WORST_CASE, KeepaliveAction.DEAD))


class KeepaliveProtocol(KeepaliveMixin, Protocol):
    """A minimal protocol using the mixin as its docstring says to."""

    def __init__(self, clock: Clock, settings: KeepaliveSettings | None = SETTINGS) -> None:
        self.clock = clock
        self.settings = settings

    def connectionMade(self) -> None:
        self.setKeepalive(self.settings)

    def dataReceived(self, data: bytes) -> None:
        self.resetKeepalive()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setKeepalive(None)


class RecordingProtocol(KeepaliveProtocol):
    """Records when it was asked to probe and to time out."""

    def __init__(self, clock: Clock, settings: KeepaliveSettings | None = SETTINGS) -> None:
        super().__init__(clock, settings)
        self.probes: list[float] = []
        self.timeouts: list[float] = []

    def keepaliveProbe(self) -> None:
        self.probes.append(self.clock.seconds())

    def keepaliveTimeout(self) -> None:
        self.timeouts.append(self.clock.seconds())


class AbortRecordingTransport(StringTransport):
    """Records abortConnection and loseConnection calls separately."""

    def __init__(self) -> None:
        super().__init__()
        self.aborts = 0
        self.loses = 0

    def abortConnection(self) -> None:
        self.aborts += 1

    def loseConnection(self) -> None:
        self.loses += 1


#: More timer firings than any test needs: a guard against a timer loop.
MAX_FIRINGS = 10_000


def advance_to(clock: Clock, when: float) -> None:
    """
    Move ``clock`` to exactly ``when``, running each delayed call at its own
    time, as a punctual reactor would.

    ``Clock.advance`` alone runs every call due in the jump with the clock
    already at the end of the jump, so a timer re-armed from ``seconds()``
    would be re-armed late.
    """
    for _ in range(MAX_FIRINGS):
        next_call = min((call.getTime() for call in clock.getDelayedCalls()), default=math.inf)
        if next_call > when:
            break
        clock.advance(next_call - clock.seconds())
    else:
        raise AssertionError(f"over {MAX_FIRINGS} timer firings before {when}")
    clock.advance(when - clock.seconds())
    assert clock.seconds() == when, (clock.seconds(), when)


class MixinTests(SynchronousTestCase):
    """KeepaliveMixin on a fake clock and a string transport."""

    def setUp(self) -> None:
        self.clock = Clock()
        advance_to(self.clock, START)
        self.protocol = RecordingProtocol(self.clock)
        self.transport = AbortRecordingTransport()
        self.protocol.makeConnection(self.transport)

    def test_no_probe_before_idle(self) -> None:
        """Nothing is probed before idle seconds of silence."""
        advance_to(self.clock, START + IDLE - EPSILON)
        self.assertEqual(self.protocol.probes, [])

    def test_probes_at_the_right_times(self) -> None:
        """With silence, probes go out at 10, 15 and 20 seconds."""
        advance_to(self.clock, START + WORST_CASE - EPSILON)
        self.assertEqual(self.protocol.probes, [START + t for t in PROBE_TIMES])

    def test_no_timeout_before_worst_case(self) -> None:
        """keepaliveTimeout is not called before idle + interval * probes."""
        advance_to(self.clock, START + WORST_CASE - EPSILON)
        self.assertEqual(self.protocol.timeouts, [])

    def test_timeout_at_worst_case(self) -> None:
        """keepaliveTimeout is called exactly once, at idle + interval * probes."""
        advance_to(self.clock, START + WORST_CASE - EPSILON)
        advance_to(self.clock, START + WORST_CASE)
        self.assertEqual(self.protocol.timeouts, [START + WORST_CASE])

    def test_nothing_scheduled_after_timeout(self) -> None:
        """After the timeout no timer is left and nothing more happens."""
        advance_to(self.clock, START + WORST_CASE)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        advance_to(self.clock, START + 10 * WORST_CASE)
        self.assertEqual(len(self.protocol.probes), PROBES)
        self.assertEqual(len(self.protocol.timeouts), 1)

    def test_reset_during_probing_prevents_timeout(self) -> None:
        """Traffic after a probe keeps the connection alive past the old deadline."""
        answered_at = START + IDLE + 2
        advance_to(self.clock, answered_at)
        self.protocol.dataReceived(b"pong")
        advance_to(self.clock, START + WORST_CASE)
        self.assertEqual(self.protocol.timeouts, [])

    def test_timeout_measured_from_last_traffic(self) -> None:
        """After traffic mid-probing, the timeout comes worst_case after it, not before."""
        answered_at = START + IDLE + 2
        advance_to(self.clock, answered_at)
        self.protocol.dataReceived(b"pong")
        advance_to(self.clock, answered_at + WORST_CASE - EPSILON)
        self.assertEqual(self.protocol.timeouts, [])
        advance_to(self.clock, answered_at + WORST_CASE)
        self.assertEqual(self.protocol.timeouts, [answered_at + WORST_CASE])

    def test_busy_connection_never_probes(self) -> None:
        """Traffic more often than idle means no probe is ever sent."""
        for second in range(1, 101):
            advance_to(self.clock, START + second)
            self.protocol.dataReceived(b"x")
        self.assertEqual((self.protocol.probes, self.protocol.timeouts), ([], []))

    def test_one_timer_while_running(self) -> None:
        """Exactly one delayed call exists while keepalive runs."""
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        advance_to(self.clock, START + IDLE + 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_restart_does_not_leak_a_timer(self) -> None:
        """Calling setKeepalive again replaces the timer rather than adding one."""
        self.protocol.setKeepalive(SETTINGS)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_stop_cancels_timer(self) -> None:
        """setKeepalive(None) leaves no delayed call."""
        self.protocol.setKeepalive(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_during_probing_cancels_timer(self) -> None:
        """setKeepalive(None) mid-probing leaves no delayed call and stops probing."""
        advance_to(self.clock, START + IDLE + 1)
        self.protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        advance_to(self.clock, START + 10 * WORST_CASE)
        self.assertEqual((len(self.protocol.probes), self.protocol.timeouts), (1, []))

    def test_reset_does_not_touch_timers(self) -> None:
        """resetKeepalive neither creates nor reschedules a delayed call."""
        [call] = self.clock.getDelayedCalls()
        scheduled_for = call.getTime()
        for _ in range(1000):
            self.protocol.resetKeepalive()
        [after] = self.clock.getDelayedCalls()
        self.assertIs(after, call)
        self.assertEqual(after.getTime(), scheduled_for)

    def test_reset_as_time_passes_does_not_touch_timers(self) -> None:
        """resetKeepalive as the clock moves still leaves the one timer alone."""
        [call] = self.clock.getDelayedCalls()
        scheduled_for = call.getTime()
        for _ in range(1000):
            self.clock.advance(EPSILON)
            self.protocol.resetKeepalive()
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.assertEqual(call.getTime(), scheduled_for)

    def test_reset_without_keepalive_is_harmless(self) -> None:
        """resetKeepalive with keepalive off neither fails nor starts a timer."""
        clock = Clock()
        protocol = RecordingProtocol(clock, settings=None)
        protocol.makeConnection(StringTransport())
        protocol.resetKeepalive()
        self.assertEqual(clock.getDelayedCalls(), [])


class DefaultTimeoutTests(SynchronousTestCase):
    """The default keepaliveTimeout aborts the connection."""

    def test_default_timeout_aborts(self) -> None:
        """A dead peer gets abortConnection (RST), not loseConnection (FIN)."""
        clock = Clock()
        protocol = KeepaliveProtocol(clock)
        transport = AbortRecordingTransport()
        protocol.makeConnection(transport)
        advance_to(clock, START + WORST_CASE - EPSILON)
        self.assertEqual(transport.aborts, 0)
        advance_to(clock, START + WORST_CASE)
        self.assertEqual((transport.aborts, transport.loses), (1, 0))

    def test_default_timeout_with_string_transport(self) -> None:
        """Twisted's StringTransport is aborted: only abortConnection sets ``disconnected``."""
        clock = Clock()
        protocol = KeepaliveProtocol(clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        advance_to(clock, START + WORST_CASE)
        self.assertTrue(transport.disconnected)

    def test_default_timeout_without_transport(self) -> None:
        """With no transport the default timeout does nothing rather than fail."""
        clock = Clock()
        protocol = KeepaliveProtocol(clock)
        self.assertIsNone(protocol.transport)
        self.assertIsNone(protocol.keepaliveTimeout())
        self.assertIsNone(protocol.transport)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_default_probe_does_nothing(self) -> None:
        """The default keepaliveProbe writes nothing."""
        clock = Clock()
        protocol = KeepaliveProtocol(clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        advance_to(clock, START + IDLE)
        self.assertEqual(transport.value(), b"")


class TimerWheelTests(SynchronousTestCase):
    """Many timers on one reactor call: never early, at most one slot late."""

    GRANULARITY = 1 / 64

    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock, self.GRANULARITY)
        self.fired: list[tuple[str, float]] = []

    def note(self, name: str) -> Callable[[], None]:
        return lambda: self.fired.append((name, self.clock.seconds()))

    def test_never_early_at_most_one_slot_late(self) -> None:
        for delay in (0.0, 0.001, 0.3, 1.0, 2.5):
            self.wheel.callLater(delay, self.note(str(delay)))
        advance_to(self.clock, 3.0)
        for name, at in self.fired:
            self.assertGreaterEqual(at, float(name))
            self.assertLessEqual(at, float(name) + self.GRANULARITY)
        self.assertEqual(len(self.fired), 5)

    def test_exact_on_slot_boundaries(self) -> None:
        """Deadlines on a multiple of the granularity fire exactly on time."""
        self.wheel.callLater(25.0, self.note("bound"))
        self.clock.advance(25.0 - 0.001)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.fired, [("bound", 25.0)])

    def test_one_reactor_call_for_many_timers(self) -> None:
        for n in range(1000):
            self.wheel.callLater(10 + n / 1000, self.note(str(n)))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        advance_to(self.clock, 12.0)
        self.assertEqual(len(self.fired), 1000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_timers_leave_no_reactor_call(self) -> None:
        timers = [self.wheel.callLater(5, self.note("x")) for _ in range(3)]
        for timer in timers:
            self.assertTrue(timer.active())
            timer.cancel()
            self.assertFalse(timer.active())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.fired, [])

    def test_reset_moves_the_timer(self) -> None:
        timer = self.wheel.callLater(5, self.note("moved"))
        timer.reset(1)
        self.assertEqual(timer.getTime(), 1)
        advance_to(self.clock, 6)
        self.assertEqual(self.fired, [("moved", 1.0)])

    def test_callback_may_schedule_again(self) -> None:
        def again() -> None:
            self.fired.append(("tick", self.clock.seconds()))
            if len(self.fired) < 3:
                self.wheel.callLater(1, again)

        self.wheel.callLater(1, again)
        advance_to(self.clock, 10)
        self.assertEqual([at for _, at in self.fired], [1.0, 2.0, 3.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rearmed_into_the_past_fires_on_the_next_slot(self) -> None:
        """
        A callback re-arming its timer for a time already reached (a timer
        that ran late, re-armed for when it was due) fires a slot later, in
        the wheel's next reactor call, never again in the same one: the
        reactor reads what arrived meanwhile in between.
        """

        def late() -> None:
            self.fired.append(("late", self.clock.seconds()))
            if len(self.fired) < 3:
                timer.rearm_at(self.clock.seconds() - 5)

        timer = self.wheel.callLater(1, late)
        self.clock.advance(1)
        self.assertEqual(self.fired, [("late", 1.0)])
        self.clock.advance(self.GRANULARITY)
        self.assertEqual(self.fired, [("late", 1.0), ("late", 1.0 + self.GRANULARITY)])
        advance_to(self.clock, 2)
        self.assertEqual(len(self.fired), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rearm_at_moves_a_pending_timer(self) -> None:
        timer = self.wheel.callLater(5, self.note("moved"))
        timer.rearm_at(2)
        self.assertEqual(timer.getTime(), 2)
        advance_to(self.clock, 10)
        self.assertEqual(self.fired, [("moved", 2.0)])
        self.assertFalse(timer.active())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rearm_at_reuses_a_fired_or_cancelled_timer(self) -> None:
        """One timer object serves again and again, and leaves nothing behind once done."""
        timer = self.wheel.callLater(1, self.note("again"))
        advance_to(self.clock, 1)
        self.assertFalse(timer.active())
        timer.rearm_at(3)
        self.assertTrue(timer.active())
        advance_to(self.clock, 4)
        timer.rearm_at(6)
        timer.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        timer.rearm_at(7)
        advance_to(self.clock, 10)
        self.assertEqual(self.fired, [("again", 1.0), ("again", 3.0), ("again", 7.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_callback_does_not_stop_the_others(self) -> None:
        def fails() -> None:
            raise ZeroDivisionError

        self.wheel.callLater(1, fails)
        self.wheel.callLater(1, self.note("after"))
        self.clock.advance(1)
        self.assertEqual([name for name, _ in self.fired], ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_mixin_uses_the_wheel(self) -> None:
        """A protocol with keepaliveTimers set schedules there, with the same bound."""
        protocols = [RecordingProtocol(self.clock, KeepaliveSettings(10, 5, 3)) for _ in range(50)]
        for protocol in protocols:
            protocol.keepaliveTimers = self.wheel
            protocol.makeConnection(AbortRecordingTransport())
        # Fifty protocols, one reactor call.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        advance_to(self.clock, 30)
        for protocol in protocols:
            self.assertEqual(protocol.probes, [10.0, 15.0, 20.0])
            self.assertEqual(protocol.timeouts, [25.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LateTimerTests(SynchronousTestCase):
    """A reactor runs timers a little late; the bound must not slip by the sum of the delays."""

    #: How late each reactor timer runs, as a busy epoll reactor does.
    LATENESS = 0.002

    def test_dead_within_bound_plus_one_granularity(self) -> None:
        clock = Clock()
        clock.advance(0.01)  # the last thing received, off the wheel's grid
        wheel = TimerWheel(clock)
        protocol = RecordingProtocol(clock, KeepaliveSettings(1.0, 0.5, 3))
        protocol.keepaliveTimers = wheel
        protocol.makeConnection(AbortRecordingTransport())
        started = clock.seconds()
        while not protocol.timeouts and clock.seconds() < 10:
            pending = [call.getTime() for call in clock.getDelayedCalls()]
            clock.advance(max(0.0, min(pending) - clock.seconds()) + self.LATENESS)
        late = protocol.timeouts[0] - started - 2.5
        self.assertGreaterEqual(late, 0.0)
        self.assertLessEqual(late, wheel.granularity + self.LATENESS, f"dead {late * 1000:.1f} ms late")
