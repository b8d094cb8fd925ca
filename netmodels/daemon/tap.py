"""
``twistd netmodels``: command-line options and the service they build.

This is the only module that touches the global reactor; everything it builds
takes the reactor as an argument.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, IServiceCollection, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

import netmodels
from netmodels.core.datagram import DEFAULT_MAX_DATAGRAM, MAX_DATAGRAM, MIN_DATAGRAM
from netmodels.core.frames import DEFAULT_MAX_FRAME
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.secure import is_fingerprint, key_fingerprint, public_key
from netmodels.daemon.logs import LOG_FORMATS, json_log_observer
from netmodels.daemon.status import status_site
from netmodels.runtime.endpoints import check_endpoint, reachable_beyond_loopback
from netmodels.runtime.node import ListenFailed, ListeningService, Node, NodeConfig, default_node_id
from netmodels.runtime.registry import applications, topologies
from netmodels.runtime.secure import load_or_create_identity, read_authorized_keys, read_keyring
from netmodels.runtime.web import read_token_file

__all__ = ["Options", "makeService"]

_log = Logger(namespace="netmodels.daemon")


def _number(option: str, text: str, minimum: float = 0.0, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"--{option}: expected a number of seconds, not {text!r}") from None
    if allow_zero and value == 0:
        return value
    if not value > minimum or value != value or value == float("inf"):
        floor = "0 or more" if allow_zero else f"greater than {minimum:g}"
        raise usage.UsageError(f"--{option}: must be {floor}, not {text!r}")
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
        [
            "admin-token-file",
            None,
            None,
            "File whose first line is the status endpoint's admin token: POST /connections/<id>/reset "
            "and /close need Authorization: Bearer <token>; without it they are off.",
        ],
        [
            "state-dir",
            None,
            None,
            "Directory for the files a node writes (--outbox and the like, when relative); "
            "default $NETMODELS_STATE_DIR, else $XDG_STATE_HOME/netmodels, else ~/.local/state/netmodels.",
        ],
        [
            "cluster-key-file",
            None,
            None,
            "File of cluster keys, one per line, each 32 random bytes in base64 (head -c32 "
            "/dev/urandom | base64): every session is encrypted and only peers holding one join. "
            "The first opens sessions, all are accepted (rotation).",
        ],
        [
            "identity",
            None,
            None,
            "File with this node's private key (created, mode 0600, if missing; relative names "
            "in --state-dir): sessions are encrypted, and the node id defaults to the key's id (nm-...).",
        ],
        [
            "authorized-keys",
            None,
            None,
            "File of public keys allowed to join, one per line in base64, each optionally followed "
            "by the node id it may use.",
        ],
        ["log-format", None, "text", "Log lines as text, or json (one JSON object per event)."],
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["connect"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on, e.g. tcp:8750 or ssl:8750:privateKey=key.pem (repeatable)."""
        self["listen"].append(description)

    def opt_connect(self, description: str) -> None:
        """Endpoint to dial, e.g. tcp:127.0.0.1:8750 or tls:example.com:8750 (repeatable)."""
        self["connect"].append(description)

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

    def opt_version(self) -> None:
        """Print netmodels' version (and Twisted's) and exit."""
        import twisted

        print(f"netmodels {netmodels.__version__} (Twisted {twisted.__version__})")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse the core options and those of the topology ``--topology`` names
        (its ``options`` class is merged into this one). Under ``twistd``, a
        usage error is one line and exit status 2, not the whole help.
        """
        args = list(sys.argv[1:] if options is None else options)
        try:
            topology = topologies().get(_chosen_topology(args))
            if topology is None or topology.options is None or isinstance(self, topology.options):
                super().parseOptions(args)
                return
            merged = _merged_options(type(self), topology.options)()
            merged.parent = self.parent
            merged.parseOptions(args)
            self.update(merged)
        except usage.UsageError as e:
            error = _explain(e)
            if self.parent is None:
                raise error from None
            print(f"twistd netmodels: {error}", file=sys.stderr)
            print("Run 'twistd netmodels --help' for the options.", file=sys.stderr)
            sys.exit(2)

    def postOptions(self) -> None:
        super().postOptions()
        installed = topologies()
        topology = installed.get(self["topology"])
        if topology is None:
            raise usage.UsageError(
                f"--topology: unknown topology {self['topology']!r}; installed: "
                f"{', '.join(sorted(installed))}"
            )
        transport = self["transport"]
        if transport not in ("tcp", "udp"):
            raise usage.UsageError(f"--transport: expected tcp or udp, not {transport!r}")
        role = self["role"] or topology.roles[0]
        app = self["app"] or topology.default_app
        factory = applications().get(app)
        if factory is None:
            raise usage.UsageError(
                f"--app: unknown application {app!r}; installed: {', '.join(sorted(applications()))}"
            )
        if factory.topologies and topology.name not in factory.topologies:
            raise usage.UsageError(
                f"--app: {app} runs on the {' or '.join(factory.topologies)} topology, not {topology.name}"
            )
        try:
            keepalive = KeepaliveSettings.parse(self["keepalive"])
        except ValueError as e:
            raise usage.UsageError(f"--keepalive: {e}") from None
        for option, server in (("listen", True), ("connect", False)):
            for description in self[option]:
                _check_endpoint(option, description, transport, server)
        if self["status"] is not None:
            _check_endpoint("status", self["status"], "tcp", server=True)
        if self["admin-token-file"] is not None:
            if self["status"] is None:
                raise usage.UsageError("--admin-token-file: it guards --status; give --status too")
            try:
                self["admin-token"] = read_token_file("admin-token-file", self["admin-token-file"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format: expected text or json, not {self['log-format']!r}")
        if self["log-format"] == "json" and self.parent is not None and self.parent.get("syslog"):
            raise usage.UsageError("--log-format: json goes to --logfile or stdout, not --syslog")
        max_datagram = _count("max-datagram", self["max-datagram"])
        if max_datagram is None or not MIN_DATAGRAM <= max_datagram <= MAX_DATAGRAM:
            raise usage.UsageError(f"--max-datagram: must be {MIN_DATAGRAM} to {MAX_DATAGRAM} bytes")
        delivery = self["delivery"]
        if delivery not in (None, "reliable", "unreliable"):
            raise usage.UsageError(f"--delivery: expected reliable or unreliable, not {delivery!r}")
        if delivery is not None and transport != "udp":
            raise usage.UsageError("--delivery: only the udp transport has a choice (tcp is reliable)")
        max_frame = _count("max-frame", self["max-frame"])
        if max_frame is None or max_frame < 64:
            raise usage.UsageError("--max-frame: must be at least 64 bytes")
        if self["node-id"] is not None and not 0 < len(self["node-id"]) <= 128:
            raise usage.UsageError("--node-id: must be 1 to 128 characters")
        state_dir = self["state-dir"] or default_state_dir()
        cluster_keys, identity_key, authorized = self._keys(state_dir)
        node_id = self["node-id"]
        if identity_key is not None:
            own = key_fingerprint(public_key(identity_key))
            if node_id is None:
                node_id = own
            elif is_fingerprint(node_id) and node_id != own:
                raise usage.UsageError(
                    f"--node-id: {node_id} is the id of another key; --identity holds {own}"
                )
        try:
            settings = topology.settings(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        user_timeout = self["user-timeout"]
        config = NodeConfig(
            topology=topology.name,
            role=role,
            transport=transport,
            listen=tuple(self["listen"]),
            connect=tuple(self["connect"]),
            node_id=node_id or default_node_id(),
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
            max_backlog=_bytes("max-backlog", self["max-backlog"]),
            slow_consumer_deadline=_number("slow-consumer-deadline", self["slow-consumer-deadline"]),
            max_datagram=max_datagram,
            reliable=None if delivery is None else delivery == "reliable",
            state_dir=state_dir,
            settings=settings,
            cluster_keys=cluster_keys,
            identity_key=identity_key,
            authorized_keys=authorized,
        )
        try:
            topology.validate(config)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["config"] = config

    def _keys(self, state_dir: str) -> tuple[tuple[bytes, ...], bytes | None, dict[bytes, str | None] | None]:
        """``--cluster-key-file``, ``--identity`` and ``--authorized-keys``, read (errors name the option)."""
        try:
            keys = (
                ()
                if self["cluster-key-file"] is None
                else read_keyring("cluster-key-file", self["cluster-key-file"])
            )
            identity = self["identity"]
            if identity is not None:
                identity = load_or_create_identity("identity", os.path.join(state_dir, identity))
            authorized = None
            if self["authorized-keys"] is not None:
                authorized = read_authorized_keys("authorized-keys", self["authorized-keys"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if authorized is not None and not keys and identity is None:
            raise usage.UsageError(
                "--authorized-keys: it checks the keys of encrypted sessions; "
                "give --cluster-key-file or --identity too"
            )
        return keys, identity, authorized


def default_state_dir() -> str:
    """``$NETMODELS_STATE_DIR``, else ``$XDG_STATE_HOME/netmodels``, else ``~/.local/state/netmodels``."""
    explicit = os.environ.get("NETMODELS_STATE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "netmodels")


def _chosen_topology(args: Sequence[str]) -> str:
    """The value of the last ``--topology``/``-t`` in ``args`` (parsing proper comes later)."""
    chosen = "client-server"
    for index, arg in enumerate(args):
        if arg in ("--topology", "-t") and index + 1 < len(args):
            chosen = args[index + 1]
        elif arg.startswith("--topology="):
            chosen = arg.split("=", 1)[1]
        elif arg.startswith("-t") and not arg.startswith("--") and len(arg) > 2:
            chosen = arg[2:]
        elif arg == "--":
            break
    return chosen


@functools.cache
def _merged_options(core: type[usage.Options], own: type[usage.Options]) -> type[usage.Options]:
    # usage.Options gathers optParameters, optFlags and opt_ methods along the
    # class's MRO: a subclass of both is the merged command line.
    return type(f"{own.__name__}WithCore", (core, own), {"__doc__": core.__doc__})


_NOT_RECOGNIZED = re.compile(r"^option (-{1,2}[\w-]+) not recognized$")


def _explain(error: usage.UsageError) -> usage.UsageError:
    """Name the topology that has an option the chosen one does not."""
    match = _NOT_RECOGNIZED.match(str(error))
    if match is None:
        return error
    option = match[1]
    owners = sorted(
        topology.name
        for topology in topologies().values()
        if topology.options is not None and _has_option(topology.options, option.lstrip("-"))
    )
    if owners:
        return usage.UsageError(f"{option}: only the {' or '.join(owners)} topology has it (--topology)")
    return usage.UsageError(f"{option}: no such option")


def _has_option(options: type[usage.Options], name: str) -> bool:
    instance = options()
    return name in instance.longOpt or f"{name}=" in instance.longOpt


def _bytes(option: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{option}: expected a number of bytes, not {text!r}") from None
    if value < 0:
        raise usage.UsageError(f"--{option}: must be 0 or more, not {text!r}")
    return value


def _check_endpoint(option: str, description: str, transport: str, server: bool) -> None:
    try:
        check_endpoint(description, transport, server)
    except Exception as e:
        raise usage.UsageError(f"--{option}: bad endpoint {description!r}: {e}") from None


def build_node(config: NodeConfig, reactor: Any) -> Node:
    """A node for ``config``, with its topology's listeners and dialers added."""
    topology = topologies()[config.topology]
    application = applications()[config.app](config)
    node = Node(config, topology, application, reactor)
    node.build()
    return node


class _Daemon(MultiService):
    """The nodes and the status page; a start-up failure is one line and exit status 1."""

    #: ``--log-format json``'s observer; twistd logs with the application's ``ILogObserver``.
    log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: IServiceCollection) -> None:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        try:
            super().startService()
        except ListenFailed as e:
            # The real stderr: by now twistd has redirected sys.stderr into its log.
            print(f"twistd netmodels: {e}", file=sys.__stderr__)
            sys.exit(1)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config: NodeConfig = options["config"]
    top = _Daemon()
    if options["log-format"] == "json":
        top.log_observer = json_log_observer(options.parent)
    first = build_node(config, reactor)
    nodes = [first, *first.topology.more_nodes(first, lambda c: build_node(c, reactor))]
    for node in nodes:
        node.setServiceParent(top)
    if config.status is not None:
        admin_token = options.get("admin-token")
        if admin_token is None and reachable_beyond_loopback(config.status):
            _log.warn(
                "--status {status} can be reached from other machines, and without --admin-token-file "
                "anyone there reads every connection; keep it on loopback or behind a proxy",
                status=config.status,
            )
        site = status_site(nodes, admin_token)
        status = ListeningService(serverFromString(reactor, config.status), config.status, site)
        status.setServiceParent(top)
    return top
