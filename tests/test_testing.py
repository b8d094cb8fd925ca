"""
Tests for :mod:`netmodels.testing`, the in-memory stream network, and the
small harness the manager, session, reconnect and node tests share.

The harness (everything above the first test class) builds nodes on a
:class:`~netmodels.testing.MemoryNetwork` driven by a
:class:`~twisted.internet.task.Clock`, steps the clock through every timer
in order, and taps what a transport writes. It holds no test cases, so the
modules that import it collect none twice.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.connection import ConnectionRecord
from netmodels.core.frames import FrameDecoder, Hello, MessageType, encode_hello
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.runtime.application import Application
from netmodels.runtime.dialer import Dialer
from netmodels.runtime.interfaces import IPeer, ITopology
from netmodels.runtime.manager import ConnectionManager
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.session import Session, SessionFactory, encode_bye
from netmodels.testing import MemoryLink, MemoryNetwork, MemoryTransport
from netmodels.topologies.client_server import ClientServer

# --- Shared constants -------------------------------------------------------

#: The listening address every harness server uses on the memory network.
ADDRESS = "server:1"

#: A duration just short of a deadline, for the "not yet" half of a check.
EPSILON = 0.001

#: Keepalive for harness nodes: probe after 10 s of silence, every 5 s, 3 times.
IDLE = 10.0
INTERVAL = 5.0
PROBES = 3
KEEPALIVE = KeepaliveSettings(IDLE, INTERVAL, PROBES)

#: Seconds of silence after which a peer must be declared dead.
KEEPALIVE_BOUND = IDLE + INTERVAL * PROBES

#: NodeConfig's defaults, named here so tests can reason about them.
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0

#: ConnectionManager's default: seconds an orderly close may take before RST.
CLOSE_DEADLINE = 5.0

#: A frame limit small enough to exceed cheaply in tests.
MAX_FRAME = 1024

#: The node ids of the harness pair.
SERVER_ID = "server"
CLIENT_ID = "client"

#: Where MemoryNetwork puts every client.
CLIENT_HOST = "10.0.0.1"

#: A latency that is exact in binary floating point (0.25 = 2 ** -2).
LATENCY = 0.25

#: Runaway guard for advance_to: no test schedules anywhere near this many timers.
_MAX_STEPS = 1_000_000


# --- Clock helpers ----------------------------------------------------------


def advance_to(clock: Clock, when: float) -> None:
    """
    Move ``clock`` to ``when``, stopping at each scheduled call's own time so
    every timer runs with ``seconds()`` equal to its due time (a single
    ``Clock.advance(big)`` would run them all at the end time).
    """
    for _ in range(_MAX_STEPS):
        now = clock.seconds()
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= when]
        if not due:
            break
        clock.advance(max(0.0, min(due) - now))
    else:  # pragma: no cover - a runaway timer loop in the code under test
        raise AssertionError(f"timers still due at {when} after {_MAX_STEPS} steps")
    if when > clock.seconds():
        clock.advance(when - clock.seconds())


def advance_by(clock: Clock, seconds: float) -> None:
    """``advance_to(clock, clock.seconds() + seconds)``."""
    advance_to(clock, clock.seconds() + seconds)


# --- Observing the wire -----------------------------------------------------


class WireTap:
    """
    Record what one :class:`MemoryTransport` puts on the wire, and when: each
    ``write`` (decoded into frames), the FIN of the first ``loseConnection``
    and the RST of ``abortConnection``. Install it on a live transport.
    """

    def __init__(self, transport: MemoryTransport, clock: IReactorTime) -> None:
        self.clock = clock
        #: ``(time, "write", bytes)``, ``(time, "fin", b"")`` or ``(time, "rst", b"")``.
        self.events: list[tuple[float, str, bytes]] = []
        self._decoder = FrameDecoder(2**31)
        #: ``(time, message type, body)`` of every whole frame written.
        self.frames: list[tuple[float, int, bytes]] = []
        write, lose, abort = transport.write, transport.loseConnection, transport.abortConnection

        def tapped_write(data: bytes) -> None:
            now = clock.seconds()
            self.events.append((now, "write", data))
            self.frames.extend((now, kind, body) for kind, body in self._decoder.feed(data))
            write(data)

        def tapped_lose() -> None:
            # Only a FIN that goes out: a repeated loseConnection is a no-op.
            if transport.connected and not transport.disconnecting:
                self.events.append((clock.seconds(), "fin", b""))
            lose()

        def tapped_abort() -> None:
            if transport.connected:
                self.events.append((clock.seconds(), "rst", b""))
            abort()

        transport.write = tapped_write  # type: ignore[method-assign]
        transport.loseConnection = tapped_lose  # type: ignore[method-assign]
        transport.abortConnection = tapped_abort  # type: ignore[method-assign]

    def times_of(self, message_type: int) -> list[float]:
        """When each frame of ``message_type`` was written."""
        return [when for when, kind, _ in self.frames if kind == message_type]

    def kinds(self) -> list[str]:
        """The event kinds in order, writes named by their frames' message types."""
        names: list[str] = []
        decoder = FrameDecoder(2**31)
        for _, kind, data in self.events:
            if kind == "write":
                names.extend(MessageType(t).name for t, _ in decoder.feed(data))
            else:
                names.append(kind)
        return names


