"""
``GET /metrics``: read back with Prometheus' own parser, against nodes on a
memory network whose records, and so whose metrics, are known.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from netmodels.core.connection import ConnectionRecord
from netmodels.core.frames import MessageType, encode_frame
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.daemon.metrics import RTT_BUCKETS
from netmodels.daemon.status import StatusPage
from netmodels.runtime.application import Application
from netmodels.runtime.node import Node, NodeConfig
from netmodels.topologies.callback.topology import Callback
from netmodels.topologies.client_server import ClientServer
from netmodels.topologies.many_to_one.topology import ManyToOne
from netmodels.topologies.p2p.options import P2PSettings
from netmodels.topologies.p2p.topology import PeerToPeer
from tests.test_callback import RETRY
from tests.test_callback import Star as CallbackStar
from tests.test_many_to_one import DEADLINE, MAX_BACKLOG, MESSAGE
from tests.test_many_to_one import Star as ManyToOneStar
from tests.test_p2p import SETTLE, MemoryMesh
from tests.test_testing import (
    CLIENT_ID,
    INTERVAL,
    KEEPALIVE_BOUND,
    SERVER_ID,
    Pair,
    advance_by,
    advance_to,
)
from tests.test_udp import UdpPair

ROOT = Path(__file__).resolve().parent.parent

#: Exact in binary floating point, and inside one RTT bucket: a PING and its PONG take 2 x 1/512 s.
LATENCY = 1 / 512


class Scrape:
    """One ``GET /metrics``, parsed by ``prometheus_client.parser``."""

    def __init__(self, nodes: Sequence[Node] | StatusPage) -> None:
        root = nodes if isinstance(nodes, StatusPage) else StatusPage(nodes)
        request = DummyRequest([b"metrics"])
        body = getChildForRequest(root, request).render(request)
        self.code = request.responseCode or 200
        self.content_type = request.responseHeaders.getRawHeaders(b"content-type")
        self.text = body.decode("utf-8")
        self.families = list(text_string_to_metric_families(self.text))
        self.by_name = {family.name: family for family in self.families}

    def family(self, name: str) -> Metric:
        return self.by_name[name]

    def value(self, sample_name: str, **labels: str) -> float:
        """The one sample named ``sample_name`` whose labels include ``labels``."""
        found = [
            sample.value
            for family in self.families
            for sample in family.samples
            if sample.name == sample_name and labels.items() <= sample.labels.items()
        ]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} samples {sample_name}{labels}:\n{self.text}")
        return found[0]

    def labels(self, sample_name: str) -> list[dict[str, str]]:
        return [s.labels for f in self.families for s in f.samples if s.name == sample_name]


def totals(records: Iterable[ConnectionRecord], name: str) -> int:
    return sum(getattr(record, name) for record in records)


class CoreMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair(latency=LATENCY, server_config={"history": 1})
        #: Every record the server ever had, whatever its history keeps.
        self.records: list[ConnectionRecord] = []
        self.pair.server.manager.subscribe(
            lambda event, subject: self.records.append(subject.record) if event == "opened" else None
        )
        self.pair.start()
        advance_by(self.pair.clock, 0.1)
        self.addCleanup(self.pair.stop)

    def test_served_as_the_text_format(self) -> None:
        """200, prometheus_client's content type, and every family with its HELP and TYPE."""
        scrape = Scrape([self.pair.server])
        self.assertEqual(scrape.code, 200)
        self.assertEqual(scrape.content_type, [CONTENT_TYPE_LATEST.encode()])
        names = [family.name for family in scrape.families]
        self.assertEqual(len(names), len(set(names)))
        for family in scrape.families:
            self.assertTrue(family.documentation, family.name)
            self.assertRegex(scrape.text, rf"(?m)^# TYPE {family.name}(_total)? {family.type}$")
        self.assertEqual(
            scrape.labels("netmodels_node_info"),
            [{"node_id": SERVER_ID, "topology": "client-server", "role": "server", "transport": "tcp"}],
        )
        # The process's own metrics come along, as from any prometheus_client exporter.
        self.assertIn("process_cpu_seconds", scrape.by_name)

    def test_open_connections_and_traffic(self) -> None:
        """Open connections by direction, transport and state; bytes and messages equal the records'."""
        session = self.pair.client_session()
        for n in range(5):
            session.send(b"message %d" % n)
        advance_by(self.pair.clock, 0.1)
        server = Scrape([self.pair.server])
        self.assertEqual(
            server.value("netmodels_connections_open", direction="inbound", transport="tcp", state="open"), 1
        )
        self.assertEqual(server.value("netmodels_connections_open", direction="outbound", state="open"), 0)
        self.assertEqual(server.value("netmodels_connections_opened_total", direction="inbound"), 1)
        [record] = self.records
        self.assertEqual(record.messages_in, 6)  # HELLO and five DATA
        for metric, name in (
            ("netmodels_received_bytes_total", "bytes_in"),
            ("netmodels_sent_bytes_total", "bytes_out"),
            ("netmodels_received_messages_total", "messages_in"),
            ("netmodels_sent_messages_total", "messages_out"),
        ):
            self.assertEqual(server.value(metric), getattr(record, name), metric)
        client = Scrape([self.pair.client])
        self.assertEqual(client.value("netmodels_connections_open", direction="outbound", state="open"), 1)
        self.assertEqual(client.value("netmodels_connect_attempts_total"), 1)
        self.assertEqual(client.value("netmodels_sent_messages_total"), 6)

    def test_closes_are_totals_since_start(self) -> None:
        """
        Closes by reason and initiator, and the traffic of closed connections,
        stay counted when the bounded history has forgotten them.
        """
        for n in range(3):
            self.pair.client_session().send(b"before reset %d" % n)
            advance_by(self.pair.clock, 0.1)
            self.pair.link.reset(from_side=0)  # the server sees ECONNRESET
            advance_by(self.pair.clock, 30)  # the dialer reconnects
        self.pair.server_session().close()  # BYE and FIN: clean, local
        advance_by(self.pair.clock, 0.1)
        self.assertEqual(len(self.pair.server.manager.history), 1)
        self.assertEqual(len(self.records), 4)
        scrape = Scrape([self.pair.server])
        closed = "netmodels_connections_closed_total"
        self.assertEqual(scrape.value(closed, reason="reset", initiator="remote", direction="inbound"), 3)
        self.assertEqual(scrape.value(closed, reason="clean", initiator="local", direction="inbound"), 1)
        self.assertEqual(scrape.value(closed, reason="clean", initiator="remote", direction="inbound"), 0)
        # Every reason, initiator and direction is there from the start, at 0 if need be.
        self.assertEqual(len(scrape.labels(closed)), len(CloseReason) * len(Initiator) * 2)
        self.assertEqual(scrape.value("netmodels_connections_opened_total", direction="inbound"), 4)
        for metric, name in (
            ("netmodels_received_bytes_total", "bytes_in"),
            ("netmodels_sent_bytes_total", "bytes_out"),
            ("netmodels_received_messages_total", "messages_in"),
            ("netmodels_sent_messages_total", "messages_out"),
        ):
            self.assertEqual(scrape.value(metric), totals(self.records, name), metric)
        kept = self.pair.server.manager.history
        self.assertGreater(scrape.value("netmodels_received_messages_total"), totals(kept, "messages_in"))

    def test_refused_connect(self) -> None:
        """A connect refused by the peer is counted under reason="refused", initiator="remote"."""
        pair = Pair(listen=False)
        pair.start()
        self.addCleanup(pair.stop)
        scrape = Scrape([pair.client])
        self.assertEqual(
            scrape.value(
                "netmodels_connections_closed_total",
                reason="refused",
                initiator="remote",
                direction="outbound",
            ),
            1,
        )
        self.assertEqual(scrape.value("netmodels_connect_attempts_total"), 1)
        self.assertEqual(scrape.value("netmodels_connect_failures_total"), 1)
        self.assertEqual(scrape.value("netmodels_connect_attempts_in_progress"), 0)
        self.assertEqual(sum(s.value for s in scrape.family("netmodels_connections_open").samples), 0)

    def test_keepalive_probes_and_rtt(self) -> None:
        """An idle connection is probed; the answer's RTT lands in its bucket of the histogram."""
        advance_by(self.pair.clock, 11)
        [record] = self.records
        self.assertEqual((record.probes_sent, record.rtt), (1, 2 * LATENCY))
        scrape = Scrape([self.pair.server])
        self.assertEqual(scrape.value("netmodels_keepalive_probes_sent_total"), 1)
        self.assertEqual(scrape.value("netmodels_keepalive_probes_unanswered_total"), 0)
        self.assertEqual(scrape.value("netmodels_rtt_seconds_count"), 1)
        self.assertEqual(scrape.value("netmodels_rtt_seconds_sum"), 2 * LATENCY)
        buckets = {
            s.labels["le"]: s.value
            for s in scrape.family("netmodels_rtt_seconds").samples
            if "le" in s.labels
        }
        self.assertEqual(len(buckets), len(RTT_BUCKETS) + 1)
        # 2/512 s = 3.9 ms: above 2.5 ms, within 5 ms, and in every bucket after.
        self.assertEqual((buckets["0.0025"], buckets["0.005"], buckets["+Inf"]), (0, 1, 1))
        self.assertEqual(sorted(buckets.values()), list(buckets.values()))

    def test_unanswered_probes_then_timeout(self) -> None:
        """A silent peer: probes unanswered, a suspect peer, then a close for timeout (local)."""
        self.pair.link.blackhole()
        silent_since = self.pair.clock.seconds()
        advance_by(self.pair.clock, 10 + INTERVAL + 0.5)
        scrape = Scrape([self.pair.server])
        self.assertEqual(scrape.value("netmodels_keepalive_probes_sent_total"), 2)
        self.assertEqual(scrape.value("netmodels_keepalive_probes_unanswered_total"), 1)
        self.assertEqual(scrape.value("netmodels_keepalive_suspect_peers"), 1)
        # Just after the bound (the client reconnects at once, but has not been probed yet).
        advance_to(self.pair.clock, silent_since + KEEPALIVE_BOUND + 0.5)
        scrape = Scrape([self.pair.server])
        self.assertEqual(scrape.value("netmodels_keepalive_probes_sent_total"), 3)
        self.assertEqual(scrape.value("netmodels_keepalive_probes_unanswered_total"), 3)
        self.assertEqual(scrape.value("netmodels_keepalive_suspect_peers"), 0)
        self.assertEqual(
            scrape.value(
                "netmodels_connections_closed_total", reason="timeout", initiator="local", direction="inbound"
            ),
            1,
        )
        self.assertEqual(scrape.value("netmodels_rtt_seconds_count"), 0)

    def test_several_nodes_get_a_node_label(self) -> None:
        """One site serving two nodes: one family per name, each sample labelled with its node."""
        scrape = Scrape([self.pair.server, self.pair.client])
        names = [family.name for family in scrape.families]
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(scrape.text.count("# TYPE netmodels_connections_open gauge"), 1)
        nodes = collections.Counter(
            sample.labels.get("node")
            for family in scrape.families
            if family.name.startswith("netmodels_")
            for sample in family.samples
        )
        self.assertEqual(set(nodes), {SERVER_ID, CLIENT_ID})
        self.assertEqual(
            scrape.value("netmodels_connections_open", node=CLIENT_ID, direction="outbound", state="open"), 1
        )
        self.assertEqual(
            scrape.value("netmodels_connections_open", node=SERVER_ID, direction="outbound", state="open"), 0
        )
        # One node alone: no node label.
        self.assertNotIn("node", Scrape([self.pair.server]).labels("netmodels_connections_open")[0])


