"""
The many-to-one topology: one server, many clients.

- **Fan-in**: every client dials the one server (``--connect``, reconnecting
  by close reason) and sends it messages.
- **Fan-out**: the server sends one message to every client, or to the
  clients of a named *group*, framed once however many receive it
  (:meth:`Hub.broadcast`). A client declares its groups with ``--group NAME``
  (repeatable); they travel in its HELLO as ``"groups": [...]``.
- **Backpressure** is the sessions' slow-consumer policy
  (``--max-backlog``, ``--slow-consumer-deadline``): a client that stops
  reading is dropped with RST and reason ``rejected``; it never grows the
  server's memory without bound and never slows the other clients.
- **Raw mode**: ``--raw-listen ENDPOINT`` accepts plain line-based tools
  (``nc``, ``socat``, ``telnet``) as clients. Each connection speaks
  newline-delimited text (:class:`RawLineSession`); the application sees it
  as an :class:`~netmodels.runtime.interfaces.IPeer` like any other client. Raw
  clients cannot answer PING, so only the kernel's keepalive (and
  ``TCP_USER_TIMEOUT``) watches them.

The default application is :class:`ChatApplication` (``--app chat``): the
server relays each message from one client to all the others, prefixed with
the sender's node id.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from attrs import define
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core.connection import ConnectionRecord, ConnectionState, Direction
from netmodels.core.frames import Hello, MessageType, encode_frame
from netmodels.core.reasons import CloseReason
from netmodels.runtime.application import Application
from netmodels.runtime.endpoints import check_endpoint
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.session import (
    MessageTooLarge,
    PeerClosed,
    Session,
    SessionSettings,
    SlowConsumerPolicy,
    call_application,
)
from netmodels.runtime.topology import Topology
from netmodels.topologies.many_to_one.options import ManyToOneOptions, ManyToOneSettings
from netmodels.transports.tcp import apply_kernel_keepalive, set_no_delay, unsent_bytes

__all__ = [
    "MAX_GROUPS",
    "ChatApplication",
    "Hub",
    "ManyToOne",
    "RawLineFactory",
    "RawLineSession",
    "RawPeerRequest",
    "check_groups",
    "hub_of",
]

_log = Logger(namespace="netmodels.many_to_one")
_chat_log = Logger(namespace="netmodels.app.chat")

#: A group name: 1 to 64 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit.
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The most groups one client may declare.
MAX_GROUPS = 32

_OPEN = ConnectionState.OPEN
_DATA = int(MessageType.DATA)


def check_groups(groups: Iterable[object]) -> str | None:
    """``None`` if ``groups`` is a valid list of group names, else what is wrong with it."""
    seen: set[str] = set()
    for name in groups:
        if not isinstance(name, str) or GROUP_NAME.fullmatch(name) is None:
            return (
                f"bad group name {name!r}: 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if name in seen:
            return f"group {name!r} given twice"
        seen.add(name)
    if len(seen) > MAX_GROUPS:
        return f"{len(seen)} groups, more than the limit of {MAX_GROUPS}"
    return None


def _hello_groups(hello: Hello) -> tuple[str, ...]:
    groups = hello.extra.get("groups", [])
    return tuple(groups) if isinstance(groups, list) else ()


# --- Raw line clients ---------------------------------------------------------------


class RawPeerRequest(Exception):
    """A request was sent to a raw line client, which cannot answer one."""


@implementer(IPeer, IPushProducer)
class RawLineSession(SlowConsumerPolicy, Protocol):
    """
    A raw line client (``nc``, ``socat``, ``telnet``) as a peer: every line it
    sends (ended by ``\\n`` or ``\\r\\n``) is one message to the application,
    and every message sent to it is written followed by ``\\n``.

    A line longer than the frame limit less one byte (what a DATA message
    carries) is a ``protocol-error``: the client is told why in one line, then
    closed. There is no handshake and no application keepalive: the
    connection is open as soon as it is accepted, and the kernel's keepalive
    and ``TCP_USER_TIMEOUT`` (the node's settings) watch it. Backpressure is
    the slow-consumer policy of :class:`~netmodels.runtime.session.Session`.
    """

    transport: ManagedConnection  # type: ignore[assignment]

    #: Raw clients always take the client role.
    role = "client"
    delimiter = b"\n"

    def __init__(self, settings: SessionSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        self.application = settings.application
        self.record: ConnectionRecord | None = None
        #: ``raw-<address>:<port>`` of the client, once connected.
        self.node_id = "raw-?"
        #: The longest line accepted, delimiter excluded: a DATA message's body limit.
        self.max_line = settings.max_frame - 1
        self._pending = bytearray()
        self._ready = False
        #: False while Twisted holds more than its buffer size unsent for us.
        self.writable = True
        self._backlog = 0
        self._slow_call: IDelayedCall | None = None

    # IPeer

    @property
    def connection_id(self) -> int:
        return -1 if self.record is None else self.record.id

    def send(self, payload: bytes) -> None:
        """Write ``payload`` and a newline. A payload holding newlines arrives as several lines."""
        if len(payload) > self.max_line:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds the line limit of {self.max_line}"
            )
        if not self._ready or self._closing():
            raise PeerClosed(self._record_or_placeholder())
        self.write_encoded(payload + b"\n")

    def request(self, payload: bytes, timeout: float | None = None) -> defer.Deferred[bytes]:
        """Always fails with :class:`RawPeerRequest`: a line client cannot answer."""
        return defer.fail(
            RawPeerRequest(
                f"{self.node_id} is a raw line client: raw peers do not take requests, only messages (send)"
            )
        )

    def close(self) -> None:
        """Close with FIN (RST if it does not drain by the manager's close deadline)."""
        if self.record is not None and not self._closing():
            self.transport.end(CloseReason.CLEAN)

    def reset(self) -> None:
        """RST now: recorded ``aborted`` here."""
        if self.record is not None and not self.record.closed:
            self.transport.reset()

    # Fan-out (see Node.broadcast): a payload is encoded once for every raw peer.

    def encode(self, payload: bytes) -> bytes:
        return payload + b"\n"

    def write_encoded(self, data: bytes, corked: bool = False) -> None:
        """
        Write what :meth:`encode` made; nothing once the connection is closing.
        ``corked``: at the end of the reactor turn, with the rest of a burst
        (see ``ManagedConnection.cork``).
        """
        record = self.record
        if record is None or not self._ready or record.state is not _OPEN:
            return
        record.messages_out += 1
        self._send(data, corked)

    # Twisted

    def connectionMade(self) -> None:
        transport = self.transport
        record = self.record = transport.record
        settings = self.settings
        if record is not None:
            self.node_id = f"raw-{record.peer}"
            record.extra["protocol"] = "lines"
        set_no_delay(transport)
        if settings.kernel_keepalive:
            # A line client cannot answer PING: the kernel's keepalive is all there is.
            apply_kernel_keepalive(transport, settings.keepalive, settings.user_timeout)
        transport.registerProducer(self, True)
        self._ready = True
        transport.mark_open(self.node_id)
        call_application(self.application.peer_ready, self)

    def dataReceived(self, data: bytes) -> None:
        if not self._ready:
            return
        pending = self._pending
        if b"\n" not in data:
            pending += data
            # One byte of slack: a "\r" whose "\n" has not arrived yet.
            if len(pending) > self.max_line + 1:
                self._line_too_long(len(pending))
            return
        if pending:
            pending += data
            data = bytes(pending)
            pending.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        record = self.record
        message_received = self.application.message_received
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if len(line) > self.max_line:
                self._line_too_long(len(line))
                return
            if record is not None:
                record.messages_in += 1
            message_received(self, line)
            # Stop if the application closed the connection.
            if record is not None and record.state is not _OPEN:
                return
        if rest:
            pending += rest
            if len(pending) > self.max_line + 1:
                self._line_too_long(len(pending))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._slow_call is not None and self._slow_call.active():
            self._slow_call.cancel()
        self._slow_call = None
        self._pending.clear()
        if self._ready:
            self._ready = False
            call_application(self.application.peer_lost, self, self._record_or_placeholder())

    @property
    def backlog(self) -> int:
        """Bytes accepted since Twisted paused us (0 while writable)."""
        return self._backlog

    # Internals

    def _line_too_long(self, size: int) -> None:
        self._pending.clear()
        if self._closing():
            return
        detail = f"line of {size} bytes or more exceeds the limit of {self.max_line} bytes"
        _log.warn(
            "connection {id} to {peer}: protocol error: {detail}; closing",
            id=self.connection_id,
            peer=self.node_id,
            detail=detail,
        )
        # Tell the human at the other end why, in their own protocol.
        self.write_encoded(f"error: {detail}\n".encode())
        self.transport.end(CloseReason.PROTOCOL_ERROR, detail)

    def _closing(self) -> bool:
        record = self.record
        return record is None or record.closed or record.state is ConnectionState.CLOSING

    def _record_or_placeholder(self) -> ConnectionRecord:
        return self.record or ConnectionRecord(id=-1, direction=Direction.INBOUND, peer="?")


class RawLineFactory(Factory[RawLineSession]):
    """Builds a :class:`RawLineSession` per connection with ``node``'s current settings."""

    noisy = False

    def __init__(self, node: Node) -> None:
        self.node = node

    def buildProtocol(self, addr: Any) -> RawLineSession:
        return RawLineSession(self.node.session_settings, self.node.clock)


def _raw_rejection(reason: CloseReason, detail: str) -> bytes:
    """What a raw client turned away by the manager's limits reads: one line."""
    return f"error: {reason}: {detail}\n".encode()


# --- The hub: who is connected, in which groups ------------------------------------


@define(eq=False)
class _Client:
    peer: Any
    groups: tuple[str, ...]
    kind: str


def hub_of(node: Node) -> Hub | None:
    """The :class:`Hub` of a many-to-one node, or ``None`` for another topology."""
    state = node.topology_state
    return state if isinstance(state, Hub) else None


class Hub:
    """
    A many-to-one node's view of its clients (on the server) or of its server
    (on a client): their groups, fan-out to a group, and the ``many_to_one``
    section of ``GET /status``. Applications find it with :func:`hub_of`.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.role = node.config.role
        self.groups = node.settings.groups
        self._clients: dict[int, _Client] = {}
        self._by_group: dict[str, dict[int, Any]] = {}
        self._server: Session | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        #: Endpoints of the raw line listeners, as given, and the listeners.
        self.raw_listen: tuple[str, ...] = ()
        self.raw_listeners: list[Any] = []
        node.manager.subscribe(self._connection_event)
        node.add_status_section("many_to_one", self.status)
        if self.role == "server":
            # A client's groups are checked with the rest of its HELLO, so a
            # bad list is a fatal protocol error it is told about in a BYE.
            check_peer = node.session_settings.check_peer
            node.session_settings = _evolve_check_peer(node.session_settings, self._checker(check_peer))

    # Fan-out

    def broadcast(self, payload: bytes, group: str | None = None, exclude: IPeer | None = None) -> int:
        """
        Send ``payload`` to every client (``group=None``), or to the clients of
        ``group``, but ``exclude``; framed once however many receive it.
        Returns how many it was sent to. A client that is not reading is
        handled by the slow-consumer policy, never by slowing the others.
        """
        if group is None:
            return self.node.broadcast(payload, exclude)
        members = self._by_group.get(group)
        if not members:
            return 0
        encoded: dict[type, bytes] = {}
        sent = 0
        # A snapshot: a write may drop a slow client, which leaves the group.
        for peer in list(members.values()):
            if peer is exclude:
                continue
            if isinstance(peer, Session):
                frame = encoded.get(Session)
                if frame is None:
                    frame = encoded[Session] = encode_frame(_DATA, payload)
                peer.write_frame(frame, corked=True)
            else:
                kind = type(peer)
                data = encoded.get(kind)
                if data is None:
                    data = encoded[kind] = peer.encode(payload)
                peer.write_encoded(data, corked=True)
            sent += 1
        return sent

    # Queries

    def clients(self) -> list[Any]:
        """The connected clients (sessions and raw line clients), in connection order."""
        return [client.peer for client in self._clients.values()]

    def members(self, group: str) -> list[Any]:
        """The connected clients in ``group``."""
        return list(self._by_group.get(group, {}).values())

    def groups_of(self, peer: IPeer) -> tuple[str, ...]:
        client = self._clients.get(peer.connection_id)
        return () if client is None else client.groups

    @property
    def server(self) -> Session | None:
        """On a client: the session to the server while it is up."""
        return self._server

    def status(self) -> dict[str, Any]:
        """The ``many_to_one`` section of ``GET /status``."""
        if self.role != "server":
            server = self._server
            return {
                "role": self.role,
                "groups": list(self.groups),
                "server": None if server is None else server.node_id,
                "writable": None if server is None else server.writable,
            }
        clients: dict[str, Any] = {}
        paused = raw = 0
        for connection_id, client in self._clients.items():
            peer = client.peer
            writable = bool(peer.writable)
            paused += not writable
            raw += client.kind == "raw"
            key = str(peer.node_id)
            if key in clients:
                key = f"{key}#{connection_id}"
            clients[key] = {
                "connection": connection_id,
                "kind": client.kind,
                "groups": list(client.groups),
                "writable": writable,
                "state": "writable" if writable else "paused",
                "backlog": peer.backlog if isinstance(peer, SlowConsumerPolicy) else 0,
                "unsent": unsent_bytes(peer.transport),
            }
        settings = self.node.session_settings
        return {
            "role": self.role,
            "raw_listening": [listener.address for listener in self.raw_listeners] or list(self.raw_listen),
            "policy": {
                "max_backlog": settings.max_backlog,
                "slow_consumer_deadline": settings.slow_consumer_deadline,
            },
            "counts": {
                "clients": len(self._clients),
                "netmodels": len(self._clients) - raw,
                "raw": raw,
                "paused": paused,
                "slow_consumers_dropped": self.counters["slow_consumers_dropped"],
            },
            "groups": {name: len(members) for name, members in sorted(self._by_group.items())},
            "clients": clients,
        }

    def log_raw_listeners(self) -> None:
        for listener in self.raw_listeners:
            _log.info("raw line clients (nc, socat, telnet) accepted on {address}", address=listener.address)

    # Internals

    def _checker(self, check_peer: Callable[[Hello], str | None]) -> Callable[[Hello], str | None]:
        def check(hello: Hello) -> str | None:
            refusal = check_peer(hello)
            if refusal is not None:
                return refusal
            groups = hello.extra.get("groups", [])
            if not isinstance(groups, list):
                return "HELLO groups must be a list of group names"
            problem = check_groups(groups)
            return None if problem is None else f"HELLO groups: {problem}"

        return check

    def _connection_event(self, event: str, subject: Any) -> None:
        if not isinstance(subject, ManagedConnection):
            return
        connection_id = subject.record.id
        protocol = subject.wrappedProtocol
        if event == "ready":
            if self.role != "server":
                if isinstance(protocol, Session):
                    self._server = protocol
                return
            if isinstance(protocol, Session) and protocol.peer_hello is not None:
                client = _Client(protocol, _hello_groups(protocol.peer_hello), "netmodels")
            elif isinstance(protocol, RawLineSession):
                client = _Client(protocol, (), "raw")
            else:
                return
            self._clients[connection_id] = client
            for group in client.groups:
                self._by_group.setdefault(group, {})[connection_id] = protocol
        elif event == "closed":
            if protocol is self._server:
                self._server = None
            gone = self._clients.pop(connection_id, None)
            if gone is None:
                return
            for group in gone.groups:
                members = self._by_group.get(group)
                if members is not None:
                    members.pop(connection_id, None)
                    if not members:
                        del self._by_group[group]
            record = subject.record
            if record.reason is CloseReason.REJECTED and record.detail.startswith("slow consumer"):
                self.counters["slow_consumers_dropped"] += 1


def _evolve_check_peer(settings: SessionSettings, check: Callable[[Hello], str | None]) -> SessionSettings:
    return attrs.evolve(settings, check_peer=check)


# --- The topology ---------------------------------------------------------------------


class ManyToOne(Topology):
    """
    One server, many clients. Clients dial the server and send to it (fan-in);
    the server sends to all of them or to a group (fan-out). The server may
    also accept raw line clients (``--raw-listen``).
    """

    name = "many-to-one"
    description = (
        "one server, many clients: fan-in, fan-out to all or to a --group; "
        "--raw-listen for nc/socat line clients"
    )
    roles = ("server", "client")
    default_app = "chat"

    options = ManyToOneOptions

    def settings(self, options: Mapping[str, Any]) -> ManyToOneSettings:
        settings = ManyToOneSettings.from_options(options)
        problem = check_groups(settings.groups)
        if problem is not None:
            raise ValueError(f"--group: {problem}")
        for description in settings.raw_listen:
            try:
                check_endpoint(description, "tcp", server=True)
            except Exception as e:
                raise ValueError(f"--raw-listen: bad endpoint {description!r}: {e}") from None
        return settings

    def hello_extra(self, settings: object) -> Mapping[str, Any]:
        assert isinstance(settings, ManyToOneSettings)
        return {"groups": list(settings.groups)} if settings.groups else {}

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        settings = config.settings if isinstance(config.settings, ManyToOneSettings) else ManyToOneSettings()
        if config.role == "server":
            if not config.listen and not settings.raw_listen:
                raise ValueError("--listen: the server role needs at least one endpoint to listen on")
            if settings.groups:
                raise ValueError("--group: clients declare groups; the server has none")
        else:
            if len(config.connect) != 1:
                raise ValueError(
                    "--connect: a many-to-one client dials exactly one server, "
                    f"not {len(config.connect)} endpoints"
                )
            if settings.raw_listen:
                raise ValueError("--raw-listen: only the server role accepts raw line clients")
            if config.listen:
                raise ValueError("--listen: a many-to-one client dials its server and listens on nothing")

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        expected = "client" if our_role == "server" else "server"
        if peer_role != expected:
            return f"a many-to-one {our_role} talks to a {expected}, and the peer is a {peer_role}"
        return None

    def build(self, node: Node) -> Hub:
        config = node.config
        hub = Hub(node)
        for description in config.listen:
            node.listen(description)
        if config.role == "server":
            for description in node.settings.raw_listen:
                node.listen(description, RawLineFactory(node), rejection_payload=_raw_rejection)
                hub.raw_listeners.append(node.listeners[-1])
            hub.raw_listen = node.settings.raw_listen
            node.on_start(hub.log_raw_listeners)
        else:
            node.connect(config.connect[0])
        return hub


# --- The chat application ---------------------------------------------------------------

#: How many received lines a chat client keeps (for tests and the curious).
RECENT = 100


class ChatApplication(Application):
    """
    ``--app chat``, the default of ``many-to-one``.

    On the server, each message from a client goes to every *other* client,
    prefixed with the sender's node id: ``alice: hello``. A message
    ``@NAME text`` goes only to the clients in group ``NAME``, as
    ``alice @NAME: text``. Empty messages are ignored.

    A client logs every line it receives and, every ``--interval`` seconds
    (0: never), says ``hello from <id> #<n>``.

    Over UDP it asks for the reliable channel: a chat loses no line.
    """

    reliable = True

    def __init__(self, config: NodeConfig) -> None:
        self.role = config.role
        self.interval = config.interval
        self.node_id = config.node_id
        self.max_body = config.max_frame - 1
        self.sent = 0
        self.received = 0
        self.relayed = 0
        #: The last :data:`RECENT` lines a client received.
        self.recent: collections.deque[bytes] = collections.deque(maxlen=RECENT)
        self._hub: Hub | None = None

    def start(self, node: Node) -> None:
        super().start(node)
        self._hub = hub_of(node)
        if self.role == "client":
            self.repeat(self.interval, self._tick)

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        if self.role == "server":
            self._relay(peer, payload)
            return
        self.received += 1
        self.recent.append(payload)
        _chat_log.info("[{node}] {line}", node=self.node_id, line=payload.decode("utf-8", "replace"))

    def say(self, text: bytes) -> int:
        """On a client: send ``text`` to the server. Returns 1 if sent, 0 if not connected."""
        assert self.node is not None
        sent = 0
        for peer in self.node.peers():
            peer.send(text)
            sent += 1
        self.sent += sent
        return sent

    def _tick(self) -> None:
        self.say(f"hello from {self.node_id} #{self.sent + 1}".encode())

    def _relay(self, peer: IPeer, payload: bytes) -> None:
        if not payload.strip():
            return
        group: str | None = None
        prefix = f"{peer.node_id}: ".encode()
        if payload[:1] == b"@":
            name, _, text = payload[1:].partition(b" ")
            group = name.decode("utf-8", "replace")
            prefix = f"{peer.node_id} @{group}: ".encode()
            payload = text
        line = prefix + payload
        if len(line) > self.max_body:
            _chat_log.warn(
                "not relaying {size} bytes from {peer}: over the frame limit with its prefix",
                size=len(line),
                peer=peer.node_id,
            )
            return
        assert self.node is not None
        hub = self._hub
        try:
            if hub is None:
                sent = self.node.broadcast(line, exclude=peer)
            else:
                sent = hub.broadcast(line, group=group, exclude=peer)
        except MessageTooLarge as e:
            # A client that advertised a smaller frame limit than ours.
            _chat_log.warn("relaying from {peer}: {error}", peer=peer.node_id, error=str(e))
            return
        self.relayed += sent
