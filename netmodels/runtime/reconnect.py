"""
Reconnecting by close reason.

:class:`ReconnectPolicy` is pure: given why the last attempt or connection
ended and how many attempts have failed in a row, it returns the delay before
the next attempt, or ``None`` to stop. Each reason has its own jittered
exponential :class:`Backoff`: a refused connect backs off, a reset retries
soon, and a fatal protocol error (version or topology mismatch) stops.

:class:`ReconnectingClient` is the thin Twisted service that applies it.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from netmodels.core.backoff import DEFAULT_RECONNECT_POLICY, ReconnectPolicy
from netmodels.core.connection import ConnectionRecord
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.manager import ConnectFailed, ConnectionManager, ManagedConnection

__all__ = ["ClientState", "ReconnectingClient"]


_log = Logger(namespace="netmodels.reconnect")


def _close(connection: ManagedConnection) -> None:
    """Close the way the protocol on top knows best (a session says BYE first)."""
    peer = connection.wrappedProtocol
    if IPeer.providedBy(peer):
        peer.close()
    else:
        connection.close()


class ClientState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    STOPPED = "stopped"
    GAVE_UP = "gave-up"


class ReconnectingClient(Service):
    """
    Keep one outbound connection to ``endpoint`` up, reconnecting by
    :class:`ReconnectPolicy`. Failed attempts in a row grow the delay; a
    connection that completed its handshake resets the count.
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
    ) -> None:
        self.manager = manager
        self.endpoint = endpoint
        self.factory = factory
        self.peer = peer
        self.clock = clock
        self.policy = policy
        self._draw = draw
        self.state = ClientState.IDLE
        self.failures = 0
        self.connection: ManagedConnection | None = None
        self.last_record: ConnectionRecord | None = None
        self.next_attempt_at: float | None = None
        self._attempt: defer.Deferred[ManagedConnection] | None = None
        self._retry_call: IDelayedCall | None = None
        self._stopped: defer.Deferred[None] | None = None
        manager.subscribe(self._connection_event)

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.state = ClientState.STOPPED
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self.connection is not None and not self.connection.record.closed:
            self._stopped = defer.Deferred()
            _close(self.connection)
            return self._stopped
        return defer.succeed(None)

    def status(self) -> dict[str, Any]:
        last = self.last_record
        return {
            "peer": self.peer,
            "state": str(self.state),
            "failures": self.failures,
            "next_attempt_in": None
            if self.next_attempt_at is None
            else max(0.0, self.next_attempt_at - self.clock.seconds()),
            "last_reason": None if last is None or last.reason is None else str(last.reason),
            "last_detail": None if last is None else last.detail,
        }

    def _connect(self) -> None:
        self._retry_call = None
        self.next_attempt_at = None
        self.state = ClientState.CONNECTING
        attempt = self.manager.connect(self.endpoint, self.factory, self.peer)
        self._attempt = attempt
        attempt.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: ManagedConnection) -> None:
        self._attempt = None
        if self.state is ClientState.STOPPED:
            _close(connection)
            return
        self.state = ClientState.CONNECTED
        self.connection = connection
        connection.on_close(self._connection_closed)

    def _connect_failed(self, failure: Failure) -> None:
        self._attempt = None
        if self.state is ClientState.STOPPED:
            return
        failure.trap(ConnectFailed)
        assert isinstance(failure.value, ConnectFailed)
        self._schedule(failure.value.record)

    def _connection_event(self, event: str, subject: object) -> None:
        if event == "ready" and subject is self.connection:
            # It completed a handshake: the endpoint is good again.
            self.failures = 0

    def _connection_closed(self, record: ConnectionRecord) -> None:
        self.connection = None
        if self.state is ClientState.STOPPED:
            if self._stopped is not None:
                stopped, self._stopped = self._stopped, None
                stopped.callback(None)
            return
        self._schedule(record)

    def _schedule(self, record: ConnectionRecord | None) -> None:
        self.last_record = record
        delay = None
        if record is not None:
            delay = self.policy.next_delay(record, self.failures, self._draw)
        if delay is None:
            self.state = ClientState.GAVE_UP
            _log.error(
                "giving up on {peer}: {reason}{detail}",
                peer=self.peer,
                reason="unknown" if record is None else str(record.reason),
                detail=f" ({record.detail})" if record is not None and record.detail else "",
            )
            return
        self.failures += 1
        self.state = ClientState.WAITING
        self.next_attempt_at = self.clock.seconds() + delay
        _log.info(
            "reconnecting to {peer} in {delay:.2f} s after {reason}",
            peer=self.peer,
            delay=delay,
            reason=str(record.reason) if record is not None else "?",
        )
        self._retry_call = self.clock.callLater(delay, self._connect)
