"""
What a p2p node's :class:`~.mesh.Mesh` and its membership say to each other.

The mesh keeps the links (one connection per pair, dialled up to
``--max-peers``) and the table of members; a membership says who the members
are and in what state. There are two: by connections and PEERS gossip
(``--swim off``, :class:`~.gossip_membership.GossipMembership`), and SWIM's
(:class:`~.swim_membership.SwimMembership`). The mesh tells its membership of
each link and dial (:class:`IMembership`); the membership changes members
through the mesh (:class:`IMeshMembers`), so that every change is logged and
timestamped the same way whichever membership made it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import Attribute, Interface

from netmodels.core.connection import ConnectionRecord
from netmodels.runtime.session import Session
from netmodels.topologies.p2p.members import Member, PeerState

__all__ = ["IMembership", "IMeshMembers"]


class IMeshMembers(Interface):
    """What a membership may do to the mesh's members."""

    members: Mapping[str, Member] = Attribute("Every member this node knows, by node id.")

    def member(node_id: str) -> Member:
        """The member ``node_id``, added (and announced) if it is new."""

    def set_state(member: Member, state: PeerState) -> None:
        """Put ``member`` in ``state``: logged, timestamped and announced when it changes."""


class IMembership(Interface):
    """Who the mesh's members are and in what state, told of the mesh's links and dials."""

    name: str = Attribute("What the status document calls it: ``gossip`` or ``swim``.")
    incarnation: int = Attribute("This node's incarnation as the others hear of it (0 until started).")

    def start(incarnation: int, endpoints: tuple[str, ...]) -> None:
        """The node runs, as ``incarnation``, reachable at ``endpoints``."""

    def stop() -> None:
        """The node stops: say so if there is a way to, and schedule nothing more."""

    def member_changed(member: Member) -> None:
        """``member`` is new, or its state changed (through :meth:`IMeshMembers.set_state`)."""

    def peers_received(session: Session, body: bytes) -> None:
        """A PEERS frame arrived over ``session``."""

    def link_up(member: Member, session: Session) -> None:
        """``session`` just became ``member``'s link (``member.session`` is set)."""

    def link_down(member: Member, session: Session, record: ConnectionRecord) -> None:
        """``member``'s link ``session`` ended as ``record`` says (``member.session`` is cleared)."""

    def liveness(member: Member, state: str) -> None:
        """The keepalive on ``member``'s link says ``suspect`` (a probe went unanswered) or ``alive``."""

    def dial_failed(member: Member) -> None:
        """A dial of ``member`` failed (``member.last_reason`` says why)."""

    def may_dial(member: Member) -> bool:
        """Whether ``member``, known to be neither linked nor gone, may be dialled."""

    def dial_order(member: Member) -> Any:
        """``member``'s place when choosing whom to dial (a sort key)."""

    def maintain(direct: list[Member]) -> None:
        """A maintenance round of the mesh; ``direct``: the members with a link."""