class RawPeer(Protocol):
    """A hand-driven peer: records what it receives and writes what a test says."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.frames: list[tuple[int, bytes]] = []
        self.lost: Failure | None = None
        self._decoder = FrameDecoder(2**31)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.frames.extend(self._decoder.feed(data))

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason

    def frame_types(self) -> list[int]:
        return [kind for kind, _ in self.frames]


class RecordingFactory(Factory):
    """Builds ``protocol`` instances and keeps every one it built."""

    def __init__(self, protocol: Callable[[], Protocol] = RawPeer) -> None:
        self.make = protocol
        self.built: list[Any] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self.make()
        protocol.factory = self
        self.built.append(protocol)
        return protocol


def raw_hello(
    role: str = "client", topology: str = "client-server", node_id: str = "raw", **fields: Any
) -> bytes:
    """The HELLO frame a well-formed peer of ``role`` would send."""
    return encode_hello(Hello(node_id=node_id, topology=topology, role=role, keepalive=KEEPALIVE, **fields))


# --- Applications -----------------------------------------------------------


class RecordingApplication(Application):
    """Records every callback; answers requests with ``answer(payload)``."""

    def __init__(self, answer: Callable[[bytes], Any] = lambda payload: payload) -> None:
        self.answer = answer
        self.ready: list[IPeer] = []
        self.messages: list[bytes] = []
        self.requests: list[bytes] = []
        self.lost: list[ConnectionRecord] = []

    def peer_ready(self, peer: IPeer) -> None:
        self.ready.append(peer)

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        self.messages.append(payload)

    def request_received(self, peer: IPeer, payload: bytes) -> Any:
        self.requests.append(payload)
        return self.answer(payload)

    def peer_lost(self, peer: IPeer, record: ConnectionRecord) -> None:
        self.lost.append(record)


class HeldAnswers(RecordingApplication):
    """Answers every request with a Deferred the test fires (or never fires)."""

    def __init__(self) -> None:
        self.held: list[tuple[bytes, defer.Deferred[bytes]]] = []
        super().__init__(self._hold)

    def _hold(self, payload: bytes) -> defer.Deferred[bytes]:
        deferred: defer.Deferred[bytes] = defer.Deferred()
        self.held.append((payload, deferred))
        return deferred


class EchoMessages(RecordingApplication):
    """Sends every DATA message straight back."""

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        super().message_received(peer, payload)
        peer.send(payload)


# --- Nodes on a memory network ----------------------------------------------


def make_node(
    clock: IReactorTime,
    role: str,
    node_id: str,
    application: Application | None = None,
    topology: ITopology | None = None,
    **config: Any,
) -> Node:
    """A node with the harness keepalive, no application timer and ``config`` on top."""
    settings = NodeConfig(
        role=role,
        node_id=node_id,
        app="test",
        keepalive=KEEPALIVE,
        interval=0,
        **config,
    )
    return Node(settings, topology or ClientServer(), application or RecordingApplication(), clock)


def with_hello(node: Node, **changes: Any) -> SessionFactory:
    """A session factory for ``node`` whose HELLO differs by ``changes`` (e.g. ``version``)."""
    settings = node.session_settings
    return SessionFactory(attrs.evolve(settings, hello=attrs.evolve(settings.hello, **changes)), node.clock)


class Pair:
    """
    A server node listening on :data:`ADDRESS` and a client node dialing it
    with a :class:`Dialer` (jitter drawn as 0, so delays are the
    policy's bases), both on one :class:`MemoryNetwork`.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        server_app: Application | None = None,
        client_app: Application | None = None,
        server_role: str = "server",
        server_topology: ITopology | None = None,
        client_topology: ITopology | None = None,
        client_factory: Callable[[Node], Factory] | None = None,
        listen: bool = True,
        server_config: dict[str, Any] | None = None,
        client_config: dict[str, Any] | None = None,
    ) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock, latency)
        self.server_app = server_app or RecordingApplication()
        self.client_app = client_app or RecordingApplication()
        self.server = make_node(
            self.clock,
            server_role,
            SERVER_ID,
            self.server_app,
            server_topology,
            **(server_config or {}),
        )
        self.client = make_node(
            self.clock, "client", CLIENT_ID, self.client_app, client_topology, **(client_config or {})
        )
        self.port: Any = None
        if listen:
            self.listen()
        factory = (client_factory or (lambda node: node.session_factory()))(self.client)
        self.dialer = Dialer(
            self.client.manager,
            self.network.client_endpoint(ADDRESS),
            factory,
            ADDRESS,
            self.clock,
            draw=lambda: 0.0,
        )
        self.dialer.setServiceParent(self.client)

    def listen(self) -> None:
        """Start accepting on :data:`ADDRESS`, as ``Node.listen`` would (BYE on rejection)."""
        factory = self.server.manager.wrap_factory(
            self.server.session_factory(),
            rejection_payload=lambda reason, detail: encode_bye(reason, detail),
        )
        listening = self.network.server_endpoint(ADDRESS).listen(factory)
        self.port = _result(listening)

    def start(self) -> None:
        """Start both nodes and deliver everything due now (the handshake)."""
        self.server.startService()
        self.client.startService()
        self.clock.advance(0)

    def stop(self) -> None:
        """Stop both nodes and let every close, including a FIN-then-RST, finish."""
        stopped = [self.client.stopService(), self.server.stopService()]
        if self.port is not None:
            self.port.stopListening()
        advance_by(self.clock, CLOSE_DEADLINE)
        for deferred in stopped:
            _result(deferred)

    @property
    def link(self) -> MemoryLink:
        """The most recent connection's link."""
        return self.network.links[-1]

    def client_session(self) -> Session:
        (session,) = self.client.peers()
        return session

    def server_session(self) -> Session:
        (session,) = self.server.peers()
        return session

    def client_record(self) -> ConnectionRecord:
        return only_record(self.client.manager)

    def server_record(self) -> ConnectionRecord:
        return only_record(self.server.manager)

    def connect_raw(self) -> RawPeer:
        """A :class:`RawPeer` connected to the server node (delivers nothing yet)."""
        connecting = self.network.client_endpoint(ADDRESS).connect(Factory.forProtocol(RawPeer))
        peer = _result(connecting)
        assert isinstance(peer, RawPeer)
        return peer


