"""
The SWIM membership core (netmodels.topologies.p2p.swim): recorded events, simulated time.
"""

from __future__ import annotations

import math
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from netmodels.topologies.p2p.simulation import Cluster
from netmodels.topologies.p2p.swim import ISwimOutput, Swim, SwimConfig, SwimMember
from netmodels.topologies.p2p.swim_wire import (
    MalformedPacket,
    MemberState,
    Packet,
    PacketKind,
    Update,
    decode_packet,
    encode_packet,
)

ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD
PING, ACK, PING_REQ, NACK = PacketKind.PING, PacketKind.ACK, PacketKind.PING_REQ, PacketKind.NACK


@implementer(ISwimOutput)
class RecordingOutput:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def send(self, address: str, packet: bytes) -> None:
        self.events.append(("send", address, decode_packet(packet)))

    def member_changed(self, member: SwimMember, previous: MemberState | None) -> None:
        self.events.append(("member", member.node_id, member.state.name.lower(), member.incarnation))

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def sent(self) -> list[tuple[str, PacketKind, str, int]]:
        """(address, kind, target, sequence) of each packet sent, and forget them."""
        return [(e[1], e[2].kind, e[2].target, e[2].sequence) for e in self.take() if e[0] == "send"]


def alive(node_id: str, incarnation: int = 1) -> Update:
    return Update(ALIVE, incarnation, node_id, f"addr-{node_id}")


def packet(kind: PacketKind, sender: str, sequence: int = 0, *updates: Update, **fields: Any) -> bytes:
    return encode_packet(Packet(kind, sender, sequence, updates=updates, **fields))


class SwimHarness:
    """One Swim node ``a`` that knows members ``b``, ``c``, ``d``, ``e`` (no gossip timer noise)."""

    def __init__(self, config: SwimConfig | None = None, members: str = "bcde") -> None:
        self.config = config or SwimConfig(push_pull_interval=1e6, rejoin_interval=1e6)
        self.output = RecordingOutput()
        self.swim = Swim("a", "addr-a", 1, self.config, self.output, random.Random(4))
        self.now = 0.0
        self.swim.start(self.now)
        updates = tuple(alive(m) for m in members)
        self.swim.receive("addr-x", packet(PacketKind.GOSSIP, "x", 0, *updates), self.now)
        self.output.take()

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadline = self.swim.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = deadline
            self.swim.tick(deadline)
        self.now = end

    def until_ping(self) -> tuple[str, int]:
        """Advance until the next probe's PING; its target and sequence."""
        for _ in range(100):
            self.advance(0.05)
            for event in self.output.take():
                if event[0] == "send" and event[2].kind is PING:
                    return event[2].target, event[2].sequence
        raise AssertionError("no PING")

    def receive(self, sender: str, data: bytes) -> None:
        self.swim.receive(f"addr-{sender}", data, self.now)


class CodecTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        original = Packet(
            PING_REQ,
            "n1",
            7,
            "n2",
            "udp:10.0.0.2:8760",
            (alive("n3", 9), Update(SUSPECT, 4, "n4", "n1"), Update(DEAD, 2, "n5", "n5")),
        )
        self.assertEqual(decode_packet(encode_packet(original)), original)

    def test_malformed(self) -> None:
        good = packet(PING, "n1", 1, alive("n2"))
        cases = {
            "empty": b"",
            "truncated": good[:-3],
            "unknown kind": b"\x63" + good[1:],
            "trailing bytes": good + b"\x00",
            "bad utf-8 sender": b"\x01\x02\xff\xfe" + good[4:],
            "empty sender": b"\x01\x00" + good[4:],
            # kind, sender "n1", sequence, two empty strings, count: the state is byte 11.
            "unknown state": good[:11] + b"\x09" + good[12:],
        }
        for name, data in cases.items():
            with self.subTest(name):
                self.assertRaises(MalformedPacket, decode_packet, data)

    def test_malformed_packets_are_counted_and_change_nothing(self) -> None:
        harness = SwimHarness()
        before = harness.swim.status()["members"]
        for data in (b"", b"\x63junk", packet(PING, "b", 1)[:-1], packet(PING, "b", 1) + b"!"):
            harness.receive("b", data)
        self.assertEqual(harness.swim.counts["malformed"], 4)
        self.assertEqual(harness.swim.status()["members"], before)
        self.assertEqual(harness.output.take(), [])


