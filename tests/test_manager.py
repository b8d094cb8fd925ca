"""
Tests for :mod:`netmodels.runtime.manager`: every close is recorded with the right
reason, initiator and errno; closing on purpose follows the close policy;
limits turn connections away; counters, history, record order and observers.

The manager is driven directly, with plain protocols on a
:class:`~netmodels.testing.MemoryNetwork` (no sessions), and its wall clock
is the test's :class:`~twisted.internet.task.Clock`.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer, providedBy

from netmodels.core.connection import (
    DEFAULT_CLOSE_POLICY,
    CloseMode,
    ConnectionLimits,
    ConnectionRecord,
    ConnectionState,
    Direction,
)
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime import manager as manager_module
from netmodels.runtime.manager import ConnectFailed, ConnectionManager, ManagedConnection
from netmodels.runtime.session import encode_bye
from netmodels.testing import MemoryNetwork
from netmodels.transports.interfaces import IConnectionObserver
from tests.test_testing import (
    ADDRESS,
    CLIENT_HOST,
    CLOSE_DEADLINE,
    EPSILON,
    RawPeer,
    RecordingFactory,
    advance_to,
)

#: Where the stuck-transport tests pretend the peer is.
PEER_ADDRESS = IPv4Address("TCP", "192.0.2.7", 4321)

#: A close deadline shorter than the default, for close(deadline=...).
SHORT_DEADLINE = 1.0


class MarkOpen(RawPeer):
    """A raw peer that reports its (pretend) handshake done as soon as it connects."""

    def connectionMade(self) -> None:
        self.transport.mark_open("peer-node")


class Explodes(RawPeer):
    """A protocol whose data handling has a bug: it raises on ``TRIGGER``."""

    TRIGGER = b"boom"

    def dataReceived(self, data: bytes) -> None:
        if data == self.TRIGGER:
            raise ValueError("boom")
        super().dataReceived(data)


@implementer(IStreamClientEndpoint)
class HangingEndpoint:
    """A connect that never completes (until cancelled)."""

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.Deferred()


class StuckTransport(StringTransport):
    """A transport whose FIN never completes: loseConnection does nothing more."""

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER_ADDRESS)
        self.protocol: Protocol | None = None
        self.aborted_at: float | None = None
        self.clock: Clock | None = None

    def abortConnection(self) -> None:
        assert self.protocol is not None and self.clock is not None
        self.aborted_at = self.clock.seconds()
        protocol, self.protocol = self.protocol, None
        protocol.connectionLost(Failure(error.ConnectionAborted()))


class _ManagerTestCase(SynchronousTestCase):
    """A server manager listening on ADDRESS and a client manager, on one network."""

    limits = ConnectionLimits()
    history = 256
    server_protocol: Any = RawPeer

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.server = ConnectionManager(
            self.clock, self.limits, self.history, wall_clock=self.clock.seconds, name="server"
        )
        self.client = ConnectionManager(
            self.clock, history=self.history, wall_clock=self.clock.seconds, name="client"
        )
        self.server_protocols = RecordingFactory(self.server_protocol)
        self.successResultOf(
            self.network.server_endpoint(ADDRESS).listen(
                self.server.wrap_factory(
                    self.server_protocols,
                    rejection_payload=lambda reason, detail: encode_bye(reason, detail),
                )
            )
        )
        self.client_protocols = RecordingFactory(RawPeer)

    def connect(self) -> tuple[ManagedConnection, ManagedConnection]:
        """A (client, server) pair of managed connections, data delivered."""
        known = set(self.server.live)
        client = self.successResultOf(
            self.client.connect(self.network.client_endpoint(ADDRESS), self.client_protocols, ADDRESS)
        )
        (new,) = set(self.server.live) - known
        server = self.server.live[new]
        self.clock.advance(0)
        return client, server

    def assertClosure(
        self,
        record: ConnectionRecord,
        reason: CloseReason,
        initiator: Initiator,
        errno_name: str | None = None,
    ) -> None:
        """``record`` is closed with exactly this reason, initiator and errno."""
        self.assertEqual(
            (record.state, record.reason, record.initiator, record.errno),
            (ConnectionState.CLOSED, reason, initiator, errno_name),
        )


class PeerInitiatedCloseTests(_ManagerTestCase):
    """A close the peer or the network decided is recorded as remote (or by errno)."""

    def test_peer_fin_is_clean_remote(self) -> None:
        """The peer's FIN is recorded clean, initiated remotely, without errno."""
        client, _server = self.connect()
        self.network.links[0].close(1)
        self.clock.advance(0)
        self.assertClosure(client.record, CloseReason.CLEAN, Initiator.REMOTE)

    def test_peer_rst_is_reset_remote(self) -> None:
        """The peer's RST is recorded reset, remote, ECONNRESET."""
        client, _server = self.connect()
        self.network.links[0].reset(1)
        self.assertClosure(client.record, CloseReason.RESET, Initiator.REMOTE, "ECONNRESET")

    def test_kernel_timeout_is_timeout_local(self) -> None:
        """A kernel keepalive expiry (ETIMEDOUT) is recorded timeout, local, ETIMEDOUT."""
        client, _server = self.connect()
        self.network.links[0].kill(0, errno.ETIMEDOUT)
        self.assertClosure(client.record, CloseReason.TIMEOUT, Initiator.LOCAL, "ETIMEDOUT")

    def test_host_unreachable_is_unreachable_remote(self) -> None:
        """An EHOSTUNREACH on an open connection is recorded unreachable, remote."""
        client, _server = self.connect()
        self.network.links[0].kill(0, errno.EHOSTUNREACH)
        self.assertClosure(client.record, CloseReason.UNREACHABLE, Initiator.REMOTE, "EHOSTUNREACH")

    def test_other_side_unaffected_by_kill(self) -> None:
        """A kill ends only the killed side's record."""
        _client, server = self.connect()
        self.network.links[0].kill(0, errno.ETIMEDOUT)
        self.assertFalse(server.record.closed)


