"""
SWIM's membership for the mesh (netmodels.topologies.p2p.swim_membership), on its own:
what it tells the mesh about links and dials. What SWIM says of members, through a
running mesh, is in tests/test_p2p.py (SwimMeshTests).
"""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.topologies.p2p.members import Member, PeerState
from netmodels.topologies.p2p.membership import IMembership
from netmodels.topologies.p2p.swim_membership import SwimMembership, SwimSetup


class _Config:
    node_id = "me"


class _Node:
    config = _Config()


class RecordedDialling:
    def __init__(self) -> None:
        self.lost_ids: list[str] = []

    def lost(self, node_id: str, record: ConnectionRecord) -> None:
        self.lost_ids.append(node_id)


class RecordedPort:
    def __init__(self) -> None:
        self.synced: list[str] = []

    def sync_with(self, node_id: str) -> None:
        self.synced.append(node_id)


def membership() -> tuple[SwimMembership, RecordedDialling]:
    dialling = RecordedDialling()
    swim = SwimMembership(
        _Node(),  # type: ignore[arg-type]
        SwimSetup(),
        None,  # type: ignore[arg-type]
        dialling,  # type: ignore[arg-type]
        lambda: (),
    )
    return swim, dialling


class SwimMembershipTests(SynchronousTestCase):
    def test_provides_the_membership_interface(self) -> None:
        self.assertTrue(verifyObject(IMembership, membership()[0]))

    def test_not_started_it_says_so(self) -> None:
        swim, _ = membership()
        self.assertEqual((swim.status(), swim.address, swim.incarnation), ({"running": False}, None, 0))
        swim.stop()

    def test_dead_members_are_not_dialled(self) -> None:
        swim, _ = membership()
        self.assertEqual(
            [swim.may_dial(Member("x", state=state)) for state in PeerState],
            [state is not PeerState.DEAD for state in PeerState],
        )

    def test_members_are_dialled_in_rendezvous_order(self) -> None:
        swim, _ = membership()
        expected = hashlib.blake2s(b"me/x", digest_size=8).digest()
        self.assertEqual(swim.dial_order(Member("x")), expected)

    def test_a_link_down_is_redialled_only_while_swim_holds_the_member_up(self) -> None:
        swim, dialling = membership()
        record = ConnectionRecord(1, Direction.OUTBOUND, "x")
        for state in PeerState:
            swim.link_down(Member(str(state), state=state), None, record)  # type: ignore[arg-type]
        self.assertEqual(dialling.lost_ids, ["alive", "suspect"])

    def test_a_link_to_a_member_held_dead_compares_notes(self) -> None:
        swim, _ = membership()
        port = RecordedPort()
        swim.link_up(Member("dead", state=PeerState.DEAD), None)  # type: ignore[arg-type]
        swim.port = port  # type: ignore[assignment]
        swim.link_up(Member("alive"), None)  # type: ignore[arg-type]
        swim.link_up(Member("dead", state=PeerState.DEAD), None)  # type: ignore[arg-type]
        self.assertEqual(port.synced, ["dead"])