class ProbeTests(SynchronousTestCase):
    def test_acked_probe_suspects_nobody(self) -> None:
        harness = SwimHarness()
        target, sequence = harness.until_ping()
        harness.receive(target, packet(ACK, target, sequence))
        harness.advance(0.99)
        events = harness.output.take()
        self.assertEqual([e for e in events if e[0] == "member"], [])
        self.assertNotIn(PING_REQ, [e[2].kind for e in events if e[0] == "send"])

    def test_unanswered_probe_goes_indirect_then_suspects(self) -> None:
        harness = SwimHarness()
        target, sequence = harness.until_ping()
        harness.advance(0.5)
        sent = harness.output.sent()
        helpers = sorted(address for address, kind, _, _ in sent if kind is PING_REQ)
        self.assertEqual(len(helpers), 3)
        self.assertNotIn(f"addr-{target}", helpers)
        self.assertEqual(
            {(kind, t, seq) for _, kind, t, seq in sent if kind is PING_REQ}, {(PING_REQ, target, sequence)}
        )
        # One helper could not reach it either and says so; two say nothing.
        harness.receive(helpers[0][5:], packet(NACK, helpers[0][5:], sequence))
        harness.advance(0.5)
        members = [e for e in harness.output.take() if e[0] == "member"]
        self.assertEqual(members, [("member", target, "suspect", 1)])
        # Two NACKs missing: the fault may be ours (Lifeguard's local health).
        self.assertEqual(harness.swim.awareness, 2)

    def test_indirect_ack_saves_the_member(self) -> None:
        harness = SwimHarness()
        _, sequence = harness.until_ping()
        harness.advance(0.5)
        helper = next(a for a, kind, _, _ in harness.output.sent() if kind is PING_REQ)[5:]
        harness.receive(helper, packet(ACK, helper, sequence))
        harness.advance(0.6)
        self.assertEqual([e for e in harness.output.take() if e[0] == "member"], [])

    def test_awareness_stretches_the_protocol_period(self) -> None:
        harness = SwimHarness()
        harness.swim.health.score = 3
        harness.until_ping()
        start = harness.now
        harness.until_ping()
        self.assertLessEqual(abs(harness.now - start - 4.0), 0.06)

    def test_relay_forwards_the_ack_or_answers_nack(self) -> None:
        harness = SwimHarness()
        request = packet(PING_REQ, "b", 41, target="c", target_address="addr-c")
        harness.receive("b", request)
        [(address, kind, target, relay_sequence)] = harness.output.sent()
        self.assertEqual((address, kind, target), ("addr-c", PING, "c"))
        harness.receive("c", packet(ACK, "c", relay_sequence))
        self.assertEqual(harness.output.sent(), [("addr-b", ACK, "", 41)])
        # Unanswered: a NACK after the probe timeout.
        harness.receive("b", packet(PING_REQ, "b", 42, target="c", target_address="addr-c"))
        harness.output.take()
        harness.advance(0.5)
        self.assertIn(("addr-b", NACK, "", 42), harness.output.sent())

    def test_ping_for_another_node_is_not_answered(self) -> None:
        harness = SwimHarness()
        harness.receive("b", packet(PING, "b", 5, target="someone-else"))
        harness.receive("b", packet(PING, "b", 6, target="a"))
        self.assertEqual(harness.output.sent(), [("addr-b", ACK, "", 6)])

    def test_a_ping_to_a_suspect_member_carries_its_suspicion(self) -> None:
        # Each update is gossiped once, at once: by the time b is probed its
        # suspicion has left the queue, and only the buddy system sends it.
        config = SwimConfig(
            push_pull_interval=1e6, rejoin_interval=1e6, retransmit_mult=1, gossip_interval=0.001
        )
        harness = SwimHarness(config, members="b")
        harness.receive("c", packet(PacketKind.GOSSIP, "c", 0, Update(SUSPECT, 1, "b", "c")))
        harness.advance(0.002)
        gossip = [e[2] for e in harness.output.take() if e[0] == "send"]
        self.assertEqual(
            [(p.kind, p.updates) for p in gossip], [(PacketKind.GOSSIP, (Update(SUSPECT, 1, "b", "c"),))]
        )
        for _ in range(100):
            harness.advance(0.05)
            pings = [e[2] for e in harness.output.take() if e[0] == "send" and e[2].kind is PING]
            if pings:
                # Lifeguard's buddy system: its first update is its own suspicion.
                self.assertEqual((pings[0].target, pings[0].updates[0]), ("b", Update(SUSPECT, 1, "b", "c")))
                return
        self.fail("no PING")