class LocalCloseTests(_ManagerTestCase):
    """A close this side decided is recorded local, and the peer sees what was sent."""

    def test_reset_is_aborted_local(self) -> None:
        """reset() is recorded aborted, initiated locally, without errno."""
        client, _server = self.connect()
        self.client.reset(client)
        self.assertClosure(client.record, CloseReason.ABORTED, Initiator.LOCAL)

    def test_reset_reaches_peer_as_reset(self) -> None:
        """After our reset(), the peer records reset, remote, ECONNRESET."""
        client, server = self.connect()
        self.client.reset(client)
        self.assertClosure(server.record, CloseReason.RESET, Initiator.REMOTE, "ECONNRESET")

    def test_end_records_reason_and_detail(self) -> None:
        """end(reason, detail) records that reason and detail, initiated locally."""
        client, _server = self.connect()
        client.end(CloseReason.TIMEOUT, "peer went quiet")
        self.assertClosure(client.record, CloseReason.TIMEOUT, Initiator.LOCAL)
        self.assertEqual(client.record.detail, "peer went quiet")

    def test_default_policy(self) -> None:
        """The default policy: RST for a dead peer or an abort, FIN (then RST) otherwise."""
        self.assertEqual(
            dict(DEFAULT_CLOSE_POLICY),
            {
                CloseReason.CLEAN: CloseMode.FIN_THEN_ABORT,
                CloseReason.ABORTED: CloseMode.RST,
                CloseReason.TIMEOUT: CloseMode.RST,
                CloseReason.PROTOCOL_ERROR: CloseMode.FIN_THEN_ABORT,
                CloseReason.REJECTED: CloseMode.FIN_THEN_ABORT,
            },
        )

    def test_timeout_closes_with_rst(self) -> None:
        """end(TIMEOUT) sends RST: the peer records reset at once."""
        client, server = self.connect()
        client.end(CloseReason.TIMEOUT)
        self.assertClosure(server.record, CloseReason.RESET, Initiator.REMOTE, "ECONNRESET")

    def test_protocol_error_closes_with_fin(self) -> None:
        """end(PROTOCOL_ERROR) sends FIN: the peer records a clean close."""
        client, server = self.connect()
        client.end(CloseReason.PROTOCOL_ERROR, "bad frame")
        self.clock.advance(0)
        self.assertClosure(server.record, CloseReason.CLEAN, Initiator.REMOTE)
        self.assertClosure(client.record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL)

    def test_finished_fin_leaves_no_abort_timer(self) -> None:
        """Once a FIN close completes, its abort deadline is cancelled."""
        client, _server = self.connect()
        client.end(CloseReason.PROTOCOL_ERROR, "bad frame")
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_first_decision_wins(self) -> None:
        """A second end() does not replace the reason and detail of the first."""
        client, _server = self.connect()
        client.end(CloseReason.PROTOCOL_ERROR, "first")
        client.end(CloseReason.TIMEOUT, "second")
        self.clock.advance(0)
        self.assertClosure(client.record, CloseReason.PROTOCOL_ERROR, Initiator.LOCAL)
        self.assertEqual(client.record.detail, "first")

    def test_later_end_escalates_fin_to_rst(self) -> None:
        """A later end() asking for RST aborts a FIN close still under way."""
        client, server = self.connect()
        client.end(CloseReason.PROTOCOL_ERROR, "first")
        client.end(CloseReason.TIMEOUT, "second")
        self.assertClosure(server.record, CloseReason.RESET, Initiator.REMOTE, "ECONNRESET")

    def test_closing_discards_incoming_data(self) -> None:
        """While our close is under way, what the peer still sends is not delivered."""
        client, server = self.connect()
        client.end(CloseReason.PROTOCOL_ERROR, "bad frame")
        server.write(b"too late")
        self.clock.advance(0)
        self.assertEqual(bytes(self.client_protocols.built[0].received), b"")


