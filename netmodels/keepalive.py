"""
Keepalive with Linux semantics: ``idle``, ``interval``, ``probes``.

After ``idle`` seconds with nothing received, send a probe; wait ``interval``
for any answer; send another probe, until ``probes`` probes have gone
unanswered; then the peer is dead. Anything received counts as an answer, so a
busy connection never probes. A dead peer is therefore detected at most
``idle + interval * probes`` seconds after the last thing it sent.

This module has three layers:

- :class:`KeepaliveSettings`, the three numbers and their bound;
- :class:`KeepaliveTracker`, the sans-IO decision core (fed the time, returns
  what to do next; owns no timer);
- :class:`KeepaliveMixin`, a mixin for any Twisted protocol in the shape of
  Twisted's ``TimeoutMixin``, with the clock injected.

The kernel's half of keepalive (``SO_KEEPALIVE``, ``TCP_KEEPIDLE``,
``TCP_KEEPINTVL``, ``TCP_KEEPCNT`` and ``TCP_USER_TIMEOUT``) is applied by
:func:`netmodels.tcp.apply_kernel_keepalive`.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable
from types import MethodType
from typing import TYPE_CHECKING

from attrs import field, frozen
from twisted.logger import Logger

if TYPE_CHECKING:
    from attrs import Attribute
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = [
    "LINUX_DEFAULTS",
    "KeepaliveAction",
    "KeepaliveMixin",
    "KeepaliveSettings",
    "KeepaliveTracker",
    "TimerWheel",
    "describe_duration",
]


_log = Logger(namespace="netmodels.keepalive")

_NO_TARGET = object()


def describe_duration(seconds: float) -> str:
    """``7875`` -> ``"2 h 11 min 15 s"``; ``4.5`` -> ``"4.5 s"``."""
    if seconds < 60:
        return f"{seconds:g} s"
    whole = int(seconds)
    fraction = seconds - whole
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if secs or fraction:
        parts.append(f"{secs + fraction:g} s")
    return " ".join(parts)


def _positive(instance: object, attribute: Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < 1e9  # also keeps math.isfinite from overflowing on huge ints
        or not math.isfinite(value)
    ):
        name = attribute.name
        raise ValueError(f"keepalive {name} must be a positive number, not {value!r}")


def _probe_count(instance: object, attribute: Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 127:
        raise ValueError(f"keepalive probes must be a whole number from 1 to 127, not {value!r}")


@frozen
class KeepaliveSettings:
    """
    The three keepalive numbers, in seconds (fractions allowed) and probes.

    >>> KeepaliveSettings(10, 5, 3).worst_case
    25.0
    """

    idle: float = field(validator=_positive)
    interval: float = field(validator=_positive)
    probes: int = field(validator=_probe_count)

    @property
    def worst_case(self) -> float:
        """Seconds from the peer's last traffic to declaring it dead, at most."""
        return float(self.idle + self.interval * self.probes)

    def describe(self) -> str:
        """The bound in words, for logs: ``"a dead peer is detected within 45 s"``."""
        return (
            f"a dead peer is detected within {describe_duration(self.worst_case)} "
            f"(idle {self.idle:g} s + {self.probes} probes x {self.interval:g} s)"
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "idle": self.idle,
            "interval": self.interval,
            "probes": self.probes,
            "worst_case": self.worst_case,
        }

    @classmethod
    def parse(cls, text: str) -> KeepaliveSettings:
        """
        Parse ``"IDLE,INTERVAL,PROBES"`` (seconds, fractions allowed) or a
        preset name (``linux`` = 7200,75,9; ``fast`` = 1,1,3; ``default``).

        Raises ``ValueError`` with a message fit for a usage error.
        """
        preset = PRESETS.get(text.strip().lower())
        if preset is not None:
            return preset
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 3:
            raise ValueError(
                f"expected IDLE,INTERVAL,PROBES or one of {', '.join(sorted(PRESETS))}, not {text!r}"
            )
        try:
            idle, interval = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"IDLE and INTERVAL must be numbers of seconds, not {text!r}") from None
        try:
            probes = int(parts[2])
        except ValueError:
            raise ValueError(f"PROBES must be a whole number, not {parts[2]!r}") from None
        return cls(idle, interval, probes)


#: The Linux kernel's defaults: a dead peer is found after 2 h 11 min 15 s.
LINUX_DEFAULTS = KeepaliveSettings(7200, 75, 9)

#: netmodels' default: a dead peer is found within 45 s.
DEFAULT = KeepaliveSettings(15, 10, 3)

PRESETS = {"linux": LINUX_DEFAULTS, "default": DEFAULT, "fast": KeepaliveSettings(1, 1, 3)}


class KeepaliveAction(enum.Enum):
    """What :meth:`KeepaliveTracker.due` asks its owner to do."""

    #: Nothing; call again at ``next_deadline``.
    WAIT = "wait"
    #: Send one probe now, then call again at ``next_deadline``.
    PROBE = "probe"
    #: The peer is dead: end the connection with reason ``timeout``.
    DEAD = "dead"


