"""
A broadcast overlay in the manner of gossipsub v1.1, sans-IO: fed packets and time, it sends packets.

Flooding sends every message over every link. Here each node keeps a
*mesh* of ``degree`` broadcast peers (6; kept between 4 and 12) among the
members its membership says are up, and:

- **eager push**: a new message goes to every mesh peer (but the one it came
  from, and its origin), so it crosses each mesh link about once;
- **lazy pull**: each heartbeat, the ids of the messages of the last few
  heartbeats are announced (IHAVE) to ``lazy_degree`` peers outside the mesh
  (topped up from the mesh when fewer are outside it), which ask (IWANT) for
  those they have not seen, from the announcer, and from another one if the
  first does not answer by the next heartbeat.
  That repairs what loss or a broken mesh link dropped;
- **mesh upkeep**: each heartbeat a node under ``degree_low`` grafts random
  up peers (GRAFT; the peer adds it back, or answers PRUNE when it is over
  ``degree_high``), and one over ``degree_high`` prunes down to ``degree``.

A message id is (origin, origin's incarnation, sequence): delivered to the
application once, remembered for ``seen_ttl`` seconds. Left out from
gossipsub: topics (one overlay is one topic), peer scoring, flood publishing
and backoff after PRUNE.

Packets (big-endian)::

    MESSAGE  1 | origin (1 + n) | incarnation (8) | sequence (8) | payload
    IHAVE    2 | count (2) | ids, each origin (1 + n) | incarnation (8) | sequence (8)
    IWANT    3 | the same
    GRAFT    4
    PRUNE    5
"""

from __future__ import annotations

import collections
import enum
import random
import struct
from collections.abc import Iterable
from typing import Any, Final

from attrs import frozen
from zope.interface import Interface

__all__ = ["IOverlayOutput", "MalformedOverlayPacket", "Overlay", "OverlayConfig"]

MessageId = tuple[str, int, int]

_ID_NUMBERS: Final = struct.Struct("!QQ")
_COUNT: Final = struct.Struct("!H")


class _Kind(enum.IntEnum):
    MESSAGE = 1
    IHAVE = 2
    IWANT = 3
    GRAFT = 4
    PRUNE = 5


class MalformedOverlayPacket(ValueError):
    """A packet that does not decode: dropped and counted."""


class IOverlayOutput(Interface):
    """What an :class:`Overlay` does to the world."""

    def send(peer_id: str, packet: bytes) -> None:
        """Send one overlay packet to a peer."""

    def deliver(origin: str, payload: bytes) -> None:
        """A message new to this node: hand it to the application (once)."""


@frozen
class OverlayConfig:
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    lazy_degree: int = 6
    heartbeat: float = 1.0
    #: Heartbeats a message stays in the cache (what IWANT can get).
    history_length: int = 5
    #: Heartbeats of message ids announced in IHAVE.
    history_gossip: int = 3
    #: Seconds a message id is remembered against duplicates.
    seen_ttl: float = 120.0
    #: Ids in one IHAVE or IWANT, at most.
    max_ids: int = 500
    #: IWANT attempts for one id (from different announcers) before giving up.
    max_asks: int = 3


def _encode_id(message_id: MessageId) -> bytes:
    origin = message_id[0].encode()
    return bytes((len(origin),)) + origin + _ID_NUMBERS.pack(message_id[1], message_id[2])


def _decode_id(data: bytes, position: int) -> tuple[MessageId, int]:
    if position >= len(data):
        raise MalformedOverlayPacket("a message id runs past the end")
    size = data[position]
    end = position + 1 + size + _ID_NUMBERS.size
    if size == 0 or end > len(data):
        raise MalformedOverlayPacket("a message id runs past the end")
    try:
        origin = data[position + 1 : position + 1 + size].decode()
    except UnicodeDecodeError:
        raise MalformedOverlayPacket("an origin is not UTF-8") from None
    incarnation, sequence = _ID_NUMBERS.unpack_from(data, position + 1 + size)
    return (origin, incarnation, sequence), end


