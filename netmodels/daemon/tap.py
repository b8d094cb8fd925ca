"""
``twistd netmodels``: command-line options and the service they build.

This is the only module that touches the global reactor; everything it builds
takes the reactor as an argument.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.python import usage

from netmodels.core.datagram import DEFAULT_MAX_DATAGRAM, MAX_DATAGRAM, MIN_DATAGRAM
from netmodels.core.frames import DEFAULT_MAX_FRAME
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.daemon.status import status_site
from netmodels.runtime.node import Node, NodeConfig, default_node_id
from netmodels.runtime.registry import applications, topologies
from netmodels.transports.udp import is_datagram, parse_endpoint

__all__ = ["Options", "makeService"]

#: Where ``--demo`` listens when ``--listen`` is not given.
DEMO_LISTEN = "tcp:8750:interface=127.0.0.1"


def _number(option: str, text: str, minimum: float = 0.0, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"--{option}: expected a number of seconds, not {text!r}") from None
    if not (value > minimum or (allow_zero and value == 0)) or value != value:
        raise usage.UsageError(f"--{option}: must be greater than {minimum:g}, not {text!r}")
    return value


def _count(option: str, text: str | None) -> int | None:
    if text is None or text in ("", "none", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{option}: expected a whole number, not {text!r}") from None
    if value < 1:
        raise usage.UsageError(f"--{option}: must be at least 1, not {text!r}")
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a netmodels node. Pick a topology and role, give Twisted endpoint strings to "
        "listen on and connect to, and watch GET /status on the --status endpoint for why "
        "every connection ended."
    )

    optFlags = [
        ["demo", None, "Run a local demo: a server and three clients in one process."],
    ]
    optParameters = [
        ["topology", "t", "client-server", "Topology (see --list-topologies)."],
        ["role", "r", None, "Role in the topology (default: the topology's first role)."],
        ["transport", None, "tcp", "Transport: tcp, or udp (with udp: endpoints)."],
        ["node-id", None, None, "This node's id (default: hostname plus random hex)."],
        ["app", "a", None, "Application (see --list-apps; default: the topology's)."],
        [
            "keepalive",
            "k",
            "default",
            "IDLE,INTERVAL,PROBES in seconds (fractions allowed), or a preset: "
            "default (15,10,3), linux (7200,75,9), fast (1,1,3).",
        ],
        [
            "status",
            "s",
            None,
            "Endpoint for the HTTP status page, e.g. tcp:8080:interface=127.0.0.1.",
        ],
        ["max-frame", None, str(DEFAULT_MAX_FRAME), "Largest frame accepted, in bytes."],
        [
            "max-datagram",
            None,
            str(DEFAULT_MAX_DATAGRAM),
            f"udp: largest datagram, headers included ({MIN_DATAGRAM} to {MAX_DATAGRAM}; the default "
            "fits a 1280-byte path MTU).",
        ],
        [
            "delivery",
            None,
            None,
            "udp: application data 'reliable' (acknowledged, ordered) or 'unreliable' (a datagram "
            "each); default: the application's choice (chat: reliable).",
        ],
        ["max-connections", None, "10000", "Most inbound connections at once (0: no limit)."],
        ["max-per-address", None, "0", "Most inbound connections from one address (0: no limit)."],
        ["handshake-timeout", None, "10", "Seconds a peer has to send its HELLO."],
        ["request-timeout", None, "30", "Seconds a request waits for its response."],
        [
            "user-timeout",
            None,
            None,
            "TCP_USER_TIMEOUT in seconds (default: the keepalive bound; 0: off).",
        ],
        ["interval", None, "1", "Seconds between the messages a demo application sends (0: none)."],
        ["max-peers", None, "32", "p2p: the most peers a node dials; beyond, a partial mesh."],
        ["nodes", None, "1", "p2p: run N nodes in this process on ephemeral ports, meshed."],
        [
            "max-backlog",
            None,
            str(4 * 1024 * 1024),
            "Bytes a peer that stopped reading may fall behind once paused, before it is dropped.",
        ],
        [
            "slow-consumer-deadline",
            None,
            "10",
            "Seconds a peer that stopped reading may stay paused before it is dropped.",
        ],
        ["token", None, None, "callback: the shared secret clients present (prefer --token-file)."],
        ["token-file", None, None, "callback: read the shared secret from this file (first line)."],
        [
            "callback",
            None,
            None,
            "callback client: endpoint to listen on for the server's callbacks, "
            "e.g. tcp:0:interface=127.0.0.1.",
        ],
        [
            "outbox",
            None,
            None,
            "callback: SQLite file for the server's outbox (or a client's delivered ids); "
            "without it they live in memory and a restart loses them.",
        ],
        ["outbox-limit", None, "10000", "callback server: the most undelivered messages kept per client."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["connect"] = []
        self["group"] = []
        self["raw-listen"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on, e.g. tcp:8750 or ssl:8750:privateKey=key.pem (repeatable)."""
        self["listen"].append(description)

    def opt_connect(self, description: str) -> None:
        """Endpoint to dial, e.g. tcp:127.0.0.1:8750 or tls:example.com:8750 (repeatable)."""
        self["connect"].append(description)

    def opt_peer(self, description: str) -> None:
        """p2p: a bootstrap peer to dial, e.g. tcp:127.0.0.1:8760 (repeatable)."""
        self["connect"].append(description)

    def opt_group(self, name: str) -> None:
        """many-to-one client: a group to join, e.g. ops (repeatable)."""
        self["group"].append(name)

    def opt_raw_listen(self, description: str) -> None:
        """many-to-one server: accept raw line clients (nc) on this endpoint (repeatable)."""
        self["raw-listen"].append(description)

    def opt_list_topologies(self) -> None:
        """List installed topologies and exit."""
        for name, topology in sorted(topologies().items()):
            print(f"{name:16} {topology.description}  [roles: {', '.join(topology.roles)}]")
        sys.exit(0)

    def opt_list_apps(self) -> None:
        """List installed applications and exit."""
        for name, factory in sorted(applications().items()):
            print(f"{name:16} {factory.description}")
        sys.exit(0)

    def postOptions(self) -> None:
        from twisted.internet import reactor

        installed = topologies()
        topology = installed.get(self["topology"])
        if topology is None:
            raise usage.UsageError(
                f"--topology: unknown topology {self['topology']!r}; installed: "
                f"{', '.join(sorted(installed))}"
            )
        nodes = _count("nodes", self["nodes"]) or 1
        if nodes > 1 and self["topology"] != "p2p":
            raise usage.UsageError("--nodes: runs several nodes of the p2p topology only")
        transport = self["transport"]
        if transport not in ("tcp", "udp"):
            raise usage.UsageError(f"--transport: expected tcp or udp, not {transport!r}")
        if nodes > 1 and not self["listen"]:
            self["listen"] = [f"{transport}:0:interface=127.0.0.1"]
        self["nodes"] = nodes
        if self["demo"]:
            if self["topology"] != "client-server":
                raise usage.UsageError("--demo: runs the client-server topology only")
            self["listen"] = self["listen"] or [DEMO_LISTEN]
            self["role"] = "server"
        role = self["role"] or topology.roles[0]
        app = self["app"] or topology.default_app
        if app not in applications():
            raise usage.UsageError(
                f"--app: unknown application {app!r}; installed: {', '.join(sorted(applications()))}"
            )
        try:
            keepalive = KeepaliveSettings.parse(self["keepalive"])
        except ValueError as e:
            raise usage.UsageError(f"--keepalive: {e}") from None
        for description in self["listen"]:
            _check_endpoint("listen", description, _parser(reactor, transport, server=True))
        for description in self["connect"]:
            _check_endpoint("connect", description, _parser(reactor, transport, server=False))
        max_datagram = _count("max-datagram", self["max-datagram"])
        if max_datagram is None or not MIN_DATAGRAM <= max_datagram <= MAX_DATAGRAM:
            raise usage.UsageError(f"--max-datagram: must be {MIN_DATAGRAM} to {MAX_DATAGRAM} bytes")
        delivery = self["delivery"]
        if delivery not in (None, "reliable", "unreliable"):
            raise usage.UsageError(f"--delivery: expected reliable or unreliable, not {delivery!r}")
        if delivery is not None and transport != "udp":
            raise usage.UsageError("--delivery: only the udp transport has a choice (tcp is reliable)")
        for option in ("raw-listen", "group"):
            if self[option] and topology.name != "many-to-one":
                raise usage.UsageError(f"--{option}: only the many-to-one topology has it")
        for description in self["raw-listen"]:
            _check_endpoint("raw-listen", description, lambda d: serverFromString(reactor, d))
        token = _callback_options(self, topology.name)
        if self["callback"] is not None:
            _check_endpoint("callback", self["callback"], _parser(reactor, transport, server=True))
        if self["status"] is not None:
            _check_endpoint("status", self["status"], lambda d: serverFromString(reactor, d))
        max_frame = _count("max-frame", self["max-frame"])
        if max_frame is None or max_frame < 64:
            raise usage.UsageError("--max-frame: must be at least 64 bytes")
        user_timeout = self["user-timeout"]
        config = NodeConfig(
            topology=topology.name,
            role=role,
            transport=self["transport"],
            listen=tuple(self["listen"]),
            connect=tuple(self["connect"]),
            node_id=self["node-id"] or default_node_id(),
            app=app,
            keepalive=keepalive,
            status=self["status"],
            max_frame=max_frame,
            max_connections=_count("max-connections", self["max-connections"]),
            max_per_address=_count("max-per-address", self["max-per-address"]),
            handshake_timeout=_number("handshake-timeout", self["handshake-timeout"]),
            request_timeout=_number("request-timeout", self["request-timeout"]),
            user_timeout=None
            if user_timeout is None
            else _number("user-timeout", user_timeout, allow_zero=True),
            interval=_number("interval", self["interval"], allow_zero=True),
            max_peers=_count("max-peers", self["max-peers"]) or 32,
            groups=tuple(self["group"]),
            raw_listen=tuple(self["raw-listen"]),
            max_backlog=_bytes("max-backlog", self["max-backlog"]),
            slow_consumer_deadline=_number("slow-consumer-deadline", self["slow-consumer-deadline"]),
            max_datagram=max_datagram,
            reliable=None if delivery is None else delivery == "reliable",
            token=token,
            callback=self["callback"],
            outbox=self["outbox"],
            outbox_limit=_count("outbox-limit", self["outbox-limit"]) or 10_000,
        )
        if self["node-id"] is not None and not 0 < len(self["node-id"]) <= 128:
            raise usage.UsageError("--node-id: must be 1 to 128 characters")
        try:
            topology.validate(config)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["config"] = config


