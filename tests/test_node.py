"""
Tests for :mod:`netmodels.runtime.node`: which peers a node offers its application,
the ``GET /status`` document, stopping, and :func:`endpoint_label`.
"""

from __future__ import annotations

import json

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.connection import ConnectionState
from netmodels.core.frames import encode_hello
from netmodels.core.reasons import CloseReason
from netmodels.runtime.node import endpoint_label
from tests.test_testing import (
    CLIENT_HOST,
    CLIENT_ID,
    CLOSE_DEADLINE,
    EPSILON,
    IDLE,
    INTERVAL,
    KEEPALIVE_BOUND,
    PROBES,
    SERVER_ID,
    Pair,
    WireTap,
    advance_to,
    make_node,
)

#: The first client port MemoryNetwork hands out.
FIRST_CLIENT_PORT = 40001

#: The refused backoff's first delay (see test_reconnect).
REFUSED_INITIAL = 0.5

#: Ports for the listening tests on a fake reactor.
PORT = 8080
PORT6 = 8081

#: The fields of each connection in the status document.
CONNECTION_FIELDS = {
    "id",
    "peer",
    "peer_id",
    "direction",
    "transport",
    "state",
    "opened_at",
    "closed_at",
    "reason",
    "initiator",
    "errno",
    "bytes_in",
    "bytes_out",
    "messages_in",
    "messages_out",
}


class PeersTests(SynchronousTestCase):
    """peers() lists the sessions that finished their handshake and are still up."""

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.server.startService()
        self.pair.client.startService()

    def test_handshaking_not_listed(self) -> None:
        """A connection whose HELLOs have not arrived yet is not a peer."""
        self.assertEqual(len(self.pair.client.manager.live), 1)
        self.assertEqual((self.pair.client.peers(), self.pair.server.peers()), ([], []))

    def test_ready_listed(self) -> None:
        """Once the handshake is done, each node lists the other."""
        self.pair.clock.advance(0)
        self.assertEqual(
            ([p.node_id for p in self.pair.client.peers()], [p.node_id for p in self.pair.server.peers()]),
            ([SERVER_ID], [CLIENT_ID]),
        )

    def test_closed_not_listed(self) -> None:
        """A closed connection is no longer a peer."""
        self.pair.clock.advance(0)
        self.pair.link.reset(1)
        self.assertEqual((self.pair.client.peers(), self.pair.server.peers()), ([], []))

    def test_refused_peer_never_listed(self) -> None:
        """A peer refused at HELLO is never listed."""
        pair = Pair(server_role="client")
        pair.start()
        self.assertEqual((pair.client.peers(), pair.server.peers()), ([], []))


class StatusDocumentTests(SynchronousTestCase):
    """The status document: its sections, their fields, and JSON."""

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.start()
        self.status = self.pair.server.status()

    def test_sections(self) -> None:
        """The document has the node, keepalive, connections and counters sections."""
        self.assertLessEqual({"node", "keepalive", "connections", "counters"}, set(self.status))

    def test_node_section(self) -> None:
        """node says id, topology, role, transport and where it listens."""
        node = self.status["node"]
        self.assertEqual(
            {key: node[key] for key in ("id", "topology", "role", "transport", "listening")},
            {
                "id": SERVER_ID,
                "topology": "client-server",
                "role": "server",
                "transport": "tcp",
                "listening": [],
            },
        )

    def test_keepalive_section(self) -> None:
        """keepalive gives the three numbers and the worst case they add up to."""
        keepalive = self.status["keepalive"]
        self.assertEqual(
            {key: keepalive[key] for key in ("idle", "interval", "probes", "worst_case")},
            {"idle": IDLE, "interval": INTERVAL, "probes": PROBES, "worst_case": KEEPALIVE_BOUND},
        )

    def test_connection_fields(self) -> None:
        """Each connection has every listed field."""
        (connection,) = self.status["connections"]
        self.assertLessEqual(CONNECTION_FIELDS, set(connection))

    def test_open_connection_values(self) -> None:
        """An open inbound connection is described as such."""
        (connection,) = self.status["connections"]
        hello = encode_hello(self.pair.client.session_settings.hello)
        self.assertEqual(
            {
                key: connection[key]
                for key in CONNECTION_FIELDS - {"id", "opened_at", "bytes_out", "messages_out"}
            },
            {
                "peer": f"{CLIENT_HOST}:{FIRST_CLIENT_PORT}",
                "peer_id": CLIENT_ID,
                "direction": "inbound",
                "transport": "tcp",
                "state": "open",
                "closed_at": None,
                "reason": None,
                "initiator": None,
                "errno": None,
                "bytes_in": len(hello),
                "messages_in": 1,
            },
        )
        self.assertIsInstance(connection["opened_at"], float)

    def test_counters_section(self) -> None:
        """counters is the manager's counters, as a plain dict."""
        self.assertEqual(self.status["counters"], {"opened_inbound": 1})

    def test_json_round_trip(self) -> None:
        """The document is plain JSON: it survives dumps and loads unchanged."""
        self.assertEqual(json.loads(json.dumps(self.status)), self.status)

    def test_json_after_close(self) -> None:
        """A closed connection's record is plain JSON too."""
        self.pair.link.reset(1)
        status = self.pair.client.status()
        self.assertEqual(json.loads(json.dumps(status)), status)