class StuckCloseTests(SynchronousTestCase):
    """FIN then RST: a close that does not finish is aborted after the deadline."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.manager = ConnectionManager(
            self.clock, wall_clock=self.clock.seconds, close_deadline=CLOSE_DEADLINE
        )
        self.protocols = RecordingFactory(RawPeer)
        self.connection = self.manager.wrap_factory(self.protocols).buildProtocol(PEER_ADDRESS)
        self.transport = StuckTransport()
        self.transport.protocol = self.connection
        self.transport.clock = self.clock
        self.connection.makeConnection(self.transport)

    def test_not_aborted_before_deadline(self) -> None:
        """Just before the close deadline the connection is still closing, not aborted."""
        self.connection.close()
        advance_to(self.clock, CLOSE_DEADLINE - EPSILON)
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.aborted_at)
        self.assertEqual(self.connection.record.state, ConnectionState.CLOSING)

    def test_aborted_at_deadline(self) -> None:
        """At the close deadline the connection is aborted (RST)."""
        self.connection.close()
        advance_to(self.clock, CLOSE_DEADLINE)
        self.assertEqual(self.transport.aborted_at, CLOSE_DEADLINE)

    def test_recorded_aborted_with_write_buffer_detail(self) -> None:
        """The aborted close is recorded aborted, local, saying the buffer did not drain."""
        self.connection.close()
        advance_to(self.clock, CLOSE_DEADLINE)
        record = self.connection.record
        self.assertEqual(
            (record.state, record.reason, record.initiator),
            (ConnectionState.CLOSED, CloseReason.ABORTED, Initiator.LOCAL),
        )
        self.assertEqual(record.detail, f"write buffer did not drain within {CLOSE_DEADLINE:g} s")

    def test_abort_keeps_non_clean_reason(self) -> None:
        """A protocol-error close that has to be aborted stays recorded as protocol-error."""
        self.connection.end(CloseReason.PROTOCOL_ERROR, "bad frame")
        advance_to(self.clock, CLOSE_DEADLINE)
        record = self.connection.record
        self.assertEqual((record.reason, record.detail), (CloseReason.PROTOCOL_ERROR, "bad frame"))

    def test_close_with_own_deadline(self) -> None:
        """close(deadline) aborts after that deadline instead of the manager's."""
        self.manager.close(self.connection, SHORT_DEADLINE)
        advance_to(self.clock, SHORT_DEADLINE - EPSILON)
        self.assertIsNone(self.transport.aborted_at)
        advance_to(self.clock, SHORT_DEADLINE)
        self.assertEqual(self.transport.aborted_at, SHORT_DEADLINE)

    def test_no_timer_left_after_abort(self) -> None:
        """After the abort nothing remains scheduled."""
        self.connection.close()
        advance_to(self.clock, CLOSE_DEADLINE)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectFailureTests(_ManagerTestCase):
    """A failed connect is a record of its own, with the reason of the failure."""

    def failed_connect(self, address: str = "nobody:1") -> ConnectFailed:
        failure = self.failureResultOf(
            self.client.connect(self.network.client_endpoint(address), self.client_protocols, address),
            ConnectFailed,
        )
        assert isinstance(failure.value, ConnectFailed)
        return failure.value

    def test_refused_record(self) -> None:
        """A refused connect is recorded failed, refused, remote, ECONNREFUSED."""
        record = self.failed_connect().record
        self.assertEqual(
            (record.state, record.reason, record.initiator, record.errno, record.direction),
            (
                ConnectionState.FAILED,
                CloseReason.REFUSED,
                Initiator.REMOTE,
                "ECONNREFUSED",
                Direction.OUTBOUND,
            ),
        )

    def test_connect_failed_carries_record_and_cause(self) -> None:
        """ConnectFailed holds the manager's record and Twisted's error."""
        failed = self.failed_connect()
        self.assertIn(failed.record, list(self.client.records()))
        self.assertIsInstance(failed.cause, error.ConnectionRefusedError)

    def test_refused_peer_is_the_address(self) -> None:
        """The failed record names the address that was dialled."""
        self.assertEqual(self.failed_connect("nobody:1").record.peer, "nobody:1")

    def test_unreachable_record(self) -> None:
        """An unreachable connect is recorded failed, unreachable, remote."""
        self.network.unreachable(ADDRESS)
        record = self.failed_connect(ADDRESS).record
        self.assertEqual(
            (record.state, record.reason, record.initiator),
            (ConnectionState.FAILED, CloseReason.UNREACHABLE, Initiator.REMOTE),
        )

    def test_failure_counters(self) -> None:
        """A failed connect counts an attempt, a failure and its reason."""
        self.failed_connect()
        self.assertEqual(
            (
                self.client.counters["connect_attempts"],
                self.client.counters["connect_failures"],
                self.client.counters["refused"],
            ),
            (1, 1, 1),
        )

    def test_cancelled_connect(self) -> None:
        """A connect cancelled before it completes is recorded aborted, local."""
        attempt = self.client.connect(HangingEndpoint(), self.client_protocols, ADDRESS)
        attempt.cancel()
        record = self.failureResultOf(attempt, ConnectFailed).value.record
        self.assertEqual(
            (record.state, record.reason, record.initiator, record.detail),
            (ConnectionState.FAILED, CloseReason.ABORTED, Initiator.LOCAL, "connect cancelled"),
        )