class ContractTests(SynchronousTestCase):
    """``ITopologyContext.add_metrics``: what a topology registers is served with the rest."""

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.start()
        self.addCleanup(self.pair.stop)
        self.node = self.pair.server
        self.root = StatusPage([self.node])

    def test_a_topology_adds_its_own(self) -> None:
        self.node.add_metrics(lambda: [GaugeMetricFamily("netmodels_example_things", "Things.", value=7)])
        self.assertEqual(Scrape(self.root).value("netmodels_example_things"), 7)

    def test_a_failing_collector_costs_only_its_own(self) -> None:
        def broken() -> list[Metric]:
            raise ZeroDivisionError("bug")

        self.node.add_metrics(broken)
        self.node.add_metrics(lambda: [GaugeMetricFamily("netmodels_example_things", "Things.", value=7)])
        scrape = Scrape(self.root)
        self.assertEqual(scrape.value("netmodels_example_things"), 7)
        self.assertEqual(scrape.value("netmodels_connections_opened_total", direction="inbound"), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_counter_never_goes_down(self) -> None:
        """A sum that dips (a UDP gap filled late) is served as at least what it was."""
        values = [5, 3, 8]
        self.node.add_metrics(
            lambda: [CounterMetricFamily("netmodels_example_events", "Events.", values.pop(0))]
        )
        served = [Scrape(self.root).value("netmodels_example_events_total") for _ in range(3)]
        self.assertEqual(served, [5, 5, 8])


class TopologyMetricsTests(SynchronousTestCase):
    def test_p2p_members_and_broadcast_copies(self) -> None:
        mesh = MemoryMesh(self)
        mesh.build(3)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        mesh.mesh("n00").broadcast(b"to all")
        mesh.clock.advance(0)
        scrape = Scrape([mesh.nodes["n00"]])
        self.assertEqual(scrape.value("netmodels_p2p_members", state="alive"), 2)
        self.assertEqual(scrape.value("netmodels_p2p_members", state="dead"), 0)
        self.assertEqual(scrape.value("netmodels_p2p_direct_peers"), 2)
        copies = "netmodels_p2p_broadcast_copies_total"
        self.assertEqual(scrape.value(copies, event="sent"), 1)
        other = Scrape([mesh.nodes["n01"]])
        self.assertEqual(other.value(copies, event="delivered"), 1)
        for event, count in mesh.mesh("n01").counters.items():
            self.assertEqual(other.value(copies, event=event), count, event)
        mesh.stop_all()

    def test_many_to_one_slow_consumer_dropped(self) -> None:
        star = ManyToOneStar(max_backlog=MAX_BACKLOG, slow_consumer_deadline=DEADLINE)
        self.addCleanup(star.stop)
        for name in ("fast1", "slow", "fast2"):
            star.add(name)
        star.link_of("slow").stop_reading(0)
        for _ in range(10_000):
            if len(star.server.peers()) < 3:
                break
            star.hub.broadcast(MESSAGE)
            star.clock.advance(0)
        scrape = Scrape([star.server])
        self.assertEqual(scrape.value("netmodels_many_to_one_slow_consumers_dropped_total"), 1)
        self.assertEqual(scrape.value("netmodels_many_to_one_clients", kind="netmodels", state="writable"), 2)
        self.assertEqual(
            scrape.value(
                "netmodels_connections_closed_total",
                reason="rejected",
                initiator="local",
                direction="inbound",
            ),
            1,
        )

    def test_callback_deliveries_by_path_and_outbox_depth(self) -> None:
        star = CallbackStar()
        self.addCleanup(star.stop)
        star.add("alice")
        # The client's port is closed: the first message takes the control connection.
        star.network.refuse("10.0.0.1:7000")
        star.deliver("alice", b"by the control connection")
        star.clock.advance(0)
        # Open again: after the retry pause the server dials back.
        star.network.refuse("10.0.0.1:7000", False)
        advance_by(star.clock, RETRY)
        for n in range(3):
            star.deliver("alice", b"mail %d" % n)
            star.clock.advance(0)
            star.clock.advance(0)
        scrape = Scrape([star.server])
        delivered = "netmodels_callback_delivered_total"
        status = star.client_status("alice")["delivered"]
        self.assertEqual(scrape.value(delivered, path="callback"), status["callback"])
        self.assertEqual(scrape.value(delivered, path="fallback"), status["fallback"])
        self.assertEqual((status["callback"], status["fallback"]), (3, 1))
        self.assertEqual(scrape.value("netmodels_callback_accepted_total"), 4)
        self.assertEqual(scrape.value("netmodels_callback_outbox_depth"), 0)
        client = Scrape([star.clients["alice"]])
        self.assertEqual(client.value("netmodels_callback_received_total", path="callback"), 3)
        self.assertEqual(client.value("netmodels_callback_received_total", path="fallback"), 1)


class UdpMetricsTests(SynchronousTestCase):
    def test_loss_duplicates_reordering_and_retransmissions(self) -> None:
        """The unreliable channel's counts and the listener's come from the sessions' datagram status."""
        pair = UdpPair(seed=11)
        pair.start()
        pair.network.loss = 0.2
        pair.network.duplicate = 0.2
        pair.network.reorder = 0.2
        session = pair.session(pair.client)
        for n in range(300):
            session.send(str(n).encode())
            advance_by(pair.clock, 0.001)
        advance_by(pair.clock, 1)
        [record] = pair.records(pair.server)
        stats = record["datagram"]
        scrape = Scrape([pair.server])
        for name in ("received", "lost", "duplicates", "reordered", "late"):
            self.assertEqual(
                scrape.value(f"netmodels_udp_unreliable_{name}_total"), stats["unreliable"][name], name
            )
        self.assertGreater(stats["unreliable"]["lost"], 20)
        self.assertGreater(stats["unreliable"]["duplicates"], 10)
        self.assertGreater(stats["unreliable"]["reordered"], 5)
        self.assertEqual(scrape.value("netmodels_udp_datagrams_received_total"), stats["datagrams_in"])
        self.assertEqual(scrape.value("netmodels_udp_retransmissions_total"), stats["retransmissions"])
        [listener] = {labels["listener"] for labels in scrape.labels("netmodels_udp_listener_events_total")}
        self.assertEqual(
            scrape.value("netmodels_udp_listener_events_total", listener=listener, event="sessions_opened"), 1
        )
        self.assertEqual(
            scrape.value("netmodels_connections_open", direction="inbound", transport="udp", state="open"), 1
        )

        # Closed: the session's counts stay in the totals.
        pair.network.loss = pair.network.duplicate = pair.network.reorder = 0
        pair.session(pair.server).close()
        advance_by(pair.clock, 1)
        after = Scrape([pair.server])
        self.assertEqual(
            after.value(
                "netmodels_connections_closed_total", reason="clean", initiator="local", direction="inbound"
            ),
            1,
        )
        for name in ("received", "lost", "duplicates", "reordered"):
            self.assertEqual(
                after.value(f"netmodels_udp_unreliable_{name}_total"), stats["unreliable"][name], name
            )
        self.assertGreaterEqual(after.value("netmodels_udp_datagrams_received_total"), stats["datagrams_in"])

    def test_secure_handshakes_failed_and_records_dropped(self) -> None:
        """A peer with another cluster key, and a forged record, each counted on the server."""
        pair = Pair(
            server_config={"cluster_keys": (bytes(32),)}, client_config={"cluster_keys": (bytes(32),)}
        )
        pair.start()
        self.addCleanup(pair.stop)
        pair.server_session().dataReceived(encode_frame(MessageType.SEALED, bytes(48)))
        self.assertEqual(Scrape([pair.server]).value("netmodels_secure_records_dropped_total"), 1)
        stranger = Pair(
            server_config={"cluster_keys": (bytes(32),)}, client_config={"cluster_keys": (bytes(31) + b"x",)}
        )
        stranger.start()
        self.addCleanup(stranger.stop)
        self.assertEqual(Scrape([stranger.server]).value("netmodels_secure_handshakes_failed_total"), 1)
        self.assertNotIn("netmodels_secure_records_dropped", Scrape([Pair().server]).by_name)

    def test_a_tcp_node_has_no_udp_section(self) -> None:
        pair = Pair()
        pair.start()
        self.addCleanup(pair.stop)
        self.assertNotIn("netmodels_udp_retransmissions", Scrape([pair.server]).by_name)


class DocumentationTests(SynchronousTestCase):
    """docs/operations.rst lists every metric served, and the dashboard asks only for real ones."""

    def served(self) -> set[str]:
        """The netmodels_ families of a node of each topology, both transports, built as ``build`` does."""
        nodes = []
        for topology, role, extra in (
            (ClientServer(), "server", {}),
            (ClientServer(), "server", {"transport": "udp"}),
            (PeerToPeer(), "peer", {}),
            (PeerToPeer(), "peer", {"settings": P2PSettings(swim=(0, "127.0.0.1"))}),
            (ManyToOne(), "server", {}),
            (Callback(), "server", {}),
            (Callback(), "client", {"connect": ("tcp:127.0.0.1:9",)}),
            (ClientServer(), "server", {"cluster_keys": (bytes(32),)}),
        ):
            config = NodeConfig(topology=topology.name, role=role, node_id=f"{topology.name}-{role}", **extra)
            node = Node(config, topology, Application(), Clock())
            node.build()
            nodes.append(node)
        names = {name for node in nodes for name in Scrape([node]).by_name}
        return {name for name in names if name.startswith("netmodels_")}

    def test_every_metric_is_documented(self) -> None:
        text = (ROOT / "docs" / "operations.rst").read_text()
        documented = {_family(name) for name in re.findall(r"``(netmodels_[a-z0-9_]+)``", text)}
        served = self.served()
        self.assertEqual(served - documented, set(), "served but not in docs/operations.rst")
        self.assertEqual(documented - served, set(), "in docs/operations.rst but not served")

    def test_dashboard_queries_real_metrics(self) -> None:
        dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
        expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        asked = {
            _family(name) for expr in expressions for name in re.findall(r"\bnetmodels_[a-z0-9_]+", expr)
        }
        self.assertEqual(asked - self.served(), set())
        self.assertEqual(
            [panel["title"] for panel in dashboard["panels"]][:3],
            ["Open connections", "Closes by reason", "RTT quantiles (open connections)"],
        )


def _family(sample_name: str) -> str:
    """``netmodels_x_total`` -> ``netmodels_x``; a histogram's ``_bucket`` -> its name."""
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name
