"""
SWIM's dissemination queue (netmodels.topologies.p2p.dissemination) on its own.

That every packet SWIM sends fits, and each update stops after its retransmits, is
in tests/test_swim.py (DisseminationTests).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from netmodels.topologies.p2p.dissemination import UpdateQueue, retransmit_limit
from netmodels.topologies.p2p.swim_wire import MemberState, Update, update_size


def alive(node_id: str, incarnation: int = 1) -> Update:
    return Update(MemberState.ALIVE, incarnation, node_id, f"addr-{node_id}")


class RetransmitLimitTests(SynchronousTestCase):
    def test_it_grows_with_log10_of_the_cluster(self) -> None:
        self.assertEqual([retransmit_limit(4, n) for n in (0, 8, 9, 98, 99)], [4, 4, 8, 8, 12])


class UpdateQueueTests(SynchronousTestCase):
    def test_a_newer_word_about_a_member_replaces_the_older(self) -> None:
        queue = UpdateQueue()
        queue.put(alive("b", 1))
        queue.put(Update(MemberState.SUSPECT, 1, "b", "c"))
        self.assertEqual(len(queue), 1)
        self.assertEqual(queue.take(1000, 4), (Update(MemberState.SUSPECT, 1, "b", "c"),))

    def test_least_sent_first_each_until_its_limit(self) -> None:
        queue = UpdateQueue()
        queue.put(alive("b"))
        queue.put(alive("c"))
        room = update_size(alive("b"))
        self.assertEqual([queue.take(room, 2) for _ in range(5)], [(alive("b"),), (alive("c"),)] * 2 + [()])
        self.assertEqual(len(queue), 0)

    def test_what_does_not_fit_waits(self) -> None:
        queue = UpdateQueue()
        queue.put(Update(MemberState.ALIVE, 1, "b", "addr-b", "a long meta " * 4))
        queue.put(alive("c"))
        self.assertEqual(queue.take(update_size(alive("c")), 4), (alive("c"),))
        self.assertEqual(queue.take(0, 4), ())
        self.assertEqual(len(queue), 2)

    def test_first_goes_first_and_is_not_sent_twice(self) -> None:
        queue = UpdateQueue()
        suspicion = Update(MemberState.SUSPECT, 1, "b", "a")
        queue.put(suspicion)
        queue.put(alive("c"))
        self.assertEqual(queue.take(1000, 4, first=(suspicion,)), (suspicion, alive("c")))
        # Sent as "first", it was not counted: it still goes out its four times.
        self.assertEqual(sum(suspicion in queue.take(1000, 4) for _ in range(6)), 4)

    def test_at_most_255_updates_a_packet(self) -> None:
        queue = UpdateQueue()
        for index in range(300):
            queue.put(alive(f"m{index:03d}"))
        self.assertEqual(len(queue.take(1_000_000, 4)), 255)

    def test_a_forgotten_member_is_not_sent(self) -> None:
        queue = UpdateQueue()
        queue.put(alive("b"))
        queue.forget("b")
        queue.forget("nobody")
        self.assertEqual(queue.take(1000, 4), ())
