"""
Lifeguard's bookkeeping for SWIM (:mod:`.swim`), sans-IO: fed events and the
time, it says how long to wait.

- **Local health** (:class:`LocalHealth`): a node whose own probes fail
  without the NACKs that prove the others responsive, or that has to refute
  a suspicion of itself, is probably the slow one: its score rises (to
  ``awareness_max`` - 1) and stretches its probe timeout and protocol period
  by (score + 1), so a CPU-starved node slows down instead of accusing
  healthy members. Each successful probe lowers the score.
- **Suspicion** (:class:`Suspicion`): a suspect member is declared dead when
  its suspicion times out. The timeout starts at ``suspicion_max_mult``
  times the minimum (:func:`suspicion_bounds`: ``suspicion_mult`` x
  log10(n) periods) and shrinks towards the minimum as other members
  independently accuse it, so one slow link cannot kill a member, and a
  real failure is confirmed fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attrs import define, field

from netmodels.topologies.p2p.timer_heap import ITimer

__all__ = ["LocalHealth", "Suspicion", "suspicion_bounds"]


class LocalHealth:
    """Lifeguard's local health multiplier (memberlist's awareness): 0 (healthy) to ``maximum`` - 1."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.score = 0

    def scale(self, seconds: float) -> float:
        """``seconds`` stretched by the score: how long a probe timeout or protocol period lasts now."""
        return seconds * (self.score + 1)

    def probe_succeeded(self) -> None:
        self._add(-1)

    def probe_failed(self, expected_nacks: int, nacks: int) -> None:
        """A probe went unanswered; ``expected_nacks`` helpers were asked to try too, ``nacks`` could not."""
        # Missing NACKs: the helpers did not answer us either, so the fault
        # is likely ours; no helpers at all says nothing.
        self._add(expected_nacks - nacks if expected_nacks else 0)

    def refuted(self) -> None:
        """This node had to refute a suspicion of itself."""
        self._add(1)

    def _add(self, delta: int) -> None:
        self.score = min(self.maximum - 1, max(0, self.score + delta))


def suspicion_bounds(
    members: int, period: float, mult: float, floor: float, max_mult: float
) -> tuple[float, float]:
    """
    The shortest and the longest suspicion, in seconds, in a cluster of
    ``members`` (this node included): ``mult`` x log10(``members``) protocol
    periods, never under ``floor`` periods; the longest ``max_mult`` times that.
    """
    periods = max(floor, mult * max(1.0, math.log10(members)))
    minimum = periods * period
    return minimum, minimum * max_mult


@define
class Suspicion:
    """One suspect member's suspicion: who accused it, since when, and the timer that declares it dead."""

    #: The first accuser.
    accuser: str
    started: float
    minimum: float
    maximum: float
    #: Independent accusations expected before the timeout reaches its minimum.
    expected: int
    accusers: set[str] = field(factory=set)
    timer: ITimer | None = None

    def confirm(self, accuser: str) -> bool:
        """``accuser`` accuses the member too: ``True`` if it had not yet (the timeout shrinks)."""
        if accuser in self.accusers:
            return False
        self.accusers.add(accuser)
        return True

    def timeout(self) -> float:
        """Seconds from :attr:`started` until the member is dead, by the confirmations so far."""
        confirmations = len(self.accusers - {self.accuser})
        if self.expected < 1:
            return self.minimum
        fraction = math.log(confirmations + 1) / math.log(self.expected + 1)
        return max(self.minimum, self.maximum - (self.maximum - self.minimum) * fraction)

    def arm(self, now: float, after: Callable[[float], ITimer]) -> None:
        """(Re)start the timer: ``after(delay)`` starts one that runs ``delay`` seconds from ``now``."""
        self.cancel()
        self.timer = after(max(0.0, self.started + self.timeout() - now))

    def cancel(self) -> None:
        """The suspicion ended (refuted, or superseded): its timer will not run."""
        if self.timer is not None:
            self.timer.cancel()
