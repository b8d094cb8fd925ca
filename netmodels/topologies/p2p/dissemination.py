"""
SWIM's dissemination queue (memberlist's transmit-limited queue), sans-IO:
the membership updates waiting to be piggybacked on packets, each until it
went out a number of times that grows with the cluster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from attrs import define

from netmodels.topologies.p2p.swim_wire import Update, update_size

__all__ = ["UpdateQueue", "retransmit_limit"]

#: No packet carries more updates (its count is one byte).
_MOST_UPDATES = 255


def retransmit_limit(mult: int, members: int) -> int:
    """How many times each update goes out in a cluster of ``members`` (this node aside)."""
    return mult * math.ceil(math.log10(members + 2))


@define
class _Queued:
    update: Update
    transmits: int = 0


class UpdateQueue:
    """At most one update per member, least sent first; see the module docstring."""

    def __init__(self) -> None:
        self._queued: dict[str, _Queued] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def put(self, update: Update) -> None:
        # A newer word about a member replaces the older (memberlist's
        # invalidation); confirmations of a suspicion do too.
        self._queued[update.node_id] = _Queued(update)

    def forget(self, node_id: str) -> None:
        """Drop what waits about ``node_id`` (a member forgotten)."""
        self._queued.pop(node_id, None)

    def take(self, room: int, limit: int, first: Sequence[Update] = ()) -> tuple[Update, ...]:
        """
        ``first``, then the least sent updates that fit in ``room`` bytes
        beside it, each counted as sent once more (and dropped once sent
        ``limit`` times).
        """
        chosen = list(first)
        room -= sum(update_size(u) for u in first)
        if not self._queued or room <= 0:
            return tuple(chosen)
        queued = sorted(self._queued.values(), key=lambda q: q.transmits)
        for entry in queued:
            if len(chosen) == _MOST_UPDATES:
                break
            if entry.update in first:
                continue
            size = update_size(entry.update)
            if size > room:
                continue
            room -= size
            chosen.append(entry.update)
            entry.transmits += 1
            if entry.transmits >= limit:
                self._queued.pop(entry.update.node_id, None)
        return tuple(chosen)
