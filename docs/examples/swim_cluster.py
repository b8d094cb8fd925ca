"""
SWIM membership in simulation: 40 nodes, a crash, two stalled nodes, a partition, its heal, a broadcast.

No sockets: the nodes run on netmodels' simulated network and clock, so the
timeline below is the same on every run (seeded). Run:

    python docs/examples/swim_cluster.py
"""

from __future__ import annotations

from netmodels.topologies.p2p.simulation import Cluster
from netmodels.topologies.p2p.swim import SwimConfig

cluster = Cluster(40, SwimConfig(rejoin_interval=10.0), seed=7)
network = cluster.network

# Every node is seeded to n0, which starts last.
for index in range(1, 40):
    network.at(index * 0.02, lambda a=f"n{index}": cluster.start(a, ("n0",)))
network.at(1.0, lambda: cluster.start("n0"))
network.run_until(30.0, cluster.converged)
print(f"{network.now:6.2f} s  40 nodes, seeded to n0 which started last (at 1 s), form one cluster")

network.run_until(40.0)
cluster.kill("n13")
network.stall("n21", 2.0)
network.stall("n22", 2.0)
print(f"{network.now:6.2f} s  n13 crashes; n21 and n22 stall for 2 s; 5 % of packets lost")
network.loss = 0.05
network.run_until(network.now + 60.0, lambda: cluster.sees_dead("n13"))
print(f"{network.now:6.2f} s  every node holds n13 dead")
network.run_until(100.0)
wrongly = {member for _, _, member, state in cluster.changes if state == "dead" and member != "n13"}
print(f"{network.now:6.2f} s  healthy members declared dead: {sorted(wrongly) or 'none'}")

network.loss = 0.0
network.partition({f"n{i}" for i in range(20)})
print(f"{network.now:6.2f} s  the network splits: n0-n19 | n20-n39")
network.run_until(network.now + 60.0)
view = cluster.nodes["n1"].members
dead = sum(view[f"n{i}"].state.name == "DEAD" for i in range(20, 40))
print(f"{network.now:6.2f} s  n1 sees {dead} of n20-n39 dead")
network.heal()
healed_at = network.now
network.run_until(network.now + 120.0, cluster.converged)
print(f"{network.now:6.2f} s  healed: one cluster again after {network.now - healed_at:.1f} s")
network.loss = 0.05
cluster.overlays["n5"].publish(b"hello from n5", network.now)
network.run_until(network.now + 5.0)
got = [a for a, node in cluster.simulated.items() if ("n5", b"hello from n5") in node.delivered]
copies = sum(o.counts["delivered"] + o.counts["duplicates"] for a, o in cluster.overlays.items() if a in got)
each = copies / len(got)
print(f"{network.now:6.2f} s  n5 broadcasts, 5 % loss: {len(got)} of 38 got it, {each:.1f} copies each")
sent = sum(node.counts["bytes_sent"] for node in cluster.nodes.values())
print(f"{'':6}    {sent / 39 / network.now:.0f} bytes/s of membership sent per node on average, all included")
