"""
SWIM membership with Lifeguard, sans-IO: fed packets and time, it sends packets.

One :class:`Swim` per node. It knows each member's address and state
(``alive``, ``suspect``, ``dead``; :mod:`~netmodels.topologies.p2p.swim_wire`)
and keeps that view true with little traffic, as memberlist does:

- **Failure detection.** Each protocol period it probes one member (round
  robin over a shuffled list): a PING that must be ACKed within the probe
  timeout; if not, PING_REQs ask ``indirect_probes`` other members to probe
  it too (they answer NACK when they could not reach it either). No ACK by
  the end of the period: the member becomes *suspect*.
- **Suspicion** (Lifeguard, :mod:`.lifeguard`): a suspect member is declared
  dead when its suspicion times out, sooner the more members independently
  accuse it. The member itself refutes a suspicion by gossiping ``alive``
  with a greater incarnation; a PING to a suspect member carries its
  suspicion so it hears of it at once (Lifeguard's buddy system).
- **Local health** (Lifeguard, :mod:`.lifeguard`): a node whose own probes
  fail without NACKs, or that has to refute a suspicion of itself, stretches
  its probe timeout and protocol period instead of accusing healthy members.
- **Dissemination** (:mod:`.dissemination`): every state change is queued
  and piggybacked on PINGs and ACKs, and sent to ``gossip_fanout`` random
  members each gossip interval, until it went out ``retransmit_mult`` x
  ceil(log10(n + 1)) times; a newer change about a member replaces the
  older. A full state
  exchange (push-pull: SYNC, answered with SYNC_REPLY) with one random
  member runs only on a long interval that grows with the cluster.
- **Join and heal**: :meth:`Swim.join` pushes and pulls state with every
  seed address until a member answers, then again every
  ``rejoin_interval`` together with one dead member: islands left by a
  partition or by start order find each other. Dead members are kept (and
  so re-contacted) for ``dead_retention`` seconds.

The keepalive and close reasons of netmodels' connections say whether one
*connection* works; this says whether a *member* is alive in the cluster's
view, from many members' probes: see docs/p2p-scale.rst.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from attrs import define
from zope.interface import Interface

from netmodels.topologies.p2p.dissemination import UpdateQueue, retransmit_limit
from netmodels.topologies.p2p.lifeguard import LocalHealth, Suspicion, suspicion_bounds
from netmodels.topologies.p2p.swim_config import SwimConfig
from netmodels.topologies.p2p.swim_wire import (
    PACKET_HEADER,
    MalformedPacket,
    MemberState,
    Packet,
    PacketKind,
    Update,
    decode_packet,
    encode_packet,
    update_size,
)
from netmodels.topologies.p2p.timer_heap import Timer, TimerHeap

__all__ = ["ISwimOutput", "Swim", "SwimConfig", "SwimMember"]


@define(eq=False)
class SwimMember:
    """What one node knows of another."""

    node_id: str
    address: str
    incarnation: int = 0
    state: MemberState = MemberState.ALIVE
    #: When the state last changed (the node's clock).
    since: float = 0.0
    #: What it says of itself (with its alive state; the p2p topology: its stream endpoints).
    meta: str = ""
    #: The member said it left (dead by its own word).
    left: bool = False
    suspicion: Suspicion | None = None

    def update(self) -> Update:
        """This member's state as gossip."""
        if self.state is MemberState.ALIVE:
            return Update(self.state, self.incarnation, self.node_id, self.address, self.meta)
        if self.suspicion is not None:
            return Update(self.state, self.incarnation, self.node_id, self.suspicion.accuser)
        return Update(self.state, self.incarnation, self.node_id, self.node_id if self.left else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "address": self.address,
            "state": "left" if self.left else self.state.name.lower(),
            "incarnation": self.incarnation,
            "since": self.since,
            "meta": self.meta,
        }


class ISwimOutput(Interface):
    """What a :class:`Swim` does to the world."""

    def send(address: str, packet: bytes) -> None:
        """Send one packet (a datagram) to ``address``."""

    def member_changed(member: SwimMember, previous: MemberState | None) -> None:
        """``member``'s state changed (``previous`` is ``None`` for a new member)."""


