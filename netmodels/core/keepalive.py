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
:func:`netmodels.transports.tcp.apply_kernel_keepalive`.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

from attrs import field, frozen

if TYPE_CHECKING:
    from attrs import Attribute

__all__ = [
    "DEFAULT",
    "LINUX_DEFAULTS",
    "PRESETS",
    "KeepaliveAction",
    "KeepaliveSettings",
    "KeepaliveTracker",
    "describe_duration",
]


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

    def answered(self, now: float) -> None:
        """
        The last probe was answered at ``now``: idle again, the next probe an
        idle period away. Saves the owner the timer run at the interval that
        would only find the answer (and call this ``due``'s WAIT).
        """
        self.last_received = now
        self.probes_unanswered = 0
        self.next_deadline = now + self.settings.idle

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
