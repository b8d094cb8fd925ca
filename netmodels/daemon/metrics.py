"""
``GET /metrics``: the nodes' counters in Prometheus' text exposition format.

Nothing here is on the per-message path. :class:`NodeCollector` reads, when
Prometheus scrapes, what each node already keeps: the connection manager's
live records (state, bytes and messages, keepalive probes, the last RTT, a
datagram session's loss and retransmission counts), the totals it keeps once
per closed connection (``ConnectionManager.closes`` and
``ConnectionManager.ended``), the UDP listeners' drop counters, and whatever
the topology registered with ``ITopologyContext.add_metrics``. A scrape
costs one pass over the live connections, whatever the history holds.

Counters are totals since the node started: a closed connection's counts
were added to the manager's totals when it closed, so they outlive the
bounded history. The RTT histogram is a snapshot: the last measured RTT of
each connection open now (see "Metrics" in ``docs/operations.rst``).
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from netmodels.core.connection import ConnectionState, Direction
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.manager import add_datagram_counts
from netmodels.transports.udp import DatagramListeningPort

if TYPE_CHECKING:
    from netmodels.runtime.node import Node

__all__ = ["RTT_BUCKETS", "MetricsResource", "NodeCollector", "metrics_registry"]

_log = Logger(namespace="netmodels.metrics")

#: Upper bounds of the RTT histogram's buckets, in seconds: loopback to a slow WAN.
RTT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

_OPEN = ConnectionState.OPEN
_LIVE_STATES = (ConnectionState.HANDSHAKING, ConnectionState.OPEN, ConnectionState.CLOSING)

#: A datagram session's unreliable-channel counts (``SequenceWindow.as_dict``) and what each means.
_UNRELIABLE = {
    "received": "Unreliable-channel datagrams received and delivered.",
    "lost": "Unreliable-channel sequence numbers never received (served as at least what it was "
    "last scrape: a gap a late datagram fills is not taken back).",
    "duplicates": "Unreliable-channel datagrams received twice (dropped).",
    "reordered": "Unreliable-channel datagrams that arrived after a later one.",
    "late": "Unreliable-channel datagrams older than the 64-datagram window (dropped).",
}

#: A UDP listener's counters that count bytes; the rest count datagrams or events.
_LISTENER_BYTES = {"handshake_bytes_in": "in", "handshake_bytes_out": "out"}


def core_metrics(node: Node) -> Iterator[Metric]:
    """The metrics every node has, from its manager and listeners (one pass over the live connections)."""
    manager = node.manager
    config = node.config

    info = GaugeMetricFamily(
        "netmodels_node_info",
        "This node: its id, topology, role and transport (always 1).",
        labels=["node_id", "topology", "role", "transport"],
    )
    info.add_metric([config.node_id, node.topology.name, config.role, config.transport], 1)
    yield info

    # One pass over the live connections.
    open_counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    bytes_in = bytes_out = messages_in = messages_out = probes_sent = probes_unanswered = suspect = 0
    rtts: list[float] = []
    datagram: collections.Counter[str] = collections.Counter()
    for connection in manager.live.values():
        record = connection.record
        state = record.state
        open_counts[record.direction, record.transport, state] += 1
        bytes_in += record.bytes_in
        bytes_out += record.bytes_out
        messages_in += record.messages_in
        messages_out += record.messages_out
        probes_sent += record.probes_sent
        probes_unanswered += record.probes_unanswered
        rtt = record.rtt
        if rtt is not None and state is _OPEN:
            rtts.append(rtt)
        machine = getattr(connection.wrappedProtocol, "machine", None)
        if machine is not None and machine.suspect:
            suspect += 1
        status = record.extra.get("datagram")
        if status is not None:
            add_datagram_counts(datagram, status())
    live = {
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "messages_in": messages_in,
        "messages_out": messages_out,
        "probes_sent": probes_sent,
        "probes_unanswered": probes_unanswered,
    }
    transports = {config.transport, *(transport for _, transport, _ in open_counts)}
    ended = manager.ended

    connections = GaugeMetricFamily(
        "netmodels_connections_open",
        "Connections whose transport is up, by direction, transport and state "
        "(handshaking, open: ready for traffic, closing).",
        labels=["direction", "transport", "state"],
    )
    for direction in Direction:
        for transport in sorted(transports):
            for state in _LIVE_STATES:
                count = open_counts[direction, transport, state]
                connections.add_metric([str(direction), transport, str(state)], count)
    yield connections

    yield GaugeMetricFamily(
        "netmodels_connect_attempts_in_progress",
        "Outbound connect attempts not yet connected or failed.",
        value=len(manager.pending_connects),
    )

    opened = CounterMetricFamily(
        "netmodels_connections_opened",
        "Connections whose transport came up, by direction.",
        labels=["direction"],
    )
    for direction in Direction:
        opened.add_metric([str(direction)], manager.counters[f"opened_{direction}"])
    yield opened

    closed = CounterMetricFamily(
        "netmodels_connections_closed",
        "Connections closed and connect attempts failed, by close reason, initiator and direction.",
        labels=["reason", "initiator", "direction"],
    )
    closes = manager.closes
    for reason in CloseReason:
        for initiator in Initiator:
            for direction in Direction:
                closed.add_metric(
                    [str(reason), str(initiator), str(direction)], closes[reason, initiator, direction]
                )
    yield closed

    yield CounterMetricFamily(
        "netmodels_connect_attempts",
        "Outbound connect attempts started.",
        manager.counters["connect_attempts"],
    )
    yield CounterMetricFamily(
        "netmodels_connect_failures",
        "Outbound connect attempts that failed (refused, timeout, unreachable, ...).",
        manager.counters["connect_failures"],
    )

    for name, key, documentation in (
        ("netmodels_received_bytes", "bytes_in", "Bytes received on every connection, framing included."),
        ("netmodels_sent_bytes", "bytes_out", "Bytes sent on every connection, framing included."),
        ("netmodels_received_messages", "messages_in", "Frames received on every connection, of every type."),
        ("netmodels_sent_messages", "messages_out", "Frames sent on every connection, of every type."),
        ("netmodels_keepalive_probes_sent", "probes_sent", "Keepalive probes (PING) sent."),
        (
            "netmodels_keepalive_probes_unanswered",
            "probes_unanswered",
            "Keepalive probes that went a whole interval without an answer.",
        ),
    ):
        yield CounterMetricFamily(name, documentation, live[key] + ended[key])

    yield GaugeMetricFamily(
        "netmodels_keepalive_suspect_peers",
        "Peers whose last keepalive probe went unanswered for an interval (not yet dead).",
        value=suspect,
    )

    histogram = HistogramMetricFamily(
        "netmodels_rtt_seconds",
        "Last keepalive round-trip time of each open connection, at scrape time: a snapshot, "
        "not a count of observations (do not rate() it).",
    )
    # The last slot counts what is above every bound (only in +Inf).
    counts = [0] * (len(RTT_BUCKETS) + 1)
    for rtt in rtts:
        counts[bisect.bisect_left(RTT_BUCKETS, rtt)] += 1
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(RTT_BUCKETS, counts, strict=False):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    buckets.append(("+Inf", len(rtts)))
    rtt_sum = math.fsum(rtts)
    histogram.add_metric([], buckets, rtt_sum)
    yield histogram

    security = node.security
    if security is not None:
        yield CounterMetricFamily(
            "netmodels_secure_handshakes_failed",
            "Secure handshakes refused: a wrong or missing cluster key, a key not authorized, a node id "
            "of another key, or no handshake in time.",
            security.handshakes_failed,
        )
        yield CounterMetricFamily(
            "netmodels_secure_records_dropped",
            "Encrypted records dropped as replayed, forged or out of order.",
            security.records_dropped,
        )

    listeners: list[tuple[str, dict[str, int]]] = []
    for listener in node.listeners:
        port = listener.port
        if isinstance(port, DatagramListeningPort):
            listeners.append((listener.address, port.counters))
    if config.transport == "udp" or datagram or listeners or ended["datagrams_in"]:
        yield from _datagram_metrics(datagram, ended, listeners)


def _datagram_metrics(
    live: collections.Counter[str],
    ended: collections.Counter[str],
    listeners: list[tuple[str, dict[str, int]]],
) -> Iterator[Metric]:
    def total(key: str) -> int:
        return live[key] + ended[key]

    yield CounterMetricFamily(
        "netmodels_udp_datagrams_received", "Datagrams received by UDP sessions.", total("datagrams_in")
    )
    yield CounterMetricFamily(
        "netmodels_udp_datagrams_sent", "Datagrams sent by UDP sessions.", total("datagrams_out")
    )
    yield CounterMetricFamily(
        "netmodels_udp_retransmissions",
        "Reliable-channel segments sent again (timeout or fast retransmit).",
        total("retransmissions"),
    )
    for name, documentation in _UNRELIABLE.items():
        yield CounterMetricFamily(
            f"netmodels_udp_unreliable_{name}", documentation, total("unreliable_" + name)
        )
    events = CounterMetricFamily(
        "netmodels_udp_listener_events",
        "A UDP listener's datagrams and handshake events: datagrams_in, cookies_sent, sessions_opened, "
        "resets_sent, and drops (oversized, malformed, forged, bad_version, bad_cookie, unknown_session, "
        "send_dropped).",
        labels=["listener", "event"],
    )
    handshake = CounterMetricFamily(
        "netmodels_udp_listener_handshake_bytes",
        "Bytes of handshake datagrams (cookie exchange) on a UDP listener, by direction.",
        labels=["listener", "direction"],
    )
    for address, counters in listeners:
        for name, count in sorted(counters.items()):
            if name in _LISTENER_BYTES:
                handshake.add_metric([address, _LISTENER_BYTES[name]], count)
            else:
                events.add_metric([address, name], count)
    yield events
    yield handshake


def node_metrics(node: Node) -> Iterator[Metric]:
    """A node's metric families: the core's, then each its topology registered."""
    yield from core_metrics(node)
    for collect in node.metric_collectors:
        try:
            metrics = list(collect())
        except Exception:
            # A topology's bug costs its own metrics, never the scrape.
            _log.failure("metrics of topology {topology} failed", topology=node.topology.name)
            continue
        yield from metrics


class NodeCollector(Collector):
    """
    The metrics of ``nodes``, read at each scrape. With several nodes in one
    process every sample gets a ``node`` label (the node's id), and the
    families of the same name are merged.

    Counters are kept from going down between scrapes (a UDP gap filled by
    a late datagram is one way a sum could): each is served as at least
    what it was last time.
    """

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = nodes
        self._served: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def collect(self) -> Iterable[Metric]:
        if len(self.nodes) == 1:
            families: Iterable[Metric] = node_metrics(self.nodes[0])
        else:
            families = self._merged()
        served = self._served
        for family in families:
            if family.type == "counter":
                samples = []
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    value = max(sample.value, served.get(key, 0.0))
                    served[key] = value
                    samples.append(sample._replace(value=value))
                family.samples = samples
            yield family

    def _merged(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for node in self.nodes:
            label = {"node": node.config.node_id}
            for family in node_metrics(node):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                merged.samples.extend(
                    sample._replace(labels={**sample.labels, **label}) for sample in family.samples
                )
        return families.values()


def metrics_registry(nodes: Sequence[Node]) -> CollectorRegistry:
    """A registry of its own (one per status site): ``nodes``' metrics and the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(nodes))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """``GET /metrics``: the text exposition format, made by ``prometheus_client``."""

    isLeaf = True

    def __init__(self, nodes: Sequence[Any]) -> None:
        super().__init__()
        self.registry = metrics_registry(nodes)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        body: bytes = generate_latest(self.registry)
        return body
