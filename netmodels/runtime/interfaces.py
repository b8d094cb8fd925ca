"""
netmodels' public interfaces.

A **topology** (:class:`ITopology`) decides who listens, who dials and how
messages flow; an **application** (:class:`IApplication`) is the user's code,
fed messages and requests from :class:`IPeer` handles. Both are found as
Twisted plugins in the ``netmodels.plugins`` package, so a third party extends
netmodels exactly the way the built-in ones are written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from netmodels.core.connection import ConnectionRecord
    from netmodels.core.reasons import CloseReason
    from netmodels.runtime.node import Node, NodeConfig

__all__ = ["IApplication", "IApplicationFactory", "IPeer", "ISession", "ITopology", "ITopologyContext"]


class IPeer(Interface):
    """One connected peer, after its HELLO, as the application sees it."""

    connection_id = Attribute("int: the manager's id for this connection.")
    node_id = Attribute("str: the peer's node id from its HELLO.")
    role = Attribute("str: the peer's role from its HELLO.")
    record = Attribute("netmodels.manager.ConnectionRecord: counters, state, close reason.")

    def send(payload: bytes) -> None:
        """
        Send one message (DATA). Raises ``MessageTooLarge`` when it exceeds the
        frame limit and ``PeerClosed`` after the connection has ended; the
        connection is unaffected by either.
        """

    def request(payload: bytes, timeout: float | None = None) -> object:
        """
        Send a request; returns a ``Deferred`` firing with the response bytes,
        or failing with ``RequestTimeout``, ``RemoteError`` or ``PeerClosed``.
        Many requests may be in flight at once.
        """

    def close() -> None:
        """Say BYE and close with FIN (RST if it does not drain in time)."""

    def reset() -> None:
        """Close at once with RST; the peer sees ``ECONNRESET``."""


class ISession(IPeer):
    """
    A peer on the netmodels wire protocol, as a topology sees it: the
    :class:`IPeer` face plus what a topology needs for its own message
    types (:meth:`ITopologyContext.add_handler`) and for fan-out.
    """

    peer_hello = Attribute("netmodels.core.frames.Hello | None: the peer's HELLO, once accepted.")
    bye_received = Attribute("bool: the peer said BYE (it closed on purpose; a bare FIN may be a crash).")
    machine = Attribute("netmodels.core.session.SessionMachine: the protocol, sans-IO (phase, limits).")

    def send_request(
        payload: bytes,
        on_response: Callable[[bytes], object],
        on_error: Callable[[Exception], object],
        timeout: float | None = None,
    ) -> None:
        """
        Send a request answered through callables instead of a ``Deferred``:
        ``on_response(response_bytes)``, or ``on_error(error)`` with
        ``RequestTimeout``, ``RemoteError`` or ``PeerClosed``; exactly one,
        and never from within this call. Raises ``MessageTooLarge`` over the
        peer's limit and ``PeerClosed`` when the session is not open. For
        clients with many requests in flight, where a ``Deferred`` each is
        a good part of the cost.
        """

    def write_frame(frame: bytes, corked: bool = False) -> None:
        """
        Send an already encoded frame (fan-out frames a message once for
        many peers). Raises ``MessageTooLarge`` over the peer's limit; does
        nothing unless the session is open. ``corked``: written at the end of
        the reactor turn with the rest of a burst.
        """

    def protocol_error(detail: str, fatal: bool = False) -> None:
        """
        The peer broke the protocol (say, a topology frame that does not
        parse): BYE with ``protocol-error`` and ``detail``, then close.
        ``fatal`` tells a reconnecting peer that retrying cannot help.
        """

    def end(reason: CloseReason, detail: str = "", fatal: bool = False) -> None:
        """Say BYE with ``reason`` and ``detail``, then close by the close policy; nothing once closing."""

    def abandon(reason: CloseReason, detail: str = "") -> None:
        """Close by the close policy without a BYE, for a peer deemed unreachable; nothing once closing."""


class IApplication(Interface):
    """
    The user's code. One instance per node; every callback says which peer.
    Subclass :class:`netmodels.runtime.application.Application` for no-op defaults.
    """

    reliable = Attribute(
        "bool: over UDP, send application data on the reliable channel unless --delivery "
        "says otherwise (chat: True; a game: False)."
    )

    def start(node: Node) -> None:
        """The node is running; ``node`` offers ``peers()`` and ``clock``."""

    def stop() -> None:
        """The node is stopping."""

    def peer_ready(peer: IPeer) -> None:
        """A peer finished its handshake."""

    def message_received(peer: IPeer, payload: bytes) -> None:
        """A one-way message (DATA) arrived from ``peer``."""

    def request_received(peer: IPeer, payload: bytes) -> object:
        """
        A request arrived; return the response bytes, or a ``Deferred`` of
        them. An exception (or failed Deferred) is sent back as an ERROR.
        """

    def peer_lost(peer: IPeer, record: ConnectionRecord) -> None:
        """The connection to ``peer`` ended; ``record.reason`` says why."""


class IApplicationFactory(Interface):
    """A plugin that makes applications: ``--app NAME`` picks one by name."""

    name = Attribute("str: the --app value.")
    description = Attribute("str: one line for --list-apps.")
    topologies = Attribute("tuple[str, ...]: the topologies it runs on; empty: any.")

    def __call__(config: NodeConfig) -> IApplication:
        """Make the application for a node configured by ``config``."""


class ITopology(Interface):
    """
    A plugin that wires a node: ``--topology NAME`` picks one by name.

    A topology owns everything that is its own: its command-line options
    (:attr:`options`, merged into ``twistd netmodels``' own when it is
    chosen), its settings (:meth:`settings`), its message types
    (:attr:`message_types`, registered when the plugin is loaded), and, in
    :meth:`build`, its handlers, ``/status`` section and HTTP routes, added
    through the :class:`ITopologyContext` it is given. The core knows no
    topology by name.
    """

    name = Attribute("str: the --topology value.")
    description = Attribute("str: one line for --list-topologies.")
    roles = Attribute("tuple[str, ...]: the roles it accepts; the first is the default.")
    transports = Attribute("tuple[str, ...]: the transports it runs on ('tcp', 'udp').")
    default_app = Attribute("str: the application used when --app is not given.")
    options = Attribute(
        "type[twisted.python.usage.Options] | None: the topology's own options "
        "(``optParameters``, ``optFlags``, ``opt_*`` methods), merged into twistd netmodels' options "
        "when --topology names it, and listed by --topology NAME --help."
    )
    message_types = Attribute(
        "Mapping[str, int]: the topology's own message types, by name. Codes 0x00-0x1f are "
        "netmodels'; a code or name that another plugin registered is refused at load."
    )

    data_message_types = Attribute(
        "frozenset[str]: the names of its message types that carry application messages: "
        "limited like DATA, and over UDP sent on the unreliable channel unless the reliable "
        "one was asked for."
    )

    def settings(options: Mapping[str, Any]) -> object:
        """
        The topology's settings, made from every parsed option (the core's and
        its own, by option name); kept as ``NodeConfig.settings``. Raises
        ``ValueError`` whose message starts with the option's name. Called
        with the defaults of :attr:`options` when a node is built without a
        command line.
        """

    def hello_extra(settings: object) -> Mapping[str, Any]:
        """Fields this node adds to its HELLO (e.g. the groups it joins)."""

    def validate(config: NodeConfig) -> None:
        """Raise ``ValueError`` naming the option if ``config`` cannot work."""

    def check_peer(our_role: str, peer_role: str) -> str | None:
        """``None`` if a peer of ``peer_role`` may talk to us, else why not."""

    def build(node: Node) -> object:
        """
        Add this topology's listeners, dialers, handlers, status section and
        routes to ``node`` (which provides :class:`ITopologyContext`). What it returns is kept as the node's
        ``topology_state`` (the one place to find the topology's state).
        """

    def more_nodes(first: Node, make_node: Callable[[NodeConfig], Node]) -> list[Node]:
        """
        Further nodes to run in the same process beside ``first`` (p2p's
        ``--nodes``); ``make_node`` builds one from a config. Usually none.
        """


class ITopologyContext(Interface):
    """What a topology's :meth:`ITopology.build` is given: the node, as topologies use it."""

    config = Attribute("NodeConfig: the node's configuration.")
    settings = Attribute("object: the topology's settings (what ITopology.settings returned).")
    clock = Attribute("IReactorTime: the node's clock.")
    reactor = Attribute("The node's reactor.")
    application = Attribute("IApplication: the node's application.")
    manager = Attribute("netmodels.runtime.manager.ConnectionManager: every connection's record.")

    def listen(description: str, factory: Any = None) -> None:
        """Accept connections on an endpoint string (sessions unless ``factory``)."""

    def connect(description: str, factory: Any = None) -> object:
        """Keep a connection to an endpoint string up, reconnecting by close reason."""

    def state_path(name: str) -> str:
        """Where to keep the file ``name`` (inside ``--state-dir`` unless absolute)."""

    def add_handler(message_type: int, handler: Callable[[Any, bytes], None]) -> None:
        """Frames of ``message_type`` from any ready session go to ``handler(session, body)``
        (the session provides :class:`ISession`)."""

    def on_liveness(observer: Callable[[Any, str], None]) -> None:
        """``observer(session, "suspect" | "alive")`` as keepalive sees the peer."""

    def add_status_section(name: str, render: Callable[[], Any]) -> None:
        """A top-level key of ``GET /status``, rendered by ``render()``."""

    def add_route(name: str, resource: Any) -> None:
        """An ``IResource`` served at ``/<name>`` on the ``--status`` endpoint."""

    def add_metrics(collect: Callable[[], Iterable[Metric]]) -> None:
        """
        Metrics of the topology's own, served by ``GET /metrics``: ``collect()``
        is called at each scrape and yields ``prometheus_client`` metric
        families (``CounterMetricFamily``, ``GaugeMetricFamily``, ...) made
        from what the topology already counts. Names start ``netmodels_``
        and the topology's name; a ``node`` label is added where one process
        serves several nodes.
        """

    def on_start(hook: Callable[[], None]) -> None:
        """Run ``hook`` once the node listens."""

    def on_stop(hook: Callable[[], None]) -> None:
        """Run ``hook`` first thing when the node stops."""

    def peers() -> list[Any]:
        """Ready peers."""

    def broadcast(payload: bytes, exclude: IPeer | None = None) -> int:
        """Send ``payload`` to every ready peer but ``exclude``."""