class KeepaliveTracker:
    """
    The sans-IO keepalive decision core. It owns no timer.

    The owner calls :meth:`traffic` with the time whenever anything arrives
    (O(1), a single store), and :meth:`due` whenever ``next_deadline`` is
    reached; :meth:`due` returns what to do and moves ``next_deadline``. So
    the owner re-arms one timer once per idle period, never per message.
    """

    __slots__ = (
        "_probe_sent_at",
        "last_received",
        "next_deadline",
        "probes_unanswered",
        "settings",
    )

    def __init__(self, settings: KeepaliveSettings, now: float) -> None:
        self.settings = settings
        self.last_received = now
        self.probes_unanswered = 0
        self._probe_sent_at = 0.0
        self.next_deadline = now + settings.idle

    def traffic(self, now: float) -> None:
        """Something arrived at ``now``: the peer is alive."""
        self.last_received = now

    def due(self, now: float) -> KeepaliveAction:
        """Decide at ``now`` (at or after ``next_deadline``)."""
        settings = self.settings
        if self.probes_unanswered and self.last_received >= self._probe_sent_at:
            # An answer (or any traffic) arrived since the last probe.
            self.probes_unanswered = 0
        if not self.probes_unanswered:
            idle_until = self.last_received + settings.idle
            if now < idle_until:
                self.next_deadline = idle_until
                return KeepaliveAction.WAIT
            due = idle_until
        elif self.probes_unanswered >= settings.probes:
            self.next_deadline = math.inf
            return KeepaliveAction.DEAD
        else:
            due = self.next_deadline
        self.probes_unanswered += 1
        self._probe_sent_at = now
        # Count from when the probe was due, not when the timer ran: a timer
        # that runs late must not push every later deadline, or the bound
        # would slip by the sum of the delays.
        self.next_deadline = min(now, due) + settings.interval
        return KeepaliveAction.PROBE


class _WheelTimer:
    """One timer of a :class:`TimerWheel`; answers like an ``IDelayedCall``."""

    __slots__ = ("called", "cancelled", "function", "target", "wheel", "when")

    def __init__(self, wheel: TimerWheel, when: float, callback: Callable[[], object]) -> None:
        self.wheel = wheel
        self.when = when
        # A bound method is kept as its function and object: one object less
        # per pending timer, which at 10,000 connections is most of them.
        if isinstance(callback, MethodType):
            self.function: Callable[..., object] = callback.__func__
            self.target: object = callback.__self__
        else:
            self.function = callback
            self.target = _NO_TARGET
        self.cancelled = False
        self.called = False

    def fire(self) -> None:
        if self.target is _NO_TARGET:
            self.function()
        else:
            self.function(self.target)

    def getTime(self) -> float:
        return self.when

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        if self.active():
            self.cancelled = True
            self.wheel._retire()

    def reset(self, delay: float) -> None:
        self.when = self.wheel.clock.seconds() + delay
        self.wheel._insert(self)


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
            now = self.clock.seconds()
            granularity = self.granularity
            order = self._order
            while order and order[0] * granularity <= now:
                slot = heapq.heappop(order)
                for timer in self._slots.pop(slot, ()):
                    # Skip cancelled timers and ones moved by reset().
                    if timer.cancelled or timer.called or math.ceil(timer.when / granularity) != slot:
                        continue
                    timer.called = True
                    self._live -= 1
                    try:
                        timer.fire()
                    except Exception:
                        _log.failure("timer callback failed")
        finally:
            self._firing = False
        self._arm()


class KeepaliveMixin:
    """
    Application keepalive for any Twisted protocol, in the shape of Twisted's
    ``TimeoutMixin`` but with probes, retries and an injected clock.

    Set :attr:`clock` (an ``IReactorTime``), call :meth:`setKeepalive` from
    ``connectionMade``, :meth:`resetKeepalive` from ``dataReceived`` (cheap:
    it stores the time), and ``setKeepalive(None)`` from ``connectionLost``.
    Override :meth:`keepaliveProbe` to send a probe the peer answers, and
    :meth:`keepaliveTimeout` to act on a dead peer (the default aborts, since a
    FIN to a dead peer would wait behind unacknowledged data).
    """

    clock: IReactorTime
    #: Where keepalive timers are scheduled: ``clock`` unless a shared
    #: :class:`TimerWheel` is set.
    keepaliveTimers: TimerWheel | None = None
    _keepalive_tracker: KeepaliveTracker | None = None
    _keepalive_call: IDelayedCall | _WheelTimer | None = None

    def setKeepalive(self, settings: KeepaliveSettings | None, first_check: float | None = None) -> None:
        """
        Start (or restart) keepalive with ``settings``; ``None`` stops it.
        ``first_check`` brings the first timer forward (never later than
        ``idle``), for a subclass that checks a deadline of its own there.
        """
        if self._keepalive_call is not None and self._keepalive_call.active():
            self._keepalive_call.cancel()
        self._keepalive_call = None
        if settings is None:
            self._keepalive_tracker = None
            return
        tracker = KeepaliveTracker(settings, self.clock.seconds())
        self._keepalive_tracker = tracker
        delay = settings.idle if first_check is None else min(first_check, settings.idle)
        self._keepalive_call = (self.keepaliveTimers or self.clock).callLater(delay, self._keepaliveDue)

    def resetKeepalive(self) -> None:
        """Note that something arrived. O(1): no timer is touched."""
        tracker = self._keepalive_tracker
        if tracker is not None:
            tracker.last_received = self.clock.seconds()

    def keepaliveProbe(self) -> None:
        """Send one probe to the peer. Override this."""

    def keepaliveTimeout(self) -> None:
        """The peer is dead. The default aborts the connection (RST)."""
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _keepaliveDue(self) -> None:
        tracker = self._keepalive_tracker
        if tracker is None:
            return
        now = self.clock.seconds()
        action = tracker.due(now)
        if action is KeepaliveAction.DEAD:
            self._keepalive_call = None
            self.keepaliveTimeout()
            return
        self._keepalive_call = (self.keepaliveTimers or self.clock).callLater(
            max(0.0, tracker.next_deadline - now), self._keepaliveDue
        )
        if action is KeepaliveAction.PROBE:
            self.keepaliveProbe()
