"""
SWIM's membership for the mesh (``--swim``, the default): members, their
states and their stream endpoints come from a :class:`~.swim_port.SwimPort`;
a link is one connection to a member, and says nothing of its state.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from typing import Any

from attrs import define, field
from zope.interface import implementer

from netmodels.core.connection import ConnectionRecord
from netmodels.runtime.node import Node
from netmodels.runtime.session import Session
from netmodels.topologies.p2p.addresses import fill_host, swim_port_beside, swim_seed_of
from netmodels.topologies.p2p.dialling import Dialling
from netmodels.topologies.p2p.members import Member, PeerState
from netmodels.topologies.p2p.membership import IMembership, IMeshMembers
from netmodels.topologies.p2p.swim import SwimMember
from netmodels.topologies.p2p.swim_config import SwimConfig
from netmodels.topologies.p2p.swim_port import SwimPort, parse_address
from netmodels.topologies.p2p.swim_wire import MemberState

__all__ = ["SwimMembership", "SwimSetup"]


@define
class SwimSetup:
    """
    Where and how a node runs SWIM (``--swim``). ``port`` ``None`` (``--swim
    auto``): on the first listener's interface and port number, plus one when
    that listener is UDP (the port is then the stream transport's).
    """

    port: int | None = None
    interface: str = ""
    #: ``host:port`` addresses, or callables returning one (or ``None``: not yet);
    #: none: the bootstrap peers' hosts, at their SWIM ports (:func:`swim_seed_of`).
    seeds: list[str | Callable[[], str | None]] = field(factory=list)
    advertise: str | None = None
    config: SwimConfig = field(factory=SwimConfig)
    #: Seeds SWIM's random choices (tests); ``None``: from the system.
    seed: int | None = None


#: What SWIM's member states are here.
_SWIM_STATES = {
    MemberState.ALIVE: PeerState.ALIVE,
    MemberState.SUSPECT: PeerState.SUSPECT,
    MemberState.DEAD: PeerState.DEAD,
}


@implementer(IMembership)
class SwimMembership:
    """The mesh's members as SWIM says, on a UDP port of its own; see the module docstring."""

    name = "swim"

    def __init__(
        self,
        node: Node,
        setup: SwimSetup,
        members: IMeshMembers,
        dialling: Dialling,
        bootstrap: Callable[[], Iterable[str | Callable[[], str | None]]],
    ) -> None:
        """
        :param setup: read at :meth:`start` (until then the topology may change it).
        :param bootstrap: the mesh's bootstrap targets, read at :meth:`start`:
            without ``setup.seeds``, SWIM joins through their hosts.
        """
        self.node = node
        self.setup = setup
        self.incarnation = 0
        self._members = members
        self._dialling = dialling
        self._bootstrap = bootstrap
        #: The SWIM protocol on its socket, while it runs.
        self.port: SwimPort | None = None
        self._listening: Any = None

    @property
    def address(self) -> str | None:
        """This node's SWIM address, once SWIM runs."""
        swim = None if self.port is None else self.port.swim
        return None if swim is None else swim.address

    # Life

    def start(self, incarnation: int, endpoints: tuple[str, ...]) -> None:
        self.incarnation = incarnation
        setup, node = self.setup, self.node
        port = SwimPort(
            node.reactor,
            node.config.node_id,
            incarnation,
            setup.config,
            node.config.cluster_keys,
            random.Random(setup.seed),
            self._swim_changed,
        )
        number, interface = setup.port, setup.interface
        if number is None:
            number, interface = swim_port_beside(node.listeners[0].port)
        # The datagram reactor: real UDP, or a test's in-memory network.
        self._listening = node.datagram_reactor.listenUDP(number, port, interface=interface)
        if setup.seeds:
            seeds = [seed() if callable(seed) else seed for seed in setup.seeds]
        else:
            transport = node.config.transport
            peers = [peer() if callable(peer) else peer for peer in self._bootstrap()]
            seeds = [swim_seed_of(peer, transport, setup.port) for peer in peers if peer]
        port.begin([seed for seed in seeds if seed], setup.advertise, " ".join(endpoints))
        self.port = port

    def stop(self) -> None:
        if self.port is not None:
            self.port.leave()
            self._listening.stopListening()
            self.port = None

    def status(self) -> dict[str, Any]:
        """The status document's ``swim`` section (but the overlay's)."""
        port = self.port
        swim = None if port is None else port.swim
        if port is None or swim is None:
            return {"running": False}
        return {"running": True, "address": swim.address, **swim.status(), **port.counts}

    # What the mesh tells: SWIM alone says who is a member, and in what state.

    def member_changed(self, member: Member) -> None:
        pass

    def peers_received(self, session: Session, body: bytes) -> None:
        pass  # From a node with --swim off.

    def link_up(self, member: Member, session: Session) -> None:
        if member.state is PeerState.DEAD and self.port is not None:
            # It answers, yet SWIM holds it dead (a healed partition): compare notes now.
            self.port.sync_with(member.node_id)

    def link_down(self, member: Member, session: Session, record: ConnectionRecord) -> None:
        # A link went down; the member is what SWIM says. Redial by the reason.
        if member.state in (PeerState.ALIVE, PeerState.SUSPECT):
            self._dialling.lost(member.node_id, record)

    def liveness(self, member: Member, state: str) -> None:
        pass

    def dial_failed(self, member: Member) -> None:
        pass

    def may_dial(self, member: Member) -> bool:
        return member.state is not PeerState.DEAD

    def dial_order(self, member: Member) -> Any:
        # Each node ranks the members by a hash of both ids (rendezvous
        # hashing): a spread of links, and no member everyone dials.
        return hashlib.blake2s(
            f"{self.node.config.node_id}/{member.node_id}".encode(), digest_size=8
        ).digest()

    def maintain(self, direct: list[Member]) -> None:
        pass

    # What SWIM tells

    def _swim_changed(self, swim_member: SwimMember, previous: MemberState | None) -> None:
        """SWIM's word on a member: its state, incarnation and stream endpoints."""
        member = self._members.member(swim_member.node_id)
        host, _ = parse_address(swim_member.address)
        endpoints = tuple(fill_host(e, host) for e in swim_member.meta.split())
        if endpoints:
            member.endpoints = endpoints
        member.incarnation = swim_member.incarnation
        state = PeerState.LEFT if swim_member.left else _SWIM_STATES[swim_member.state]
        if state is PeerState.ALIVE and member.state in (PeerState.DEAD, PeerState.LEFT):
            self._dialling.came_back(member.node_id)
        self._members.set_state(member, state)
