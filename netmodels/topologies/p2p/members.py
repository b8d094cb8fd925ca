"""
What a p2p node knows of the others: :class:`Member` and its :class:`PeerState`.
"""

from __future__ import annotations

import enum
from typing import Any

from attrs import define

from netmodels.runtime.session import Session

__all__ = ["PRECEDENCE", "Member", "PeerState"]


class PeerState(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


#: Same incarnation: the later state in this order wins (SWIM's precedence).
PRECEDENCE = {PeerState.ALIVE: 0, PeerState.SUSPECT: 1, PeerState.DEAD: 2, PeerState.LEFT: 3}


@define(eq=False)
class Member:
    """What this node knows of another node."""

    node_id: str
    endpoints: tuple[str, ...] = ()
    incarnation: int = 0
    state: PeerState = PeerState.ALIVE
    #: Unix time the state last changed.
    since: float = 0.0
    #: The live, ready connection to it, if any.
    session: Session | None = None
    #: When that connection became ready (reactor time).
    linked_at: float = 0.0
    #: Who told us of it, when we learned it from gossip.
    via: str | None = None
    #: When we first learned of it (monotonic reactor time).
    known_since: float = 0.0
    last_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "endpoints": list(self.endpoints),
            "state": str(self.state),
            "since": self.since,
            "incarnation": self.incarnation,
            "connected": self.session is not None,
            "via": self.via,
            "last_reason": self.last_reason,
        }

    def gossip(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "endpoints": list(self.endpoints),
            "incarnation": self.incarnation,
            "state": str(self.state),
        }
