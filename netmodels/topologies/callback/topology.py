"""
The callback topology: the "port 25" model of the socket notes.

A **client** dials the server (the *control* connection), proves it knows the
shared ``--token`` in its HELLO, and registers a *callback endpoint*: the port
it listens on (``--callback``); the host is the address the server sees. Then
it waits.

The **server** accepts messages for a client with :meth:`CallbackServer.
deliver` (or ``POST /deliver/<client>`` on the status endpoint) and keeps each
one in its :class:`~netmodels.topologies.callback.outbox.Outbox` until the client acknowledges
it. While the client is *alive* (its control connection open, registered,
and its keepalive not suspect) the server dials the callback endpoint and
delivers there; when the dial fails it records why (``refused``,
``unreachable``, ``timeout``, ...) and delivers on the control connection
instead (the *fallback* path). While the client is not alive, messages wait;
they go out, in order, as soon as it registers again.

Every message is sent until it is acknowledged (at least once on the wire);
the client remembers the highest id delivered from each server store
(:class:`~netmodels.topologies.callback.outbox.DeliveredLog`) and drops what it has already
seen, so the application sees each message once, in order.

Wire messages (see ``docs/protocol.md``): ``REGISTER`` (client to server,
JSON ``{"port": N | null, "kind": "tcp"}``), ``DELIVER`` (server to client: a
u64 message id, then the payload) and ``ACK`` (client to server: a u64 id,
acknowledging every message up to it).

The default application is :class:`InboxApplication` (``--app inbox``): it
logs every message it receives.
"""

from __future__ import annotations

import collections
import hmac
import json
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from attrs import define, field
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from netmodels.core.backoff import Backoff, ReconnectPolicy
from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.core.frames import Hello, MalformedMessage, ProtocolError, encode_frame, register_message_types
from netmodels.core.reasons import CloseReason
from netmodels.runtime.application import Application
from netmodels.runtime.dialer import Dialer, ResolvingEndpoint
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.manager import ConnectFailed, ManagedConnection
from netmodels.runtime.node import Node, NodeConfig, endpoint_label
from netmodels.runtime.session import (
    MessageTooLarge,
    Session,
    SessionFactory,
    SessionSettings,
    call_application,
)
from netmodels.runtime.topology import Topology
from netmodels.topologies.callback.options import CallbackOptions, CallbackSettings
from netmodels.topologies.callback.outbox import DeliveredLog, Outbox, OutboxFull, UnknownClient
from netmodels.topologies.callback.route import DeliverResource

__all__ = [
    "Callback",
    "CallbackClient",
    "CallbackServer",
    "InboxApplication",
    "OutboxFull",
    "UnknownClient",
    "callback_of",
    "decode_ack",
    "decode_deliver",
    "decode_register",
    "encode_ack",
    "encode_deliver",
    "encode_register",
    "token_checker",
]

_log = Logger(namespace="netmodels.callback")
_inbox_log = Logger(namespace="netmodels.app.inbox")

_ID = struct.Struct("!Q")
#: A client registers its callback endpoint (JSON).
REGISTER: Final = 0x0B
#: A message for the client: a u64 message id, then the payload.
DELIVER: Final = 0x0C
#: The client has every message up to this u64 id.
ACK: Final = 0x0D
#: The callback topology's message types, registered on import so that any
#: decoder (a test's too) accepts them.
MESSAGE_TYPES: Final = {"REGISTER": REGISTER, "DELIVER": DELIVER, "ACK": ACK}
register_message_types("topology callback", MESSAGE_TYPES)

#: The kinds of callback endpoint a server knows how to dial.
KINDS = ("tcp", "tls", "udp")

#: Messages sent to one client and not yet acknowledged, at most.
WINDOW = 64
#: The hold-off after a failed callback dial (meanwhile the server delivers on
#: the control connection): 5 s, doubling with each failure in a row up to a
#: minute, whatever the reason, without jitter (a dial-back follows one client's
#: traffic, not a crowd's). A fatal close (our token refused) stops dialling
#: until the client registers again.
CALLBACK_RETRY_POLICY = ReconnectPolicy({}, fallback=Backoff(5.0, 2.0, 60.0, jitter=0.0))
#: Seconds a callback dial may take before it counts as ``timeout``.
DIAL_TIMEOUT = 5.0

CALLBACK = "callback"
FALLBACK = "fallback"


# --- Wire codecs (sans-IO) -------------------------------------------------------------


def encode_register(port: int | None, kind: str = "tcp") -> bytes:
    """REGISTER: the port the client listens on for callbacks (``None``: none), and its kind."""
    return encode_frame(REGISTER, json.dumps({"port": port, "kind": kind}).encode())