def only_record(manager: ConnectionManager) -> ConnectionRecord:
    """The manager's single record; fails if there are none or several."""
    records = list(manager.records())
    if len(records) != 1:
        raise AssertionError(f"expected one record, got {records!r}")
    return records[0]


def _result(deferred: defer.Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (raising its failure)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    if not results:
        raise AssertionError(f"{deferred!r} has not fired")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# --- Tests of MemoryNetwork -------------------------------------------------


class _NetworkTestCase(SynchronousTestCase):
    """A bare memory network with a raw listener on :data:`ADDRESS`."""

    latency = 0.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock, self.latency)
        self.servers = RecordingFactory()
        self.port = self.successResultOf(self.network.server_endpoint(ADDRESS).listen(self.servers))

    def connect(self) -> tuple[RawPeer, RawPeer]:
        """A connected (client, server) pair of raw peers."""
        client = self.successResultOf(
            self.network.client_endpoint(ADDRESS).connect(Factory.forProtocol(RawPeer))
        )
        return client, self.servers.built[-1]


class LatencyTests(_NetworkTestCase):
    """Data crosses a link exactly ``latency`` seconds after it is written."""

    latency = LATENCY

    def test_not_delivered_before_latency(self) -> None:
        """A write has not arrived just before ``latency`` has passed."""
        client, server = self.connect()
        client.transport.write(b"ping")
        advance_to(self.clock, LATENCY - EPSILON)
        self.assertEqual(bytes(server.received), b"")

    def test_delivered_at_latency(self) -> None:
        """A write arrives once exactly ``latency`` has passed."""
        client, server = self.connect()
        client.transport.write(b"ping")
        advance_to(self.clock, LATENCY)
        self.assertEqual(bytes(server.received), b"ping")

    def test_each_write_has_its_own_latency(self) -> None:
        """
        A write made while an earlier one is in flight still takes the full
        latency: it does not ride along with the earlier delivery.
        """
        client, server = self.connect()
        client.transport.write(b"first")
        later = LATENCY / 2
        advance_to(self.clock, later)
        client.transport.write(b"second")
        advance_to(self.clock, LATENCY)
        self.assertEqual(bytes(server.received), b"first")
        advance_to(self.clock, later + LATENCY)
        self.assertEqual(bytes(server.received), b"firstsecond")

    def test_fin_follows_data(self) -> None:
        """A close after a write arrives after the data, one latency later."""
        client, server = self.connect()
        client.transport.write(b"last words")
        client.transport.loseConnection()
        advance_to(self.clock, LATENCY - EPSILON)
        self.assertIsNone(server.lost)
        advance_to(self.clock, LATENCY)
        self.assertEqual(bytes(server.received), b"last words")
        self.assertIsInstance(server.lost.value, error.ConnectionDone)


