"""
The broadcast overlay (netmodels.topologies.p2p.gossipsub): recorded events, simulated time.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from netmodels.topologies.p2p.gossipsub import IOverlayOutput, Overlay, OverlayConfig
from netmodels.topologies.p2p.simulation import Cluster
from netmodels.topologies.p2p.swim import SwimConfig

PEERS = [f"p{i:02d}" for i in range(20)]


@implementer(IOverlayOutput)
class RecordingOutput:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def send(self, peer_id: str, packet: bytes) -> None:
        self.events.append(("send", peer_id, packet[0], packet))

    def deliver(self, origin: str, payload: bytes) -> None:
        self.events.append(("deliver", origin, payload))

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events


MESSAGE, IHAVE, IWANT, GRAFT, PRUNE = 1, 2, 3, 4, 5


def overlay(peers: list[str] = PEERS) -> tuple[Overlay, RecordingOutput]:
    output = RecordingOutput()
    node = Overlay("me", 7, OverlayConfig(), output, random.Random(3))
    for peer in peers:
        node.peer_up(peer)
    return node, output


def message_from(origin: str, sequence: int, payload: bytes) -> bytes:
    """A MESSAGE packet as ``origin``'s overlay publishes it."""
    output = RecordingOutput()
    source = Overlay(origin, 1, OverlayConfig(), output, random.Random(1))
    source.peer_up("me")
    for _ in range(sequence):
        source.publish(payload, 0.0)
    return bytes(output.events[-1][3])


class MeshTests(SynchronousTestCase):
    def test_first_heartbeat_grafts_degree_peers(self) -> None:
        node, output = overlay()
        node.heartbeat(0.0)
        grafts = [e[1] for e in output.take() if e[2] == GRAFT]
        self.assertEqual(len(grafts), 6)
        self.assertEqual(set(grafts), node.mesh)

    def test_graft_over_the_high_mark_is_pruned_and_down_peers_leave_the_mesh(self) -> None:
        node, output = overlay()
        for peer in PEERS[:12]:
            node.receive(peer, bytes((GRAFT,)), 0.0)
        self.assertEqual(len(node.mesh), 12)
        node.receive(PEERS[12], bytes((GRAFT,)), 0.0)
        self.assertEqual(output.take(), [("send", PEERS[12], PRUNE, bytes((PRUNE,)))])
        node.peer_down(PEERS[0])
        self.assertNotIn(PEERS[0], node.mesh)
        # A GRAFT from someone membership does not hold up is refused.
        node.receive("stranger", bytes((GRAFT,)), 0.0)
        self.assertEqual(output.take(), [("send", "stranger", PRUNE, bytes((PRUNE,)))])

    def test_heartbeat_prunes_back_to_degree(self) -> None:
        node, output = overlay()
        for peer in PEERS[:12]:
            node.receive(peer, bytes((GRAFT,)), 0.0)
        node.mesh.update(PEERS[12:15])
        node.heartbeat(0.0)
        self.assertEqual(len(node.mesh), 6)
        self.assertEqual(len([e for e in output.take() if e[2] == PRUNE]), 9)


