"""
The RST-aware connection manager, shared by every topology.

One :class:`ConnectionManager` keeps a registry of every connection (inbound,
outbound and failed connect attempts), each with a :class:`ConnectionRecord`.
It observes connections by wrapping their factory (:meth:`~ConnectionManager.
wrap_factory`), so the protocols it watches need not subclass anything; it
captures the errno Twisted drops, applies connection limits, and records
exactly one :class:`~netmodels.core.reasons.CloseReason` for every close.

Closing on purpose is a stated policy (:data:`DEFAULT_CLOSE_POLICY`): every
local reason maps to a :class:`CloseMode` -- FIN, FIN then RST after a
deadline, or RST at once.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure

from netmodels.core.connection import (
    DEFAULT_CLOSE_POLICY,
    CloseMode,
    ConnectionLimits,
    ConnectionRecord,
    ConnectionState,
    Direction,
)
from netmodels.core.reasons import CloseReason, Closure, Initiator
from netmodels.runtime.classify import classify_connect_failure
from netmodels.runtime.managed import CORK_LIMIT, ManagedConnection, _ManagedFactory, format_address

__all__ = [
    "CORK_LIMIT",
    "RECORD_COUNTS",
    "ConnectFailed",
    "ConnectionManager",
    "ManagedConnection",
    "add_datagram_counts",
    "format_address",
]


_log = Logger(namespace="netmodels.manager")
_INFO = LogLevel.info


def _log_info(format: str, event: dict[str, Any]) -> None:
    """
    ``_log.info(format, **event)`` for the events of every connection
    (opened, closed), at less than half the cost: the event is the same
    dict, with the keys Twisted documents for every event, handed to the
    same observer; what is skipped is ``Logger.emit``'s check that the
    level is a valid one (a walk over all levels) and a copy of the fields.
    """
    event["log_logger"] = _log
    event["log_level"] = _INFO
    event["log_namespace"] = _log.namespace
    event["log_source"] = _log.source
    event["log_format"] = format
    event["log_time"] = time.time()
    _log.observer(event)


# Counter keys of opened connections, by direction (not formatted per connection).
_OPENED = {direction: f"opened_{direction}" for direction in Direction}


#: The counts of a record that :attr:`ConnectionManager.ended` sums.
RECORD_COUNTS = ("bytes_in", "bytes_out", "messages_in", "messages_out", "probes_sent", "probes_unanswered")


def _add_counts(totals: collections.Counter[str], record: ConnectionRecord) -> None:
    for name in RECORD_COUNTS:
        totals[name] += getattr(record, name)
    datagram = record.extra.get("datagram")
    if datagram is not None:
        add_datagram_counts(totals, datagram())


def add_datagram_counts(totals: collections.Counter[str], status: Mapping[str, Any]) -> None:
    """Add a datagram session's ``datagram_status()`` counts to ``totals`` (``unreliable_lost``, ...)."""
    totals["datagrams_in"] += status["datagrams_in"]
    totals["datagrams_out"] += status["datagrams_out"]
    totals["retransmissions"] += status["retransmissions"]
    for name, count in status["unreliable"].items():
        totals["unreliable_" + name] += count


class ConnectFailed(Exception):
    """A connect attempt failed; :attr:`record` says why, :attr:`cause` is Twisted's error."""

    def __init__(self, record: ConnectionRecord, cause: BaseException) -> None:
        super().__init__(f"connect to {record.peer} failed: {record.reason} ({record.detail or cause})")
        self.record = record
        self.cause = cause


