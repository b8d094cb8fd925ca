"""
With SWIM, which links a node closes above its high-water mark (as libp2p's
connection manager trims): a choice made from the links alone, sans-IO.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from netmodels.core.connection import Direction
from netmodels.topologies.p2p.members import Member

__all__ = ["links_to_trim"]


def links_to_trim(
    direct: Sequence[Member],
    now: float,
    *,
    keep: int,
    high_water: int,
    grace: float,
    overlay_mesh: Collection[str],
    overlay_floor: int,
) -> list[Member]:
    """
    Above ``high_water`` links (``direct``: the members with one), the
    inbound links to close, in order, to come down to ``keep``: only those
    older than ``grace`` seconds, the least used first, those outside the
    broadcast overlay's mesh (``overlay_mesh``, node ids) before those in it,
    and never so many of those that the mesh falls under ``overlay_floor``.
    """
    if len(direct) <= high_water:
        return []
    candidates = []
    for member in direct:
        record = None if member.session is None else member.session.record
        if record is None or record.direction is not Direction.INBOUND:
            continue
        if now - member.linked_at >= grace:
            in_mesh = member.node_id in overlay_mesh
            traffic = record.messages_in + record.messages_out
            candidates.append((in_mesh, traffic, member.node_id, member))
    candidates.sort(key=lambda candidate: candidate[:3])
    overlay_links = len(overlay_mesh)
    to_close = len(direct) - keep
    chosen = []
    for in_mesh, _, _, member in candidates:
        if to_close <= 0:
            break
        if in_mesh:
            if overlay_links <= overlay_floor:
                break
            overlay_links -= 1
        to_close -= 1
        chosen.append(member)
    return chosen