class SuspicionTests(SynchronousTestCase):
    def config(self) -> SwimConfig:
        # 5 members: the minimum is 4 periods (log10(5) < 1), the maximum 24,
        # reached after 2 confirmations (memberlist's LAN profile).
        return SwimConfig(
            push_pull_interval=1e6,
            rejoin_interval=1e6,
            suspicion_mult=4,
            suspicion_max_mult=6,
            suspicion_confirmations=2,
            suspicion_floor=0.0,
        )

    def dead_at(self, harness: SwimHarness, member: str) -> float:
        """When ``member`` is declared dead; every PING is answered meanwhile, so no probe accuses."""
        for _ in range(3000):
            harness.advance(0.01)
            for event in harness.output.take():
                if event[0] == "send" and event[2].kind is PING:
                    target = event[2].target
                    harness.receive(target, packet(ACK, target, event[2].sequence))
                if event[:3] == ("member", member, "dead"):
                    return harness.now
        raise AssertionError("never dead")

    def test_unconfirmed_suspicion_lasts_the_maximum(self) -> None:
        harness = SwimHarness(self.config(), members="bcde")
        # b is suspected by c; a's own probes of b are answered by nobody,
        # but a probes b rarely: the timeout is what decides.
        harness.receive("c", packet(PacketKind.GOSSIP, "c", 0, Update(SUSPECT, 1, "b", "c")))
        harness.output.take()
        start = harness.now
        self.assertLessEqual(abs(self.dead_at(harness, "b") - start - 24.0), 0.02)

    def test_one_confirmation_of_two_shrinks_it_part_way(self) -> None:
        harness = SwimHarness(self.config(), members="bcde")
        start = harness.now
        for accuser in "cd":
            harness.receive(accuser, packet(PacketKind.GOSSIP, accuser, 0, Update(SUSPECT, 1, "b", accuser)))
        # Lifeguard: max - (max - min) * log(1 + 1) / log(2 + 1).
        expected = 24.0 - 20.0 * math.log(2) / math.log(3)
        self.assertLessEqual(abs(self.dead_at(harness, "b") - start - expected), 0.02)

    def test_confirmations_shrink_it_to_the_minimum(self) -> None:
        harness = SwimHarness(self.config(), members="bcde")
        start = harness.now
        for accuser in "cde":
            harness.receive(accuser, packet(PacketKind.GOSSIP, accuser, 0, Update(SUSPECT, 1, "b", accuser)))
        # Two confirmations besides the first accuser: expected = mult - 2 = 2.
        self.assertLessEqual(abs(self.dead_at(harness, "b") - start - 4.0), 0.02)

    def test_refutation_ends_the_suspicion(self) -> None:
        harness = SwimHarness(self.config(), members="bcde")
        harness.receive("c", packet(PacketKind.GOSSIP, "c", 0, Update(SUSPECT, 1, "b", "c")))
        harness.receive("b", packet(PacketKind.GOSSIP, "b", 0, alive("b", 2)))
        members = [e for e in harness.output.take() if e[0] == "member"]
        self.assertEqual(members, [("member", "b", "suspect", 1), ("member", "b", "alive", 2)])
        harness.advance(30.0)
        self.assertNotIn(("member", "b", "dead", 1), harness.output.take())

    def test_a_node_refutes_its_own_suspicion(self) -> None:
        harness = SwimHarness()
        harness.receive("c", packet(PacketKind.GOSSIP, "c", 0, Update(SUSPECT, 1, "a", "c")))
        self.assertEqual(harness.swim.incarnation, 2)
        self.assertEqual(harness.swim.awareness, 1)
        # The refutation rides on the next packet.
        harness.receive("d", packet(PING, "d", 3, target="a"))
        [(_, _, ack)] = [e for e in harness.output.take() if e[0] == "send"]
        self.assertIn(Update(ALIVE, 2, "a", "addr-a"), ack.updates)

    def test_stale_news_changes_nothing(self) -> None:
        harness = SwimHarness()
        harness.receive("c", packet(PacketKind.GOSSIP, "c", 0, alive("b", 5)))
        harness.output.take()
        harness.receive("c", packet(PacketKind.GOSSIP, "c", 0, Update(SUSPECT, 4, "b", "c"), alive("b", 3)))
        self.assertEqual(harness.output.take(), [])