class ConnectionLimitTests(_ManagerTestCase):
    """Over max_connections, an inbound connection is rejected and the rest stay open."""

    #: How many inbound connections the server accepts.
    MAX = 2
    limits = ConnectionLimits(max_connections=MAX)

    def setUp(self) -> None:
        super().setUp()
        self.accepted = [self.connect() for _ in range(self.MAX)]
        self.extra_client, self.extra_server = self.connect()

    def test_extra_connection_rejected(self) -> None:
        """The connection over the limit is recorded rejected, local, saying which limit."""
        record = self.extra_server.record
        self.assertEqual(
            (record.state, record.reason, record.initiator, record.detail),
            (
                ConnectionState.CLOSED,
                CloseReason.REJECTED,
                Initiator.LOCAL,
                f"connection limit of {self.MAX} reached",
            ),
        )

    def test_others_stay_open(self) -> None:
        """The connections within the limit stay open."""
        self.assertEqual([server.record.closed for _, server in self.accepted], [False] * self.MAX)
        self.assertEqual(len(self.server.live), self.MAX)

    def test_rejected_protocol_never_connected(self) -> None:
        """The rejected connection's protocol never gets a transport nor a connectionLost."""
        rejected = self.server_protocols.built[-1]
        self.assertIs(self.extra_server.wrappedProtocol, rejected)
        self.assertIsNone(rejected.transport)
        self.assertIsNone(rejected.lost)

    def test_rejection_payload_sent(self) -> None:
        """The rejected peer receives the rejection payload (a BYE) and then EOF."""
        peer = self.client_protocols.built[-1]
        self.assertEqual(
            bytes(peer.received),
            encode_bye(CloseReason.REJECTED, f"connection limit of {self.MAX} reached"),
        )
        self.assertIsInstance(peer.lost.value, error.ConnectionDone)

    def test_rejection_counted(self) -> None:
        """The rejection is counted under its reason."""
        self.assertEqual(self.server.counters["rejected"], 1)