class ConnectionManager:
    """
    The registry of connections of one node.

    :param clock: the reactor's time, for close deadlines (injected).
    :param limits: inbound limits; over them connections are ``rejected``.
    :param history: how many closed connections and failed connects to keep.
    :param close_policy: which :class:`CloseMode` each local reason uses.
    :param close_deadline: seconds an orderly close may take before RST.
    :param wall_clock: Unix time for ``opened_at``/``closed_at``.
    :param name: the node's id, for log lines.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limits: ConnectionLimits = ConnectionLimits(),
        history: int = 256,
        close_policy: Mapping[CloseReason, CloseMode] = DEFAULT_CLOSE_POLICY,
        close_deadline: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
        name: str = "",
    ) -> None:
        self.clock = clock
        #: Prefixes log lines, to tell several nodes in one process apart.
        self.name = name
        self.limits = limits
        self.close_policy = dict(close_policy)
        self.close_deadline = close_deadline
        self._wall_clock = wall_clock
        self._next_id = 1
        self.live: dict[int, ManagedConnection] = {}
        self.pending_connects: dict[int, ConnectionRecord] = {}
        self.history: collections.deque[ConnectionRecord] = collections.deque(maxlen=history)
        self.counters: collections.Counter[str] = collections.Counter()
        #: Every close and failed connect since start, by reason, initiator
        #: and direction (``history`` forgets; this does not).
        self.closes: collections.Counter[tuple[CloseReason, Initiator, Direction]] = collections.Counter()
        #: What the connections that have ended carried, summed when each
        #: ended: ``bytes_in``, ``messages_out``, ``probes_sent``, ... and, for
        #: datagram sessions, their ``datagram_status`` counts. With the live
        #: records' own counts, these are totals since start (for metrics).
        self.ended: collections.Counter[str] = collections.Counter()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._inbound = 0
        self._observers: list[Callable[[str, ManagedConnection | ConnectionRecord], None]] = []
        #: Connections holding corked writes until the end of the reactor turn.
        self._corked: list[ManagedConnection] = []

    # Wiring

    def wrap_factory(
        self,
        factory: Factory[Any],
        direction: Direction = Direction.INBOUND,
        rejection_payload: Callable[[CloseReason, str], bytes] | None = None,
    ) -> WrappingFactory:
        """A factory that builds ``factory``'s protocols under this manager."""
        return _ManagedFactory(self, factory, direction, rejection_payload=rejection_payload)

    def connect(
        self, endpoint: IStreamClientEndpoint, factory: Factory[Any], peer: str
    ) -> defer.Deferred[ManagedConnection]:
        """
        Connect ``endpoint`` with ``factory``, recording the attempt; a failed
        attempt stays in the history with its reason (``refused``, ...). The
        result is the :class:`ManagedConnection`; a failure is
        :class:`ConnectFailed`, holding the record.
        """
        record = self._new_record(Direction.OUTBOUND, peer)
        self.pending_connects[record.id] = record
        self.counters["connect_attempts"] += 1
        managed = _ManagedFactory(self, factory, Direction.OUTBOUND, record)
        attempt = endpoint.connect(managed)

        def failed(failure: Failure) -> Failure:
            self.pending_connects.pop(record.id, None)
            cause = failure.value
            assert cause is not None
            closure = classify_connect_failure(cause)
            if isinstance(failure.value, defer.CancelledError):
                closure = Closure(CloseReason.ABORTED, Initiator.LOCAL, detail="connect cancelled")
            record.state = ConnectionState.FAILED
            self._finish(record, closure)
            self.counters["connect_failures"] += 1
            _log.info(
                "[{node}] connect to {peer} failed: {reason}{errno_text}{detail_text}",
                node=self.name,
                peer=record.peer,
                reason=str(closure.reason),
                errno_text=f" ({closure.errno})" if closure.errno else "",
                detail_text=f": {closure.detail}" if closure.detail else "",
                record=record,
                event="connect-failed",
            )
            self._notify("failed", record)
            return Failure(ConnectFailed(record, cause))

        def connected(protocol: ManagedConnection) -> ManagedConnection:
            self.pending_connects.pop(record.id, None)
            return protocol

        return attempt.addCallbacks(connected, failed)

    def subscribe(self, observer: Callable[[str, Any], None]) -> None:
        """
        Call ``observer(event, subject)`` on ``"opened"``, ``"ready"`` and
        ``"closed"`` (subject: the :class:`ManagedConnection`) and ``"failed"``
        (subject: the :class:`ConnectionRecord` of a failed connect).
        """
        self._observers.append(observer)

    # Queries

    def records(self) -> Iterator[ConnectionRecord]:
        """Every known record: pending connects, live connections, then history."""
        yield from self.pending_connects.values()
        for connection in self.live.values():
            yield connection.record
        yield from reversed(self.history)

    def find(self, connection_id: int) -> ManagedConnection | None:
        """The live connection with ``connection_id``, if any."""
        return self.live.get(connection_id)

    def _cork(self, connection: ManagedConnection) -> None:
        if not self._corked:
            self.clock.callLater(0, self._uncork_all)
        self._corked.append(connection)

    def _uncork_all(self) -> None:
        corked, self._corked = self._corked, []
        for connection in corked:
            connection.uncork()

    # Commands

    def reset(self, connection: ManagedConnection) -> None:
        """Close ``connection`` with RST; recorded as ``aborted``."""
        connection.reset()

    def close(self, connection: ManagedConnection, deadline: float | None = None) -> None:
        """Close with FIN; RST if it has not finished by ``deadline`` seconds."""
        connection.close(deadline)

    def close_all(self, reason: CloseReason = CloseReason.CLEAN, detail: str = "") -> None:
        """End every live connection with ``reason``, by the close policy."""
        for connection in list(self.live.values()):
            connection.end(reason, detail)

    # Internal, called by ManagedConnection

    def _new_record(self, direction: Direction, peer: str) -> ConnectionRecord:
        record = ConnectionRecord(id=self._next_id, direction=direction, peer=peer)
        self._next_id += 1
        return record

    def _admit(self, connection: ManagedConnection) -> str | None:
        if connection.record.direction is not Direction.INBOUND:
            return None
        limits = self.limits
        if limits.max_connections is not None and self._inbound >= limits.max_connections:
            return f"connection limit of {limits.max_connections} reached"
        host = connection.host
        if limits.max_per_address is not None and self._per_address[host] >= limits.max_per_address:
            return f"limit of {limits.max_per_address} connections from {host} reached"
        return None

    def _opened(self, connection: ManagedConnection) -> None:
        record = connection.record
        record.opened_at = self._wall_clock()
        record.state = ConnectionState.HANDSHAKING
        self.live[record.id] = connection
        if record.direction is Direction.INBOUND:
            self._inbound += 1
            self._per_address[connection.host] += 1
        self.counters[_OPENED[record.direction]] += 1
        _log_info(
            "[{node}] connection {id} opened: {direction} {peer}",
            {
                "node": self.name,
                "id": record.id,
                "direction": str(record.direction),
                "peer": record.peer,
                "record": record,
                "event": "opened",
            },
        )
        self._notify("opened", connection)

    def _closed(self, connection: ManagedConnection, closure: Closure) -> None:
        record = connection.record
        if record.closed:
            return
        if self.live.pop(record.id, None) is not None and record.direction is Direction.INBOUND:
            self._inbound -= 1
            host = connection.host
            self._per_address[host] -= 1
            if self._per_address[host] <= 0:
                del self._per_address[host]
        record.state = ConnectionState.CLOSED
        self._finish(record, closure)
        _log_info(
            "[{node}] connection {id} to {peer} closed: {reason} ({initiator}{errno_text}){detail_text}",
            {
                "node": self.name,
                "id": record.id,
                "peer": record.peer,
                "reason": str(closure.reason),
                "initiator": str(closure.initiator),
                "errno_text": f", {closure.errno}" if closure.errno else "",
                "detail_text": f": {closure.detail}" if closure.detail else "",
                "record": record,
                "event": "closed",
            },
        )
        self._notify("closed", connection)

    def _finish(self, record: ConnectionRecord, closure: Closure) -> None:
        record.closed_at = self._wall_clock()
        record.reason = closure.reason
        record.initiator = closure.initiator
        record.errno = closure.errno
        record.fatal = closure.fatal
        if closure.detail:
            record.detail = closure.detail
        self.history.append(record)
        self.counters[str(closure.reason)] += 1
        # Once per connection, never per message: totals outlive the history.
        self.closes[closure.reason, closure.initiator, record.direction] += 1
        _add_counts(self.ended, record)

    def _notify(self, event: str, subject: Any) -> None:
        for observer in list(self._observers):
            try:
                observer(event, subject)
            except Exception:
                _log.failure("connection observer failed on {event}", event=event)
