"""
The callback server: it keeps each client's outbox, dials clients back to
deliver, and falls back to their control connection.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import attrs
from attrs import define, field
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from netmodels.core.backoff import Backoff, ReconnectPolicy
from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.core.frames import ProtocolError
from netmodels.core.reasons import CloseReason
from netmodels.runtime.dialer import Dialer, ResolvingEndpoint
from netmodels.runtime.manager import ConnectFailed, ManagedConnection
from netmodels.runtime.node import Node, endpoint_label
from netmodels.runtime.session import (
    MessageTooLarge,
    Session,
    SessionFactory,
)
from netmodels.topologies.callback.common import (
    CALLBACK,
    DIAL_TIMEOUT,
    FALLBACK,
    _Quiet,
    _with_extra,
    callback_endpoint,
    token_checker,
)
from netmodels.topologies.callback.messages import (
    _ID,
    ACK,
    REGISTER,
    decode_ack,
    decode_register,
    encode_deliver,
)
from netmodels.topologies.callback.outbox import Outbox, OutboxFull, UnknownClient
from netmodels.topologies.callback.route import DeliverResource

__all__ = ["CALLBACK_RETRY_POLICY", "WINDOW", "CallbackServer"]


_log = Logger(namespace="netmodels.callback")


#: Messages sent to one client and not yet acknowledged, at most.
WINDOW = 64


#: The hold-off after a failed callback dial (meanwhile the server delivers on
#: the control connection): 5 s, doubling with each failure in a row up to a
#: minute, whatever the reason, without jitter (a dial-back follows one client's
#: traffic, not a crowd's). A fatal close (our token refused) stops dialling
#: until the client registers again.
CALLBACK_RETRY_POLICY = ReconnectPolicy({}, fallback=Backoff(5.0, 2.0, 60.0, jitter=0.0))


@define(eq=False)
class _Client:
    """The server's view of one client: where it is and what is on its way to it."""

    client_id: str
    control: Session | None = None
    registered: bool = False
    suspect: bool = False
    #: The endpoint string dialled for callbacks (``None``: fallback only).
    callback: str | None = None
    #: The callback connection, once its handshake is done.
    link: Session | None = None
    #: Dials the callback endpoint, holding off after a failure (made at registration).
    dialer: Dialer | None = None
    dialing: bool = False
    dial_connection: int | None = None
    #: The session the messages in flight went out on.
    path_session: Session | None = None
    #: (message id, sent at) of what is in flight on it, oldest first.
    sent: collections.deque[tuple[int, float]] = field(factory=collections.deque)
    #: The highest id sent on the current path, and the highest acknowledged.
    sent_through: int = 0
    acked: int = 0
    ack_call: IDelayedCall | None = None
    last_callback: dict[str, Any] | None = None
    delivered: collections.Counter[str] = field(factory=collections.Counter)

    @property
    def alive(self) -> bool:
        return self.control is not None and self.registered and not self.suspect

    def restart_path(self) -> None:
        """Forget what is in flight: it goes out again from the oldest unacknowledged."""
        self.path_session = None
        self.sent.clear()
        self.sent_through = self.acked
        if self.ack_call is not None and self.ack_call.active():
            self.ack_call.cancel()
        self.ack_call = None