class PerAddressLimitTests(_ManagerTestCase):
    """Over max_per_address, another connection from that host is rejected."""

    limits = ConnectionLimits(max_per_address=1)

    def test_second_from_same_host_rejected(self) -> None:
        """The second connection from one host is rejected; the first stays open."""
        _first_client, first_server = self.connect()
        _second_client, second_server = self.connect()
        self.assertEqual(
            (second_server.record.reason, second_server.record.detail),
            (CloseReason.REJECTED, f"limit of 1 connections from {CLIENT_HOST} reached"),
        )
        self.assertFalse(first_server.record.closed)

    def test_slot_freed_by_close(self) -> None:
        """Once the host's connection closes, it may connect again."""
        first_client, _first_server = self.connect()
        self.client.reset(first_client)
        _second_client, second_server = self.connect()
        self.assertFalse(second_server.record.closed)


class BookkeepingTests(_ManagerTestCase):
    """Counters, bytes, history and the order of records()."""

    history = 3

    def test_counters_by_reason(self) -> None:
        """Each close is counted under its reason."""
        for _ in range(2):
            client, _server = self.connect()
            self.client.reset(client)
        self.connect()
        self.network.links[-1].close(0)
        self.clock.advance(0)
        self.assertEqual((self.server.counters["reset"], self.server.counters["clean"]), (2, 1))
        self.assertEqual((self.client.counters["aborted"], self.client.counters["clean"]), (2, 1))

    def test_opened_counted_by_direction(self) -> None:
        """Opened connections are counted inbound on the server, outbound on the client."""
        self.connect()
        self.assertEqual(
            (self.server.counters["opened_inbound"], self.client.counters["opened_outbound"]),
            (1, 1),
        )

    def test_bytes_counted(self) -> None:
        """bytes_out on one side and bytes_in on the other count exactly what was written."""
        client, server = self.connect()
        client.write(b"hello")
        server.writeSequence([b"wor", b"ld!"])
        self.clock.advance(0)
        self.assertEqual((client.record.bytes_out, server.record.bytes_in), (len(b"hello"), len(b"hello")))
        self.assertEqual((server.record.bytes_out, client.record.bytes_in), (len(b"world!"), len(b"world!")))

    def test_history_bounded(self) -> None:
        """With history=3, only the three most recent closed records are kept."""
        ids = []
        for _ in range(5):
            client, _server = self.connect()
            ids.append(client.record.id)
            self.client.reset(client)
        self.assertEqual([record.id for record in self.client.records()], ids[:-4:-1])

    def test_records_order(self) -> None:
        """records(): pending connects, then live connections, then history newest first."""
        first, _ = self.connect()
        second, _ = self.connect()
        live = [self.connect()[0] for _ in range(2)]
        self.client.reset(first)
        self.client.reset(second)
        pending = self.client.connect(HangingEndpoint(), self.client_protocols, ADDRESS)
        pending_record = next(iter(self.client.pending_connects.values()))
        self.assertEqual(
            list(self.client.records()),
            [pending_record, live[0].record, live[1].record, second.record, first.record],
        )
        pending.cancel()
        self.failureResultOf(pending, ConnectFailed)

    def test_timestamps(self) -> None:
        """opened_at and closed_at come from the manager's wall clock."""
        advance_to(self.clock, 7.0)
        client, _server = self.connect()
        advance_to(self.clock, 9.0)
        self.client.reset(client)
        self.assertEqual((client.record.opened_at, client.record.closed_at), (7.0, 9.0))

    def test_find_live_only(self) -> None:
        """find() returns a live connection by id, and nothing once it closed."""
        client, _server = self.connect()
        self.assertIs(self.client.find(client.record.id), client)
        self.client.reset(client)
        self.assertIsNone(self.client.find(client.record.id))

    def test_close_all(self) -> None:
        """close_all() ends every live connection with the given reason."""
        pairs = [self.connect() for _ in range(2)]
        self.server.close_all(CloseReason.REJECTED, "shutting down")
        self.clock.advance(0)
        self.assertEqual(
            [(s.record.reason, s.record.detail) for _, s in pairs],
            [(CloseReason.REJECTED, "shutting down")] * 2,
        )


