"""
SWIM membership at cluster scale, in simulation: N nodes in one process on a
simulated network and clock (netmodels.topologies.p2p.simulation), no sockets.

Phases, in simulated time:

1. join: every node starts at a random moment in the first 5 s, seeded with
   the address of n0 (which starts at a random moment too: start order does
   not matter). converge_s: from the last start until every node sees every
   other alive.
2. steady: STEADY_S seconds of a quiet, loss-free cluster. bytes_per_node_per_s:
   bytes each node received in that window, per second (probes, acks,
   gossip and push-pull; the median node).
3. disturbed: DISTURBED_S seconds with 5 % of packets lost and 10 % of the
   nodes each stalled for 2 s at a random moment (their packets wait, their
   timers fire late); at its start one node is killed. failure_detect_s:
   until every running node holds it dead. false_positives: members declared
   dead by anyone in this phase other than the killed one. Meanwhile
   MESSAGES broadcasts from random running nodes go through the overlay
   (netmodels.topologies.p2p.gossipsub); broadcast_delivery_ratio: the
   deliveries to running nodes over what exactly-once delivery to each
   gives, BROADCAST_SETTLE_S after the phase; duplicates_per_node: copies of
   a message a node receives, on average (the one delivered included).

    python benchmarks/p2p_scale.py --nodes 1000 [--json] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Any

from netmodels.topologies.p2p.simulation import Cluster
from netmodels.topologies.p2p.swim import SwimConfig, SwimMember
from netmodels.topologies.p2p.swim_wire import MemberState

JOIN_WINDOW = 5.0
CONVERGE_LIMIT = 600.0
STEADY_S = 120.0
DISTURBED_S = 60.0
LOSS = 0.05
STALLED_FRACTION = 0.10
STALL_S = 2.0
MESSAGES = 50
BROADCAST_SETTLE_S = 10.0


def simulate(nodes: int, seed: int = 1, config: SwimConfig | None = None) -> dict[str, Any]:
    started = time.process_time()
    config = config or SwimConfig()
    cluster = Cluster(nodes, config, seed)
    network = cluster.network
    rng = cluster.rng
    addresses = list(cluster.nodes)
    seed_address = addresses[0]
    starts = {address: rng.uniform(0, JOIN_WINDOW) for address in addresses}
    for address, moment in starts.items():
        seeds = () if address == seed_address else (seed_address,)
        network.at(moment, lambda a=address, s=seeds: cluster.start(a, s))
    last_start = max(starts.values())
    network.run_until(last_start)
    converged = network.run_until(last_start + CONVERGE_LIMIT, cluster.converged)
    converge_s = network.now - last_start if converged else None

    # Steady state.
    network.run_until(network.now + 5.0)
    before = cluster.received_bytes()
    steady_from = network.now
    network.run_until(steady_from + STEADY_S)
    after = cluster.received_bytes()
    rates = [(after[a] - before[a]) / STEADY_S for a in addresses]

    # Disturbed: loss, stalls, one crash.
    network.loss = LOSS
    phase_start = network.now
    victim = rng.choice(addresses[1:])
    cluster.kill(victim)
    for address in rng.sample([a for a in addresses if a != victim], int(nodes * STALLED_FRACTION)):
        moment = phase_start + rng.uniform(0, DISTURBED_S - 10.0)
        network.at(moment, lambda a=address: network.stall(a, STALL_S))
    false_positives: list[tuple[float, str, str]] = []

    def watch(observer: str, member: SwimMember, previous: MemberState | None) -> None:
        if member.state is MemberState.DEAD and member.node_id != victim:
            false_positives.append((network.now - phase_start, observer, member.node_id))

    cluster.listeners.append(watch)
    publishers = [a for a in addresses if a != victim]
    for number in range(MESSAGES):
        moment = phase_start + rng.uniform(5.0, DISTURBED_S - 15.0)
        publisher = rng.choice(publishers)
        network.at(moment, lambda n=number, a=publisher: _publish(cluster, a, n))
    detected = network.run_until(phase_start + DISTURBED_S, lambda: cluster.sees_dead(victim))
    failure_detect_s = network.now - phase_start if detected else None
    network.run_until(phase_start + DISTURBED_S + BROADCAST_SETTLE_S)
    counts = [node.counts for node in cluster.nodes.values()]
    receivers = [a for a in addresses if a != victim]
    delivered = sum(len(cluster.simulated[a].delivered) for a in receivers)
    expected = MESSAGES * (len(receivers) - 1)
    copies = sum(
        cluster.overlays[a].counts["delivered"] + cluster.overlays[a].counts["duplicates"] for a in receivers
    )
    return {
        "nodes": nodes,
        "seed": seed,
        "converge_s": None if converge_s is None else round(converge_s, 2),
        "failure_detect_s": None if failure_detect_s is None else round(failure_detect_s, 2),
        "bytes_per_node_per_s": round(statistics.median(rates), 1),
        "bytes_per_node_per_s_max": round(max(rates), 1),
        "false_positives": len(false_positives),
        "broadcast_delivery_ratio": round(delivered / expected, 4),
        "duplicates_per_node": round(copies / expected, 2),
        "suspicions": sum(c["suspicions"] for c in counts),
        "refutations": sum(c["refutations"] for c in counts),
        "malformed": sum(c["malformed"] for c in counts),
        "simulated_s": round(network.now, 1),
        "cpu_s": round(time.process_time() - started, 1),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def _publish(cluster: Cluster, address: str, number: int) -> None:
    """Broadcast from ``address`` now, or when it resumes if it is stalled."""
    network = cluster.network
    resumes = network.hosts[address].stalled_until
    if network.now < resumes:
        network.at(resumes + 1e-6, lambda: _publish(cluster, address, number))
        return
    cluster.overlays[address].publish(f"message {number}".encode(), network.now)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.nodes < 3:
        parser.error("--nodes: at least 3")
    result = simulate(args.nodes, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    sys.exit(0)


if __name__ == "__main__":
    main()