def decode_register(body: bytes) -> tuple[int | None, str]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedMessage("REGISTER is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedMessage("REGISTER must be a JSON object")
    port = document.get("port")
    kind = document.get("kind", "tcp")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise MalformedMessage("REGISTER port must be null or an integer from 1 to 65535")
    if kind not in KINDS:
        raise MalformedMessage(f"REGISTER kind must be one of {', '.join(KINDS)}")
    return port, str(kind)


def encode_deliver(message_id: int, payload: bytes) -> bytes:
    return encode_frame(DELIVER, _ID.pack(message_id) + payload)


def decode_deliver(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise MalformedMessage("DELIVER body shorter than its 8-byte id")
    return int(_ID.unpack_from(body)[0]), body[8:]


def encode_ack(message_id: int) -> bytes:
    return encode_frame(ACK, _ID.pack(message_id))


def decode_ack(body: bytes) -> int:
    if len(body) != 8:
        raise MalformedMessage(f"ACK body must be 8 bytes, not {len(body)}")
    return int(_ID.unpack(body)[0])


def token_checker(token: str | None, role: str) -> Callable[[Hello], str | None]:
    """
    ``authenticate`` for sessions: a peer of ``role`` must carry ``token`` in
    its HELLO (compared in constant time). ``None`` asks for nothing.
    """
    if token is None:
        return lambda hello: None
    expected = token.encode()

    def check(hello: Hello) -> str | None:
        if hello.role != role:
            return None
        offered = hello.extra.get("token")
        if not isinstance(offered, str):
            return "no token in HELLO"
        if not hmac.compare_digest(offered.encode(), expected):
            return "wrong token"
        return None

    return check


def callback_endpoint(kind: str, host: str, port: int, timeout: float = DIAL_TIMEOUT) -> str:
    """The client endpoint string a server dials for a callback at ``host:port``."""
    escaped = host.replace(":", "\\:")
    if kind == "tls":
        return f"tls:{escaped}:{port}:timeout={timeout:g}"
    return f"{kind}:host={escaped}:port={port}:timeout={timeout:g}"


def _with_extra(settings: SessionSettings, **extra: Any) -> SessionSettings:
    hello = settings.hello
    return attrs.evolve(settings, hello=attrs.evolve(hello, extra={**hello.extra, **extra}))


class _Quiet(Application):
    """The application of callback connections: they carry DELIVER and ACK only."""


def callback_of(node: Node) -> CallbackServer | CallbackClient | None:
    """The :class:`CallbackServer` or :class:`CallbackClient` of a callback node, else ``None``."""
    state = node.topology_state
    return state if isinstance(state, CallbackServer | CallbackClient) else None


# --- The server --------------------------------------------------------------------------


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


# --- The client --------------------------------------------------------------------------


class CallbackClient:
    """
    The client side: registers its callback endpoint on every control
    connection, and hands each DELIVER to the application once.

    :param node: the client node.
    :param log: the ids already delivered.
    :param token: the secret the server must know (it presents it when it
        dials back) and that the client presents to the server.
    """

    def __init__(self, node: Node, log: DeliveredLog, token: str | None = None) -> None:
        self.node = node
        self.log = log
        self.token = token
        self.listener: Any = None
        self.kind = "tcp"
        self.received: collections.Counter[str] = collections.Counter()
        self.duplicates = 0
        self.registered = False
        self._stopped = False
        self._acks: dict[Session, int] = {}
        self._ack_call: IDelayedCall | None = None
        base = node.session_settings
        #: For the control connection: our HELLO carries the token.
        self.control_factory = SessionFactory(
            base if token is None else _with_extra(base, token=token), node.clock
        )
        #: For the callback listener: the server must carry the token.
        self.callback_factory = SessionFactory(
            attrs.evolve(base, application=_Quiet(), authenticate=token_checker(token, "server")), node.clock
        )
        node.add_handler(DELIVER, self._deliver_received)
        node.manager.subscribe(self._connection_event)
        node.add_status_section("callback", self.status)
        node.on_stop(self.stop)

    def listen(self, description: str) -> None:
        """Listen for callbacks on ``description``."""
        self.node.listen(description, self.callback_factory)
        self.listener = self.node.listeners[-1]
        self.kind = "tls" if description.startswith(("ssl:", "tls:")) else description.split(":")[0]
        if self.kind not in KINDS:
            self.kind = "tcp"

    @property
    def callback_port(self) -> int | None:
        port = None if self.listener is None else self.listener.port
        return None if port is None else int(port.getHost().port)

    def stop(self) -> None:
        self._flush_acks()
        self._stopped = True
        self.log.close()

    def status(self) -> dict[str, Any]:
        return {
            "role": "client",
            "callback_listening": None if self.listener is None else self.listener.address,
            "registered": self.registered,
            "received": {CALLBACK: self.received[CALLBACK], FALLBACK: self.received[FALLBACK]},
            "duplicates": self.duplicates,
        }

    def _connection_event(self, event: str, subject: Any) -> None:
        if not isinstance(subject, ManagedConnection):
            return
        session = subject.wrappedProtocol
        if not isinstance(session, Session) or subject.record.direction is not Direction.OUTBOUND:
            return
        if event == "ready":
            session.write_frame(encode_register(self.callback_port, self.kind))
            self.registered = True
        elif event == "closed":
            self.registered = False

    def _deliver_received(self, session: Session, body: bytes) -> None:
        if self._stopped:
            # Stopping: not delivered, not acknowledged; the server sends it again.
            return
        try:
            message_id, payload = decode_deliver(body)
        except ProtocolError as e:
            session.protocol_error(str(e))
            return
        hello = session.peer_hello
        store = str(hello.extra.get("store", hello.node_id)) if hello is not None else "?"
        if message_id > self.log.last(store):
            record = session.record
            inbound = record is not None and record.direction is Direction.INBOUND
            self.received[CALLBACK if inbound else FALLBACK] += 1
            call_application(self.node.application.message_received, session, payload)
            self.log.advance(store, message_id)
        else:
            self.duplicates += 1
        # Acknowledged at the end of the reactor turn: one ACK for a burst.
        if message_id > self._acks.get(session, 0):
            self._acks[session] = message_id
        if self._ack_call is None:
            self._ack_call = self.node.clock.callLater(0, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_call = None
        acks, self._acks = self._acks, {}
        for session, message_id in acks.items():
            session.write_frame(encode_ack(message_id))


# --- The topology ------------------------------------------------------------------------


class Callback(Topology):
    """
    The "port 25" model: clients register a callback endpoint over a control
    connection; the server dials back to deliver, or falls back to the
    control connection, and keeps what it cannot deliver.
    """

    name = "callback"
    description = (
        "clients register a --callback endpoint; the server dials back to deliver "
        "(fallback: the control connection), keeping undelivered messages in an outbox"
    )
    roles = ("server", "client")
    default_app = "inbox"

    options = CallbackOptions
    message_types = MESSAGE_TYPES

    def settings(self, options: Mapping[str, Any]) -> CallbackSettings:
        return CallbackSettings.from_options(options)

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        settings = config.settings if isinstance(config.settings, CallbackSettings) else CallbackSettings()
        if config.role == "server":
            if not config.listen:
                raise ValueError("--listen: the server role needs at least one endpoint to listen on")
            if settings.callback is not None:
                raise ValueError("--callback: clients listen for callbacks; the server dials them")
        else:
            if len(config.connect) != 1:
                raise ValueError(
                    "--connect: a callback client dials exactly one server, "
                    f"not {len(config.connect)} endpoints"
                )
            if config.listen:
                raise ValueError("--listen: a callback client listens on its --callback endpoint only")

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        expected = "client" if our_role == "server" else "server"
        if peer_role != expected:
            return f"a callback {our_role} talks to a {expected}, and the peer is a {peer_role}"
        return None

    def build(self, node: Node) -> CallbackServer | CallbackClient:
        config = node.config
        settings: CallbackSettings = node.settings
        if config.role == "server":
            outbox = Outbox(_stored(node, settings.outbox), max_per_client=settings.outbox_limit)
            node.on_stop(outbox.close)
            server = CallbackServer(node, outbox, settings.token)
            for description in config.listen:
                node.listen(description)
            if settings.token is None:
                node.on_start(
                    lambda: _log.warn("no --token: any client may register, and POST /deliver is off")
                )
            return server
        client = CallbackClient(node, DeliveredLog(_stored(node, settings.outbox)), settings.token)
        if settings.callback is not None:
            client.listen(settings.callback)
        node.connect(config.connect[0], client.control_factory)
        return client


def _stored(node: Node, outbox: str | None) -> str | None:
    return None if outbox is None else node.state_path(outbox)


# --- The inbox application -----------------------------------------------------------------

#: How many messages an inbox keeps (for tests and the curious).
RECENT = 100


class InboxApplication(Application):
    """
    ``--app inbox``, the default of ``callback``: a client logs each message
    delivered to it (``[alice] via callback: hello``) and keeps the last
    :data:`RECENT`; a server does nothing of its own (inject messages with
    ``POST /deliver/<client>``).
    """

    def __init__(self, config: NodeConfig) -> None:
        self.node_id = config.node_id
        self.received = 0
        self.recent: collections.deque[bytes] = collections.deque(maxlen=RECENT)

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        self.received += 1
        self.recent.append(payload)
        record = peer.record
        path = CALLBACK if record is not None and record.direction is Direction.INBOUND else FALLBACK
        _inbox_log.info(
            "[{node}] via {path}: {text}",
            node=self.node_id,
            path=path,
            text=payload.decode("utf-8", "replace"),
        )
