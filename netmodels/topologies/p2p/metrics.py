"""
The p2p topology's metrics for ``GET /metrics``: members, links, broadcast copies, and SWIM's counts.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from netmodels.topologies.p2p.members import PeerState

if TYPE_CHECKING:
    from netmodels.topologies.p2p.mesh import Mesh
    from netmodels.topologies.p2p.swim_port import SwimPort

__all__ = ["mesh_metrics"]


def mesh_metrics(mesh: Mesh) -> list[Metric]:
    """For ``GET /metrics``: members by state, and what became of broadcast copies."""
    members = GaugeMetricFamily(
        "netmodels_p2p_members", "Other nodes of the mesh this node knows, by state.", labels=["state"]
    )
    states = collections.Counter(m.state for m in mesh.members.values())
    for state in PeerState:
        members.add_metric([str(state)], states[state])
    direct = GaugeMetricFamily(
        "netmodels_p2p_direct_peers",
        "Members with a ready connection to this node.",
        value=sum(1 for m in mesh.members.values() if m.session is not None),
    )
    copies = CounterMetricFamily(
        "netmodels_p2p_broadcast_copies",
        "Broadcast copies: sent and relayed (started here), delivered (first copy, to the "
        "application), duplicates (a copy seen before, dropped), forwarded (copies sent on to peers).",
        labels=["event"],
    )
    for event, count in mesh.counters.items():
        copies.add_metric([event], count)
    if mesh.swim is None:
        return [members, direct, copies]
    return [members, direct, copies, *_swim_metrics(mesh.swim.port)]


def _swim_metrics(port: SwimPort | None) -> list[Metric]:
    swim = None if port is None else port.swim
    counts = {} if swim is None else swim.counts
    dropped_counts = {} if port is None else port.counts

    def counter(name: str, text: str, value: int) -> CounterMetricFamily:
        return CounterMetricFamily(f"netmodels_swim_{name}", text, value=value)

    packets = CounterMetricFamily(
        "netmodels_swim_packets", "SWIM packets sent and received.", labels=["direction"]
    )
    octets = CounterMetricFamily(
        "netmodels_swim_bytes", "SWIM bytes sent and received.", labels=["direction"]
    )
    for direction in ("sent", "received"):
        packets.add_metric([direction], counts.get(f"packets_{direction}", 0))
        octets.add_metric([direction], counts.get(f"bytes_{direction}", 0))
    dropped = CounterMetricFamily(
        "netmodels_swim_dropped",
        "SWIM packets dropped: malformed, or sealed with no key of ours (unsealed).",
        labels=["why"],
    )
    dropped.add_metric(["malformed"], counts.get("malformed", 0))
    dropped.add_metric(["unsealed"], dropped_counts.get("unsealed_dropped", 0))
    awareness = GaugeMetricFamily(
        "netmodels_swim_awareness",
        "Lifeguard's local health score: 0 healthy; each point stretches probe timeouts by a period.",
        value=0 if swim is None else swim.awareness,
    )
    return [
        packets,
        octets,
        dropped,
        counter("probes", "Members this node probed.", counts.get("probes", 0)),
        counter("probes_failed", "Probes with no ACK, direct or indirect.", counts.get("probes_failed", 0)),
        counter("suspicions", "Suspicions this node started or heard.", counts.get("suspicions", 0)),
        counter("refutations", "Suspicions of this node it refuted.", counts.get("refutations", 0)),
        awareness,
    ]
