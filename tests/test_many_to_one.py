"""
The many-to-one topology on the memory network: chat fan-out, groups, the
slow-consumer policy, raw line clients, the status section and the command
line. Everything is deterministic: a Clock drives delivery.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet import error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.connection import ConnectionState
from netmodels.core.frames import FrameDecoder, MessageType
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.daemon.tap import Options, build_node
from netmodels.runtime import manager
from netmodels.runtime.application import Application
from netmodels.runtime.dialer import Dialer, DialerState
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.session import MessageTooLarge, PeerClosed, Session, SessionFactory, encode_bye
from netmodels.testing import WINDOW, MemoryNetwork
from netmodels.topologies.many_to_one import hub as many_to_one
from netmodels.topologies.many_to_one.chat import ChatApplication
from netmodels.topologies.many_to_one.groups import MAX_GROUPS, check_groups
from netmodels.topologies.many_to_one.hub import Hub, hub_of
from netmodels.topologies.many_to_one.options import ManyToOneSettings
from netmodels.topologies.many_to_one.raw import (
    RawLineFactory,
    RawLineSession,
    RawPeerRequest,
    _raw_rejection,
)
from netmodels.topologies.many_to_one.topology import ManyToOne
from tests.test_testing import KEEPALIVE, RecordingApplication, WireTap, advance_by

ADDRESS = "server:1"
RAW_ADDRESS = "server:2"
CLOSE_DEADLINE = 5.0
MESSAGE = b"m" * 1000
#: Small limits so the slow-consumer policy acts within a few hundred messages.
MAX_BACKLOG = 200_000
DEADLINE = 5.0


def make_node(clock: Clock, role: str, node_id: str, app: Any = None, **config: Any) -> Node:
    settings = NodeConfig(
        topology="many-to-one",
        role=role,
        node_id=node_id,
        app="chat",
        keepalive=KEEPALIVE,
        interval=config.pop("interval", 0),
        settings=ManyToOneSettings(
            groups=tuple(config.pop("groups", ())), raw_listen=tuple(config.pop("raw_listen", ()))
        ),
        **config,
    )
    application = app if app is not None else ChatApplication(settings)
    return Node(settings, ManyToOne(), application, clock)


class LineClient(Protocol):
    """What ``nc`` does: writes what it is told, keeps what it reads."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason

    def say(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    @property
    def lines(self) -> list[bytes]:
        return bytes(self.received).split(b"\n")[:-1]


class Star:
    """
    A many-to-one server wired as ``ManyToOne.build`` does, but on a memory
    network: netmodels clients on :data:`ADDRESS`, raw line clients on
    :data:`RAW_ADDRESS`.
    """

    def __init__(self, server_app: Application | None = None, **server_config: Any) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.server = make_node(self.clock, "server", "server", server_app, **server_config)
        self.hub = self.server.topology_state = Hub(self.server)
        self.hub.raw_listen = (RAW_ADDRESS,)
        server = self.server
        framed = server.manager.wrap_factory(
            server.session_factory(), rejection_payload=lambda reason, detail: encode_bye(reason, detail)
        )
        raw = server.manager.wrap_factory(RawLineFactory(server), rejection_payload=_raw_rejection)
        self.ports = [
            self.network.server_endpoint(ADDRESS).listen(framed),
            self.network.server_endpoint(RAW_ADDRESS).listen(raw),
        ]
        self.clients: dict[str, Node] = {}
        self.raw: list[LineClient] = []
        server.startService()

    def add(self, node_id: str, factory: Any = None, **config: Any) -> Node:
        node = make_node(self.clock, "client", node_id, connect=(ADDRESS,), **config)
        node.topology_state = Hub(node)
        Dialer(
            node.manager,
            self.network.client_endpoint(ADDRESS),
            factory(node) if factory is not None else node.session_factory(),
            ADDRESS,
            self.clock,
            draw=lambda: 0.0,
        ).setServiceParent(node)
        node.startService()
        self.clock.advance(0)
        self.clients[node_id] = node
        return node

    def add_raw(self) -> LineClient:
        results: list[Any] = []
        self.network.client_endpoint(RAW_ADDRESS).connect(Factory.forProtocol(LineClient)).addBoth(
            results.append
        )
        self.clock.advance(0)
        [client] = results
        assert isinstance(client, LineClient), client
        self.raw.append(client)
        return client

    def app(self, node_id: str) -> ChatApplication:
        application = self.clients[node_id].application
        assert isinstance(application, ChatApplication)
        return application

    def received(self, node_id: str) -> list[bytes]:
        return list(self.app(node_id).recent)

    def session_of(self, node_id: str) -> Any:
        [peer] = [p for p in self.server.peers() if p.node_id == node_id]
        return peer

    def raw_peer(self, index: int = 0) -> RawLineSession:
        peers = [p for p in self.server.peers() if isinstance(p, RawLineSession)]
        return peers[index]

    def link_of(self, node_id: str) -> Any:
        session = self.session_of(node_id)
        [link] = [link for link in self.network.links if link.server.protocol is session.transport]
        return link

    def stop(self) -> None:
        for node in [*self.clients.values(), self.server]:
            if node.running:
                node.stopService()
        for _ in range(4):
            advance_by(self.clock, CLOSE_DEADLINE)


class _StarTestCase(SynchronousTestCase):
    server_config: dict[str, Any] = {}

    def setUp(self) -> None:
        self.star = Star(**self.server_config)
        self.addCleanup(self.star.stop)
        self.clock = self.star.clock


# --- Chat -----------------------------------------------------------------------------


class ChatTests(_StarTestCase):
    def setUp(self) -> None:
        super().setUp()
        for name in ("alice", "bob", "carol"):
            self.star.add(name)

    def test_message_reaches_every_other_client_prefixed(self) -> None:
        """A client's message reaches all the others, prefixed with its id, and not itself."""
        self.assertEqual(self.star.app("alice").say(b"hello"), 1)
        self.clock.advance(0)
        self.assertEqual(self.star.received("bob"), [b"alice: hello"])
        self.assertEqual(self.star.received("carol"), [b"alice: hello"])
        self.assertEqual(self.star.received("alice"), [])
        server_app = self.star.server.application
        assert isinstance(server_app, ChatApplication)
        self.assertEqual(server_app.relayed, 2)

    def test_every_client_hears_every_other(self) -> None:
        for name in ("alice", "bob", "carol"):
            self.star.app(name).say(f"I am {name}".encode())
        self.clock.advance(0)
        for name in ("alice", "bob", "carol"):
            others = {f"{o}: I am {o}".encode() for o in ("alice", "bob", "carol") if o != name}
            self.assertEqual(set(self.star.received(name)), others)

    def test_empty_messages_ignored(self) -> None:
        self.star.app("alice").say(b"")
        self.star.app("alice").say(b"   ")
        self.clock.advance(0)
        self.assertEqual(self.star.received("bob"), [])

    def test_interval_says_hello(self) -> None:
        """A client with --interval says "hello from <id> #n" every interval."""
        self.star.add("dave", interval=2.0)
        advance_by(self.clock, 4.0)
        self.assertEqual(
            self.star.received("alice"), [b"dave: hello from dave #1", b"dave: hello from dave #2"]
        )

    def test_too_long_with_prefix_not_relayed(self) -> None:
        """A message that fits alone but not with the sender's prefix is dropped, not fatal."""
        body = b"x" * (self.star.server.config.max_frame - 1)
        self.star.app("alice").say(body)
        self.clock.advance(0)
        self.assertEqual(self.star.received("bob"), [])
        self.assertEqual(len(self.star.server.peers()), 3)

    def test_group_message(self) -> None:
        """``@NAME text`` goes to the clients of group NAME only, the sender excluded."""
        self.star.add("red1", groups=("red",))
        self.star.add("red2", groups=("red", "blue"))
        self.star.app("red1").say(b"@red ready?")
        self.star.app("alice").say(b"@blue hi blue")
        self.clock.advance(0)
        self.assertEqual(self.star.received("red2"), [b"red1 @red: ready?", b"alice @blue: hi blue"])
        self.assertEqual(self.star.received("red1"), [])
        self.assertEqual(self.star.received("bob"), [])

    def test_client_logs_what_it_receives(self) -> None:
        logged: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.star.app("alice").say(b"log me")
        self.clock.advance(0)
        lines = [e.get("line") for e in logged if e.get("log_namespace") == "netmodels.app.chat"]
        self.assertEqual(lines, ["alice: log me", "alice: log me"])


# --- Groups -----------------------------------------------------------------------------


class GroupTests(_StarTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.star.add("a", groups=("red",))
        self.star.add("b", groups=("red", "blue"))
        self.star.add("c", groups=("blue",))
        self.star.add("d")

    def test_groups_travel_in_hello(self) -> None:
        session = self.star.session_of("b")
        assert isinstance(session, Session) and session.peer_hello is not None
        self.assertEqual(session.peer_hello.extra["groups"], ["red", "blue"])
        self.assertEqual(self.star.hub.groups_of(session), ("red", "blue"))

    def test_group_broadcast_reaches_only_the_group(self) -> None:
        self.assertEqual(self.star.hub.broadcast(b"to red", group="red"), 2)
        self.assertEqual(self.star.hub.broadcast(b"to blue", group="blue"), 2)
        self.clock.advance(0)
        self.assertEqual(self.star.received("a"), [b"to red"])
        self.assertEqual(self.star.received("b"), [b"to red", b"to blue"])
        self.assertEqual(self.star.received("c"), [b"to blue"])
        self.assertEqual(self.star.received("d"), [])

    def test_broadcast_to_all(self) -> None:
        self.assertEqual(self.star.hub.broadcast(b"all"), 4)
        self.clock.advance(0)
        for name in "abcd":
            self.assertEqual(self.star.received(name), [b"all"])

    def test_group_broadcast_framed_once(self) -> None:
        calls: list[bytes] = []
        original = many_to_one.encode_frame

        def counting(message_type: int, body: bytes = b"") -> bytes:
            calls.append(body)
            return original(message_type, body)

        self.patch(many_to_one, "encode_frame", counting)
        self.assertEqual(self.star.hub.broadcast(b"once", group="red"), 2)
        self.assertEqual(calls, [b"once"])

    def test_group_broadcast_excludes(self) -> None:
        self.assertEqual(self.star.hub.broadcast(b"x", group="red", exclude=self.star.session_of("a")), 1)

    def test_unknown_group_reaches_nobody(self) -> None:
        self.assertEqual(self.star.hub.broadcast(b"x", group="green"), 0)

    def test_membership_follows_connections(self) -> None:
        self.assertEqual([p.node_id for p in self.star.hub.members("red")], ["a", "b"])
        self.star.link_of("a").reset(0)
        self.assertEqual([p.node_id for p in self.star.hub.members("red")], ["b"])
        self.star.link_of("b").reset(0)
        self.assertEqual(self.star.hub.members("red"), [])
        self.assertNotIn("red", self.star.hub.status()["groups"])

    def test_bad_groups_in_hello_refused_fatally(self) -> None:
        """A HELLO with bad groups is a fatal protocol error: the client is told and stops retrying."""

        def bad_hello(node: Node) -> SessionFactory:
            settings = node.session_settings
            hello = attrs.evolve(settings.hello, extra={"groups": ["no spaces allowed"]})
            return SessionFactory(attrs.evolve(settings, hello=hello), node.clock)

        node = self.star.add("bad", factory=bad_hello)
        record = node.manager.history[-1]
        self.assertEqual(
            (record.reason, record.initiator, record.fatal),
            (CloseReason.PROTOCOL_ERROR, Initiator.REMOTE, True),
        )
        self.assertIn("bad group name", record.detail)
        [dialler] = [s for s in node if isinstance(s, Dialer)]
        self.assertEqual(dialler.state, DialerState.GAVE_UP)

    def test_groups_not_a_list_refused(self) -> None:
        def bad_hello(node: Node) -> SessionFactory:
            settings = node.session_settings
            hello = attrs.evolve(settings.hello, extra={"groups": "red"})
            return SessionFactory(attrs.evolve(settings, hello=hello), node.clock)

        node = self.star.add("bad", factory=bad_hello)
        self.assertEqual(node.manager.history[-1].reason, CloseReason.PROTOCOL_ERROR)


class CheckGroupsTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertIsNone(check_groups(["ops", "a", "x.y-z_1", "A" * 64]))

    def test_invalid(self) -> None:
        for groups in (["has space"], [""], ["-lead"], ["a" * 65], ["ok", "ok"], [3], ["é"]):
            self.assertIsNotNone(check_groups(groups), groups)

    def test_too_many(self) -> None:
        self.assertIsNotNone(check_groups([f"g{i}" for i in range(MAX_GROUPS + 1)]))
        self.assertIsNone(check_groups([f"g{i}" for i in range(MAX_GROUPS)]))


# --- Slow consumers ------------------------------------------------------------------------


class SlowConsumerTests(_StarTestCase):
    server_config = {"max_backlog": MAX_BACKLOG, "slow_consumer_deadline": DEADLINE}

    def setUp(self) -> None:
        super().setUp()
        for name in ("fast1", "slow", "fast2"):
            self.star.add(name)

    def test_settings_wired(self) -> None:
        settings = self.star.server.session_settings
        self.assertEqual((settings.max_backlog, settings.slow_consumer_deadline), (MAX_BACKLOG, DEADLINE))

    def test_stuck_client_dropped_others_keep_everything(self) -> None:
        """A client that stops reading is dropped (rejected, RST); the others miss nothing."""
        self.star.link_of("slow").stop_reading(0)
        sent = 0
        while len(self.star.server.peers()) == 3 and sent < 10_000:
            self.star.hub.broadcast(MESSAGE)
            sent += 1
            self.clock.advance(0)
        # It keeps going for the others.
        for _ in range(100):
            self.star.hub.broadcast(MESSAGE)
            sent += 1
        self.clock.advance(0)
        [record] = [r for r in self.star.server.manager.records() if r.peer_id == "slow"]
        self.assertEqual((record.reason, record.initiator), (CloseReason.REJECTED, Initiator.LOCAL))
        self.assertIn("slow consumer", record.detail)
        # Bounded: dropped once Twisted's buffer plus the backlog cap was used, not later.
        self.assertLessEqual((sent - 100) * len(MESSAGE), WINDOW + MAX_BACKLOG + 2 * len(MESSAGE) + 1000)
        for name in ("fast1", "fast2"):
            self.assertEqual(self.star.app(name).received, sent)
        self.assertEqual(self.star.hub.status()["counts"]["slow_consumers_dropped"], 1)
        # Dropped for its backlog: the deadline's timer went with it.
        self.assertEqual(_slow_timers(self.clock), [])
        # The stuck client learns it was reset, and will reconnect by the policy.
        self.assertEqual(self.star.clients["slow"].manager.history[-1].reason, CloseReason.RESET)

    def test_paused_client_shown_then_dropped_at_deadline(self) -> None:
        self.star.link_of("slow").stop_reading(0)
        for _ in range(80):
            self.star.hub.broadcast(MESSAGE)
        self.clock.advance(0)
        # Paused by now; what is sent from here on counts towards the backlog cap.
        for _ in range(5):
            self.star.hub.broadcast(MESSAGE)
        self.clock.advance(0)
        entry = self.star.hub.status()["clients"]["slow"]
        self.assertEqual((entry["writable"], entry["state"]), (False, "paused"))
        self.assertGreater(entry["backlog"], 0)
        self.assertEqual(self.star.hub.status()["counts"]["paused"], 1)
        session = self.star.session_of("slow")
        advance_by(self.clock, DEADLINE - 0.001)
        self.assertEqual(session.record.state, ConnectionState.OPEN)
        advance_by(self.clock, 0.001)
        self.assertEqual(session.record.reason, CloseReason.REJECTED)
        self.assertIn("paused over 5 s", session.record.detail)

    def test_stuck_raw_client_dropped(self) -> None:
        raw = self.star.add_raw()
        [link] = [link for link in self.star.network.links if link.client.protocol is raw]
        link.stop_reading(0)
        peer = self.star.raw_peer()
        sent = 0
        while peer.record is not None and not peer.record.closed and sent < 10_000:
            self.star.hub.broadcast(MESSAGE)
            sent += 1
            self.clock.advance(0)
        self.assertEqual(peer.record.reason, CloseReason.REJECTED)
        self.assertEqual(_slow_timers(self.clock), [])
        self.assertLessEqual(sent * (len(MESSAGE) + 1), WINDOW + MAX_BACKLOG + 2 * len(MESSAGE) + 1000)
        self.assertEqual(self.star.app("fast1").received, sent)


def _slow_timers(clock: Clock) -> list[Any]:
    return [
        call for call in clock.getDelayedCalls() if getattr(call.func, "__name__", "") == "_slow_consumer"
    ]


# --- Raw line clients ---------------------------------------------------------------------


#: A frame limit small enough to exceed cheaply, big enough for a HELLO.
MAX_FRAME = 1024
MAX_LINE = MAX_FRAME - 1


class RawLineTests(_StarTestCase):
    server_config = {"max_frame": MAX_FRAME}

    def setUp(self) -> None:
        super().setUp()
        self.app = RecordingApplication()
        self.star.server.application = self.app
        self.star.server.session_settings = attrs.evolve(
            self.star.server.session_settings, application=self.app
        )
        self.raw = self.star.add_raw()
        self.peer = self.star.raw_peer()

    def test_ready_at_once(self) -> None:
        self.assertEqual(self.app.ready, [self.peer])
        record = self.peer.record
        assert record is not None
        self.assertEqual(record.state, ConnectionState.OPEN)
        self.assertEqual(self.peer.node_id, f"raw-{record.peer}")
        self.assertTrue(self.peer.node_id.startswith("raw-10.0.0.1:"))
        self.assertEqual(
            (record.peer_id, self.peer.role, self.peer.connection_id),
            (self.peer.node_id, "client", record.id),
        )
        self.assertEqual(record.as_dict()["protocol"], "lines")

    def test_lines_in_any_chunking(self) -> None:
        stream = b"hello\r\nworld\n\nlast one\n"
        expected = [b"hello", b"world", b"", b"last one"]
        for size in (1, 2, 3, 5, 7, len(stream)):
            self.app.messages.clear()
            for start in range(0, len(stream), size):
                self.raw.say(stream[start : start + size])
                self.clock.advance(0)
            self.assertEqual(self.app.messages, expected, size)
        for cut in range(len(stream) + 1):
            self.app.messages.clear()
            self.raw.say(stream[:cut])
            self.clock.advance(0)
            self.raw.say(stream[cut:])
            self.clock.advance(0)
            self.assertEqual(self.app.messages, expected, cut)
        self.assertEqual(self.peer.record.messages_in, 4 * (6 + len(stream) + 1))  # type: ignore[union-attr]

    def test_partial_line_waits(self) -> None:
        self.raw.say(b"no newline yet")
        self.clock.advance(0)
        self.assertEqual(self.app.messages, [])
        self.raw.say(b"\n")
        self.clock.advance(0)
        self.assertEqual(self.app.messages, [b"no newline yet"])

    def test_line_at_the_limit_accepted(self) -> None:
        """The frame limit less the type byte (what a DATA message carries) is the longest line."""
        self.raw.say(b"x" * MAX_LINE + b"\r\n")
        self.raw.say(b"y" * MAX_LINE + b"\r")
        self.clock.advance(0)
        self.raw.say(b"\n")
        self.clock.advance(0)
        self.assertEqual(self.app.messages, [b"x" * MAX_LINE, b"y" * MAX_LINE])
        self.assertEqual(self.peer.record.state, ConnectionState.OPEN)  # type: ignore[union-attr]

    def test_over_long_line_is_a_protocol_error(self) -> None:
        self.raw.say(b"ok\n" + b"x" * (MAX_LINE + 1) + b"\nnot delivered\n")
        self.clock.advance(0)
        advance_by(self.clock, 0)
        record = self.peer.record
        assert record is not None
        self.assertEqual((record.reason, record.initiator), (CloseReason.PROTOCOL_ERROR, Initiator.LOCAL))
        self.assertIn(f"exceeds the limit of {MAX_LINE} bytes", record.detail)
        self.assertEqual(self.app.messages, [b"ok"])
        self.assertEqual(self.raw.lines, [b"error: " + record.detail.encode()])
        self.assertIsNotNone(self.raw.lost)
        self.assertEqual(self.star.server.manager.counters["protocol-error"], 1)
        self.assertEqual(len(self.app.lost), 1)

    def test_over_long_line_caught_before_its_newline(self) -> None:
        """Without a newline, the limit + 2 bytes (a "\\r" may be next) end it: nothing unbounded is kept."""
        self.raw.say(b"x" * (MAX_LINE + 1))
        self.clock.advance(0)
        self.assertEqual(self.peer.record.state, ConnectionState.OPEN)  # type: ignore[union-attr]
        self.raw.say(b"x")
        self.clock.advance(0)
        self.assertEqual(self.peer.record.reason, CloseReason.PROTOCOL_ERROR)  # type: ignore[union-attr]

    def test_send_writes_a_line(self) -> None:
        self.peer.send(b"hi there")
        self.peer.send(b"")
        self.clock.advance(0)
        self.assertEqual(self.raw.lines, [b"hi there", b""])
        self.assertEqual(self.peer.record.messages_out, 2)  # type: ignore[union-attr]

    def test_send_limits(self) -> None:
        self.assertRaises(MessageTooLarge, self.peer.send, b"x" * (MAX_LINE + 1))
        self.peer.close()
        self.assertRaises(PeerClosed, self.peer.send, b"late")

    def test_request_fails(self) -> None:
        failure = self.failureResultOf(self.peer.request(b"question"), RawPeerRequest)
        self.assertIn("raw peers do not take requests", failure.getErrorMessage())

    def test_close_is_clean(self) -> None:
        self.peer.close()
        advance_by(self.clock, 0)
        record = self.peer.record
        assert record is not None
        self.assertEqual((record.reason, record.initiator), (CloseReason.CLEAN, Initiator.LOCAL))
        self.assertIsNotNone(self.raw.lost)
        self.assertEqual(self.star.server.peers(), [])

    def test_reset_is_aborted(self) -> None:
        self.peer.reset()
        self.assertEqual(self.peer.record.reason, CloseReason.ABORTED)  # type: ignore[union-attr]
        self.assertTrue(self.raw.lost.check(error.ConnectionLost))  # type: ignore[union-attr]

    def test_client_hangs_up(self) -> None:
        """nc's EOF: a clean close from the remote side, and peer_lost with the record."""
        self.raw.transport.loseConnection()  # type: ignore[union-attr]
        self.clock.advance(0)
        [record] = self.app.lost
        self.assertEqual((record.reason, record.initiator), (CloseReason.CLEAN, Initiator.REMOTE))

    def test_peers_and_broadcast_include_raw_clients(self) -> None:
        alice = self.star.add("alice")
        self.assertEqual({p.node_id for p in self.star.server.peers()}, {"alice", self.peer.node_id})
        self.assertEqual(self.star.server.broadcast(b"to all"), 2)
        self.assertEqual(self.star.server.broadcast(b"not raw", exclude=self.peer), 1)
        self.clock.advance(0)
        self.assertEqual(self.raw.lines, [b"to all"])
        app = alice.application
        assert isinstance(app, ChatApplication)
        self.assertEqual(list(app.recent), [b"to all", b"not raw"])

    def test_broadcast_encodes_once_per_kind(self) -> None:
        second = self.star.add_raw()
        calls: list[bytes] = []
        original = RawLineSession.encode

        def counting(payload: bytes) -> bytes:
            calls.append(payload)
            return original(self.peer, payload)

        self.patch(self.peer, "encode", counting)
        self.patch(self.star.raw_peer(1), "encode", counting)
        self.assertEqual(self.star.server.broadcast(b"both"), 2)
        self.clock.advance(0)
        self.assertEqual(calls, [b"both"])
        self.assertEqual((self.raw.lines, second.lines), ([b"both"], [b"both"]))

    def test_application_error_ends_only_that_connection(self) -> None:
        def boom(peer: Any, payload: bytes) -> None:
            raise ValueError("bug")

        self.app.message_received = boom  # type: ignore[method-assign]
        other = self.star.add_raw()
        self.raw.say(b"trigger\n")
        self.clock.advance(0)
        self.assertEqual(self.peer.record.reason, CloseReason.ABORTED)  # type: ignore[union-attr]
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIsNone(other.lost)

    def test_turned_away_by_limits_with_a_line(self) -> None:
        star = Star(max_connections=1)
        self.addCleanup(star.stop)
        star.add_raw()
        second = star.add_raw()
        advance_by(star.clock, 0)
        self.assertEqual(second.lines, [b"error: rejected: connection limit of 1 reached"])
        self.assertIsNotNone(second.lost)


class RawChatTests(_StarTestCase):
    def test_raw_and_netmodels_clients_chat(self) -> None:
        self.star.add("alice")
        raw = self.star.add_raw()
        raw_id = self.star.raw_peer().node_id
        raw.say(b"hi from nc\r\n")
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [f"{raw_id}: hi from nc".encode()])
        self.star.app("alice").say(b"hello nc")
        self.clock.advance(0)
        self.assertEqual(raw.lines, [b"alice: hello nc"])


# --- Status -------------------------------------------------------------------------------


class StatusTests(_StarTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.star.add("alice", groups=("ops",))
        self.star.add("bob")
        self.raw = self.star.add_raw()

    def test_server_section(self) -> None:
        section = self.star.server.status()["many_to_one"]
        raw_id = self.star.raw_peer().node_id
        self.assertEqual(section["role"], "server")
        self.assertEqual(section["raw_listening"], [RAW_ADDRESS])
        self.assertEqual(
            section["counts"],
            {"clients": 3, "netmodels": 2, "raw": 1, "paused": 0, "slow_consumers_dropped": 0},
        )
        self.assertEqual(section["groups"], {"ops": 1})
        self.assertEqual(set(section["clients"]), {"alice", "bob", raw_id})
        self.assertEqual(
            section["clients"]["alice"],
            {
                "connection": self.star.session_of("alice").connection_id,
                "kind": "netmodels",
                "groups": ["ops"],
                "writable": True,
                "state": "writable",
                "backlog": 0,
                "unsent": None,
            },
        )
        self.assertEqual(section["clients"][raw_id]["kind"], "raw")
        self.assertEqual(section["policy"], {"max_backlog": 4 * 1024 * 1024, "slow_consumer_deadline": 10.0})
        json.dumps(self.star.server.status())

    def test_duplicate_ids_listed_apart(self) -> None:
        self.star.add("alice")
        clients = self.star.server.status()["many_to_one"]["clients"]
        self.assertEqual(len([key for key in clients if key.startswith("alice")]), 2)

    def test_client_section(self) -> None:
        self.assertEqual(
            self.star.clients["alice"].status()["many_to_one"],
            {"role": "client", "groups": ["ops"], "server": "server", "writable": True},
        )
        self.star.link_of("alice").reset(1)
        self.assertEqual(self.star.clients["alice"].status()["many_to_one"]["server"], None)
        [dialler] = [s for s in self.star.clients["alice"] if isinstance(s, Dialer)]
        self.assertEqual(dialler.status()["state"], "waiting")

    def test_hub_of(self) -> None:
        self.assertIs(hub_of(self.star.server), self.star.hub)
        self.assertIsNone(hub_of(Node(NodeConfig(), ManyToOne(), Application(), Clock())))


# --- Configuration and the command line ----------------------------------------------------


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


SERVER = ("--topology", "many-to-one", "--role", "server", "--listen", "tcp:0:interface=127.0.0.1")
CLIENT = ("--topology", "many-to-one", "--role", "client", "--connect", "tcp:127.0.0.1:8750")


class CommandLineTests(SynchronousTestCase):
    def assertUsage(self, argv: tuple[str, ...], *fragments: str) -> None:
        e = self.assertRaises(usage.UsageError, parse, *argv)
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_server_with_raw_listen(self) -> None:
        config: NodeConfig = parse(
            *SERVER, "--raw-listen", "tcp:0", "--raw-listen", "tcp:0:interface=127.0.0.2"
        )["config"]
        self.assertEqual(
            (config.app, config.settings.raw_listen), ("chat", ("tcp:0", "tcp:0:interface=127.0.0.2"))
        )

    def test_raw_only_server(self) -> None:
        config = parse("--topology", "many-to-one", "--raw-listen", "tcp:0")["config"]
        self.assertEqual((config.role, config.listen, config.settings.raw_listen), ("server", (), ("tcp:0",)))

    def test_raw_listen_server_role_only(self) -> None:
        self.assertUsage((*CLIENT, "--raw-listen", "tcp:0"), "--raw-listen", "server")

    def test_raw_listen_many_to_one_only(self) -> None:
        self.assertUsage(("--listen", "tcp:0", "--raw-listen", "tcp:0"), "--raw-listen", "many-to-one")

    def test_raw_listen_bad_endpoint(self) -> None:
        self.assertUsage((*SERVER, "--raw-listen", "nonsense:1"), "--raw-listen")

    def test_groups(self) -> None:
        config = parse(*CLIENT, "--group", "ops", "--group", "eu-west.1")["config"]
        self.assertEqual(config.settings.groups, ("ops", "eu-west.1"))
        node = build_node(config, Clock())
        self.assertEqual(node.session_settings.hello.extra, {"groups": ["ops", "eu-west.1"]})

    def test_bad_group_names(self) -> None:
        self.assertUsage((*CLIENT, "--group", "has space"), "--group", "bad group name")
        self.assertUsage((*CLIENT, "--group", "-x"), "--group")
        self.assertUsage((*CLIENT, "--group", "ops", "--group", "ops"), "--group", "twice")

    def test_group_clients_only(self) -> None:
        self.assertUsage((*SERVER, "--group", "ops"), "--group")
        self.assertUsage(
            ("--role", "client", "--connect", "tcp:h:1", "--group", "ops"), "--group", "many-to-one"
        )

    def test_client_dials_exactly_one_server(self) -> None:
        self.assertUsage(("--topology", "many-to-one", "--role", "client"), "--connect")
        self.assertUsage((*CLIENT, "--connect", "tcp:127.0.0.1:8751"), "--connect", "exactly one")

    def test_server_needs_an_endpoint(self) -> None:
        self.assertUsage(("--topology", "many-to-one"), "--listen")

    def test_backpressure_options(self) -> None:
        config = parse(*SERVER, "--max-backlog", "65536", "--slow-consumer-deadline", "2.5")["config"]
        self.assertEqual((config.max_backlog, config.slow_consumer_deadline), (65536, 2.5))
        node = build_node(config, Clock())
        settings = node.session_settings
        self.assertEqual((settings.max_backlog, settings.slow_consumer_deadline), (65536, 2.5))
        default = parse(*SERVER)["config"]
        self.assertEqual((default.max_backlog, default.slow_consumer_deadline), (4 * 1024 * 1024, 10.0))

    def test_bad_backpressure_options(self) -> None:
        self.assertUsage((*SERVER, "--max-backlog", "lots"), "--max-backlog")
        self.assertUsage((*SERVER, "--max-backlog", "-1"), "--max-backlog")
        self.assertUsage((*SERVER, "--slow-consumer-deadline", "0"), "--slow-consumer-deadline")

    def test_build_listens_on_both_kinds(self) -> None:
        config = parse(*SERVER, "--raw-listen", "tcp:0:interface=127.0.0.1")["config"]
        node = build_node(config, Clock())
        self.assertEqual(len(node.listeners), 2)
        self.assertIsInstance(node.listeners[1].factory.wrappedFactory, RawLineFactory)
        hub = hub_of(node)
        assert hub is not None
        self.assertEqual(hub.raw_listen, ("tcp:0:interface=127.0.0.1",))
        self.assertEqual(hub.raw_listeners, node.listeners[1:])

    def test_build_client_dials(self) -> None:
        node = build_node(parse(*CLIENT)["config"], Clock())
        self.assertEqual((len(node.clients), node.listeners), (1, []))


# --- Corked fan-out ----------------------------------------------------------------------


class CorkTests(_StarTestCase):
    """
    Node.broadcast corks its writes (ManagedConnection.cork): the broadcasts of
    one reactor turn leave in one write per connection, in order with every
    other write.
    """

    def setUp(self) -> None:
        super().setUp()
        self.star.add("alice")
        self.star.add("bob")
        self.session = self.star.session_of("alice")
        self.tap = WireTap(self.star.link_of("alice").server, self.clock)

    def writes(self) -> list[bytes]:
        return [data for _, kind, data in self.tap.events if kind == "write"]

    def test_a_burst_leaves_in_one_write(self) -> None:
        for number in range(10):
            self.star.server.broadcast(b"burst %d" % number)
        self.assertEqual(self.writes(), [])
        self.clock.advance(0)
        [write] = self.writes()
        self.assertEqual(FrameDecoder().feed(write), [(MessageType.DATA, b"burst %d" % n) for n in range(10)])
        self.assertEqual(self.star.received("alice"), [b"burst %d" % n for n in range(10)])
        self.assertEqual(
            self.session.record.bytes_out, len(write) + len(self.star.server.session_settings.hello_frame)
        )

    def test_group_broadcast_corked_too(self) -> None:
        self.star.hub.broadcast(b"one")
        self.star.hub.broadcast(b"two", group="nobody")
        self.star.hub.broadcast(b"three")
        self.clock.advance(0)
        self.assertEqual(len(self.writes()), 1)

    def test_other_writes_keep_their_order(self) -> None:
        """A direct write sends what is corked first, in the same write."""
        self.star.server.broadcast(b"first")
        self.session.send(b"second")
        [write] = self.writes()
        self.assertEqual(
            FrameDecoder().feed(write), [(MessageType.DATA, b"first"), (MessageType.DATA, b"second")]
        )
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"first", b"second"])

    def test_long_burst_written_within_the_turn(self) -> None:
        """Past 64 KiB corked, the frames go to Twisted at once, so its pause signal still applies."""
        for _ in range(100):
            self.star.server.broadcast(MESSAGE)
        self.assertGreaterEqual(len(self.writes()), 1)
        self.assertTrue(all(len(write) >= manager.CORK_LIMIT for write in self.writes()))
        self.clock.advance(0)
        self.assertEqual(self.star.app("alice").received, 100)

    def test_close_sends_what_is_corked_first(self) -> None:
        self.star.server.broadcast(b"last words")
        self.session.close()
        advance_by(self.clock, 0)
        self.assertEqual(self.tap.kinds(), ["DATA", "BYE", "fin"])
        self.assertEqual(self.star.received("alice"), [b"last words"])

    def test_reset_drops_what_is_corked(self) -> None:
        self.star.server.broadcast(b"never sent")
        self.session.reset()
        self.clock.advance(0)
        self.assertEqual(self.tap.kinds(), ["rst"])
        # Nothing was written after the RST, so nothing more is counted.
        self.assertEqual(self.session.record.bytes_out, len(self.star.server.session_settings.hello_frame))
