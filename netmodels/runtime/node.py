"""
A running netmodels node: the runtime every topology builds on.

A :class:`Node` owns one :class:`~netmodels.runtime.manager.ConnectionManager`, the
application, the settings every session shares, and the listeners and
reconnecting dialers its topology adds. It knows which peers are ready and
renders the ``GET /status`` document.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from netmodels.core.connection import ConnectionLimits, ConnectionRecord
from netmodels.core.datagram import DEFAULT_MAX_DATAGRAM
from netmodels.core.frames import DEFAULT_MAX_FRAME, Hello, MessageType, encode_frame
from netmodels.core.keepalive import DEFAULT as DEFAULT_KEEPALIVE
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason
from netmodels.core.secure import MAX_RECORD_FRAME, RECORD_OVERHEAD, new_private_key
from netmodels.runtime.dialer import Dialer
from netmodels.runtime.interfaces import IApplication, IPeer, ITopology, ITopologyContext
from netmodels.runtime.manager import ConnectionManager, ManagedConnection, format_address
from netmodels.runtime.secure import SessionSecurity
from netmodels.runtime.session import DATA_TYPES, Session, SessionFactory, SessionSettings, encode_bye
from netmodels.runtime.timers import TimerWheel
from netmodels.runtime.topology import default_settings
from netmodels.transports.tcp import SessionSocketOptions, accept_ahead
from netmodels.transports.udp import DatagramListeningPort, DatagramOptions, is_datagram, parse_endpoint

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["ListenFailed", "ListeningService", "Node", "NodeConfig", "default_node_id", "endpoint_label"]

_log = Logger(namespace="netmodels.node")


def default_node_id() -> str:
    """``<hostname>-<6 hex digits>``: readable, and distinct per process."""
    return f"{socket.gethostname().split('.')[0][:40]}-{secrets.token_hex(3)}"


@frozen
class NodeConfig:
    """A node's whole configuration, as parsed from the command line."""

    topology: str = "client-server"
    role: str = "server"
    transport: str = "tcp"
    listen: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    node_id: str = field(factory=default_node_id)
    app: str = ""
    keepalive: KeepaliveSettings = DEFAULT_KEEPALIVE
    status: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int | None = 10_000
    max_per_address: int | None = None
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0
    #: ``TCP_USER_TIMEOUT`` seconds; ``None`` means the keepalive bound, 0 off.
    user_timeout: float | None = None
    history: int = 256
    #: Seconds between the requests a client application sends on its own.
    interval: float = 1.0
    #: Slow-consumer policy (see SessionSettings): bytes accepted while
    #: paused, and how long a pause may last, before a peer is dropped.
    max_backlog: int = 4 * 1024 * 1024
    slow_consumer_deadline: float = 10.0
    #: UDP: the largest datagram, headers included (default fits a 1280-byte path MTU).
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    #: UDP: application data over the reliable channel; ``None``: as the application prefers.
    reliable: bool | None = None
    #: Where the node keeps the files it writes (outboxes, ...): a relative
    #: file name is taken inside it. ``None``: relative to the working directory.
    state_dir: str | None = None
    #: The topology's own settings, as its ``settings()`` made them from its
    #: options; ``None``: the defaults of its options.
    settings: Any = field(default=None, repr=False)
    #: Cluster keys (``--cluster-key-file``): with any, every session is
    #: encrypted and only peers holding one join. The first opens sessions.
    cluster_keys: tuple[bytes, ...] = field(default=(), repr=False)
    #: This node's static private key (``--identity``); ``None``: a new one
    #: per run, made only if sessions are encrypted.
    identity_key: bytes | None = field(default=None, repr=False)
    #: Public keys allowed to join, each with the node id it may use (``--authorized-keys``).
    authorized_keys: Mapping[bytes, str | None] | None = field(default=None, repr=False)

    @property
    def encrypted(self) -> bool:
        """Whether sessions run the Noise handshake (a cluster key or an identity)."""
        return bool(self.cluster_keys) or self.identity_key is not None

    @property
    def effective_user_timeout(self) -> float | None:
        if self.user_timeout is None:
            return self.keepalive.worst_case
        return self.user_timeout or None