def _bytes(option: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{option}: expected a number of bytes, not {text!r}") from None
    if value < 0:
        raise usage.UsageError(f"--{option}: must be 0 or more, not {text!r}")
    return value


_CALLBACK_OPTIONS = ("token", "token-file", "callback", "outbox")


def _callback_options(options: Options, topology: str) -> str | None:
    """Check the callback topology's options; returns the token (from --token or --token-file)."""
    for option in _CALLBACK_OPTIONS:
        if options[option] is not None and topology != "callback":
            raise usage.UsageError(f"--{option}: only the callback topology has it")
    if options["outbox-limit"] != "10000" and topology != "callback":
        raise usage.UsageError("--outbox-limit: only the callback topology has it")
    token: str | None = options["token"]
    if options["token-file"] is not None:
        if token is not None:
            raise usage.UsageError("--token-file: give --token or --token-file, not both")
        try:
            with open(options["token-file"], encoding="utf-8") as file:
                token = file.readline().strip()
        except OSError as e:
            raise usage.UsageError(f"--token-file: cannot read {options['token-file']!r}: {e}") from None
    if token is not None and not token:
        raise usage.UsageError("--token: the token must not be empty")
    return token


def _parser(reactor: Any, transport: str, server: bool) -> Callable[[str], object]:
    """What parses a --listen or --connect endpoint of ``transport``."""

    def parse(description: str) -> object:
        if is_datagram(description) != (transport == "udp"):
            kind = "udp" if is_datagram(description) else "stream"
            raise ValueError(f"a {kind} endpoint needs --transport {'udp' if kind == 'udp' else 'tcp'}")
        if transport == "udp":
            return parse_endpoint(reactor, description, server)
        return serverFromString(reactor, description) if server else clientFromString(reactor, description)

    return parse


def _check_endpoint(option: str, description: str, parse: Any) -> None:
    try:
        parse(description)
    except Exception as e:
        raise usage.UsageError(f"--{option}: bad endpoint {description!r}: {e}") from None


def build_node(config: NodeConfig, reactor: Any) -> Node:
    """A node for ``config``, with its topology's listeners and dialers added."""
    topology = topologies()[config.topology]
    application = applications()[config.app](config)
    node = Node(config, topology, application, reactor)
    topology.build(node)
    return node


def _more_p2p_nodes(first: Node, count: int, reactor: Any) -> list[Node]:
    """``count`` more p2p nodes on ephemeral loopback ports, bootstrapping from ``first``."""
    from netmodels.topologies.p2p.mesh import first_endpoint

    nodes = []
    for index in range(1, count + 1):
        config = attrs.evolve(
            first.config,
            node_id=f"{first.config.node_id}-{index}",
            listen=(f"{first.config.transport}:0:interface=127.0.0.1",),
            connect=(),
            status=None,
        )
        node = build_node(config, reactor)
        # The first node's port is known only once it listens: ask then.
        node.mesh.bootstrap.append(lambda: first_endpoint(first))  # type: ignore[attr-defined]
        nodes.append(node)
    return nodes


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config: NodeConfig = options["config"]
    top = MultiService()
    nodes = [build_node(config, reactor)]
    if options["demo"]:
        from netmodels.daemon.demo import demo_clients

        nodes.extend(demo_clients(config, reactor))
    if options["nodes"] > 1:
        nodes.extend(_more_p2p_nodes(nodes[0], options["nodes"] - 1, reactor))
    for node in nodes:
        node.setServiceParent(top)
    if config.status is not None:
        status = StreamServerEndpointService(serverFromString(reactor, config.status), status_site(nodes))
        # Fail at start-up (port in use) instead of logging later.
        status._raiseSynchronously = True
        status.setServiceParent(top)
    return top
