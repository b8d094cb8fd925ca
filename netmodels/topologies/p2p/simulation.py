"""
A cluster of SWIM nodes (each with a broadcast overlay) on a simulated network and clock: no sockets.

:class:`SimulatedNetwork` delivers packets after a random latency, drops a
given fraction, and can stall a node (as SIGSTOP does: its packets wait,
its timers are late, and when it resumes its timers run first, as a
Twisted reactor's do). :class:`Cluster` runs :class:`~.swim.Swim` nodes on
it and records when each node saw each member change state, which is what
``benchmarks/p2p_scale.py`` and the tests measure.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Final

from attrs import define, field
from zope.interface import implementer

from netmodels.topologies.p2p.gossipsub import IOverlayOutput, Overlay, OverlayConfig
from netmodels.topologies.p2p.swim import ISwimOutput, Swim, SwimMember
from netmodels.topologies.p2p.swim_config import SwimConfig
from netmodels.topologies.p2p.swim_wire import MemberState

__all__ = ["Cluster", "SimulatedNetwork"]


@define(eq=False)
class _Host:
    address: str
    receive: Callable[[str, bytes, float], None]
    tick: Callable[[float], None]
    next_deadline: Callable[[], float | None]
    stalled_until: float = 0.0
    down: bool = False
    armed: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0


@define
class SimulatedNetwork:
    """Hosts by address, an event queue in simulated seconds, loss and latency."""

    rng: random.Random
    latency: tuple[float, float] = (0.001, 0.005)
    loss: float = 0.0
    now: float = 0.0
    hosts: dict[str, _Host] = field(factory=dict)
    #: While set, each host's side: packets between sides are lost.
    sides: dict[str, int] = field(factory=dict)
    _events: list[tuple[float, int, Callable[[], None]]] = field(factory=list)
    _order: int = 0

    def add(
        self,
        address: str,
        receive: Callable[[str, bytes, float], None],
        tick: Callable[[float], None],
        next_deadline: Callable[[], float | None],
    ) -> None:
        self.hosts[address] = _Host(address, receive, tick, next_deadline)

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._order += 1
        heapq.heappush(self._events, (when, self._order, action))

    def send(self, source: str, destination: str, data: bytes) -> None:
        sender = self.hosts[source]
        sender.bytes_out += len(data)
        if self.loss and self.rng.random() < self.loss:
            return
        if self.sides and self.sides.get(source) != self.sides.get(destination):
            return
        delay = self.rng.uniform(*self.latency)
        self.at(self.now + delay, lambda: self._arrive(source, destination, data))

    def _arrive(self, source: str, destination: str, data: bytes) -> None:
        host = self.hosts.get(destination)
        if host is None or host.down:
            return
        if self.now < host.stalled_until:
            # Held in the socket buffer until the process runs again (after its timers).
            self.at(host.stalled_until + 1e-6, lambda: self._arrive(source, destination, data))
            return
        host.bytes_in += len(data)
        host.receive(source, data, self.now)
        self.arm(host)

    def arm(self, host: _Host) -> None:
        """Make sure ``host`` wakes for its next deadline."""
        deadline = host.next_deadline()
        if deadline is None or host.down:
            return
        deadline = max(deadline, host.stalled_until)
        if host.armed is not None and host.armed <= deadline:
            return
        host.armed = deadline
        self.at(deadline, lambda: self._wake(host, deadline))

    def _wake(self, host: _Host, deadline: float) -> None:
        if host.armed != deadline or host.down:
            return
        host.armed = None
        if self.now < host.stalled_until:
            self.arm(host)
            return
        host.tick(self.now)
        self.arm(host)

    def partition(self, *groups: set[str]) -> None:
        """Cut the network between ``groups`` (hosts in none form one more group)."""
        self.sides = {address: index for index, group in enumerate(groups, 1) for address in group}

    def heal(self) -> None:
        self.sides = {}

    def stall(self, address: str, seconds: float) -> None:
        host = self.hosts[address]
        host.stalled_until = max(host.stalled_until, self.now + seconds)

    def run_until(self, when: float, check: Callable[[], bool] | None = None) -> bool:
        """Run events up to ``when``; stop early (``True``) once ``check()`` holds after an event."""
        events = self._events
        while events and events[0][0] <= when:
            moment, _, action = heapq.heappop(events)
            self.now = moment
            action()
            if check is not None and check():
                return True
        self.now = max(self.now, when)
        return False


_SWIM: Final = b"\x00"
_OVERLAY: Final = b"\x01"


@implementer(ISwimOutput)
class _SimulatedNode:
    """One node: SWIM, and a broadcast overlay on the same address (a first byte tells them apart)."""

    def __init__(self, cluster: Cluster, address: str, seed: int) -> None:
        self.cluster = cluster
        self.address = address
        self.swim = Swim(address, address, 1, cluster.config, self, random.Random(seed))
        self.overlay = Overlay(
            address, 1, cluster.overlay_config, _OverlayOutput(self), random.Random(seed + 1)
        )
        self.heartbeat_at: float | None = None
        #: Messages handed to this node's application: (origin, payload).
        self.delivered: list[tuple[str, bytes]] = []

    def start(self, now: float, seeds: tuple[str, ...]) -> None:
        self.swim.start(now, seeds)
        self.heartbeat_at = now + self.cluster.rng.uniform(0, self.cluster.overlay_config.heartbeat)

    def receive(self, source: str, data: bytes, now: float) -> None:
        if data[:1] == _SWIM:
            self.swim.receive(source, data[1:], now)
        else:
            self.overlay.receive(source, data[1:], now)

    def tick(self, now: float) -> None:
        self.swim.tick(now)
        if self.heartbeat_at is not None and now >= self.heartbeat_at:
            self.overlay.heartbeat(now)
            self.heartbeat_at = now + self.cluster.overlay_config.heartbeat

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.swim.next_deadline(), self.heartbeat_at) if d is not None]
        return min(deadlines) if deadlines else None

    # ISwimOutput

    def send(self, address: str, packet: bytes) -> None:
        self.cluster.network.send(self.address, address, _SWIM + packet)

    def member_changed(self, member: SwimMember, previous: MemberState | None) -> None:
        if member.state is MemberState.DEAD:
            self.overlay.peer_down(member.node_id)
        else:
            self.overlay.peer_up(member.node_id)
        self.cluster.changed(self.address, member, previous)


@implementer(IOverlayOutput)
class _OverlayOutput:
    """A node's overlay sends to node ids, which are addresses here."""

    def __init__(self, node: _SimulatedNode) -> None:
        self.node = node

    def send(self, peer_id: str, packet: bytes) -> None:
        self.node.cluster.network.send(self.node.address, peer_id, _OVERLAY + packet)

    def deliver(self, origin: str, payload: bytes) -> None:
        self.node.delivered.append((origin, payload))