class ListenFailed(Exception):
    """A listening endpoint could not be opened (port in use, no permission)."""


_TCP_FORMS = (
    re.compile(r"^(?:tcp|udp)6?:(?:host=)?(?P<host>[^:=]+|\\?\[[^\]]*\]):(?:port=)?(?P<port>\d+)"),
    re.compile(r"^(?:tls|ssl):(?:host=)?(?P<host>[^:=]+):(?:port=)?(?P<port>\d+)"),
)


def endpoint_label(description: str) -> str:
    """``"tcp:example.com:80"`` (or ``udp:``) -> ``"example.com:80"``; other forms stay as written."""
    for form in _TCP_FORMS:
        match = form.match(description)
        if match:
            return f"{match['host']}:{match['port']}"
    return description


class ListeningService(Service):
    """Listen on one endpoint; a failure surfaces at start-up."""

    def __init__(
        self,
        endpoint: Any,
        description: str,
        factory: Factory[Any],
        socket_options: SessionSocketOptions | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.description = description
        self.factory = factory
        #: Set on the listening socket, for the connections it accepts to inherit.
        self.socket_options = socket_options
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        result: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if not result:
            raise ListenFailed(f"listening on {self.description} did not complete at start-up")
        if not IListeningPort.providedBy(result[0]):
            failure = result[0]
            raise ListenFailed(f"cannot listen on {self.description}: {failure.getErrorMessage()}")
        self.port = result[0]
        if self.socket_options is not None:
            self.socket_options.apply_to_listener(self.port)
        # A storm of connects (every client of a restarted server at once)
        # waits in the process, not in the kernel's queue, which drops
        # what overflows it for a second.
        accept_ahead(self.port)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()

    @property
    def address(self) -> str:
        if self.port is None:
            return self.description
        host: Any = self.port.getHost()
        if hasattr(host, "port"):
            return f"{host.type.lower()}:{format_address(host)}"
        return f"unix:{getattr(host, 'name', '?')}"


@implementer(ITopologyContext)
class Node(MultiService):
    """
    One netmodels node. Topologies call :meth:`listen` and :meth:`connect`;
    applications call :meth:`peers`.

    :param reactor: the reactor (injected; tests pass a fake one).
    """

    def __init__(
        self,
        config: NodeConfig,
        topology: ITopology,
        application: IApplication,
        reactor: IReactorTime,
    ) -> None:
        super().__init__()
        #: Handlers for a topology's own message types, keyed by type; the
        #: topology fills this in ``build`` (sessions share the dict).
        self.handlers: dict[int, Callable[[Session, bytes], None]] = {}
        #: ``observer(session, "suspect" | "alive")`` from keepalive.
        self.liveness_observers: list[Callable[[Session, str], None]] = []
        #: Extra top-level sections of ``GET /status``, by key.
        self.status_sections: dict[str, Callable[[], Any]] = {}
        #: Run once listening has started, and first thing when stopping.
        self.start_hooks: list[Callable[[], None]] = []
        self.stop_hooks: list[Callable[[], None]] = []
        #: HTTP resources a topology serves on the status endpoint, by path segment.
        self.routes: dict[str, Any] = {}
        #: A topology's metrics for ``GET /metrics``: each is called at a scrape.
        self.metric_collectors: list[Callable[[], Iterable[Metric]]] = []
        #: What the topology's ``build`` returned: its state on this node.
        self.topology_state: object = None
        self.config = config
        self.topology = topology
        #: The topology's settings (``config.settings``, or its defaults).
        self.settings: Any = config.settings if config.settings is not None else default_settings(topology)
        self.application = application
        self.reactor = reactor
        self.clock = reactor
        #: What ``udp:`` endpoints call ``listenUDP`` on (tests put a fake network here).
        self.datagram_reactor: Any = reactor
        reliable = config.reliable
        if reliable is None:
            reliable = bool(application.reliable)
        #: Keys and counts of encrypted sessions; ``None``: cleartext.
        self.security: SessionSecurity | None = None
        if config.encrypted:
            self.security = SessionSecurity(
                keyring=config.cluster_keys,
                static_private=config.identity_key or new_private_key(),
                authorized=config.authorized_keys,
            )
        self.datagram_options = DatagramOptions(
            max_datagram=config.max_datagram,
            reliable=reliable,
            user_timeout=config.effective_user_timeout,
            connect_timeout=config.handshake_timeout,
            # Sealed records of up to 64 KiB cross the reliable channel whatever the frame limit.
            max_frame=max(config.max_frame, MAX_RECORD_FRAME) if config.encrypted else config.max_frame,
        )
        # A record's counter and tag take room in every datagram.
        overhead = RECORD_OVERHEAD if config.encrypted else 0
        self.manager = ConnectionManager(
            reactor,
            ConnectionLimits(config.max_connections, config.max_per_address),
            history=config.history,
            wall_clock=reactor.seconds,
            name=config.node_id,
        )
        self.session_settings = SessionSettings(
            hello=Hello(
                node_id=config.node_id,
                topology=topology.name,
                role=config.role,
                keepalive=config.keepalive,
                app=config.app,
                listen=config.listen,
                max_frame=config.max_frame,
                extra={
                    **topology.hello_extra(self.settings),
                    # Either side asking for the reliable channel gets it both ways.
                    **({"reliable": True} if config.transport == "udp" and reliable else {}),
                },
            ),
            keepalive=config.keepalive,
            application=application,
            max_frame=config.max_frame,
            handshake_timeout=config.handshake_timeout,
            request_timeout=config.request_timeout,
            user_timeout=config.effective_user_timeout,
            check_peer=lambda hello: self._check_peer(hello),
            handlers=self.handlers,
            data_types=DATA_TYPES
            | frozenset(topology.message_types[name] for name in topology.data_message_types),
            on_liveness=self._liveness,
            max_backlog=config.max_backlog,
            slow_consumer_deadline=config.slow_consumer_deadline,
            timers=TimerWheel(reactor),
            max_unreliable_body=(
                self.datagram_options.max_unreliable_body - overhead
                if config.transport == "udp" and not reliable
                else None
            ),
            security=self.security,
        )
        self.listeners: list[ListeningService] = []
        self.clients: list[Dialer] = []
        self._sessions: dict[int, Session] = {}
        #: Ready peers that are not sessions (raw line clients): each has
        #: ``encode(payload)`` and ``write_encoded(data)`` for broadcast.
        self._other_peers: dict[int, Any] = {}
        self.manager.subscribe(self._connection_event)

    # What topologies use (ITopologyContext)

    def build(self) -> object:
        """Let the topology wire this node; keeps what it returns as :attr:`topology_state`."""
        self.topology_state = self.topology.build(self)
        return self.topology_state

    def state_path(self, name: str) -> str:
        """
        Where to keep the file ``name``: inside ``config.state_dir`` (created,
        readable by this user only) unless ``name`` is absolute.
        """
        state_dir = self.config.state_dir
        if state_dir is None or os.path.isabs(name):
            return name
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        return os.path.join(state_dir, name)

    def add_handler(self, message_type: int, handler: Callable[[Any, bytes], None]) -> None:
        """Frames of ``message_type`` from any ready session go to ``handler``."""
        if message_type in self.handlers:
            raise ValueError(f"message type 0x{message_type:02x} already has a handler")
        self.handlers[message_type] = handler

    def on_liveness(self, observer: Callable[[Any, str], None]) -> None:
        """``observer(session, "suspect" | "alive")`` as keepalive sees each peer."""
        self.liveness_observers.append(observer)

    def add_status_section(self, name: str, render: Callable[[], Any]) -> None:
        """A top-level key of ``GET /status``."""
        self.status_sections[name] = render

    def add_route(self, name: str, resource: Any) -> None:
        """An ``IResource`` served at ``/<name>`` on the ``--status`` endpoint."""
        self.routes[name] = resource

    def add_metrics(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Metric families of the topology's own, made by ``collect()`` at each scrape of ``GET /metrics``."""
        self.metric_collectors.append(collect)

    def on_start(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the node listens (before the application starts)."""
        self.start_hooks.append(hook)

    def on_stop(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` first thing when the node stops."""
        self.stop_hooks.append(hook)

    def session_factory(self) -> SessionFactory:
        return SessionFactory(self.session_settings, self.clock)

    def listen(
        self,
        description: str,
        factory: Factory[Any] | None = None,
        rejection_payload: Callable[[CloseReason, str], bytes] | None = None,
    ) -> None:
        """
        Accept connections on ``description`` (a Twisted endpoint string).
        ``rejection_payload`` is what a connection over the limits is sent
        before it is closed (default: a BYE frame).
        """
        wrapped = self.manager.wrap_factory(
            factory or self.session_factory(),
            rejection_payload=rejection_payload or (lambda reason, detail: encode_bye(reason, detail)),
        )
        listener = ListeningService(
            self.endpoint(description, server=True),
            description,
            wrapped,
            # The node's own sessions set these on each connection; set once here, inherited.
            self.session_settings.socket_options if factory is None else None,
        )
        listener.setServiceParent(self)
        self.listeners.append(listener)

    def connect(self, description: str, factory: Factory[Any] | None = None) -> Dialer:
        """Keep a connection to ``description`` up, reconnecting by close reason."""
        client = Dialer(
            self.manager,
            self.endpoint(description, server=False),
            factory or self.session_factory(),
            endpoint_label(description),
            self.clock,
        )
        client.setServiceParent(self)
        self.clients.append(client)
        return client

    def endpoint(self, description: str, server: bool) -> Any:
        """
        The endpoint for ``description``: ``udp:`` forms are datagram
        sessions (:mod:`netmodels.transports.udp`), the rest Twisted's endpoint strings.
        """
        if is_datagram(description):
            options = self.datagram_options
            return parse_endpoint(self.datagram_reactor, description, server, options, self.clock)
        if server:
            return serverFromString(self.reactor, description)
        return clientFromString(self.reactor, description)

    # What applications use

    def peers(self) -> list[Any]:
        """
        Peers that finished their handshake and are still connected: sessions,
        then other peers (a many-to-one server's raw line clients).
        """
        if self._other_peers:
            return [*self._sessions.values(), *self._other_peers.values()]
        return list(self._sessions.values())

    def broadcast(self, payload: bytes, exclude: IPeer | None = None) -> int:
        """
        Send ``payload`` to every ready peer but ``exclude``, framed once
        however many receive it. Returns how many it was sent to. A peer that
        is not reading is handled by the slow-consumer policy, never by
        slowing the others. The writes are corked
        (:meth:`~netmodels.runtime.manager.ManagedConnection.cork`): the broadcasts
        of one reactor turn leave each peer's connection in one write at the
        end of the turn, in order with everything else sent to it.
        """
        frame = encode_frame(MessageType.DATA, payload)
        sent = 0
        # A snapshot: a write may drop a slow peer, which leaves the dict.
        for session in list(self._sessions.values()):
            if session is not exclude:
                session.write_frame(frame, corked=True)
                sent += 1
        if self._other_peers:
            sent += self._broadcast_others(payload, exclude)
        return sent

    def _broadcast_others(self, payload: bytes, exclude: IPeer | None) -> int:
        # Other kinds of peer encode a payload their own way (a raw line
        # client: the payload and a newline): once per kind, not per peer.
        encoded: dict[type, bytes] = {}
        sent = 0
        for peer in list(self._other_peers.values()):
            if peer is not exclude:
                kind = type(peer)
                data = encoded.get(kind)
                if data is None:
                    data = encoded[kind] = peer.encode(payload)
                peer.write_encoded(data, corked=True)
                sent += 1
        return sent

    # Service

    def startService(self) -> None:
        _log.info(
            "node {node_id}: topology {topology}, role {role}; {bound}",
            node_id=self.config.node_id,
            topology=self.topology.name,
            role=self.config.role,
            bound=self.config.keepalive.describe(),
        )
        super().startService()
        for listener in self.listeners:
            _log.info("listening on {address}", address=listener.address)
        for hook in self.start_hooks:
            hook()
        try:
            self.application.start(self)
        except Exception:
            _log.failure("application failed to start")

    def stopService(self) -> Deferred[None]:
        """
        Stop the application, say BYE to every peer and wait until each
        connection has closed (at most the manager's close deadline, after
        which it is reset), then stop listening and dialling.
        """
        for hook in self.stop_hooks:
            hook()
        try:
            self.application.stop()
        except Exception:
            _log.failure("application failed to stop")
        closing: list[Deferred[ConnectionRecord]] = []
        for connection in list(self.manager.live.values()):
            closed: Deferred[ConnectionRecord] = Deferred()
            connection.on_close(closed.callback)
            closing.append(closed)
            session = connection.wrappedProtocol
            if isinstance(session, Session):
                session.close()
            else:
                connection.close()
        stopped: Deferred[Any] = super().stopService()
        return gatherResults([stopped, *closing]).addCallback(lambda _: None)

    def status(self) -> dict[str, Any]:
        """The ``GET /status`` document."""
        config = self.config
        return {
            "node": {
                "id": config.node_id,
                "topology": self.topology.name,
                "role": config.role,
                "transport": config.transport,
                "app": config.app,
                "listening": [listener.address for listener in self.listeners],
                "connecting": [client.status() for client in self.clients],
            },
            "keepalive": {
                **config.keepalive.as_dict(),
                "user_timeout": config.effective_user_timeout,
                "describe": config.keepalive.describe(),
            },
            "limits": {
                "max_frame": config.max_frame,
                "max_connections": config.max_connections,
                "max_per_address": config.max_per_address,
            },
            "connections": [record.as_dict() for record in self.manager.records()],
            "counters": dict(self.manager.counters),
            "security": {"encrypted": False} if self.security is None else self.security.as_dict(),
            **self._datagram_status(),
            **{key: section() for key, section in self.status_sections.items()},
        }

    # Internals

    def _datagram_status(self) -> dict[str, Any]:
        ports: list[tuple[str, dict[str, int]]] = []
        for listener in self.listeners:
            port = listener.port
            if isinstance(port, DatagramListeningPort):
                ports.append((listener.address, port.counters))
        if not ports and self.config.transport != "udp":
            return {}
        options = self.datagram_options
        return {
            "datagram": {
                "max_datagram": options.max_datagram,
                "reliable": options.reliable,
                "listeners": {address: dict(counters) for address, counters in ports},
            }
        }

    def _check_peer(self, hello: Hello) -> str | None:
        if hello.topology != self.topology.name:
            return f"peer runs topology {hello.topology!r}, we run {self.topology.name!r}"
        refusal: str | None = self.topology.check_peer(self.config.role, hello.role)
        return refusal

    def _liveness(self, session: Session, state: str) -> None:
        for observer in self.liveness_observers:
            observer(session, state)

    def _connection_event(self, event: str, subject: Any) -> None:
        if event == "ready" and isinstance(subject, ManagedConnection):
            session = subject.wrappedProtocol
            if isinstance(session, Session):
                self._sessions[subject.record.id] = session
            elif IPeer.providedBy(session):
                self._other_peers[subject.record.id] = session
        elif event == "closed" and isinstance(subject, ManagedConnection):
            self._sessions.pop(subject.record.id, None)
            self._other_peers.pop(subject.record.id, None)