class CallbackServer:
    """
    The server side: accepts messages for clients (:meth:`deliver`), keeps
    them in ``outbox`` and delivers them by callback or fallback.

    :param node: the server node (its handlers, status and manager are used).
    :param outbox: where accepted messages wait.
    :param token: the secret clients must present (``None``: none asked).
    :param dial: makes the client endpoint for a callback endpoint string
        (default: the node's, as for ``--connect``).
    :param window: messages in flight to one client, at most.
    :param ack_timeout: seconds an acknowledgement may take before the path
        counts as failed (default: the node's request timeout).
    :param retry_policy: the hold-off after a failed callback dial, by close reason.
    :param dial_timeout: seconds a callback dial may take.
    """

    def __init__(
        self,
        node: Node,
        outbox: Outbox,
        token: str | None = None,
        dial: Callable[[str], IStreamClientEndpoint] | None = None,
        window: int = WINDOW,
        ack_timeout: float | None = None,
        retry_policy: ReconnectPolicy = CALLBACK_RETRY_POLICY,
        dial_timeout: float = DIAL_TIMEOUT,
    ) -> None:
        self.node = node
        self.clock = node.clock
        self.outbox = outbox
        self.token = token
        self.window = window
        self.ack_timeout = node.config.request_timeout if ack_timeout is None else ack_timeout
        self.retry_policy = retry_policy
        self.dial_timeout = dial_timeout
        self._dial_endpoint = dial or (lambda description: node.endpoint(description, server=False))
        self._clients: dict[str, _Client] = {}
        self._by_connection: dict[int, _Client] = {}
        self._max_payload = node.config.max_frame - 1 - _ID.size
        self._stopped = False
        self.counters: collections.Counter[str] = collections.Counter()
        #: ``observer(event, client_id)`` on ``"registered"``, ``"acked"`` (the
        #: client acknowledged messages: they left the outbox) and ``"offline"``
        #: (its control connection closed: its messages wait).
        self.observers: list[Callable[[str, str], None]] = []
        # Control connections: clients prove the token; our HELLO names our store.
        base = _with_extra(node.session_settings, store=outbox.store_id)
        node.session_settings = attrs.evolve(base, authenticate=token_checker(token, "client"))
        # Callback connections: we dial, so we prove the token.
        dial_settings = attrs.evolve(
            base if token is None else _with_extra(base, token=token), application=_Quiet()
        )
        self.dial_factory = SessionFactory(dial_settings, node.clock)
        node.add_handler(REGISTER, self._register_received)
        node.add_handler(ACK, self._ack_received)
        node.manager.subscribe(self._connection_event)
        node.on_liveness(self._liveness)
        node.add_status_section("callback", self.status)
        node.add_metrics(self.metrics)
        node.add_route("deliver", DeliverResource(self))
        node.on_stop(self.stop)

    # API

    def deliver(self, client_id: str, payload: bytes) -> defer.Deferred[int]:
        """
        Accept ``payload`` for ``client_id``. Fires with the message id once it
        is in the outbox (committed: on disk with a file outbox); fails with
        :class:`~netmodels.topologies.callback.outbox.UnknownClient` (never registered),
        :class:`~netmodels.topologies.callback.outbox.OutboxFull` or ``MessageTooLarge``.
        The message then goes out as soon as the client is alive.
        """
        if len(payload) > self._max_payload:
            return defer.fail(
                MessageTooLarge(
                    f"message of {len(payload)} bytes exceeds the limit of {self._max_payload} "
                    "(the frame limit less the type byte and the 8-byte id)"
                )
            )
        if self._stopped:
            return defer.fail(RuntimeError("the callback server has stopped"))
        try:
            message_id = self.outbox.enqueue(client_id, payload)
        except (UnknownClient, OutboxFull) as e:
            self.counters["refused_" + ("full" if isinstance(e, OutboxFull) else "unknown")] += 1
            return defer.fail(e)
        self.counters["accepted"] += 1
        client = self._clients.get(client_id)
        if client is not None:
            self._pump(client)
        return defer.succeed(message_id)

    def alive(self, client_id: str) -> bool:
        client = self._clients.get(client_id)
        return client is not None and client.alive

    def stop(self) -> None:
        self._stopped = True
        for client in self._clients.values():
            client.restart_path()
            if client.dialer is not None:
                client.dialer.stop()

    def status(self) -> dict[str, Any]:
        """The ``callback`` section of ``GET /status``."""
        clients: dict[str, Any] = {}
        for client_id in sorted(set(self.outbox.clients()) | set(self._clients)):
            client = self._clients.get(client_id) or _Client(client_id)
            clients[client_id] = {
                "alive": client.alive,
                "connected": client.control is not None,
                "suspect": client.suspect,
                "callback": client.callback,
                "callback_connected": client.link is not None,
                "last_callback": client.last_callback,
                "outbox_depth": self.outbox.depth(client_id),
                "in_flight": len(client.sent),
                "delivered": {CALLBACK: client.delivered[CALLBACK], FALLBACK: client.delivered[FALLBACK]},
            }
        return {
            "role": "server",
            "store": self.outbox.store_id,
            "outbox": {
                "path": self.outbox.path,
                "depth": self.outbox.depth(),
                "max_per_client": self.outbox.max_per_client,
                "max_total": self.outbox.max_total,
            },
            "counters": dict(self.counters),
            "clients": clients,
        }

    def metrics(self) -> list[Metric]:
        """For ``GET /metrics``: deliveries by path, the outbox's depth, what was accepted or refused."""
        counters = self.counters
        delivered = CounterMetricFamily(
            "netmodels_callback_delivered",
            "Messages the clients acknowledged (they left the outbox), by the path they took: "
            "callback (we dialled the client) or fallback (its control connection).",
            labels=["path"],
        )
        for path in (CALLBACK, FALLBACK):
            delivered.add_metric([path], counters[f"delivered_{path}"])
        refused = CounterMetricFamily(
            "netmodels_callback_refused",
            "Messages refused by deliver(): outbox full, or client never registered.",
            labels=["why"],
        )
        for why in ("full", "unknown"):
            refused.add_metric([why], counters[f"refused_{why}"])
        return [
            delivered,
            GaugeMetricFamily(
                "netmodels_callback_outbox_depth", "Messages waiting in the outbox.", self.outbox.depth()
            ),
            CounterMetricFamily(
                "netmodels_callback_accepted", "Messages accepted into the outbox.", counters["accepted"]
            ),
            refused,
            CounterMetricFamily("netmodels_callback_dials", "Callback dials started.", counters["dials"]),
            CounterMetricFamily(
                "netmodels_callback_dial_failures", "Callback dials that failed.", counters["dial_failures"]
            ),
        ]

    # Delivery

    def _pump(self, client: _Client) -> None:
        """Send what fits in the window on the best path, if the client is alive."""
        if self._stopped or not client.alive:
            return
        session = client.path_session
        if session is None or not client.sent:
            # Nothing in flight: choose the path afresh.
            if client.callback is not None and client.link is None:
                if client.dialing:
                    return
                if self.outbox.depth(client.client_id) and self._dial(client):
                    return
            session = client.link or client.control
            client.path_session = session
        assert session is not None
        room = self.window - len(client.sent)
        if room <= 0:
            return
        messages = self.outbox.peek(client.client_id, after=client.sent_through, limit=room)
        if not messages:
            return
        now = self.clock.seconds()
        for message_id, payload in messages:
            session.write_frame(encode_deliver(message_id, payload))
            client.sent.append((message_id, now))
        client.sent_through = messages[-1][0]
        if client.ack_call is None:
            client.ack_call = self.clock.callLater(self.ack_timeout, self._ack_due, client)

    def _dial(self, client: _Client) -> bool:
        """Dial the callback endpoint, unless the dialer is holding off; ``True`` if it dials."""
        if client.dialer is None:
            client.dialer = Dialer(
                self.node.manager,
                ResolvingEndpoint(lambda: self._callback_endpoint(client)),
                self.dial_factory,
                endpoint_label(client.callback or "?"),
                self.clock,
                self.retry_policy,
                keep_up=False,
            )
        attempt = client.dialer.dial()
        if attempt is None:
            return False
        client.dialing = True
        self.counters["dials"] += 1

        def connected(connection: ManagedConnection) -> None:
            # Delivery starts at the "ready" event, after the handshake.
            client.dial_connection = connection.record.id
            self._by_connection[connection.record.id] = client

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, ConnectFailed):
                self._dial_failed(client, _result(error.record))
            else:
                self._dial_failed(client, {"result": "unreachable", "errno": None, "detail": str(error)})

        attempt.addCallbacks(connected, failed).addErrback(
            lambda failure: _log.failure("callback dial bookkeeping failed", failure)
        )
        return True

    def _callback_endpoint(self, client: _Client) -> IStreamClientEndpoint:
        assert client.callback is not None
        return self._dial_endpoint(client.callback)

    def _dial_failed(self, client: _Client, result: dict[str, Any]) -> None:
        client.dialing = False
        client.dial_connection = None
        client.last_callback = result
        self.counters["dial_failures"] += 1
        _log.info(
            "callback to {client} at {endpoint} failed: {reason}; delivering on the control connection",
            client=client.client_id,
            endpoint=client.callback,
            reason=result["result"],
        )
        self._pump(client)

    def _ack_due(self, client: _Client) -> None:
        client.ack_call = None
        if not client.sent:
            return
        now = self.clock.seconds()
        waited = now - client.sent[0][1]
        if waited < self.ack_timeout:
            client.ack_call = self.clock.callLater(self.ack_timeout - waited, self._ack_due, client)
            return
        session = client.path_session
        detail = f"no acknowledgement of message {client.sent[0][0]} within {self.ack_timeout:g} s"
        _log.warn("client {client}: {detail}", client=client.client_id, detail=detail)
        client.restart_path()
        if session is not None and session is client.link:
            # Ending it (below) makes its dialer hold off (a ``timeout`` loss).
            client.last_callback = {"result": str(CloseReason.TIMEOUT), "errno": None, "detail": detail}
        if session is not None:
            # A path that swallows messages is no path: end it (RST, by policy).
            session.abandon(CloseReason.TIMEOUT, detail)
        self._pump(client)

    # Events

    def _register_received(self, session: Session, body: bytes) -> None:
        try:
            port, kind = decode_register(body)
        except ProtocolError as e:
            session.protocol_error(str(e))
            return
        client_id = session.node_id
        record = session.record
        if client_id is None or record is None or record.direction is not Direction.INBOUND:
            session.protocol_error("REGISTER is sent by a client on its control connection")
            return
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client(client_id)
        old = client.control
        if old is not None and old is not session:
            _log.warn("client {client} registered again: closing its older connection", client=client_id)
            self._by_connection.pop(old.connection_id, None)
            client.control = None
            old.close()
        callback = (
            None if port is None else callback_endpoint(kind, session.transport.host, port, self.dial_timeout)
        )
        if callback != client.callback:
            self._drop_link(client)
            client.last_callback = None
        client.callback = callback
        if client.dialer is not None:
            # Registered again: dial its callback at once, whatever failed before.
            client.dialer.peer = endpoint_label(callback or "?")
            client.dialer.reset()
        client.control = session
        client.registered = True
        client.suspect = False
        client.restart_path()
        self._by_connection[session.connection_id] = client
        self.outbox.remember(client_id, callback)
        _log.info(
            "client {client} registered: callback {callback}; {waiting} waiting",
            client=client_id,
            callback=callback or "none (control connection only)",
            depth=self.outbox.depth(client_id),
            waiting=_messages(self.outbox.depth(client_id)),
        )
        self._notify("registered", client_id)
        self._pump(client)

    def _ack_received(self, session: Session, body: bytes) -> None:
        try:
            up_to = decode_ack(body)
        except ProtocolError as e:
            session.protocol_error(str(e))
            return
        client = self._by_connection.get(session.connection_id)
        if client is None or self._stopped:
            return
        path = FALLBACK if session is client.control else CALLBACK
        removed = self.outbox.ack(client.client_id, up_to)
        client.delivered[path] += removed
        self.counters[f"delivered_{path}"] += removed
        if removed:
            self._notify("acked", client.client_id)
        if up_to > client.acked:
            client.acked = up_to
            client.sent_through = max(client.sent_through, up_to)
        sent = client.sent
        while sent and sent[0][0] <= up_to:
            sent.popleft()
        if not sent and client.ack_call is not None:
            if client.ack_call.active():
                client.ack_call.cancel()
            client.ack_call = None
        self._pump(client)

    def _liveness(self, session: Session, state: str) -> None:
        client = self._by_connection.get(session.connection_id)
        if client is None or session is not client.control:
            return
        client.suspect = state == "suspect"
        if not client.suspect:
            self._pump(client)

    def _connection_event(self, event: str, subject: Any) -> None:
        if not isinstance(subject, ManagedConnection):
            return
        connection_id = subject.record.id
        client = self._by_connection.get(connection_id)
        if client is None:
            return
        session = subject.wrappedProtocol
        if event == "ready" and connection_id == client.dial_connection and isinstance(session, Session):
            client.dialing = False
            client.dial_connection = None
            client.link = session
            client.last_callback = {"result": "ok", "errno": None, "detail": ""}
            if client.dialer is not None:
                client.dialer.reset()
            if not client.alive:
                session.close()
                return
            self._pump(client)
        elif event == "closed":
            self._by_connection.pop(connection_id, None)
            if self._stopped:
                return
            if session is client.control:
                client.control = None
                client.registered = False
                client.suspect = False
                client.restart_path()
                self._drop_link(client)
                depth = self.outbox.depth(client.client_id)
                _log.info(
                    "client {client} is offline ({reason}); {waiting} for it",
                    client=client.client_id,
                    reason=str(subject.record.reason),
                    depth=depth,
                    waiting=f"{_messages(depth)} {'waits' if depth == 1 else 'wait'}",
                )
                self._notify("offline", client.client_id)
            elif connection_id == client.dial_connection:
                # Closed before its handshake finished (our token refused, say).
                if client.dialer is not None:
                    client.dialer.lost(subject.record)
                self._dial_failed(client, _result(subject.record))
            elif session is client.link:
                client.link = None
                record = subject.record
                if record.reason is not CloseReason.CLEAN and client.dialer is not None:
                    client.last_callback = _result(record)
                    client.dialer.lost(record)
                if client.path_session is session:
                    client.restart_path()
                self._pump(client)

    def _notify(self, event: str, client_id: str) -> None:
        for observer in list(self.observers):
            try:
                observer(event, client_id)
            except Exception:
                _log.failure("callback observer failed on {event}", event=event)

    def _drop_link(self, client: _Client) -> None:
        link, client.link = client.link, None
        if link is not None:
            self._by_connection.pop(link.connection_id, None)
            if client.path_session is link:
                client.restart_path()
            link.close()


def _messages(count: int) -> str:
    """``1 message``, ``2 messages``: for log lines."""
    return f"{count} message{'' if count == 1 else 's'}"


def _result(record: ConnectionRecord) -> dict[str, Any]:
    return {
        "result": None if record.reason is None else str(record.reason),
        "errno": record.errno,
        "detail": record.detail,
    }