class BlackholeTests(_NetworkTestCase):
    """A blackholed link holds data, in order, until it heals."""

    #: Far longer than any retransmission a test would wait for.
    SILENCE = 1000.0

    def test_blackhole_holds_data(self) -> None:
        """Nothing written into a blackhole arrives, however long one waits."""
        client, server = self.connect()
        self.network.links[0].blackhole()
        client.transport.write(b"lost?")
        advance_to(self.clock, self.SILENCE)
        self.assertEqual(bytes(server.received), b"")

    def test_heal_delivers_held_data_in_order(self) -> None:
        """After heal, everything written into the blackhole arrives, in order."""
        client, server = self.connect()
        link = self.network.links[0]
        link.blackhole()
        for chunk in (b"a", b"b", b"c"):
            client.transport.write(chunk)
        server.transport.write(b"reply")
        advance_to(self.clock, self.SILENCE)
        link.heal()
        self.clock.advance(0)
        self.assertEqual(bytes(server.received), b"abc")
        self.assertEqual(bytes(client.received), b"reply")

    def test_blackhole_holds_data_already_in_flight(self) -> None:
        """A write made just before the blackhole, not yet delivered, is held too."""
        client, server = self.connect()
        client.transport.write(b"in flight")
        self.network.links[0].blackhole()
        advance_to(self.clock, self.SILENCE)
        self.assertEqual(bytes(server.received), b"")


