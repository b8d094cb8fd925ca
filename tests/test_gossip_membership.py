"""
Membership by connections and PEERS gossip (netmodels.topologies.p2p.gossip_membership)
on its own: fed links, keepalive verdicts, dial failures and PEERS frames, with the
members table, the dialling and the peers' sessions recorded.

The mesh around it is tested in tests/test_p2p.py; here each rule is one input
and the outputs it must give.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.core.reasons import CloseReason
from netmodels.topologies.p2p.gossip_membership import GossipMembership
from netmodels.topologies.p2p.members import Member, PeerState
from netmodels.topologies.p2p.membership import IMembership, IMeshMembers
from netmodels.topologies.p2p.messages import PEERS

from ._support import RecordedLink

ALIVE, SUSPECT, DEAD, LEFT = PeerState.ALIVE, PeerState.SUSPECT, PeerState.DEAD, PeerState.LEFT
#: This node's incarnation in every test.
OWN = 1000


@implementer(IMeshMembers)
class RecordedMembers:
    """The mesh's side: records each state set, and tells the membership as the mesh does."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.states: list[tuple[str, PeerState]] = []
        self.membership: GossipMembership | None = None

    def member(self, node_id: str) -> Member:
        member = self.members.get(node_id)
        if member is None:
            member = self.members[node_id] = Member(node_id, since=1.0)
            assert self.membership is not None
            self.membership.member_changed(member)
        return member

    def set_state(self, member: Member, state: PeerState) -> None:
        if member.state is state and member.since:
            return
        member.state = state
        member.since = 2.0
        self.states.append((member.node_id, state))
        assert self.membership is not None
        self.membership.member_changed(member)


class RecordedDialling:
    """The calls a membership makes on its mesh's dialling."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failed: dict[str, int] = {}

    def lost(self, node_id: str, record: ConnectionRecord) -> None:
        self.calls.append(("lost", node_id))

    def came_back(self, node_id: str) -> None:
        self.calls.append(("came_back", node_id))

    def failures(self, node_id: str) -> int:
        return self.failed.get(node_id, 0)


class _Address:
    host = "10.0.0.9"


class _Transport:
    def getPeer(self) -> _Address:
        return _Address()


class RecordedSession(RecordedLink):
    """A linked peer's session: the frames written to it, and what ended it."""

    def __init__(self, node_id: str, bye_received: bool = False) -> None:
        super().__init__(node_id)
        self.bye_received = bye_received
        self.transport = _Transport()

    def peers(self) -> list[list[dict[str, Any]]]:
        """The members of each PEERS frame written, and forget them."""
        frames, self.frames = self.frames, []
        assert all(frame[4] == PEERS for frame in frames)
        return [json.loads(frame[5:])["members"] for frame in frames]


def entry(node_id: str, incarnation: int, state: str = "alive", *endpoints: str) -> dict[str, Any]:
    return {"id": node_id, "endpoints": list(endpoints), "incarnation": incarnation, "state": state}


def body(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"members": list(entries)}).encode()


def record(reason: CloseReason) -> ConnectionRecord:
    return ConnectionRecord(1, Direction.INBOUND, "peer", reason=reason)


class Harness:
    """Node ``me`` (incarnation OWN, at ``me:1``), started, with no member yet."""

    def __init__(self, draw: float = 0.0) -> None:
        self.clock = Clock()
        self.members = RecordedMembers()
        self.dialling = RecordedDialling()
        self.membership = GossipMembership(
            "me",
            self.members,
            self.dialling,  # type: ignore[arg-type]
            self.clock,
            lambda: draw,
        )
        self.members.membership = self.membership
        self.membership.start(OWN, ("me:1",))

    def link(self, node_id: str, incarnation: int = 5) -> RecordedSession:
        """``node_id`` linked and alive, its announcement sent, nothing recorded."""
        member = self.members.member(node_id)
        member.incarnation = incarnation
        session = RecordedSession(node_id)
        member.session = session  # type: ignore[assignment]
        self.membership.link_up(member, session)  # type: ignore[arg-type]
        self.clock.advance(0)
        for other in self.members.members.values():
            if other.session is not None:
                other.session.frames.clear()  # type: ignore[attr-defined]
        self.members.states.clear()
        return session

    def receive(self, session: RecordedSession, *entries: dict[str, Any]) -> None:
        self.membership.peers_received(session, body(*entries))  # type: ignore[arg-type]