class Cluster:
    """
    ``size`` SWIM nodes named ``n0``, ``n1``, ... (their addresses too) on
    one :class:`SimulatedNetwork`.

    Per node it keeps how many others it sees up, and every change as
    ``(time, observer, member, state)`` in :attr:`changes`.
    """

    def __init__(
        self, size: int, config: SwimConfig, seed: int = 1, overlay: OverlayConfig | None = None
    ) -> None:
        self.rng = random.Random(seed)
        self.network = SimulatedNetwork(random.Random(seed + 1))
        self.config = config
        self.overlay_config = overlay or OverlayConfig()
        self.nodes: dict[str, Swim] = {}
        #: Each node's overlay, by address.
        self.overlays: dict[str, Overlay] = {}
        self.simulated: dict[str, _SimulatedNode] = {}
        self.up_views: dict[str, int] = {}
        self.changes: list[tuple[float, str, str, str]] = []
        self.listeners: list[Callable[[str, SwimMember, MemberState | None], None]] = []
        self.started: set[str] = set()
        self.killed: set[str] = set()
        for index in range(size):
            address = f"n{index}"
            node = _SimulatedNode(self, address, seed * 7919 + index)
            self.simulated[address] = node
            self.nodes[address] = node.swim
            self.overlays[address] = node.overlay
            self.up_views[address] = 0
            self.network.add(address, node.receive, node.tick, node.next_deadline)
            # Not started: nothing listens there yet, packets to it are lost.
            self.network.hosts[address].down = True

    def start(self, address: str, seeds: tuple[str, ...] = ()) -> None:
        self.network.hosts[address].down = False
        self.started.add(address)
        self.simulated[address].start(self.network.now, seeds)
        self.network.arm(self.network.hosts[address])

    def kill(self, address: str) -> None:
        """The node stops at once: no packets out or in, no timers (a crash)."""
        self.network.hosts[address].down = True
        self.killed.add(address)

    def changed(self, observer: str, member: SwimMember, previous: MemberState | None) -> None:
        was_up = previous is not None and previous is not MemberState.DEAD
        is_up = member.state is not MemberState.DEAD
        self.up_views[observer] += is_up - was_up
        self.changes.append((self.network.now, observer, member.node_id, member.state.name.lower()))
        for listener in self.listeners:
            listener(observer, member, previous)

    def running(self) -> list[str]:
        return [a for a in self.nodes if a in self.started and a not in self.killed]

    def converged(self) -> bool:
        """All nodes started, and every running one sees every other running one up, and no more."""
        if len(self.started) < len(self.nodes):
            return False
        running = self.running()
        return all(self.up_views[a] == len(running) - 1 for a in running)

    def sees_dead(self, victim: str) -> bool:
        """Every running node holds ``victim`` dead."""
        for address in self.running():
            member = self.nodes[address].members.get(victim)
            if member is not None and member.state is not MemberState.DEAD:
                return False
        return True

    def received_bytes(self) -> dict[str, int]:
        return {a: host.bytes_in for a, host in self.network.hosts.items()}
