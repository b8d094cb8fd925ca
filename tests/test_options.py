"""
Every ``twistd netmodels`` option's validation, one message each: a bad value
is a usage error that starts with the option's name and says what is wrong.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import tempfile
from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.secure import key_fingerprint, public_key
from netmodels.daemon.tap import Options, default_state_dir, makeService
from netmodels.runtime.endpoints import reachable_beyond_loopback

LISTEN = ("--listen", "tcp:0")

#: Key files for the rows below (the rows are data, so the files exist from import).
_KEYS = tempfile.mkdtemp(prefix="netmodels-options-")
atexit.register(shutil.rmtree, _KEYS, ignore_errors=True)
SHORT_KEY = os.path.join(_KEYS, "short")
GOOD_KEY = os.path.join(_KEYS, "good")
IDENTITY = os.path.join(_KEYS, "identity")
with open(SHORT_KEY, "w") as _file:
    _file.write(base64.b64encode(b"16 bytes, not 32").decode() + "\n")
with open(GOOD_KEY, "w") as _file:
    _file.write(base64.b64encode(bytes(32)).decode() + "\n")
with open(IDENTITY, "w") as _file:
    _file.write(base64.b64encode(bytes(range(32))).decode() + "\n")
OWN_ID = key_fingerprint(public_key(bytes(range(32))))
OTHER_ID = key_fingerprint(public_key(bytes(range(1, 33))))

#: (arguments, the whole error message, or its start when it ends with "...").
ERRORS: list[tuple[tuple[str, ...], str]] = [
    (("--topology", "nope"), "--topology: unknown topology 'nope'; installed: ..."),
    (("--transport", "sctp", *LISTEN), "--transport: expected tcp or udp, not 'sctp'"),
    (("--app", "nope", *LISTEN), "--app: unknown application 'nope'; installed: ..."),
    (("--app", "chat", *LISTEN), "--app: chat runs on the many-to-one topology, not client-server"),
    (("--role", "bogus", *LISTEN), "--role: topology client-server has roles server, client, not 'bogus'"),
    (
        (
            "--role",
            "client",
        ),
        "--connect: the client role needs at least one endpoint to dial",
    ),
    (
        (
            "--role",
            "server",
        ),
        "--listen: the server role needs at least one endpoint to listen on",
    ),
    (("--keepalive", "10,5", *LISTEN), "--keepalive: expected IDLE,INTERVAL,PROBES..."),
    (("--listen", "garbage"), "--listen: bad endpoint 'garbage': ..."),
    (("--listen", "udp:0"), "--listen: bad endpoint 'udp:0': a udp endpoint needs --transport udp"),
    (
        ("--listen", "tcp:65536"),
        "--listen: bad endpoint 'tcp:65536': port '65536' is not a number from 0 to 65535",
    ),
    (
        ("--role", "client", "--connect", "tcp:h:0"),
        "--connect: bad endpoint 'tcp:h:0': port '0' is not a number from 1 to 65535",
    ),
    (
        ("--status", "tcp:99999", *LISTEN),
        "--status: bad endpoint 'tcp:99999': port '99999' is not a number from 0 to 65535",
    ),
    (("--max-datagram", "100", *LISTEN), "--max-datagram: must be 256 to 65507 bytes"),
    (("--delivery", "sometimes", *LISTEN), "--delivery: expected reliable or unreliable, not 'sometimes'"),
    (
        ("--delivery", "reliable", *LISTEN),
        "--delivery: only the udp transport has a choice (tcp is reliable)",
    ),
    (("--max-frame", "10", *LISTEN), "--max-frame: must be at least 64 bytes"),
    (("--max-frame", "x", *LISTEN), "--max-frame: expected a whole number, not 'x'"),
    (("--node-id", "", *LISTEN), "--node-id: must be 1 to 128 characters"),
    (("--node-id", "n" * 129, *LISTEN), "--node-id: must be 1 to 128 characters"),
    (("--max-connections", "-1", *LISTEN), "--max-connections: must be at least 1, not '-1'"),
    (("--max-per-address", "x", *LISTEN), "--max-per-address: expected a whole number, not 'x'"),
    (("--handshake-timeout", "0", *LISTEN), "--handshake-timeout: must be greater than 0, not '0'"),
    (("--request-timeout", "nan", *LISTEN), "--request-timeout: must be greater than 0, not 'nan'"),
    (("--request-timeout", "soon", *LISTEN), "--request-timeout: expected a number of seconds, not 'soon'"),
    (("--interval", "-1", *LISTEN), "--interval: must be 0 or more, not '-1'"),
    (("--user-timeout", "-1", *LISTEN), "--user-timeout: must be 0 or more, not '-1'"),
    (
        ("--slow-consumer-deadline", "inf", *LISTEN),
        "--slow-consumer-deadline: must be greater than 0, not 'inf'",
    ),
    (("--max-backlog", "-1", *LISTEN), "--max-backlog: must be 0 or more, not '-1'"),
    (("--max-backlog", "lots", *LISTEN), "--max-backlog: expected a number of bytes, not 'lots'"),
    (("--max-peers", "3", *LISTEN), "--max-peers: only the p2p topology has it (--topology)"),
    (("--bogus", *LISTEN), "--bogus: no such option"),
    # p2p
    (("-t", "p2p"), "--listen: a p2p node needs an endpoint to listen on (tcp:0 for any port)"),
    (("-t", "p2p", *LISTEN, "--max-peers", "0"), "--max-peers: must be at least 1, not '0'"),
    (("-t", "p2p", *LISTEN, "--max-peers", "many"), "--max-peers: expected a whole number, not 'many'"),
    (("-t", "p2p", *LISTEN, "--nodes", "0"), "--nodes: must be at least 1, not '0'"),
    (("-t", "p2p", *LISTEN, "--nodes", "-3"), "--nodes: must be at least 1, not '-3'"),
    (("-t", "p2p", *LISTEN, "--peer", "garbage"), "--peer: bad endpoint 'garbage': ..."),
    (
        ("-t", "p2p", *LISTEN, "--swim", "garbage"),
        "--swim: expected auto, off or udp:PORT[:interface=IP], not 'garbage'",
    ),
    (
        ("-t", "p2p", *LISTEN, "--swim", "udp:7946:interface=eth0"),
        "--swim: expected auto, off or udp:PORT[:interface=IP], not 'udp:7946:interface=eth0'",
    ),
    (
        ("-t", "p2p", *LISTEN, "--swim", "udp:7946:interface=127.0.0.1", "--swim-seed", "nowhere"),
        "--swim-seed: 'nowhere': expected HOST:PORT",
    ),
    (("-t", "p2p", *LISTEN, "--swim-advertise", "here"), "--swim-advertise: 'here': expected HOST:PORT"),
    (
        ("-t", "p2p", *LISTEN, "--swim", "off", "--swim-seed", "10.0.0.1:7946"),
        "--swim-seed: not with --swim off",
    ),
    (("-t", "p2p", *LISTEN, "--swim", "off", "--high-water", "8"), "--high-water: not with --swim off"),
    (
        ("-t", "p2p", "--listen", "unix:/run/nm.sock"),
        "--swim: auto puts SWIM beside the first --listen, which has no port ('unix:/run/nm.sock'); "
        "give --swim udp:PORT or --swim off",
    ),
    (
        (
            "-t",
            "p2p",
            *LISTEN,
            "--swim",
            "udp:0:interface=127.0.0.1",
            "--max-peers",
            "8",
            "--high-water",
            "4",
        ),
        "--high-water: must be at least --max-peers (8), not 4",
    ),
    (("-t", "p2p", *LISTEN, "--high-water", "lots"), "--high-water: expected a whole number, not 'lots'"),
    (("-t", "p2p", *LISTEN, "--app", "chat"), "--app: chat runs on the many-to-one topology, not p2p"),
    # many-to-one
    (
        ("-t", "many-to-one", *LISTEN, "--group", "ops"),
        "--group: clients declare groups; the server has none",
    ),
    (("-t", "many-to-one", "-r", "client", "--connect", "tcp:h:1", "--group", "a b"), "--group: ..."),
    (("-t", "many-to-one", *LISTEN, "--raw-listen", "garbage"), "--raw-listen: bad endpoint 'garbage': ..."),
    (
        ("-t", "many-to-one", "-r", "client"),
        "--connect: a many-to-one client dials exactly one server, not 0 endpoints",
    ),
    # the status endpoint's admin token
    (
        ("--admin-token-file", "/nonexistent/x", *LISTEN, "--status", "tcp:0"),
        "--admin-token-file: cannot read '/nonexistent/x': ...",
    ),
    (
        ("--admin-token-file", "/dev/null", *LISTEN, "--status", "tcp:0"),
        "--admin-token-file: '/dev/null' holds no token (its first line is empty)",
    ),
    (("--admin-token-file", "f", *LISTEN), "--admin-token-file: it guards --status; give --status too"),
    # encryption and identity
    (
        ("--cluster-key-file", "/nonexistent/k", *LISTEN),
        "--cluster-key-file: cannot read '/nonexistent/k': ...",
    ),
    (("--cluster-key-file", "/dev/null", *LISTEN), "--cluster-key-file: /dev/null: no key in it"),
    (
        ("--cluster-key-file", SHORT_KEY, *LISTEN),
        f"--cluster-key-file: {SHORT_KEY} line 1: a key is 32 bytes in base64 (head -c32 /dev/urandom | "
        "base64), not 16",
    ),
    (
        ("--identity", "/proc/no/such/identity", *LISTEN),
        "--identity: cannot create '/proc/no/such/identity': ...",
    ),
    (
        ("--identity", IDENTITY, "--node-id", OTHER_ID, *LISTEN),
        f"--node-id: {OTHER_ID} is the id of another key; --identity holds {OWN_ID}",
    ),
    (
        ("--authorized-keys", GOOD_KEY, *LISTEN),
        "--authorized-keys: it checks the keys of encrypted sessions; give --cluster-key-file or --identity "
        "too",
    ),
    (
        ("-t", "many-to-one", *LISTEN, "--raw-listen", "tcp:0", "--cluster-key-file", GOOD_KEY),
        "--raw-listen: raw line clients cannot run the secure handshake; not with --cluster-key-file or "
        "--identity",
    ),
    # callback
    (
        ("-t", "callback", *LISTEN, "--outbox-limit", "0"),
        "--outbox-limit: must be a whole number of at least 1, not '0'",
    ),
    (("-t", "callback", *LISTEN, "--token", ""), "--token: the token must not be empty"),
    (
        ("-t", "callback", *LISTEN, "--token", "a", "--token-file", "f"),
        "--token-file: give --token or --token-file, not both",
    ),
    (
        ("-t", "callback", *LISTEN, "--token-file", "/nonexistent/x"),
        "--token-file: cannot read '/nonexistent/x': ...",
    ),
    (
        ("-t", "callback", "-r", "client", "--connect", "tcp:h:1", "--callback", "bogus:"),
        "--callback: bad endpoint 'bogus:': ...",
    ),
]


class OptionErrorTests(SynchronousTestCase):
    def test_each_message(self) -> None:
        for args, expected in ERRORS:
            options = Options()
            error = str(self.assertRaises(usage.UsageError, options.parseOptions, list(args)))
            if expected.endswith("..."):
                self.assertTrue(error.startswith(expected[:-3]), f"{args}: {error!r}")
            else:
                self.assertEqual(error, expected, args)

    def test_zero_means_none_where_documented(self) -> None:
        options = Options()
        options.parseOptions(
            ["--listen", "tcp:0", "--interval", "0", "--user-timeout", "0", "--max-connections", "0"]
        )
        config = options["config"]
        self.assertEqual((config.interval, config.user_timeout, config.max_connections), (0.0, 0.0, None))


class StateDirTests(SynchronousTestCase):
    def setUp(self) -> None:
        saved = {name: os.environ.get(name) for name in ("NETMODELS_STATE_DIR", "XDG_STATE_HOME", "HOME")}

        def restore() -> None:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        self.addCleanup(restore)

    def test_default_outside_the_working_directory(self) -> None:
        os.environ.pop("NETMODELS_STATE_DIR", None)
        os.environ.pop("XDG_STATE_HOME", None)
        os.environ["HOME"] = "/home/someone"
        self.assertEqual(default_state_dir(), "/home/someone/.local/state/netmodels")
        os.environ["XDG_STATE_HOME"] = "/var/lib/state"
        self.assertEqual(default_state_dir(), "/var/lib/state/netmodels")
        os.environ["NETMODELS_STATE_DIR"] = "/srv/nm"
        self.assertEqual(default_state_dir(), "/srv/nm")

    def test_relative_files_go_inside_it(self) -> None:
        from twisted.internet.task import Clock

        from netmodels.runtime.application import Application
        from netmodels.runtime.node import Node, NodeConfig
        from netmodels.topologies.client_server import ClientServer

        state = os.path.join(self.mktemp(), "state")
        node = Node(NodeConfig(listen=("tcp:0",), state_dir=state), ClientServer(), Application(), Clock())
        self.assertEqual(node.state_path("outbox.sqlite"), os.path.join(state, "outbox.sqlite"))
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o700)
        self.assertEqual(node.state_path("/abs/outbox.sqlite"), "/abs/outbox.sqlite")

    def test_option(self) -> None:
        options = Options()
        options.parseOptions(["--listen", "tcp:0", "--state-dir", "/tmp/here"])
        self.assertEqual(options["config"].state_dir, "/tmp/here")


class StatusExposureTests(SynchronousTestCase):
    """A status endpoint other machines can reach, with no admin token, is warned about at start-up."""

    def test_which_endpoints_reach_beyond_loopback(self) -> None:
        for description, beyond in [
            ("tcp:8080", True),
            ("tcp:8080:interface=0.0.0.0", True),
            ("tcp6:8080:interface=\\:\\:", True),
            ("tcp:8080:interface=192.0.2.7", True),
            ("tcp:8080:interface=node.example", True),
            ("systemd:domain=INET:index=0", True),
            ("tcp:8080:interface=127.0.0.1", False),
            ("tcp:port=8080:interface=127.0.0.9", False),
            ("tcp6:8080:interface=\\:\\:1", False),
            ("tcp:8080:interface=localhost", False),
            ("unix:/run/netmodels.sock", False),
        ]:
            self.assertEqual(reachable_beyond_loopback(description), beyond, description)

    def warnings(self, *args: str) -> list[str]:
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        try:
            makeService(options)
        finally:
            globalLogPublisher.removeObserver(seen.append)
        return [formatEvent(event) for event in seen if event.get("log_level") == LogLevel.warn]

    def test_warned_without_a_token(self) -> None:
        [warning] = self.warnings("--status", "tcp:0")
        self.assertIn("--status tcp:0 can be reached from other machines", warning)
        self.assertEqual(self.warnings("--status", "tcp:0:interface=127.0.0.1"), [])

    def test_not_warned_with_a_token(self) -> None:
        # Not self.mktemp(): under pytest it lands in the working directory.
        directory = tempfile.mkdtemp(prefix="netmodels-token-")
        self.addCleanup(shutil.rmtree, directory)
        token_file = os.path.join(directory, "token")
        with open(token_file, "w") as file:
            file.write("a-token\n")
        self.assertEqual(self.warnings("--status", "tcp:0", "--admin-token-file", token_file), [])
