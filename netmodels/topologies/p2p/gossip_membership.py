"""
Membership by connections (``--swim off``): what a node's own connections say,
and what its peers tell it in PEERS frames.

- A member with a link is ``alive``; ``suspect`` once a keepalive probe on
  the link went unanswered for an interval; ``dead`` when the link ended for
  any reason other than the peer's own BYE, or after two failed dials in a
  row; ``left`` when it said BYE.
- Every change is told to the direct peers at the next turn of the reactor,
  changes coalesced into one PEERS frame; a new link gets this node's whole
  view at once (push-pull), and each maintenance round one random peer gets
  it again (anti-entropy).
- News about a node is ordered by its *incarnation* (its start time in ms);
  at the same incarnation the stronger state wins. Our own link is the
  authority on a direct peer. A node that hears itself called suspect or
  dead refutes it with a new incarnation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from netmodels.core.connection import ConnectionRecord
from netmodels.core.frames import MalformedMessage, encode_frame
from netmodels.core.reasons import CloseReason
from netmodels.runtime.session import Session
from netmodels.topologies.p2p.addresses import fill_host
from netmodels.topologies.p2p.dialling import Dialling
from netmodels.topologies.p2p.members import PRECEDENCE, Member, PeerState
from netmodels.topologies.p2p.membership import IMembership, IMeshMembers
from netmodels.topologies.p2p.messages import MAX_MEMBERS, PEERS, decode_peers

__all__ = ["GossipMembership"]


@implementer(IMembership)
class GossipMembership:
    """Membership by connections and PEERS gossip; see the module docstring."""

    name = "gossip"

    def __init__(
        self,
        node_id: str,
        members: IMeshMembers,
        dialling: Dialling,
        clock: IReactorTime,
        draw: Callable[[], float],
    ) -> None:
        """
        :param draw: a number in [0, 1) for each anti-entropy round, which
            picks the peer told.
        """
        self.node_id = node_id
        self.incarnation = 0
        self._members = members
        self._dialling = dialling
        self._clock = clock
        self._draw = draw
        self._endpoints: tuple[str, ...] = ()
        self._changed: dict[str, Member] = {}
        self._gossip_call: IDelayedCall | None = None
        self._stopping = False

    # Life

    def start(self, incarnation: int, endpoints: tuple[str, ...]) -> None:
        self.incarnation = incarnation
        self._endpoints = endpoints

    def stop(self) -> None:
        self._stopping = True
        if self._gossip_call is not None and self._gossip_call.active():
            self._gossip_call.cancel()
        self._gossip_call = None

    # What the mesh tells

    def member_changed(self, member: Member) -> None:
        """Tell direct peers about ``member`` soon, coalescing changes into one frame."""
        self._changed[member.node_id] = member
        if self._gossip_call is None and not self._stopping:
            self._gossip_call = self._clock.callLater(0, self._send_changes)

    def link_up(self, member: Member, session: Session) -> None:
        before = member.gossip()
        self._members.set_state(member, PeerState.ALIVE)
        # Push-pull: the newcomer gets our whole view at once. If we (or
        # gossip) had it suspect or dead, it is told so, and refutes with a
        # new incarnation: only that can lift "dead" everywhere else.
        told_bad = before["state"] in (PeerState.SUSPECT, PeerState.DEAD)
        view = [before if m is member and told_bad else m.gossip() for m in self._members.members.values()]
        session.write_frame(self._peers_frame_from(view, include_self=True))

    def link_down(self, member: Member, session: Session, record: ConnectionRecord) -> None:
        if session.bye_received and record.reason is CloseReason.CLEAN:
            self._members.set_state(member, PeerState.LEFT)
        else:
            self._dialling.lost(member.node_id, record)
            self._members.set_state(member, PeerState.DEAD)

    def liveness(self, member: Member, state: str) -> None:
        self._members.set_state(member, PeerState.SUSPECT if state == "suspect" else PeerState.ALIVE)

    def dial_failed(self, member: Member) -> None:
        if member.state is not PeerState.LEFT and self._dialling.failures(member.node_id) >= 2:
            self._members.set_state(member, PeerState.DEAD)

    def may_dial(self, member: Member) -> bool:
        # Dead by gossip: whoever saw it die redials it.
        return not (member.state is PeerState.DEAD and self._dialling.failures(member.node_id) == 0)

    def dial_order(self, member: Member) -> Any:
        return member.node_id

    def maintain(self, direct: list[Member]) -> None:
        """Anti-entropy: the whole view to one random direct peer."""
        if direct:
            random_peer = direct[int(self._draw() * len(direct)) % len(direct)]
            random_peer.session.write_frame(  # type: ignore[union-attr]
                self._peers_frame(self._members.members.values(), include_self=True)
            )

    # PEERS frames

    def peers_received(self, session: Session, body: bytes) -> None:
        try:
            entries = decode_peers(body)
        except MalformedMessage as e:
            session.protocol_error(str(e))
            return
        sender = session.node_id
        observed_host = getattr(session.transport.getPeer(), "host", None)
        for node_id, endpoints, incarnation, state in entries:
            if node_id == self.node_id:
                if state in (PeerState.SUSPECT, PeerState.DEAD) and incarnation >= self.incarnation:
                    # Refute: a new incarnation says we are alive.
                    self.incarnation = max(self.incarnation, incarnation) + 1
                    self._send_self()
                continue
            if node_id == sender:
                endpoints = tuple(fill_host(e, observed_host) for e in endpoints)
            self._merge(node_id, endpoints, incarnation, state, via=sender)

    def _merge(
        self, node_id: str, endpoints: tuple[str, ...], incarnation: int, state: PeerState, via: str | None
    ) -> None:
        member = self._members.members.get(node_id)
        if member is None:
            member = self._members.member(node_id)
            member.endpoints, member.incarnation, member.via = endpoints, incarnation, via
            if member.session is None:
                self._members.set_state(member, state)
            return
        if endpoints and (incarnation > member.incarnation or not member.endpoints):
            member.endpoints = endpoints
        if incarnation > member.incarnation and member.state in (PeerState.DEAD, PeerState.LEFT):
            # It restarted: dial it again at once.
            self._dialling.came_back(node_id)
        if member.session is not None:
            # Our own connection is the authority on a direct peer; a rumour
            # that it is suspect or dead goes to it, so that it refutes.
            if state in (PeerState.SUSPECT, PeerState.DEAD) and incarnation >= member.incarnation:
                rumour = {
                    "id": node_id,
                    "endpoints": list(endpoints),
                    "incarnation": incarnation,
                    "state": str(state),
                }
                member.session.write_frame(self._peers_frame_from([rumour], include_self=False))
            if incarnation > member.incarnation:
                # It refuted a rumour: it is alive, and says so with a new
                # incarnation. Pass that on (as alive: re-announcing our own
                # suspicion under its new incarnation would make it refute
                # again, and again).
                member.incarnation = incarnation
                if member.state is PeerState.ALIVE:
                    self.member_changed(member)
                else:
                    self._members.set_state(member, PeerState.ALIVE)
            return
        newer = incarnation > member.incarnation
        stronger = incarnation == member.incarnation and PRECEDENCE[state] > PRECEDENCE[member.state]
        if newer or stronger:
            member.incarnation = incarnation
            member.via = via
            self._members.set_state(member, state)

    def _send_changes(self) -> None:
        self._gossip_call = None
        changed, self._changed = list(self._changed.values()), {}
        if not changed:
            return
        self._to_direct_peers(self._peers_frame(changed, include_self=False))

    def _send_self(self) -> None:
        self._to_direct_peers(self._peers_frame((), include_self=True))

    def _to_direct_peers(self, frame: bytes) -> None:
        for member in list(self._members.members.values()):
            if member.session is not None:
                member.session.write_frame(frame)

    def _peers_frame(self, members: Iterable[Member], include_self: bool) -> bytes:
        return self._peers_frame_from([m.gossip() for m in members], include_self)

    def _peers_frame_from(self, entries: list[dict[str, Any]], include_self: bool) -> bytes:
        entries = entries[: MAX_MEMBERS - 1]
        if include_self:
            entries.append(
                {
                    "id": self.node_id,
                    "endpoints": list(self._endpoints),
                    "incarnation": self.incarnation,
                    "state": "alive",
                }
            )
        return encode_frame(PEERS, json.dumps({"members": entries}).encode())