class FaultTests(_NetworkTestCase):
    """FIN, RST and kernel errors reach each side as on a real network."""

    def test_close_gives_peer_eof(self) -> None:
        """close(side) gives the other side ConnectionDone after the data before it."""
        client, server = self.connect()
        server.transport.write(b"bye")
        self.network.links[0].close(1)
        self.clock.advance(0)
        self.assertEqual(bytes(client.received), b"bye")
        self.assertIsInstance(client.lost.value, error.ConnectionDone)

    def test_reset_gives_peer_connection_lost(self) -> None:
        """reset(side): that side sees ConnectionAborted, the other ConnectionLost at once."""
        client, server = self.connect()
        self.network.links[0].reset(1)
        self.assertIsInstance(server.lost.value, error.ConnectionAborted)
        self.assertIsInstance(client.lost.value, error.ConnectionLost)

    def test_reset_drops_unsent_data(self) -> None:
        """Data not yet delivered when an RST goes out never arrives."""
        client, server = self.connect()
        server.transport.write(b"never seen")
        self.network.links[0].reset(1)
        self.clock.advance(0)
        self.assertEqual(bytes(client.received), b"")

    def test_kill_ends_only_that_side(self) -> None:
        """kill(side, errno) ends that side with the errno; the other stays connected."""
        client, server = self.connect()
        self.network.links[0].kill(0, errno.EHOSTUNREACH)
        self.assertIsInstance(client.lost.value, error.ConnectionLost)
        self.assertIn("EHOSTUNREACH", str(client.lost.value))
        self.assertIsNone(server.lost)


class ConnectFailureTests(_NetworkTestCase):
    """refuse() and unreachable() make connects fail as the kernel would."""

    def connect_failure(self) -> Failure:
        return self.failureResultOf(
            self.network.client_endpoint(ADDRESS).connect(Factory.forProtocol(RawPeer))
        )

    def test_refused(self) -> None:
        """A refused address fails connects with ConnectionRefusedError."""
        self.network.refuse(ADDRESS)
        self.connect_failure().trap(error.ConnectionRefusedError)

    def test_no_listener_is_refused(self) -> None:
        """An address nobody listens on refuses connects."""
        connecting = self.network.client_endpoint("nobody:1").connect(Factory.forProtocol(RawPeer))
        self.failureResultOf(connecting, error.ConnectionRefusedError)

    def test_refusal_lifted(self) -> None:
        """refuse(address, False) lets connects through again."""
        self.network.refuse(ADDRESS)
        self.network.refuse(ADDRESS, False)
        client, _server = self.connect()
        self.assertTrue(client.transport.connected)

    def test_unreachable(self) -> None:
        """An unreachable address fails connects with NoRouteError."""
        self.network.unreachable(ADDRESS)
        self.connect_failure().trap(error.NoRouteError)

    def test_unreachable_carries_ehostunreach(self) -> None:
        """
        An unreachable connect carries errno EHOSTUNREACH, as the
        ``unreachable`` docstring promises and a real socket's error does.
        """
        self.network.unreachable(ADDRESS)
        self.assertEqual(self.connect_failure().value.osError, errno.EHOSTUNREACH)

    def test_unreachable_lifted(self) -> None:
        """unreachable(address, False) lets connects through again."""
        self.network.unreachable(ADDRESS)
        self.network.unreachable(ADDRESS, False)
        client, _server = self.connect()
        self.assertTrue(client.transport.connected)

    def test_listen_twice_is_address_in_use(self) -> None:
        """A second listener on one address fails with EADDRINUSE."""
        failure = self.failureResultOf(
            self.network.server_endpoint(ADDRESS).listen(RecordingFactory()),
            error.CannotListenError,
        )
        self.assertEqual(failure.value.socketError.errno, errno.EADDRINUSE)

    def test_stop_listening_refuses(self) -> None:
        """After stopListening, connects are refused."""
        self.successResultOf(self.port.stopListening())
        self.connect_failure().trap(error.ConnectionRefusedError)


class HarnessTests(SynchronousTestCase):
    """The shared harness does what the other modules rely on."""

    def test_advance_to_runs_each_timer_at_its_time(self) -> None:
        """advance_to runs every timer with seconds() equal to its due time."""
        clock = Clock()
        seen: list[float] = []
        for delay in (3.0, 1.0, 2.0):
            clock.callLater(delay, lambda: seen.append(clock.seconds()))
        advance_to(clock, 10.0)
        self.assertEqual((seen, clock.seconds()), ([1.0, 2.0, 3.0], 10.0))

    def test_pair_handshakes(self) -> None:
        """A started Pair has one ready session on each side, and stops cleanly."""
        pair = Pair()
        pair.start()
        self.assertEqual(
            (pair.client_session().node_id, pair.server_session().node_id), (SERVER_ID, CLIENT_ID)
        )
        pair.stop()
        self.assertEqual(pair.clock.getDelayedCalls(), [])