class ObserverTests(_ManagerTestCase):
    """Observers hear opened, ready, closed and failed; a broken one harms no other."""

    server_protocol = MarkOpen

    def setUp(self) -> None:
        super().setUp()
        self.events: list[tuple[str, Any]] = []
        self.server.subscribe(lambda event, subject: self.events.append((event, subject)))

    def test_connection_lifecycle(self) -> None:
        """A connection that opens, completes its handshake and closes gives three events."""
        client, server = self.connect()
        self.client.reset(client)
        self.assertEqual(self.events, [("opened", server), ("ready", server), ("closed", server)])

    def test_failed_connect(self) -> None:
        """A failed connect gives one failed event whose subject is its record."""
        events: list[tuple[str, Any]] = []
        self.client.subscribe(lambda event, subject: events.append((event, subject)))
        attempt = self.client.connect(
            self.network.client_endpoint("nobody:1"), self.client_protocols, "nobody:1"
        )
        record = self.failureResultOf(attempt, ConnectFailed).value.record
        self.assertEqual(events, [("failed", record)])

    def test_ready_once(self) -> None:
        """A second mark_open does not announce the connection ready again."""
        _client, server = self.connect()
        server.mark_open("peer-node")
        self.assertEqual([event for event, _ in self.events], ["opened", "ready"])

    def test_raising_observer_does_not_break_others(self) -> None:
        """An observer that raises is logged; the observers after it still hear everything."""
        broken = ConnectionManager(self.clock, wall_clock=self.clock.seconds)
        heard: list[str] = []

        def raises(event: str, subject: Any) -> None:
            raise RuntimeError("observer bug")

        broken.subscribe(raises)
        broken.subscribe(lambda event, subject: heard.append(event))
        self.successResultOf(
            self.network.server_endpoint("other:1").listen(broken.wrap_factory(RecordingFactory(MarkOpen)))
        )
        client = self.successResultOf(
            self.client.connect(self.network.client_endpoint("other:1"), self.client_protocols, "other:1")
        )
        self.client.reset(client)
        self.assertEqual(heard, ["opened", "ready", "closed"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), len(heard))