class MessageTests(SynchronousTestCase):
    def test_delivered_once_and_forwarded_to_the_mesh_but_sender_and_origin(self) -> None:
        node, output = overlay()
        node.heartbeat(0.0)
        output.take()
        mesh = sorted(node.mesh)
        packet = message_from(mesh[0], 1, b"hello")
        node.receive(mesh[1], packet, 1.0)
        events = output.take()
        self.assertEqual(events[0], ("deliver", mesh[0], b"hello"))
        self.assertEqual(sorted(e[1] for e in events[1:]), mesh[2:])
        node.receive(mesh[2], packet, 1.1)
        self.assertEqual(output.take(), [])
        self.assertEqual((node.counts["delivered"], node.counts["duplicates"]), (1, 1))

    def test_ihave_iwant_repairs_a_lost_message_and_asks_another_announcer(self) -> None:
        node, output = overlay()
        packet = message_from("far", 1, b"lost")
        announce = IHAVE.to_bytes(1, "big") + (1).to_bytes(2, "big") + packet[1:-4]
        node.receive(PEERS[0], announce, 0.0)
        self.assertEqual([(e[1], e[2]) for e in output.take()], [(PEERS[0], IWANT)])
        node.receive(PEERS[1], announce, 0.1)
        self.assertEqual(output.take(), [])  # asked already
        node.heartbeat(1.0)  # no answer: ask the other announcer
        self.assertIn((PEERS[1], IWANT), [(e[1], e[2]) for e in output.take()])
        node.receive(PEERS[1], packet, 1.1)
        self.assertEqual(output.take()[0], ("deliver", "far", b"lost"))

    def test_a_small_cluster_announces_to_mesh_peers_so_a_late_link_catches_up(self) -> None:
        # Two peers: a message arrives from one before the other's link is up;
        # then both are in the mesh and none outside it. The late one hears of it.
        node, output = overlay(["early"])
        node.heartbeat(0.0)
        node.receive("early", message_from("early", 1, b"first"), 0.5)
        node.peer_up("late")
        output.take()
        node.heartbeat(1.0)
        events = output.take()
        self.assertIn(("late", GRAFT), [(e[1], e[2]) for e in events])
        announced = sorted(e[1] for e in events if e[2] == IHAVE)
        self.assertEqual(announced, ["early", "late"])
        request = IWANT.to_bytes(1, "big") + (1).to_bytes(2, "big") + message_from("early", 1, b"")[1:]
        node.receive("late", request, 1.1)
        self.assertEqual([(e[1], e[2]) for e in output.take()], [("late", MESSAGE)])

    def test_iwant_is_served_from_the_cache_until_it_ages_out(self) -> None:
        node, output = overlay()
        node.publish(b"mine", 0.0)
        sent = [e for e in output.take() if e[2] == MESSAGE]
        self.assertEqual(len(sent), 6)  # no mesh yet: to `degree` peers
        request = IWANT.to_bytes(1, "big") + (1).to_bytes(2, "big") + sent[0][3][1:-4]
        node.receive(PEERS[5], request, 0.5)
        self.assertEqual([(e[1], e[2]) for e in output.take()], [(PEERS[5], MESSAGE)])
        for beat in range(1, 7):
            node.heartbeat(float(beat))
        output.take()
        node.receive(PEERS[5], request, 7.0)
        self.assertEqual(output.take(), [])

    def test_seen_ids_expire(self) -> None:
        node, output = overlay()
        packet = message_from("far", 1, b"x")
        node.receive(PEERS[0], packet, 0.0)
        node.heartbeat(121.0)
        output.take()
        node.receive(PEERS[0], packet, 121.5)
        self.assertEqual(output.take()[0], ("deliver", "far", b"x"))

    def test_malformed_packets_are_counted_and_change_nothing(self) -> None:
        node, output = overlay()
        good = message_from("far", 1, b"x")
        for bad in (
            b"",
            b"\x09",
            good[:5],
            bytes((GRAFT,)) + b"!",
            IHAVE.to_bytes(1, "big") + (2).to_bytes(2, "big") + good[1:-1],
            bytes((MESSAGE, 2, 0xFF, 0xFE)) + bytes(16),
            IWANT.to_bytes(1, "big") + (1).to_bytes(2, "big") + good[1:-1] + b"trailing",
        ):
            node.receive(PEERS[0], bad, 0.0)
        self.assertEqual(node.counts["malformed"], 7)
        self.assertEqual(output.take(), [])
        self.assertEqual(node.mesh, set())


class OverlayClusterTests(SynchronousTestCase):
    def test_broadcasts_reach_every_node_once_through_loss(self) -> None:
        cluster = Cluster(40, SwimConfig(), seed=11)
        network = cluster.network
        for index in range(40):
            network.at(index * 0.05, lambda a=f"n{index}": cluster.start(a, () if a == "n0" else ("n0",)))
        self.assertTrue(network.run_until(30.0, cluster.converged))
        network.run_until(network.now + 3.0)  # a few heartbeats: the overlay's mesh forms
        network.loss = 0.05
        for number in range(20):
            origin = f"n{(number * 7) % 40}"
            network.at(
                network.now + number * 0.2,
                lambda a=origin, n=number: cluster.overlays[a].publish(b"%d" % n, network.now),
            )
        network.run_until(network.now + 15.0)
        for address, node in cluster.simulated.items():
            expected = sorted(
                (f"n{(n * 7) % 40}", b"%d" % n) for n in range(20) if f"n{(n * 7) % 40}" != address
            )
            self.assertEqual(sorted(node.delivered), expected, address)
        copies = sum(o.counts["delivered"] + o.counts["duplicates"] for o in cluster.overlays.values())
        self.assertLessEqual(copies / (20 * 39), 12)
