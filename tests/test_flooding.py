"""
Flooding (netmodels.topologies.p2p.flooding) on its own: the de-duplication window,
and BROADCAST frames in and out over recorded links.

How copies travel a whole mesh, in any order and by any path, is in tests/test_p2p.py
(DeduplicationTests, BroadcastTests).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from netmodels.topologies.p2p.flooding import INCARNATIONS_KEPT, SEEN_WINDOW, Flooding, SeenWindow
from netmodels.topologies.p2p.members import Member
from netmodels.topologies.p2p.messages import BROADCAST, Broadcast, decode_broadcast, encode_broadcast

from ._support import RecordedLink


class SeenWindowTests(SynchronousTestCase):
    """The de-duplication window of one origin incarnation: bounded, whatever goes missing."""

    def test_bounded_under_a_gap(self) -> None:
        """Sequence 1 never comes: the window never holds more than SEEN_WINDOW ids, and gives 1 up."""
        window = SEEN_WINDOW
        seen = SeenWindow()
        for sequence in range(2, 3 * window):
            self.assertTrue(seen.add(sequence), sequence)
            self.assertLessEqual(len(seen.above), window, sequence)
        # Given up: the gap counts as seen, and everything after it is contiguous.
        self.assertEqual((seen.low, seen.above), (3 * window - 1, set()))
        self.assertFalse(seen.add(1))
        self.assertFalse(seen.add(3 * window - 1))
        self.assertTrue(seen.add(3 * window))

    def test_bounded_under_many_gaps(self) -> None:
        """Only odd ids arrive: still bounded, and each id is new once."""
        window = SEEN_WINDOW
        seen = SeenWindow()
        for sequence in range(1, 6 * window, 2):
            self.assertTrue(seen.add(sequence), sequence)
            self.assertFalse(seen.add(sequence), sequence)
            self.assertLessEqual(len(seen.above), window, sequence)

    def test_out_of_order_within_the_window(self) -> None:
        """Reordering within the window loses nothing and leaves nothing above the low mark."""
        seen = SeenWindow()
        for sequence in (3, 1, 4, 2, 6, 5):
            self.assertTrue(seen.add(sequence), sequence)
        self.assertEqual((seen.low, seen.above), (6, set()))


class RecordedSession(RecordedLink):
    """A link: the frames written to it."""

    def broadcasts(self) -> list[Broadcast]:
        """The BROADCAST frames written, and forget them."""
        frames, self.frames = self.frames, []
        assert all(frame[4] == BROADCAST for frame in frames)
        return [decode_broadcast(frame[5:]) for frame in frames]


class Harness:
    """Node ``me`` (started as incarnation 7) linked to ``a``, ``b`` and ``c``, and knowing ``far``."""

    def __init__(self) -> None:
        self.sessions = {node_id: RecordedSession(node_id) for node_id in "abc"}
        self.links = {node_id: Member(node_id, session=session) for node_id, session in self.sessions.items()}  # type: ignore[arg-type]
        self.links["far"] = Member("far")
        self.delivered: list[tuple[str, bytes]] = []
        self.counters = dict.fromkeys(("duplicates", "forwarded", "relayed"), 0)
        self.flooding = Flooding(
            "me", self.links, lambda *message: self.delivered.append(message), self.counters
        )
        self.flooding.start(7)

    def receive(self, via: str, message: Broadcast) -> None:
        self.flooding.received(self.sessions[via], encode_broadcast(message)[5:])  # type: ignore[arg-type]

    def sent(self) -> dict[str, list[Broadcast]]:
        return {node_id: session.broadcasts() for node_id, session in self.sessions.items()}


class FloodingTests(SynchronousTestCase):
    def test_a_broadcast_goes_to_every_link_numbered_under_the_start_incarnation(self) -> None:
        harness = Harness()
        self.assertEqual((harness.flooding.broadcast(b"one"), harness.flooding.broadcast(b"two")), (3, 3))
        mine = [Broadcast("me", 7, 1, b"one"), Broadcast("me", 7, 2, b"two")]
        self.assertEqual(harness.sent(), {"a": mine, "b": mine, "c": mine})
        # Our own, coming back: a duplicate.
        harness.receive("a", mine[0])
        self.assertEqual((harness.delivered, harness.counters["duplicates"]), ([], 1))

    def test_the_first_copy_is_delivered_and_sent_on_over_the_other_links(self) -> None:
        harness = Harness()
        message = Broadcast("far", 3, 1, b"hello")
        harness.receive("a", message)
        harness.receive("b", message)
        self.assertEqual(harness.delivered, [("far", b"hello")])
        self.assertEqual(harness.sent(), {"a": [], "b": [message], "c": [message]})
        self.assertEqual(harness.counters, {"duplicates": 1, "forwarded": 2, "relayed": 0})

    def test_a_relayed_send_goes_straight_to_its_destination_or_on_everywhere(self) -> None:
        harness = Harness()
        for_c, for_me, for_other = (
            Broadcast("far", 3, n, b"x", to) for n, to in ((1, "c"), (2, "me"), (3, "d"))
        )
        harness.receive("a", for_c)
        harness.receive("a", for_me)
        harness.receive("a", for_other)
        self.assertEqual(harness.delivered, [("far", b"x")])
        self.assertEqual(harness.sent(), {"a": [], "b": [for_other], "c": [for_c, for_other]})
        harness.flooding.relay("far", b"to far")
        relayed = [Broadcast("me", 7, 1, b"to far", "far")]
        self.assertEqual(harness.sent(), {"a": relayed, "b": relayed, "c": relayed})
        self.assertEqual(harness.counters, {"duplicates": 0, "forwarded": 3, "relayed": 1})

    def test_the_oldest_incarnations_of_an_origin_are_forgotten(self) -> None:
        harness = Harness()
        for incarnation in range(1, INCARNATIONS_KEPT + 1):
            harness.receive("a", Broadcast("far", incarnation, 1, b"x"))
        harness.receive("a", Broadcast("far", 1, 1, b"x"))
        self.assertEqual(len(harness.delivered), INCARNATIONS_KEPT)
        harness.receive("a", Broadcast("far", INCARNATIONS_KEPT + 1, 1, b"x"))
        harness.receive("a", Broadcast("far", 1, 1, b"x"))
        self.assertEqual(len(harness.delivered), INCARNATIONS_KEPT + 2)

    def test_a_malformed_frame_is_a_protocol_error(self) -> None:
        harness = Harness()
        harness.flooding.received(harness.sessions["a"], b"\x00")  # type: ignore[arg-type]
        self.assertEqual((len(harness.sessions["a"].errors), harness.delivered), (1, []))