class InterfaceTests(SynchronousTestCase):
    def test_provides_the_membership_interface(self) -> None:
        self.assertTrue(verifyObject(IMembership, Harness().membership))


class LinkTests(SynchronousTestCase):
    def test_a_new_link_is_alive_and_gets_the_whole_view(self) -> None:
        harness = Harness()
        first = harness.link("a")
        member = harness.members.member("b")
        member.incarnation = 7
        session = RecordedSession("b")
        member.session = session  # type: ignore[assignment]
        harness.membership.link_up(member, session)  # type: ignore[arg-type]
        self.assertEqual(
            session.peers(),
            [[entry("a", 5), entry("b", 7), entry("me", OWN, "alive", "me:1")]],
        )
        # The change goes to every direct peer at the next turn, once.
        harness.clock.advance(0)
        self.assertEqual(first.peers(), [[entry("b", 7)]])

    def test_a_link_to_a_member_held_dead_tells_it_so(self) -> None:
        harness = Harness()
        member = harness.members.member("a")
        member.incarnation, member.state = 5, DEAD
        session = RecordedSession("a")
        member.session = session  # type: ignore[assignment]
        harness.membership.link_up(member, session)  # type: ignore[arg-type]
        self.assertEqual(member.state, ALIVE)
        # It hears it was dead, so that it refutes (only that lifts "dead" elsewhere).
        self.assertEqual(session.peers(), [[entry("a", 5, "dead"), entry("me", OWN, "alive", "me:1")]])

    def test_a_link_that_ends_with_bye_left_otherwise_dead_and_redialled(self) -> None:
        harness = Harness()
        for node_id, bye, reason, state in (
            ("a", True, CloseReason.CLEAN, LEFT),
            ("b", False, CloseReason.CLEAN, DEAD),
            ("c", True, CloseReason.TIMEOUT, DEAD),
        ):
            with self.subTest(node_id):
                harness.link(node_id)
                member = harness.members.members[node_id]
                member.session = None
                harness.membership.link_down(member, RecordedSession(node_id, bye), record(reason))  # type: ignore[arg-type]
                self.assertEqual(member.state, state)
        self.assertEqual(harness.dialling.calls, [("lost", "b"), ("lost", "c")])

    def test_keepalive_verdicts_are_the_states(self) -> None:
        harness = Harness()
        harness.link("a")
        member = harness.members.members["a"]
        harness.membership.liveness(member, "suspect")
        harness.membership.liveness(member, "alive")
        self.assertEqual(harness.members.states, [("a", SUSPECT), ("a", ALIVE)])

    def test_two_failed_dials_make_a_member_dead(self) -> None:
        harness = Harness()
        member = harness.members.member("a")
        harness.dialling.failed["a"] = 1
        harness.membership.dial_failed(member)
        self.assertEqual(member.state, ALIVE)
        harness.dialling.failed["a"] = 2
        harness.membership.dial_failed(member)
        self.assertEqual(member.state, DEAD)

    def test_dead_by_gossip_is_not_dialled_dead_by_our_dials_is(self) -> None:
        harness = Harness()
        member = harness.members.member("a")
        self.assertTrue(harness.membership.may_dial(member))
        member.state = DEAD
        self.assertFalse(harness.membership.may_dial(member))
        harness.dialling.failed["a"] = 2
        self.assertTrue(harness.membership.may_dial(member))