class SyncAndJoinTests(SynchronousTestCase):
    def test_dead_in_a_full_state_is_only_suspected_and_left_stays_left(self) -> None:
        harness = SwimHarness()
        sync = packet(PacketKind.SYNC_REPLY, "c", 0, Update(DEAD, 1, "b", "c"), Update(DEAD, 1, "d", "d"))
        harness.receive("c", sync)
        members = [e for e in harness.output.take() if e[0] == "member"]
        self.assertEqual(members, [("member", "b", "suspect", 1), ("member", "d", "dead", 1)])
        self.assertEqual(harness.swim.members["d"].as_dict()["state"], "left")

    def test_sync_is_answered_with_the_whole_state_in_bounded_packets(self) -> None:
        config = SwimConfig(push_pull_interval=1e6, rejoin_interval=1e6, max_packet=200)
        harness = SwimHarness(config, members="bcdefghijklmnopqrstuvwxyz")
        harness.receive("b", packet(PacketKind.SYNC, "b", 0))
        replies = [e[2] for e in harness.output.take() if e[0] == "send"]
        self.assertGreater(len(replies), 1)
        self.assertTrue(all(len(encode_packet(r)) <= 200 for r in replies))
        self.assertEqual([r.sequence for r in replies], list(range(len(replies))))
        known = {u.node_id for r in replies for u in r.updates}
        self.assertEqual(known, set("abcdefghijklmnopqrstuvwxyz"))
        # A later part of someone's state is merged, not answered.
        harness.receive("b", packet(PacketKind.SYNC, "b", 1))
        self.assertEqual(harness.output.take(), [])

    def test_join_retries_seeds_doubling_until_one_answers(self) -> None:
        output = RecordingOutput()
        config = SwimConfig(push_pull_interval=1e6, rejoin_interval=30.0, join_retry=1.0)
        swim = Swim("a", "addr-a", 1, config, output, random.Random(1))
        swim.start(0.0, seeds=("seed:1", "seed:2"))
        now = 0.0
        times = [now for e in output.take() if e[0] == "send" and e[1] == "seed:1"]
        while now < 20.0:
            deadline = swim.next_deadline()
            assert deadline is not None
            now = deadline
            swim.tick(now)
            for event in output.take():
                if event[0] == "send" and event[2].kind is PacketKind.SYNC and event[1] == "seed:1":
                    times.append(now)
        self.assertEqual(times, [0.0, 1.0, 3.0, 7.0, 15.0])
        swim.receive("seed:1", packet(PacketKind.SYNC_REPLY, "s", 0, Update(ALIVE, 1, "s", "seed:1")), now)
        output.take()
        for _ in range(50):
            deadline = swim.next_deadline()
            assert deadline is not None
            if deadline > now + 25:
                break
            now = deadline
            swim.tick(now)
        # Joined: no more retries (seeds are next contacted on the rejoin
        # interval), but one more exchange with a member within 3 periods,
        # for those that joined at the same time.
        syncs = [(e[1], e[2].kind) for e in output.take() if e[0] == "send" and e[2].kind is PacketKind.SYNC]
        self.assertEqual(syncs, [("seed:1", PacketKind.SYNC)])