@define
class _Probe:
    sequence: int
    target: SwimMember
    acked: bool = False
    nacks: int = 0
    expected_nacks: int = 0


class Swim:
    """One node's membership; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        address: str,
        incarnation: int,
        config: SwimConfig,
        output: ISwimOutput,
        rng: random.Random,
        meta: str = "",
    ) -> None:
        self.node_id = node_id
        self.address = address
        if len(meta.encode()) > 255:
            raise ValueError("a member's meta is at most 255 bytes of UTF-8")
        #: What this node says of itself to the others.
        self.meta = meta
        self.incarnation = incarnation
        self.config = config
        self.output = output
        self.rng = rng
        self.members: dict[str, SwimMember] = {}
        self.health = LocalHealth(config.awareness_max)
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "packets_sent",
                "bytes_sent",
                "packets_received",
                "bytes_received",
                "malformed",
                "probes",
                "probes_failed",
                "indirect_probes",
                "suspicions",
                "refutations",
                "syncs",
            ),
            0,
        )
        self._seeds: tuple[str, ...] = ()
        self._joined = False
        self._join_retry = config.join_retry
        self._sequence = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._relays: dict[int, tuple[str, int]] = {}
        self._queue = UpdateQueue()
        self._timers = TimerHeap()
        self._started = False
        self._left = False

    # Driving it

    def start(self, now: float, seeds: Sequence[str] = ()) -> None:
        """Start probing and gossiping; join through ``seeds`` (addresses) if given."""
        self._started = True
        self._now = now
        self._seeds = tuple(seeds)
        config = self.config
        self._after(now, self.rng.uniform(0, config.protocol_period), self._probe_next)
        self._after(now, config.gossip_interval, self._gossip)
        self._after(now, self._push_pull_delay(), self._push_pull)
        if self._seeds:
            self._join(now)
        else:
            self._joined = True
            self._after(now, config.rejoin_interval, self._rejoin)

    def receive(self, address: str, data: bytes, now: float) -> None:
        """A packet from ``address``."""
        counts = self.counts
        counts["packets_received"] += 1
        counts["bytes_received"] += len(data)
        try:
            packet = decode_packet(data)
        except MalformedPacket:
            counts["malformed"] += 1
            return
        if packet.sender == self.node_id or self._left:
            return
        self._now = now
        kind = packet.kind
        self._merge(packet.updates, now, from_sync=kind in (PacketKind.SYNC, PacketKind.SYNC_REPLY))
        if not self._joined and packet.sender in self.members:
            self._joined = True
            # Members that joined at the same time as us are not in the
            # seed's answer: one more full exchange soon catches them.
            self._after(now, self.rng.uniform(1.0, 3.0) * self.config.protocol_period, self._sync_random)
        if kind is PacketKind.PING:
            if packet.target in ("", self.node_id):
                self._send(address, PacketKind.ACK, packet.sequence)
        elif kind is PacketKind.ACK:
            self._acked(packet.sequence)
        elif kind is PacketKind.NACK:
            probe = self._probe
            if probe is not None and probe.sequence == packet.sequence:
                probe.nacks += 1
        elif kind is PacketKind.PING_REQ:
            self._relay(address, packet, now)
        elif kind is PacketKind.SYNC and packet.sequence == 0:
            self._send_state(address, PacketKind.SYNC_REPLY)

    def tick(self, now: float) -> None:
        """Run what is due at ``now``."""
        self._now = now
        self._timers.run_due(now)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next."""
        return self._timers.next_deadline()

    def leave(self, now: float) -> None:
        """Say this node leaves: its own death, sent to a few members; then go quiet."""
        self._now = now
        self.incarnation += 1
        farewell = Update(MemberState.DEAD, self.incarnation, self.node_id, self.node_id)
        for member in self._sample(self.config.gossip_fanout * 2):
            self._emit(member.address, Packet(PacketKind.GOSSIP, self.node_id, updates=(farewell,)))
        self._left = True
        self._timers.clear()

    def sync_with(self, node_id: str, now: float) -> bool:
        """
        A hint from outside SWIM that ``node_id`` is reachable (a stream link to it
        just opened). If we hold it dead, exchange whole states with it now: a
        member declared dead while cut off (and we, in its view) then refute at
        once instead of at the next rejoin round. ``True`` if a SYNC went out.
        """
        member = self.members.get(node_id)
        if not self._started or self._left or member is None or member.left:
            return False
        if member.state is not MemberState.DEAD:
            return False
        self._now = now
        self._send_state(member.address, PacketKind.SYNC)
        return True

    # What it knows

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score: 0 (healthy) to ``awareness_max`` - 1."""
        return self.health.score

    def alive(self) -> list[str]:
        """Node ids of members alive or suspect (still believed up)."""
        return [m.node_id for m in self.members.values() if m.state is not MemberState.DEAD]

    def status(self) -> dict[str, Any]:
        states = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
        for member in self.members.values():
            states["left" if member.left else member.state.name.lower()] += 1
        return {
            "incarnation": self.incarnation,
            "awareness": self.awareness,
            "members": states,
            "queued_updates": len(self._queue),
            **self.counts,
        }

    # Timers

    _now: float = 0.0

    def _after(self, now: float, delay: float, action: Callable[[], None]) -> Timer:
        return self._timers.after(now, delay, action)

    # Probing

    def _probe_next(self) -> None:
        now = self._now
        period = self.health.scale(self.config.protocol_period)
        self._after(now, period, self._probe_next)
        target = self._next_target()
        if target is None:
            return
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        probe = self._probe = _Probe(self._sequence, target)
        self.counts["probes"] += 1
        # Lifeguard's buddy system: a suspect member hears of it from its prober.
        first = (target.update(),) if target.state is MemberState.SUSPECT else ()
        self._send(target.address, PacketKind.PING, probe.sequence, target.node_id, first=first)
        self._after(now, self.health.scale(self.config.probe_timeout), lambda: self._indirect(probe))
        self._after(now, period - 1e-9, lambda: self._probe_ended(probe))

    def _next_target(self) -> SwimMember | None:
        members = self.members
        while True:
            if not self._probe_order:
                self._probe_order = [i for i, m in members.items() if m.state is not MemberState.DEAD]
                self.rng.shuffle(self._probe_order)
                if not self._probe_order:
                    return None
            member = members.get(self._probe_order.pop())
            if member is not None and member.state is not MemberState.DEAD:
                return member

    def _indirect(self, probe: _Probe) -> None:
        if probe.acked or self._probe is not probe:
            return
        helpers = self._sample(self.config.indirect_probes, exclude=probe.target.node_id)
        probe.expected_nacks = len(helpers)
        self.counts["indirect_probes"] += len(helpers)
        target = probe.target
        for helper in helpers:
            self._send(helper.address, PacketKind.PING_REQ, probe.sequence, target.node_id, target.address)

    def _probe_ended(self, probe: _Probe) -> None:
        if self._probe is probe:
            self._probe = None
        if probe.acked:
            return
        self.counts["probes_failed"] += 1
        self.health.probe_failed(probe.expected_nacks, probe.nacks)
        target = probe.target
        if target.state is not MemberState.DEAD and self.members.get(target.node_id) is target:
            self._suspect(target, target.incarnation, self.node_id)

    def _acked(self, sequence: int) -> None:
        probe = self._probe
        if probe is not None and probe.sequence == sequence and not probe.acked:
            probe.acked = True
            self.health.probe_succeeded()
            return
        relay = self._relays.pop(sequence, None)
        if relay is not None:
            address, their_sequence = relay
            self._send(address, PacketKind.ACK, their_sequence)

    def _relay(self, requester: str, packet: Packet, now: float) -> None:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        sequence = self._sequence
        self._relays[sequence] = (requester, packet.sequence)
        self._send(packet.target_address, PacketKind.PING, sequence, packet.target)

        def timed_out() -> None:
            if self._relays.pop(sequence, None) is not None:
                self._send(requester, PacketKind.NACK, packet.sequence)

        self._after(now, self.config.probe_timeout, timed_out)

    # State changes

    def _merge(self, updates: Iterable[Update], now: float, from_sync: bool) -> None:
        for update in updates:
            state = update.state
            if state is MemberState.ALIVE:
                self._alive(update, now)
            elif state is MemberState.SUSPECT or (from_sync and update.extra != update.node_id):
                # A full state's "dead" is only suspected here (as memberlist
                # does): a member on the other side of a healed partition
                # then refutes it instead of being killed by stale news.
                self._suspect_update(update)
            else:
                self._dead(update, now)

    def _alive(self, update: Update, now: float) -> None:
        if update.node_id == self.node_id:
            if update.incarnation > self.incarnation:
                # News of an earlier life of ours: be newer.
                self._refute(update.incarnation)
            return
        member = self.members.get(update.node_id)
        if member is None:
            if not update.extra:
                return
            member = SwimMember(update.node_id, update.extra, update.incarnation, since=now, meta=update.meta)
            self.members[update.node_id] = member
            # New members join the probe order at a random place.
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), member.node_id)
            self._queue.put(member.update())
            self.output.member_changed(member, None)
            return
        if update.incarnation <= member.incarnation:
            return
        previous = member.state
        member.incarnation = update.incarnation
        if update.extra:
            member.address = update.extra
        member.meta = update.meta
        member.left = False
        self._set_state(member, MemberState.ALIVE, previous)

    def _suspect_update(self, update: Update) -> None:
        if update.node_id == self.node_id:
            if update.incarnation >= self.incarnation:
                self._refute(update.incarnation)
            return
        member = self.members.get(update.node_id)
        if member is not None:
            self._suspect(member, update.incarnation, update.extra or update.node_id)

    def _suspect(self, member: SwimMember, incarnation: int, accuser: str) -> None:
        if incarnation < member.incarnation or member.state is MemberState.DEAD:
            return
        suspicion = member.suspicion
        if member.state is MemberState.SUSPECT and suspicion is not None:
            if incarnation == member.incarnation:
                if suspicion.confirm(accuser):
                    self._reschedule(member, suspicion)
                    self._queue.put(Update(MemberState.SUSPECT, incarnation, member.node_id, accuser))
                return
            suspicion.cancel()
        config = self.config
        minimum, maximum = suspicion_bounds(
            len(self.members) + 1,
            config.protocol_period,
            config.suspicion_mult,
            config.suspicion_floor,
            config.suspicion_max_mult,
        )
        suspicion = Suspicion(accuser, self._now, minimum, maximum, config.suspicion_confirmations, {accuser})
        member.incarnation = incarnation
        member.suspicion = suspicion
        self.counts["suspicions"] += 1
        self._reschedule(member, suspicion)
        self._set_state(member, MemberState.SUSPECT, member.state)

    def _reschedule(self, member: SwimMember, suspicion: Suspicion) -> None:
        def expired() -> None:
            if member.suspicion is suspicion and member.state is MemberState.SUSPECT:
                verdict = Update(MemberState.DEAD, member.incarnation, member.node_id, self.node_id)
                self._dead(verdict, self._now)

        suspicion.arm(self._now, lambda delay: self._after(self._now, delay, expired))

    def _dead(self, update: Update, now: float) -> None:
        if update.node_id == self.node_id:
            if not self._left and update.incarnation >= self.incarnation:
                self._refute(update.incarnation)
            return
        member = self.members.get(update.node_id)
        if member is None or update.incarnation < member.incarnation:
            return
        if member.state is MemberState.DEAD:
            return
        member.incarnation = update.incarnation
        member.left = update.extra == update.node_id
        self._set_state(member, MemberState.DEAD, member.state)
        self._after(now, self.config.dead_retention, lambda: self._forget(member))

    def _forget(self, member: SwimMember) -> None:
        dead_long = self._now - member.since >= self.config.dead_retention - 1e-6
        if member.state is MemberState.DEAD and dead_long and self.members.get(member.node_id) is member:
            del self.members[member.node_id]
            self._queue.forget(member.node_id)

    def _refute(self, incarnation: int) -> None:
        self.incarnation = max(self.incarnation, incarnation) + 1
        self.counts["refutations"] += 1
        self.health.refuted()
        self._queue.put(self._self_update())

    def _self_update(self) -> Update:
        return Update(MemberState.ALIVE, self.incarnation, self.node_id, self.address, self.meta)

    def _set_state(self, member: SwimMember, state: MemberState, previous: MemberState) -> None:
        if state is not MemberState.SUSPECT and member.suspicion is not None:
            member.suspicion.cancel()
            member.suspicion = None
        member.state = state
        if state is not previous:
            member.since = self._now
        self._queue.put(member.update())
        self.output.member_changed(member, previous)

    # Dissemination

    def _piggyback(self, room: int, first: Sequence[Update] = ()) -> tuple[Update, ...]:
        return self._queue.take(room, retransmit_limit(self.config.retransmit_mult, len(self.members)), first)

    def _gossip(self) -> None:
        now = self._now
        self._after(now, self.config.gossip_interval, self._gossip)
        if not self._queue:
            return
        for member in self._sample(self.config.gossip_fanout):
            room = self.config.max_packet - PACKET_HEADER - len(self.node_id.encode())
            updates = self._piggyback(room)
            if not updates:
                break
            self._emit(member.address, Packet(PacketKind.GOSSIP, self.node_id, updates=updates))

    def _push_pull_delay(self) -> float:
        size = len(self.members) + 1
        scale = 1.0 if size <= 32 else math.ceil(math.log2(size) - math.log2(32)) + 1.0
        interval = self.config.push_pull_interval * scale
        return interval * self.rng.uniform(0.5, 1.5)

    def _push_pull(self) -> None:
        self._after(self._now, self._push_pull_delay(), self._push_pull)
        self._sync_random()

    def _sync_random(self) -> None:
        peers = self._sample(1)
        if peers:
            self._send_state(peers[0].address, PacketKind.SYNC)

    def _send_state(self, address: str, kind: PacketKind) -> None:
        """Our whole view (ourselves included), in packets of at most max_packet bytes."""
        self.counts["syncs"] += 1
        state = [self._self_update()]
        state += [member.update() for member in self.members.values()]
        room = self.config.max_packet - PACKET_HEADER - len(self.node_id.encode())
        chunk: list[Update] = []
        left = room
        part = 0
        for update in state:
            size = update_size(update)
            if chunk and (size > left or len(chunk) == 255):
                self._emit(address, Packet(kind, self.node_id, part, updates=tuple(chunk)))
                part += 1
                chunk, left = [], room
            chunk.append(update)
            left -= size
        self._emit(address, Packet(kind, self.node_id, part, updates=tuple(chunk)))

    # Join and heal

    def _join(self, now: float) -> None:
        if self._joined:
            self._after(now, self.config.rejoin_interval, self._rejoin)
            return
        for seed in self._seeds:
            self._send_state(seed, PacketKind.SYNC)
        delay = self._join_retry
        self._join_retry = min(self._join_retry * 2, self.config.rejoin_interval)
        self._after(now, delay, lambda: self._join(self._now))

    def _rejoin(self) -> None:
        now = self._now
        self._after(now, self.config.rejoin_interval * self.rng.uniform(0.8, 1.2), self._rejoin)
        known = {m.address for m in self.members.values() if m.state is not MemberState.DEAD}
        for seed in self._seeds:
            if seed not in known:
                self._send_state(seed, PacketKind.SYNC)
        dead = [m for m in self.members.values() if m.state is MemberState.DEAD and not m.left]
        if dead:
            self._send_state(self.rng.choice(dead).address, PacketKind.SYNC)

    # Sending

    def _sample(self, count: int, exclude: str = "") -> list[SwimMember]:
        """Up to ``count`` random members believed up, ``exclude`` aside."""
        up = [m for m in self.members.values() if m.state is not MemberState.DEAD and m.node_id != exclude]
        return self.rng.sample(up, min(count, len(up)))

    def _send(
        self,
        address: str,
        kind: PacketKind,
        sequence: int,
        target: str = "",
        target_address: str = "",
        first: Sequence[Update] = (),
    ) -> None:
        used = PACKET_HEADER + sum(len(text.encode()) for text in (self.node_id, target, target_address))
        updates = self._piggyback(self.config.max_packet - used, first)
        self._emit(address, Packet(kind, self.node_id, sequence, target, target_address, updates))

    def _emit(self, address: str, packet: Packet) -> None:
        data = encode_packet(packet)
        self.counts["packets_sent"] += 1
        self.counts["bytes_sent"] += len(data)
        self.output.send(address, data)
