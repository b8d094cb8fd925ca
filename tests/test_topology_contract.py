"""
The topology contract: what a topology plugin declares and what it is given.

A topology owns its options (merged into ``twistd netmodels``' own), its
settings, its message types (registered at load, collisions refused), and,
through the node it is given, its handlers, status section and routes. The
core options are checked at parsing, ports included, and every error is one
line naming the option.
"""

from __future__ import annotations

import io
import json
import socket
from contextlib import redirect_stdout
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

import netmodels
from netmodels.core import frames
from netmodels.core.frames import FrameDecoder, MessageTypeConflict, encode_frame, register_message_types
from netmodels.daemon.status import StatusPage
from netmodels.daemon.tap import Options
from netmodels.runtime.application import Application
from netmodels.runtime.interfaces import ITopology, ITopologyContext
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.registry import topologies
from netmodels.topologies.client_server import ClientServer
from netmodels.topologies.p2p.options import P2PSettings

from ._support import spawn_twistd


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def usage_error(*args: str) -> str:
    with redirect_stdout(io.StringIO()):
        error = SynchronousTestCase().assertRaises(usage.UsageError, parse, *args)
    return str(error)


class MessageTypeRegistryTests(SynchronousTestCase):
    """Plugins' message types are registered once, and a collision is refused naming both."""

    def setUp(self) -> None:
        known, registered = set(frames._KNOWN_TYPES), dict(frames._REGISTERED)

        def restore() -> None:
            frames._KNOWN_TYPES.clear()
            frames._KNOWN_TYPES.update(known)
            frames._REGISTERED.clear()
            frames._REGISTERED.update(registered)

        self.addCleanup(restore)

    def test_registered_types_are_decoded(self) -> None:
        frame = encode_frame(0xE1, b"hello")
        self.assertIsNotNone(_decode_error(frame))
        register_message_types("topology pubsub", {"PUBLISH": 0xE1})
        self.assertIsNone(_decode_error(frame))
        self.assertEqual(frames.message_type_name(0xE1), "PUBLISH")

    def test_same_owner_again_is_a_no_op(self) -> None:
        register_message_types("topology pubsub", {"PUBLISH": 0xE1})
        register_message_types("topology pubsub", {"PUBLISH": 0xE1})

    def test_collisions(self) -> None:
        register_message_types("topology pubsub", {"PUBLISH": 0xE1})
        cases = [
            ({"MINE": 0xE1}, "takes code 0xe1, which topology pubsub registered for PUBLISH"),
            ({"PUBLISH": 0xE2}, "name PUBLISH is taken by topology pubsub (code 0xe1)"),
            ({"MINE": 0x02}, "takes code 0x02 of netmodels' DATA"),
            ({"MINE": 256}, "not 1 to 255"),
        ]
        for types, message in cases:
            error = self.assertRaises(MessageTypeConflict, register_message_types, "topology other", types)
            self.assertIn(message, str(error))
            self.assertTrue(str(error).startswith("topology other: "), str(error))

    def test_built_in_topologies_register_theirs(self) -> None:
        installed = topologies()
        self.assertEqual(
            dict(installed["p2p"].message_types), {"PEERS": 0x09, "BROADCAST": 0x0A, "OVERLAY": 0x0E}
        )
        self.assertEqual(frames._REGISTERED[0x0B], ("topology callback", "REGISTER"))
        for topology in installed.values():
            self.assertTrue(ITopology.providedBy(topology))


def _decode_error(frame: bytes) -> Exception | None:
    decoder = FrameDecoder()
    decoder.feed(frame)
    return decoder.error