class DisseminationTests(SynchronousTestCase):
    def test_every_packet_fits_and_each_update_stops_after_its_retransmits(self) -> None:
        # No probe in this test's time (the first comes at a random moment of the period).
        config = SwimConfig(protocol_period=1e6, push_pull_interval=1e6, rejoin_interval=1e6, max_packet=300)
        harness = SwimHarness(config, members="")
        many = tuple(alive(f"member-{i:03d}") for i in range(60))
        harness.receive("x", packet(PacketKind.GOSSIP, "x", 0, *many))
        counts: dict[str, int] = {}
        for _ in range(200):
            harness.advance(0.05)
            for event in harness.output.take():
                if event[0] == "send" and event[2].kind is PacketKind.GOSSIP:
                    self.assertLessEqual(len(encode_packet(event[2])), 300)
                    for update in event[2].updates:
                        counts[update.node_id] = counts.get(update.node_id, 0) + 1
        limit = config.retransmit_mult * 2  # ceil(log10(62)) == 2
        self.assertEqual(set(counts.values()), {limit})
        self.assertEqual(len(counts), 60)


class ClusterTests(SynchronousTestCase):
    """Small clusters in simulation: the properties the scale benchmark measures at 1,000."""

    def test_any_start_order_forms_one_cluster(self) -> None:
        cluster = Cluster(12, SwimConfig(), seed=3)
        network = cluster.network
        # Everyone is seeded to n0, which starts three seconds after them.
        for index in range(1, 12):
            network.at(index * 0.01, lambda a=f"n{index}": cluster.start(a, ("n0",)))
        network.at(3.0, lambda: cluster.start("n0"))
        self.assertTrue(network.run_until(60.0, cluster.converged))

    def test_a_crash_is_seen_by_all_and_stalls_and_loss_kill_nobody(self) -> None:
        cluster = Cluster(40, SwimConfig(), seed=5)
        network = cluster.network
        for index in range(40):
            network.at(index * 0.05, lambda a=f"n{index}": cluster.start(a, () if a == "n0" else ("n0",)))
        self.assertTrue(network.run_until(30.0, cluster.converged))
        network.loss = 0.05
        start = network.now
        cluster.kill("n7")
        for index, address in enumerate(("n3", "n11", "n19", "n30")):
            network.at(start + 2.0 + index * 5, lambda a=address: network.stall(a, 2.0))
        self.assertTrue(network.run_until(start + 30.0, lambda: cluster.sees_dead("n7")))
        network.run_until(start + 60.0)
        wrongly_dead = {(o, m) for _, o, m, s in cluster.changes if s == "dead" and m != "n7"}
        self.assertEqual(wrongly_dead, set())
        self.assertTrue(cluster.converged())

    def test_sync_with_a_member_held_dead_sends_our_whole_state(self) -> None:
        harness = SwimHarness()
        swim = harness.swim
        harness.receive("x", packet(PacketKind.GOSSIP, "x", 0, Update(DEAD, 1, "b", "x")))
        harness.receive("x", packet(PacketKind.GOSSIP, "x", 0, Update(DEAD, 9, "e", "e")))  # e left
        harness.output.take()
        self.assertEqual([swim.sync_with(m, harness.now) for m in ("c", "e", "nobody")], [False] * 3)
        self.assertEqual(harness.output.sent(), [])
        self.assertTrue(swim.sync_with("b", harness.now))
        sent = [e for e in harness.output.take() if e[0] == "send"]
        self.assertEqual([(e[1], e[2].kind, e[2].sequence) for e in sent], [("addr-b", PacketKind.SYNC, 0)])
        sent = [e[2] for e in sent]
        self.assertEqual({u.node_id for u in sent[0].updates}, {"a", "b", "c", "d", "e"})

    def test_a_partition_heals_into_one_cluster(self) -> None:
        config = SwimConfig(rejoin_interval=10.0)
        cluster = Cluster(20, config, seed=9)
        network = cluster.network
        for index in range(20):
            network.at(index * 0.05, lambda a=f"n{index}": cluster.start(a, () if a == "n0" else ("n0",)))
        self.assertTrue(network.run_until(30.0, cluster.converged))
        network.partition({f"n{i}" for i in range(10)})
        network.run_until(network.now + 60.0)
        for observer, other in (("n1", range(10, 20)), ("n15", range(10))):
            view = cluster.nodes[observer].members
            self.assertEqual({view[f"n{i}"].state for i in other}, {DEAD})
        network.heal()
        self.assertTrue(network.run_until(network.now + 120.0, cluster.converged))
