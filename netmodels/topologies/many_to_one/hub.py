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
from collections.abc import Callable
from typing import Any

import attrs
from attrs import define
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.logger import Logger

from netmodels.core.frames import Hello, MessageType, encode_frame
from netmodels.core.reasons import CloseReason
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.node import Node
from netmodels.runtime.session import (
    Session,
    SessionSettings,
    SlowConsumerPolicy,
)
from netmodels.topologies.many_to_one.groups import _hello_groups, check_groups
from netmodels.topologies.many_to_one.raw import RawLineSession
from netmodels.transports.tcp import unsent_bytes

__all__ = ["Hub", "hub_of"]


_log = Logger(namespace="netmodels.many_to_one")


_DATA = int(MessageType.DATA)


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
        node.add_metrics(self.metrics)
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

    def metrics(self) -> list[Metric]:
        """For ``GET /metrics``: slow consumers dropped, and the clients (on the server)."""
        dropped = CounterMetricFamily(
            "netmodels_many_to_one_slow_consumers_dropped",
            "Clients dropped by the slow-consumer policy (closed as rejected).",
            self.counters["slow_consumers_dropped"],
        )
        if self.role != "server":
            return [dropped]
        clients = GaugeMetricFamily(
            "netmodels_many_to_one_clients",
            "Connected clients, by kind (netmodels or raw line) and whether they read (writable, paused).",
            labels=["kind", "state"],
        )
        counts = collections.Counter(
            (client.kind, "writable" if client.peer.writable else "paused")
            for client in self._clients.values()
        )
        for kind in ("netmodels", "raw"):
            for state in ("writable", "paused"):
                clients.add_metric([kind, state], counts[kind, state])
        return [dropped, clients]

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