class ApplicationErrorTests(_ManagerTestCase):
    """An exception in a protocol's dataReceived ends that connection only."""

    server_protocol = Explodes

    def setUp(self) -> None:
        super().setUp()
        self.healthy_client, self.healthy_server = self.connect()
        self.broken_client, self.broken_server = self.connect()
        self.broken_client.write(Explodes.TRIGGER)
        self.clock.advance(0)

    def test_connection_aborted_with_detail(self) -> None:
        """The connection is recorded aborted, local, with detail 'application error: ...'."""
        record = self.broken_server.record
        self.assertEqual(
            (record.state, record.reason, record.initiator),
            (ConnectionState.CLOSED, CloseReason.ABORTED, Initiator.LOCAL),
        )
        self.assertTrue(record.detail.startswith("application error"), record.detail)
        self.assertIn("boom", record.detail)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_peer_sees_reset(self) -> None:
        """The application error closes with RST: the peer records reset."""
        self.assertEqual(self.broken_client.record.reason, CloseReason.RESET)
        self.flushLoggedErrors(ValueError)

    def test_other_connections_unaffected(self) -> None:
        """Another connection stays open and keeps carrying data."""
        self.healthy_client.write(b"still here")
        self.clock.advance(0)
        self.assertFalse(self.healthy_server.record.closed)
        self.assertEqual(bytes(self.healthy_server.wrappedProtocol.received), b"still here")
        self.flushLoggedErrors(ValueError)


class LogEventTests(_ManagerTestCase):
    """
    The log events of every open and close: what ``Logger.info`` would
    emit with the same fields (the manager builds them itself, cheaper).
    """

    def setUp(self) -> None:
        super().setUp()
        self.logged: list[dict[str, Any]] = []
        self.logger = Logger(namespace="netmodels.manager", observer=self.logged.append)
        self.patch(manager_module, "_log", self.logger)

    def manager_events(self, name: str, node: str) -> list[dict[str, Any]]:
        return [e for e in self.logged if e.get("event") == name and e.get("node") == node]

    def assert_like_logger_info(self, event: dict[str, Any], fields: dict[str, Any]) -> None:
        """``event`` is what ``Logger.info(event's format, **fields)`` on the manager's logger makes."""
        made: list[dict[str, Any]] = []
        Logger(namespace=manager_module._log.namespace, observer=made.append).info(
            event["log_format"], **fields
        )
        (reference,) = made
        self.assertEqual(set(event), set(reference))
        for key in set(reference) - {"log_logger", "log_time"}:
            self.assertEqual(event[key], reference[key], key)
        self.assertIs(event["log_logger"], self.logger)
        self.assertLess(abs(event["log_time"] - reference["log_time"]), 5.0)

    def test_opened_and_closed_events(self) -> None:
        client, server = self.connect()
        self.client.reset(client)
        self.clock.advance(0)
        (opened,) = self.manager_events("opened", "server")
        (closed,) = self.manager_events("closed", "server")
        self.assertEqual(opened["log_level"], LogLevel.info)
        self.assertEqual(
            formatEvent(opened),
            f"[server] connection {server.record.id} opened: inbound {server.record.peer}",
        )
        self.assert_like_logger_info(
            opened,
            {
                "node": "server",
                "id": server.record.id,
                "direction": "inbound",
                "peer": server.record.peer,
                "record": server.record,
                "event": "opened",
            },
        )
        self.assertEqual(
            formatEvent(closed),
            f"[server] connection {server.record.id} to {server.record.peer} closed: "
            "reset (remote, ECONNRESET)",
        )
        self.assert_like_logger_info(
            closed,
            {
                "node": "server",
                "id": server.record.id,
                "peer": server.record.peer,
                "reason": "reset",
                "initiator": "remote",
                "errno_text": ", ECONNRESET",
                "detail_text": "",
                "record": server.record,
                "event": "closed",
            },
        )


class DeclarationTests(_ManagerTestCase):
    def test_connections_provide_what_their_transport_provides(self) -> None:
        """As with ProtocolWrapper: every connection, not only the first of its kind."""
        for _ in range(3):
            client, server = self.connect()
            for managed in (client, server):
                transport_provides = set(providedBy(managed.transport))
                self.assertTrue(transport_provides)
                self.assertLessEqual(transport_provides, set(providedBy(managed)))
                self.assertTrue(IConnectionObserver.providedBy(managed))