class OptionsTests(SynchronousTestCase):
    """Each topology's options are merged in when it is chosen, and only then."""

    def test_topology_help_lists_its_own_options(self) -> None:
        for args, own in (
            (["--topology", "p2p"], "--max-peers"),
            (["-t", "callback"], "--token-file"),
            (["--topology=many-to-one"], "--raw-listen"),
        ):
            output = io.StringIO()
            with redirect_stdout(output), self.assertRaises(SystemExit):
                parse(*args, "--help")
            self.assertIn(own, output.getvalue())
            self.assertIn("--keepalive", output.getvalue())

    def test_core_help_has_no_topology_options(self) -> None:
        output = io.StringIO()
        with redirect_stdout(output), self.assertRaises(SystemExit):
            parse("--help")
        self.assertNotIn("--max-peers", output.getvalue())
        self.assertIn("--demo", output.getvalue())  # client-server's, the default topology

    def test_another_topologys_option_names_its_owner(self) -> None:
        self.assertEqual(
            usage_error("--listen", "tcp:0", "--max-peers", "3"),
            "--max-peers: only the p2p topology has it (--topology)",
        )
        self.assertEqual(usage_error("--listen", "tcp:0", "--no-such"), "--no-such: no such option")

    def test_settings_from_the_topology(self) -> None:
        config = parse("-t", "p2p", "--listen", "tcp:0", "--max-peers", "4", "--peer", "tcp:h:1")["config"]
        self.assertEqual(config.settings, P2PSettings(max_peers=4, nodes=1))
        self.assertEqual(config.connect, ("tcp:h:1",))
        self.assertEqual(type(parse("--listen", "tcp:0")["config"].settings).__name__, "ClientServerSettings")

    def test_ports_outside_16_bits_are_usage_errors(self) -> None:
        cases = [
            (["--listen", "tcp:70000"], "--listen: bad endpoint 'tcp:70000': port '70000' is not a number"),
            (["--listen", "tcp:port=65536"], "--listen: bad endpoint 'tcp:port=65536'"),
            (["-r", "client", "--connect", "tcp:h:0"], "--connect: bad endpoint 'tcp:h:0': port '0'"),
            (["-r", "client", "--connect", "tcp:h:x"], "--connect: bad endpoint 'tcp:h:x': port 'x'"),
            (["--listen", "tcp:0", "--status", "tcp:99999"], "--status: bad endpoint 'tcp:99999'"),
            (["--transport", "udp", "--listen", "udp:70000"], "--listen: bad endpoint 'udp:70000'"),
            (["-t", "p2p", "--listen", "tcp:0", "--peer", "garbage"], "--peer: bad endpoint 'garbage'"),
        ]
        for args, message in cases:
            self.assertIn(message, usage_error(*args), args)
        parse("--listen", "tcp:65535", "--status", "tcp:0:interface=127.0.0.1")

    def test_version_is_netmodels(self) -> None:
        output = io.StringIO()
        with redirect_stdout(output), self.assertRaises(SystemExit):
            parse("--version")
        self.assertTrue(output.getvalue().startswith(f"netmodels {netmodels.__version__} "))


class ContextTests(SynchronousTestCase):
    """What a topology's build is given, and what it may add."""

    def node(self, **config: Any) -> Node:
        return Node(NodeConfig(listen=("tcp:0",), **config), ClientServer(), Application(), Clock())

    def test_node_is_the_context(self) -> None:
        from zope.interface.verify import verifyObject

        self.assertTrue(verifyObject(ITopologyContext, self.node()))

    def test_default_settings_come_from_the_topologys_options(self) -> None:
        self.assertFalse(self.node().settings.demo)

    def test_a_message_type_has_one_handler(self) -> None:
        node = self.node()
        node.add_handler(0x40, lambda session, body: None)
        error = self.assertRaises(ValueError, node.add_handler, 0x40, lambda session, body: None)
        self.assertIn("0x40", str(error))

    def test_build_result_is_the_topology_state(self) -> None:
        node = Node(
            NodeConfig(topology="p2p", role="peer", listen=("tcp:0",), app="broadcast"),
            topologies()["p2p"],
            Application(),
            Clock(),
        )
        self.assertIs(node.build(), node.topology_state)
        self.assertEqual(type(node.topology_state).__name__, "Mesh")

    def test_routes_and_sections(self) -> None:
        node = self.node()
        node.add_status_section("extra", lambda: {"n": 1})
        self.assertEqual(node.status()["extra"], {"n": 1})
        page = StatusPage([node])
        request = DummyRequest([b"nowhere"])
        resource = page.getChildWithDefault(b"nowhere", request)
        body = resource.render(request)
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(json.loads(body), {"error": "no route /nowhere on this node"})


class TwistdErrorTests(TestCase):
    """Under twistd: a usage error or a start-up failure is one line and a non-zero exit."""

    timeout = 60

    @defer.inlineCallbacks
    def test_usage_error_is_one_line(self) -> Any:
        child = spawn_twistd(self, ["netmodels", "--listen", "tcp:70000"])
        yield child.ended
        self.assertEqual(child.exit_code, 2, child.text)
        self.assertEqual(
            child.text.strip().splitlines(),
            [
                "twistd netmodels: --listen: bad endpoint 'tcp:70000': port '70000' is not a number "
                "from 0 to 65535",
                "Run 'twistd netmodels --help' for the options.",
            ],
        )

    @defer.inlineCallbacks
    def test_port_in_use_is_one_line(self) -> Any:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for option in ("--listen", "--status"):
            args = ["netmodels", "--listen", "tcp:0:interface=127.0.0.1"]
            args[args.index("--listen") :] = [option, f"tcp:{port}:interface=127.0.0.1"]
            if option == "--status":
                args += ["--listen", "tcp:0:interface=127.0.0.1"]
            child = spawn_twistd(self, args)
            yield child.ended
            self.assertEqual(child.exit_code, 1, child.text)
            self.assertNotIn("Traceback", child.text)
            (error,) = [line for line in child.text.splitlines() if "twistd netmodels:" in line]
            self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", error)
            self.assertIn("Address already in use", error)
