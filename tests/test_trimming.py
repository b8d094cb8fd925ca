"""
Which links a node closes above its high-water mark (netmodels.topologies.p2p.trimming),
from recorded links.

That a mesh with SWIM trims and keeps every member alive is in tests/test_p2p.py (SwimMeshTests).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.topologies.p2p.members import Member
from netmodels.topologies.p2p.trimming import links_to_trim


class _Session:
    def __init__(self, record: ConnectionRecord) -> None:
        self.record = record


def link(node_id: str, *, inbound: bool = True, traffic: int = 0, linked_at: float = 0.0) -> Member:
    direction = Direction.INBOUND if inbound else Direction.OUTBOUND
    record = ConnectionRecord(1, direction, node_id, messages_in=traffic)
    return Member(node_id, session=_Session(record), linked_at=linked_at)  # type: ignore[arg-type]


def trim(direct: list[Member], **options: Any) -> list[str]:
    settings: dict[str, Any] = {
        "keep": 2,
        "high_water": 4,
        "grace": 30.0,
        "overlay_mesh": (),
        "overlay_floor": 0,
    }
    settings.update(options)
    return [member.node_id for member in links_to_trim(direct, 100.0, **settings)]


class LinksToTrimTests(SynchronousTestCase):
    def test_at_or_under_the_high_water_mark_nothing(self) -> None:
        self.assertEqual(trim([link(f"n{i}") for i in range(4)]), [])

    def test_above_it_down_to_keep_the_least_used_first(self) -> None:
        direct = [
            link("a", traffic=9),
            link("b", traffic=1),
            link("c", traffic=5),
            link("d"),
            link("e", traffic=1),
        ]
        self.assertEqual(trim(direct), ["d", "b", "e"])

    def test_only_inbound_links_past_their_grace(self) -> None:
        direct = [link("a", inbound=False), link("b", linked_at=80.0), link("c"), link("d"), link("e")]
        self.assertEqual(trim(direct), ["c", "d", "e"])
        self.assertEqual(trim(direct, grace=20.0), ["b", "c", "d"])

    def test_the_overlay_mesh_last_and_never_under_its_floor(self) -> None:
        direct = [link(node_id) for node_id in "abcdef"]
        overlay = {"a", "b", "c", "d"}
        self.assertEqual(trim(direct, overlay_mesh=overlay, overlay_floor=2), ["e", "f", "a", "b"])
        self.assertEqual(trim(direct, overlay_mesh=overlay, overlay_floor=3), ["e", "f", "a"])