class StatusHistoryTests(SynchronousTestCase):
    """Closed connections and failed connects stay in the document."""

    def setUp(self) -> None:
        pair = Pair(listen=False)
        pair.start()
        pair.listen()
        advance_to(pair.clock, REFUSED_INITIAL)
        pair.link.reset(1)
        self.connections = {c["id"]: c for c in pair.client.status()["connections"]}

    def test_failed_connect_listed(self) -> None:
        """The refused first attempt is listed, failed, with its reason and errno."""
        failed = self.connections[1]
        self.assertEqual(
            (failed["state"], failed["reason"], failed["initiator"], failed["errno"]),
            ("failed", "refused", "remote", "ECONNREFUSED"),
        )

    def test_closed_connection_listed(self) -> None:
        """The connection that was reset is listed, closed, with its reason and errno."""
        closed = self.connections[2]
        self.assertEqual(
            (closed["state"], closed["reason"], closed["initiator"], closed["errno"], closed["peer_id"]),
            ("closed", "reset", "remote", "ECONNRESET", SERVER_ID),
        )

    def test_only_those(self) -> None:
        """Nothing else is listed (the reconnect has not happened yet)."""
        self.assertEqual(sorted(self.connections), [1, 2])


class ListeningTests(SynchronousTestCase):
    """node.listening, from listeners added with Node.listen on a (fake) reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def listening(self, description: str, start: bool = True) -> list[str]:
        node = make_node(self.reactor, "server", SERVER_ID, listen=(description,))
        node.build()
        if start:
            node.startService()
            self.addCleanup(node.stopService)
        return node.status()["node"]["listening"]

    def test_before_start(self) -> None:
        """Before it starts, a listener is shown as configured."""
        self.assertEqual(self.listening(f"tcp:{PORT}", start=False), [f"tcp:{PORT}"])

    def test_ipv4(self) -> None:
        """Once listening, an IPv4 listener is shown as tcp:host:port."""
        self.assertEqual(self.listening(f"tcp:{PORT}"), [f"tcp:0.0.0.0:{PORT}"])

    def test_ipv6(self) -> None:
        """Once listening, an IPv6 listener is shown as tcp:[host]:port."""
        self.assertEqual(self.listening(rf"tcp6:{PORT6}:interface=\:\:1"), [f"tcp:[::1]:{PORT6}"])


class StopTests(SynchronousTestCase):
    """stopService says BYE to every peer and waits, at most the close deadline."""

    def test_stop_closes_handshaking_connections(self) -> None:
        """A connection still in its handshake is closed too, with a BYE."""
        pair = Pair()
        pair.server.startService()
        raw = pair.connect_raw()
        tap = WireTap(pair.link.server, pair.clock)
        pair.server.stopService()
        pair.clock.advance(0)
        self.assertEqual((tap.kinds(), pair.server.manager.live), (["BYE", "fin"], {}))
        self.assertIsNotNone(raw.lost)

    def test_stop_waits_for_close(self) -> None:
        """The Deferred fires only once the connections have closed."""
        pair = Pair()
        pair.start()
        stopped = pair.server.stopService()
        self.assertNoResult(stopped)
        pair.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(pair.server.manager.history[0].reason, CloseReason.CLEAN)

    def test_stop_bounded_by_close_deadline(self) -> None:
        """Against a peer that never answers, the stop completes at the close deadline."""
        pair = Pair()
        pair.start()
        pair.link.blackhole()
        stopped = pair.server.stopService()
        advance_to(pair.clock, CLOSE_DEADLINE - EPSILON)
        self.assertNoResult(stopped)
        advance_to(pair.clock, CLOSE_DEADLINE)
        self.successResultOf(stopped)
        self.assertEqual(pair.server.manager.history[0].state, ConnectionState.CLOSED)

    def test_nothing_left_scheduled(self) -> None:
        """After both nodes stopped and their closes finished, no timer is left."""
        pair = Pair()
        pair.start()
        pair.client_session().request(b"never mind").addErrback(lambda failure: None)
        pair.stop()
        self.assertEqual(pair.clock.getDelayedCalls(), [])


class EndpointLabelTests(SynchronousTestCase):
    """endpoint_label: host:port for TCP and TLS descriptions, others unchanged."""

    def test_tcp(self) -> None:
        """tcp:HOST:PORT gives HOST:PORT."""
        self.assertEqual(endpoint_label("tcp:example.com:80"), "example.com:80")

    def test_tcp_keywords(self) -> None:
        """tcp:host=HOST:port=PORT, with more options after, gives HOST:PORT."""
        self.assertEqual(endpoint_label("tcp:host=example.com:port=80:timeout=5"), "example.com:80")

    def test_tcp6(self) -> None:
        """tcp6 with a bracketed address gives [ADDRESS]:PORT."""
        self.assertEqual(endpoint_label("tcp6:[::1]:80"), "[::1]:80")

    def test_tls(self) -> None:
        """tls:HOST:PORT and ssl:HOST:PORT give HOST:PORT."""
        self.assertEqual(
            (endpoint_label("tls:example.com:443"), endpoint_label("ssl:example.com:443")),
            ("example.com:443", "example.com:443"),
        )

    def test_unix_unchanged(self) -> None:
        """A UNIX socket description stays as written."""
        self.assertEqual(endpoint_label("unix:/run/netmodels.sock"), "unix:/run/netmodels.sock")

    def test_memory_address_unchanged(self) -> None:
        """A description of no known form (a memory address) stays as written."""
        self.assertEqual(endpoint_label("server:1"), "server:1")
