"""
Application keepalive for any Twisted protocol: :class:`KeepaliveMixin`, in
the shape of Twisted's ``TimeoutMixin``, driven by the sans-IO
:class:`~netmodels.core.keepalive.KeepaliveTracker`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netmodels.core.keepalive import KeepaliveAction, KeepaliveSettings, KeepaliveTracker
from netmodels.runtime.timers import TimerWheel, _WheelTimer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["KeepaliveMixin"]


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