def _ids_packet(kind: _Kind, ids: list[MessageId]) -> bytes:
    return bytes((kind,)) + _COUNT.pack(len(ids)) + b"".join(_encode_id(i) for i in ids)


def _decode_ids(data: bytes) -> list[MessageId]:
    if len(data) < 3:
        raise MalformedOverlayPacket("no id count")
    (count,) = _COUNT.unpack_from(data, 1)
    ids, position = [], 3
    for _ in range(count):
        message_id, position = _decode_id(data, position)
        ids.append(message_id)
    if position != len(data):
        raise MalformedOverlayPacket("bytes after the last id")
    return ids


class Overlay:
    """One node's part of the broadcast overlay; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        incarnation: int,
        config: OverlayConfig,
        output: IOverlayOutput,
        rng: random.Random,
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.config = config
        self.output = output
        self.rng = rng
        self.peers: set[str] = set()
        self.mesh: set[str] = set()
        self.counts: dict[str, int] = dict.fromkeys(
            ("published", "delivered", "duplicates", "served", "asked", "grafts", "prunes", "malformed"), 0
        )
        self._sequence = 0
        self._seen: dict[MessageId, float] = {}
        self._seen_order: collections.deque[tuple[float, MessageId]] = collections.deque()
        self._cache: dict[MessageId, bytes] = {}
        self._windows: collections.deque[list[MessageId]] = collections.deque([[]])
        #: Ids announced to us and not yet seen: who announced them, and how often we asked.
        self._wanted: dict[MessageId, tuple[list[str], int]] = {}

    # Membership

    def peer_up(self, peer_id: str) -> None:
        if peer_id != self.node_id:
            self.peers.add(peer_id)

    def peer_down(self, peer_id: str) -> None:
        self.peers.discard(peer_id)
        self.mesh.discard(peer_id)

    # Messages

    def publish(self, payload: bytes, now: float) -> MessageId:
        """Send ``payload`` to every node; this node's application is not handed its own message."""
        self._sequence += 1
        message_id = (self.node_id, self.incarnation, self._sequence)
        packet = bytes((_Kind.MESSAGE,)) + _encode_id(message_id) + payload
        self._remember(message_id, packet, now)
        self.counts["published"] += 1
        targets = self.mesh or set(self._sample(self.peers, self.config.degree))
        for peer in targets:
            self.output.send(peer, packet)
        return message_id

    def receive(self, peer_id: str, packet: bytes, now: float) -> None:
        """A packet from ``peer_id``."""
        try:
            kind = _Kind(packet[0]) if packet else None
            if kind is _Kind.MESSAGE:
                message_id, position = _decode_id(packet, 1)
                self._message(peer_id, message_id, packet, position, now)
            elif kind is _Kind.IHAVE:
                self._ihave(peer_id, _decode_ids(packet))
            elif kind is _Kind.IWANT:
                self._iwant(peer_id, _decode_ids(packet))
            elif kind is _Kind.GRAFT and len(packet) == 1:
                self._graft(peer_id)
            elif kind is _Kind.PRUNE and len(packet) == 1:
                self.mesh.discard(peer_id)
            else:
                raise MalformedOverlayPacket("unknown kind, or bytes after GRAFT or PRUNE")
        except (MalformedOverlayPacket, ValueError):
            self.counts["malformed"] += 1

    def _message(self, sender: str, message_id: MessageId, packet: bytes, position: int, now: float) -> None:
        if message_id in self._seen:
            self.counts["duplicates"] += 1
            return
        self._remember(message_id, packet, now)
        self._wanted.pop(message_id, None)
        origin = message_id[0]
        if origin != self.node_id:
            self.counts["delivered"] += 1
            self.output.deliver(origin, packet[position:])
        for peer in self.mesh:
            if peer != sender and peer != origin:
                self.output.send(peer, packet)

    def _ihave(self, sender: str, ids: list[MessageId]) -> None:
        wanted = [i for i in ids if i not in self._seen and i not in self._wanted][: self.config.max_ids]
        for message_id in ids:
            entry = self._wanted.get(message_id)
            if entry is not None and sender not in entry[0]:
                entry[0].append(sender)
        if wanted:
            for message_id in wanted:
                self._wanted[message_id] = ([sender], 1)
            self.counts["asked"] += len(wanted)
            self.output.send(sender, _ids_packet(_Kind.IWANT, wanted))

    def _iwant(self, sender: str, ids: list[MessageId]) -> None:
        for message_id in ids[: self.config.max_ids]:
            packet = self._cache.get(message_id)
            if packet is not None:
                self.counts["served"] += 1
                self.output.send(sender, packet)

    def _graft(self, sender: str) -> None:
        if sender in self.peers and (sender in self.mesh or len(self.mesh) < self.config.degree_high):
            self.mesh.add(sender)
        else:
            self.counts["prunes"] += 1
            self.output.send(sender, bytes((_Kind.PRUNE,)))

    def _remember(self, message_id: MessageId, packet: bytes, now: float) -> None:
        expires = now + self.config.seen_ttl
        self._seen[message_id] = expires
        self._seen_order.append((expires, message_id))
        self._cache[message_id] = packet
        self._windows[0].append(message_id)

    # The heartbeat

    def heartbeat(self, now: float) -> None:
        """Mesh upkeep, lazy announcements, retries and expiry; call every ``config.heartbeat`` seconds."""
        config = self.config
        self.mesh &= self.peers
        if len(self.mesh) < config.degree_low:
            for peer in self._sample(self.peers - self.mesh, config.degree - len(self.mesh)):
                self.mesh.add(peer)
                self.counts["grafts"] += 1
                self.output.send(peer, bytes((_Kind.GRAFT,)))
        elif len(self.mesh) > config.degree_high:
            for peer in self._sample(self.mesh, len(self.mesh) - config.degree):
                self.mesh.discard(peer)
                self.counts["prunes"] += 1
                self.output.send(peer, bytes((_Kind.PRUNE,)))
        recent = [i for window in list(self._windows)[: config.history_gossip] for i in window]
        if recent:
            announcement = _ids_packet(_Kind.IHAVE, recent[-config.max_ids :])
            outside = self._sample(self.peers - self.mesh, config.lazy_degree)
            # With too few peers outside the mesh (a small cluster), mesh peers hear it
            # too: one whose link came up after a message went by would never get it.
            inside = self._sample(self.mesh, config.lazy_degree - len(outside))
            for peer in outside + inside:
                self.output.send(peer, announcement)
        self._retry()
        self._windows.appendleft([])
        while len(self._windows) > config.history_length:
            for message_id in self._windows.pop():
                self._cache.pop(message_id, None)
        while self._seen_order and self._seen_order[0][0] <= now:
            _, message_id = self._seen_order.popleft()
            if self._seen.get(message_id, now + 1) <= now:
                del self._seen[message_id]

    def _retry(self) -> None:
        """Ask another announcer for what the first did not send, a few times, then give up."""
        again: dict[str, list[MessageId]] = collections.defaultdict(list)
        for message_id, (announcers, asks) in list(self._wanted.items()):
            if asks >= self.config.max_asks:
                del self._wanted[message_id]
                continue
            peer = announcers[asks % len(announcers)]
            self._wanted[message_id] = (announcers, asks + 1)
            again[peer].append(message_id)
        for peer, ids in again.items():
            self.counts["asked"] += len(ids)
            self.output.send(peer, _ids_packet(_Kind.IWANT, ids[: self.config.max_ids]))

    def _sample(self, peers: Iterable[str], count: int) -> list[str]:
        pool = sorted(peers)
        return self.rng.sample(pool, min(max(count, 0), len(pool)))

    def status(self) -> dict[str, Any]:
        return {"peers": len(self.peers), "mesh": sorted(self.mesh), **self.counts}
