"""
One dialer for every outbound connection.

:class:`Dialer` is an explicit state machine (automat's ``TypeMachineBuilder``,
after Twisted's ``ClientService``)::

    idle --dial--> connecting --connected--> connected
      ^                |                         |
      |             failed                     closed
      |                v                         v
      +--hold-off-- waiting <--------------------+      (a fatal close: gave-up)

Every state can ``stop``. The hold-off after a failed attempt or a closed
connection is chosen by close reason through
:class:`~netmodels.core.backoff.ReconnectPolicy`, from the number of failures in
a row; a connection that completed its handshake (the manager's ``"ready"``)
sets that number back to 0. A fatal close (a version or topology mismatch)
gives up.

Two ways to use it:

- **keep-up** (``keep_up=True``, what :meth:`Node.connect` builds): a service
  that keeps one connection up: it dials when started and again when each
  hold-off ends, and closes the connection when stopped.
- **on demand** (``keep_up=False``, p2p's and callback's dials): single
  attempts. The owner calls :meth:`Dialer.dial` when it wants a connection;
  a connection made is handed over (the dialer is idle again) and is the
  owner's, which tells the dialer what became of it: :meth:`Dialer.reset`
  once it is ready, :meth:`Dialer.lost` when it ended badly. After a failed
  attempt or a loss the dialer refuses to dial until its hold-off ends.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from automat import TypeMachineBuilder, pep614
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core.backoff import DEFAULT_RECONNECT_POLICY, ReconnectPolicy
from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.manager import ConnectFailed, ConnectionManager, ManagedConnection

__all__ = ["Dialer", "DialerState", "ResolvingEndpoint"]

# The namespace the "reconnecting to ..." lines have always been logged under.
_log = Logger(namespace="netmodels.reconnect")


class DialerState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    STOPPED = "stopped"
    GAVE_UP = "gave-up"


@implementer(IStreamClientEndpoint)
class ResolvingEndpoint:
    """
    An endpoint worked out at each connect (an address learned from the
    network may change, or not parse): a ``resolve`` that raises fails that
    attempt, which the manager records like any other failed connect.
    """

    def __init__(self, resolve: Callable[[], IStreamClientEndpoint]) -> None:
        self._resolve = resolve

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        try:
            endpoint = self._resolve()
        except Exception as e:
            return defer.fail(e)
        result: defer.Deferred[Any] = endpoint.connect(protocolFactory)
        return result


class _Inputs(Protocol):
    def dial(self) -> bool:
        "Start an attempt if idle; ``True`` if one started."

    def stop(self) -> defer.Deferred[None]:
        "Stop for good; fires once our connection (keep-up mode) has closed."

    def reset(self) -> None:
        "Forget the failures in a row; cut a hold-off, or a give-up, short."

    def current(self) -> DialerState:
        "Which state the machine is in."

    def _connected(self, connection: ManagedConnection) -> None:
        "The attempt connected (the handshake follows); keep-up mode."

    def _handed_over(self) -> None:
        "The attempt connected, and the connection is the owner's; on-demand mode."

    def _ready(self, connection: ManagedConnection) -> None:
        "Some outbound connection completed its handshake."

    def _hold_off(self, record: ConnectionRecord, delay: float) -> None:
        "An attempt or connection ended; wait ``delay`` before the next."

    def _give_up(self, record: ConnectionRecord | None) -> None:
        "An attempt or connection ended fatally."

    def _elapsed(self) -> None:
        "The hold-off is over."

    def _closed(self, record: ConnectionRecord) -> None:
        "Our connection has closed."


@dataclass
class _Core:
    manager: ConnectionManager
    endpoint: IStreamClientEndpoint
    factory: Factory[Any]
    peer: str
    clock: IReactorTime
    policy: ReconnectPolicy
    draw: Callable[[], float]
    keep_up: bool
    retry_fatal_after: float | None
    failures: int = 0
    last_record: ConnectionRecord | None = None
    next_attempt_at: float | None = None
    stop_waiters: list[defer.Deferred[None]] = field(default_factory=list)
    #: Where the next attempt's result goes (see Dialer.dial); ``None``: nowhere.
    outcome: defer.Deferred[ManagedConnection] | None = None

    def judge(self, inputs: _Inputs, record: ConnectionRecord) -> None:
        """Feed the hold-off the policy chooses for ``record``, or a give-up."""
        delay = self.policy.next_delay(record, self.failures, self.draw)
        if delay is None:
            delay = self.retry_fatal_after
        if delay is None:
            inputs._give_up(record)
        else:
            inputs._hold_off(record, delay)

    def finish_stopping(self) -> None:
        waiters, self.stop_waiters = self.stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def level(self) -> LogLevel:
        # A kept-up connection is the node's business; on-demand dials are
        # their owner's, which logs what matters to it.
        level: LogLevel = LogLevel.info if self.keep_up else LogLevel.debug
        return level


# One small class per state that holds something.


@dataclass
class _Connecting:
    attempt: defer.Deferred[ManagedConnection]


@dataclass
class _Connected:
    connection: ManagedConnection


@dataclass
class _Waiting:
    call: IDelayedCall


def _start_attempt(c: _Inputs, s: _Core) -> _Connecting:
    outcome, s.outcome = s.outcome, None
    s.next_attempt_at = None
    attempt = s.manager.connect(s.endpoint, s.factory, s.peer)

    def connected(connection: ManagedConnection) -> ManagedConnection:
        if s.keep_up:
            c._connected(connection)
        else:
            c._handed_over()
        return connection

    def failed(failure: Failure) -> Failure:
        if isinstance(failure.value, ConnectFailed):
            s.judge(c, failure.value.record)
        else:
            c._give_up(None)
        return failure

    def relay(result: Any) -> None:
        # To the owner that asked for this attempt, if any; else consumed.
        if outcome is not None:
            outcome.callback(result)

    attempt.addCallbacks(connected, failed).addBoth(relay)
    return _Connecting(attempt)


def _remember_connection(c: _Inputs, s: _Core, connection: ManagedConnection) -> _Connected:
    connection.on_close(c._closed)
    return _Connected(connection)


def _wait(c: _Inputs, s: _Core, record: ConnectionRecord, delay: float) -> _Waiting:
    s.last_record = record
    s.failures += 1
    s.next_attempt_at = s.clock.seconds() + delay
    _log.emit(
        s.level,
        "reconnecting to {peer} in {delay:.2f} s after {reason}"
        if s.keep_up
        else "holding off dialling {peer} for {delay:.2f} s after {reason}",
        peer=s.peer,
        delay=delay,
        reason=str(record.reason),
    )
    return _Waiting(s.clock.callLater(delay, _elapsed, c, s))


def _elapsed(c: _Inputs, s: _Core) -> None:
    c._elapsed()
    if s.keep_up:
        c.dial()


def _close(connection: ManagedConnection) -> None:
    """Close the way the protocol on top knows best (a session says BYE first)."""
    peer = connection.wrappedProtocol
    if IPeer.providedBy(peer):
        peer.close()
    else:
        connection.close()


def _build() -> Callable[[_Core], _Inputs]:
    machine = TypeMachineBuilder(_Inputs, _Core)
    Idle = machine.state("Idle")
    Connecting = machine.state("Connecting", _start_attempt)
    Connected = machine.state("Connected", _remember_connection)
    Waiting = machine.state("Waiting", _wait)
    Stopped = machine.state("Stopped")
    GaveUp = machine.state("GaveUp")

    Idle.upon(_Inputs.current).loop().returns(DialerState.IDLE)
    Connecting.upon(_Inputs.current).loop().returns(DialerState.CONNECTING)
    Connected.upon(_Inputs.current).loop().returns(DialerState.CONNECTED)
    Waiting.upon(_Inputs.current).loop().returns(DialerState.WAITING)
    Stopped.upon(_Inputs.current).loop().returns(DialerState.STOPPED)
    GaveUp.upon(_Inputs.current).loop().returns(DialerState.GAVE_UP)

    Idle.upon(_Inputs.dial).to(Connecting).returns(True)
    for plain in (Stopped, GaveUp):
        plain.upon(_Inputs.dial).loop().returns(False)
    for busy in (Connecting, Connected, Waiting):
        busy.upon(_Inputs.dial).loop().returns(False)

    Connecting.upon(_Inputs._connected).to(Connected).returns(None)
    Connecting.upon(_Inputs._handed_over).to(Idle).returns(None)
    Stopped.upon(_Inputs._handed_over).loop().returns(None)
    Connecting.upon(_Inputs._hold_off).to(Waiting).returns(None)
    Connected.upon(_Inputs._hold_off).to(Waiting).returns(None)
    Idle.upon(_Inputs._hold_off).to(Waiting).returns(None)
    Waiting.upon(_Inputs._elapsed).to(Idle).returns(None)

    @pep614(Waiting.upon(_Inputs._hold_off).loop())
    def hold_off_longer(
        c: _Inputs, s: _Core, waiting: _Waiting, record: ConnectionRecord, delay: float
    ) -> None:
        # A connection of the owner's ended (see Dialer.lost): hold off anew.
        waiting.call.cancel()
        waiting.call = _wait(c, s, record, delay).call

    @pep614(Connected.upon(_Inputs._closed, nodata=True).loop())
    def closed(c: _Inputs, s: _Core, record: ConnectionRecord) -> None:
        s.judge(c, record)  # Feeds _hold_off or _give_up, once this transition is done.

    @pep614(Idle.upon(_Inputs._give_up).to(GaveUp))
    def give_up(c: _Inputs, s: _Core, record: ConnectionRecord | None) -> None:
        s.last_record = record or s.last_record
        s.next_attempt_at = None
        _log.emit(
            LogLevel.error if s.keep_up else LogLevel.debug,
            "giving up on {peer}: {reason}{detail}",
            peer=s.peer,
            reason="unknown" if record is None else str(record.reason),
            detail=f" ({record.detail})" if record is not None and record.detail else "",
        )

    # (automat hands a data state's data to a transition into a plain state
    # even when asked not to: these take it.)
    @pep614(Connecting.upon(_Inputs._give_up).to(GaveUp))
    def give_up_connecting(c: _Inputs, s: _Core, _: _Connecting, record: ConnectionRecord | None) -> None:
        give_up(c, s, record)

    @pep614(Connected.upon(_Inputs._give_up).to(GaveUp))
    def give_up_connected(c: _Inputs, s: _Core, _: _Connected, record: ConnectionRecord | None) -> None:
        give_up(c, s, record)

    @pep614(Waiting.upon(_Inputs._give_up).to(GaveUp))
    def give_up_waiting(c: _Inputs, s: _Core, waiting: _Waiting, record: ConnectionRecord | None) -> None:
        waiting.call.cancel()
        give_up(c, s, record)

    @pep614(Connected.upon(_Inputs._ready).loop())
    def ready(c: _Inputs, s: _Core, connected: _Connected, connection: ManagedConnection) -> None:
        if connection is connected.connection:
            # It completed a handshake: the endpoint is good again.
            s.failures = 0

    for plain in (Idle, Stopped, GaveUp):
        plain.upon(_Inputs._ready).loop().returns(None)
    for busy in (Connecting, Waiting):
        busy.upon(_Inputs._ready).loop().returns(None)

    @pep614(Idle.upon(_Inputs.reset).loop())
    @pep614(Connecting.upon(_Inputs.reset, nodata=True).loop())
    @pep614(Connected.upon(_Inputs.reset, nodata=True).loop())
    @pep614(Stopped.upon(_Inputs.reset).loop())
    def forget_failures(c: _Inputs, s: _Core) -> None:
        s.failures = 0

    @pep614(Waiting.upon(_Inputs.reset).to(Idle))
    def cut_hold_off(c: _Inputs, s: _Core, waiting: _Waiting) -> None:
        waiting.call.cancel()
        s.failures = 0
        s.next_attempt_at = None

    GaveUp.upon(_Inputs.reset).to(Idle).returns(None)

    # Stopping

    @pep614(Idle.upon(_Inputs.stop).to(Stopped))
    @pep614(GaveUp.upon(_Inputs.stop).to(Stopped))
    @pep614(Stopped.upon(_Inputs.stop).loop())
    def stop_now(c: _Inputs, s: _Core) -> defer.Deferred[None]:
        return defer.succeed(None)

    @pep614(Waiting.upon(_Inputs.stop).to(Stopped))
    def stop_waiting(c: _Inputs, s: _Core, waiting: _Waiting) -> defer.Deferred[None]:
        waiting.call.cancel()
        s.next_attempt_at = None
        return defer.succeed(None)

    @pep614(Connecting.upon(_Inputs.stop).to(Stopped))
    def stop_connecting(c: _Inputs, s: _Core, connecting: _Connecting) -> defer.Deferred[None]:
        # Its failure (cancelled: "aborted") arrives in Stopped and is dropped.
        connecting.attempt.cancel()
        return defer.succeed(None)

    @pep614(Connected.upon(_Inputs.stop).to(Stopped))
    def stop_connected(c: _Inputs, s: _Core, connected: _Connected) -> defer.Deferred[None]:
        if not s.keep_up or connected.connection.record.closed:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        s.stop_waiters.append(waiter)
        _close(connected.connection)
        return waiter

    for dropped in (Stopped.upon(_Inputs._hold_off), Stopped.upon(_Inputs._give_up)):
        dropped.loop().returns(None)

    @pep614(Stopped.upon(_Inputs._connected).loop())
    def connected_too_late(c: _Inputs, s: _Core, connection: ManagedConnection) -> None:
        _close(connection)

    @pep614(Stopped.upon(_Inputs._closed).loop())
    def closed_when_stopped(c: _Inputs, s: _Core, record: ConnectionRecord) -> None:
        s.finish_stopping()

    return machine.build()


_Machine = _build()


class Dialer(Service):
    """
    Dial ``endpoint`` through ``manager``, holding off between attempts by
    close reason (see the module docstring).

    :param keep_up: keep a connection up (redial, and close it on stop), or
        dial only when :meth:`dial` is called.
    :param retry_fatal_after: the hold-off after a fatal close; ``None`` gives up.
    :param draw: the jitter draw, from 0 to 1.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        endpoint: IStreamClientEndpoint,
        factory: Factory[Any],
        peer: str,
        clock: IReactorTime,
        policy: ReconnectPolicy = DEFAULT_RECONNECT_POLICY,
        draw: Callable[[], float] = random.random,
        *,
        keep_up: bool = True,
        retry_fatal_after: float | None = None,
    ) -> None:
        self.clock = clock
        self._core = _Core(manager, endpoint, factory, peer, clock, policy, draw, keep_up, retry_fatal_after)
        self._machine = _Machine(self._core)
        manager.subscribe(self._connection_event)

    # What owners use

    @property
    def peer(self) -> str:
        """What attempts are recorded and logged as dialling (an owner may move it)."""
        return self._core.peer

    @peer.setter
    def peer(self, peer: str) -> None:
        self._core.peer = peer

    @property
    def state(self) -> DialerState:
        return self._machine.current()

    @property
    def failures(self) -> int:
        """Failed attempts (and closes) in a row since the last handshake."""
        return self._core.failures

    @property
    def last_record(self) -> ConnectionRecord | None:
        return self._core.last_record

    @property
    def next_attempt_at(self) -> float | None:
        return self._core.next_attempt_at

    def dial(self) -> defer.Deferred[ManagedConnection] | None:
        """
        Dial now if idle: the attempt's result (a :class:`ManagedConnection`,
        or :class:`ConnectFailed`); ``None`` while busy, holding off or stopped.
        """
        outcome: defer.Deferred[ManagedConnection] = defer.Deferred()
        self._core.outcome = outcome
        started = self._machine.dial()
        self._core.outcome = None
        return outcome if started else None

    def reset(self) -> None:
        """Forget the failures in a row; end a hold-off or a give-up (the peer is back)."""
        self._machine.reset()

    def lost(self, record: ConnectionRecord) -> None:
        """
        On demand: a connection to the peer (handed over, or one it dialled
        to us) ended badly: count a failure and hold off by ``record``'s
        reason, as after a failed attempt. Ignored while an attempt is under
        way, and in keep-up mode, where the dialer sees its own connection end.
        """
        if self.state in (DialerState.IDLE, DialerState.WAITING):
            self._core.judge(self._machine, record)

    def stop(self) -> defer.Deferred[None]:
        return self._machine.stop()

    # Service (keep-up mode)

    def startService(self) -> None:
        super().startService()
        self._machine.dial()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self._machine.stop()

    def status(self) -> dict[str, Any]:
        """This dialer in ``GET /status`` (``node.connecting``)."""
        last = self._core.last_record
        next_at = self._core.next_attempt_at
        return {
            "peer": self.peer,
            "state": str(self.state),
            "failures": self._core.failures,
            "next_attempt_in": None if next_at is None else max(0.0, next_at - self.clock.seconds()),
            "last_reason": None if last is None or last.reason is None else str(last.reason),
            "last_detail": None if last is None else last.detail,
        }

    def _connection_event(self, event: str, subject: object) -> None:
        if (
            event == "ready"
            and isinstance(subject, ManagedConnection)
            and subject.record.direction is Direction.OUTBOUND
        ):
            self._machine._ready(subject)