class GossipTests(SynchronousTestCase):
    def test_changes_coalesce_into_one_frame_per_turn(self) -> None:
        harness = Harness()
        session = harness.link("a")
        for node_id in ("x", "y"):
            harness.members.member(node_id)
        harness.members.set_state(harness.members.members["x"], SUSPECT)
        self.assertEqual(session.frames, [])
        harness.clock.advance(0)
        self.assertEqual(session.peers(), [[entry("x", 0, "suspect"), entry("y", 0)]])

    def test_anti_entropy_tells_one_random_peer_everything(self) -> None:
        harness = Harness(draw=0.6)
        sessions = [harness.link(node_id) for node_id in ("a", "b")]
        direct = list(harness.members.members.values())
        harness.membership.maintain(direct)
        everything = [entry("a", 5), entry("b", 5), entry("me", OWN, "alive", "me:1")]
        self.assertEqual([s.peers() for s in sessions], [[], [everything]])
        harness.membership.maintain([])
        self.assertEqual([s.frames for s in sessions], [[], []])

    def test_stopped_it_sends_nothing_more(self) -> None:
        harness = Harness()
        session = harness.link("a")
        harness.members.member("x")
        harness.membership.stop()
        harness.members.member("y")
        harness.clock.advance(1)
        self.assertEqual(session.frames, [])


class MergeTests(SynchronousTestCase):
    def test_a_new_member_is_learned_with_its_sender(self) -> None:
        harness = Harness()
        session = harness.link("a")
        harness.receive(
            session,
            entry("x", 3, "suspect", "tcp:host=x:port=1"),
            entry("a", 5, "alive", "tcp:host=*:port=2"),
        )
        x, a = harness.members.members["x"], harness.members.members["a"]
        self.assertEqual(
            (x.state, x.incarnation, x.via, x.endpoints), (SUSPECT, 3, "a", ("tcp:host=x:port=1",))
        )
        # The sender's own endpoints get the host it was seen at.
        self.assertEqual(a.endpoints, ("tcp:host=10.0.0.9:port=2",))

    def test_newer_or_stronger_news_wins_older_changes_nothing(self) -> None:
        harness = Harness()
        session = harness.link("a")
        harness.receive(session, entry("x", 3))
        harness.receive(session, entry("x", 3, "dead"), entry("x", 3, "suspect"), entry("x", 2, "left"))
        self.assertEqual(harness.members.members["x"].state, DEAD)
        harness.receive(session, entry("x", 4))
        self.assertEqual(harness.members.states, [("x", DEAD), ("x", ALIVE)])
        self.assertEqual(harness.dialling.calls, [("came_back", "x")])

    def test_a_rumour_about_a_direct_peer_goes_to_it(self) -> None:
        harness = Harness()
        rumoured = harness.link("b", incarnation=5)
        session = harness.link("a")
        harness.receive(session, entry("b", 5, "dead"))
        self.assertEqual(harness.members.members["b"].state, ALIVE)
        self.assertEqual(rumoured.peers(), [[entry("b", 5, "dead")]])

    def test_a_direct_peer_refuting_is_passed_on_as_alive(self) -> None:
        harness = Harness()
        harness.link("b", incarnation=5)
        session = harness.link("a")
        harness.members.members["b"].state = SUSPECT
        harness.receive(session, entry("b", 6))
        self.assertEqual(
            (harness.members.members["b"].incarnation, harness.members.states), (6, [("b", ALIVE)])
        )

    def test_told_it_is_dead_it_refutes_with_a_new_incarnation(self) -> None:
        harness = Harness()
        sessions = [harness.link(node_id) for node_id in ("a", "b")]
        harness.receive(sessions[0], entry("me", OWN + 3, "dead"))
        self.assertEqual(harness.membership.incarnation, OWN + 4)
        told = [entry("me", OWN + 4, "alive", "me:1")]
        self.assertEqual([s.peers() for s in sessions], [[told], [told]])
        # Older news, or news that it is alive, changes nothing.
        harness.receive(sessions[0], entry("me", OWN, "suspect"), entry("me", OWN + 9))
        self.assertEqual(harness.membership.incarnation, OWN + 4)

    def test_a_malformed_frame_is_a_protocol_error(self) -> None:
        harness = Harness()
        session = harness.link("a")
        harness.membership.peers_received(session, b"{")  # type: ignore[arg-type]
        self.assertEqual(len(session.errors), 1)
        self.assertEqual(harness.members.states, [])
