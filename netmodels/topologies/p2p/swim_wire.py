"""
The SWIM membership protocol's packets: a compact binary codec, strict on decode.

Every packet is one datagram-sized message (at most ``max_packet`` bytes,
1,400 by default, so it fits one Ethernet frame with IP, UDP and record
headers)::

    kind (1) | sender id (1 + n) | sequence (4) | target id (1 + n) | target address (1 + n)
    | update count (1) | updates

``sequence`` pairs a PING with its ACK or NACK; target id and address are
empty except in PING (the member the sender thinks it is probing: a member
that restarted under another id at the same address does not answer for the
old one) and PING_REQ (whom to probe on the sender's behalf). Each update is
one member's state as the sender knows it::

    state (1) | incarnation (8) | node id (1 + n) | extra (1 + n) | meta (1 + n)

where ``extra`` is the member's address for ``alive``, and the accuser's
node id for ``suspect`` and ``dead`` (a member that declares itself dead has
left); ``meta`` is what the member says of itself with ``alive`` (the p2p
topology: its stream endpoints), empty otherwise. Strings are UTF-8, at most 255 bytes. Anything else raises
:class:`MalformedPacket`.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from attrs import frozen

__all__ = [
    "PACKET_HEADER",
    "MalformedPacket",
    "MemberState",
    "Packet",
    "PacketKind",
    "Update",
    "decode_packet",
    "encode_packet",
    "update_size",
]


class PacketKind(enum.IntEnum):
    PING = 1
    ACK = 2
    PING_REQ = 3
    NACK = 4
    #: Updates only, sent to a few random members each gossip interval.
    GOSSIP = 5
    #: Push-pull: the sender's whole state, in as many packets as it takes;
    #: the first asks the receiver to answer with its own.
    SYNC = 6
    SYNC_REPLY = 7


class MemberState(enum.IntEnum):
    """A member's state; at equal incarnation the greater one wins."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


class MalformedPacket(ValueError):
    """A packet that does not decode: dropped and counted, never an exception to the caller."""


@frozen
class Update:
    """One member's state, as gossiped."""

    state: MemberState
    incarnation: int
    node_id: str
    #: The address (``alive``) or the accuser's node id (``suspect``, ``dead``).
    extra: str
    #: What the member says of itself (``alive`` only).
    meta: str = ""


@frozen
class Packet:
    kind: PacketKind
    sender: str
    sequence: int = 0
    target: str = ""
    target_address: str = ""
    updates: tuple[Update, ...] = ()


_HEAD: Final = struct.Struct("!B")
_SEQUENCE: Final = struct.Struct("!I")
_UPDATE_HEAD: Final = struct.Struct("!BQ")
#: Bytes of a packet besides its strings and updates.
PACKET_HEADER: Final = 1 + 1 + _SEQUENCE.size + 1 + 1 + 1
_MAX_UPDATES: Final = 255


def update_size(update: Update) -> int:
    """Bytes ``update`` takes in a packet."""
    return (
        _UPDATE_HEAD.size
        + 3
        + sum(len(text.encode()) for text in (update.node_id, update.extra, update.meta))
    )


def _string(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"{text[:40]!r}...: longer than 255 bytes")
    return bytes((len(data),)) + data


def encode_packet(packet: Packet) -> bytes:
    """The bytes of ``packet``; ``ValueError`` if a string is over 255 bytes or over 255 updates."""
    if len(packet.updates) > _MAX_UPDATES:
        raise ValueError(f"{len(packet.updates)} updates: at most {_MAX_UPDATES} fit a packet")
    parts = [
        _HEAD.pack(packet.kind),
        _string(packet.sender),
        _SEQUENCE.pack(packet.sequence),
        _string(packet.target),
        _string(packet.target_address),
        bytes((len(packet.updates),)),
    ]
    for update in packet.updates:
        parts += (
            _UPDATE_HEAD.pack(update.state, update.incarnation),
            _string(update.node_id),
            _string(update.extra),
            _string(update.meta),
        )
    return b"".join(parts)


class _Reader:
    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.position + size
        if end > len(self.data):
            raise MalformedPacket(f"{what} runs past the end of the packet")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def string(self, what: str) -> str:
        size = self.byte(what)
        try:
            return self.take(size, what).decode()
        except UnicodeDecodeError:
            raise MalformedPacket(f"{what} is not UTF-8") from None


def decode_packet(data: bytes) -> Packet:
    """The packet in ``data``; :class:`MalformedPacket` if it is not exactly one."""
    reader = _Reader(data)
    kind_code = reader.byte("kind")
    try:
        kind = PacketKind(kind_code)
    except ValueError:
        raise MalformedPacket(f"unknown packet kind {kind_code}") from None
    sender = reader.string("sender")
    if not sender:
        raise MalformedPacket("empty sender id")
    (sequence,) = _SEQUENCE.unpack(reader.take(_SEQUENCE.size, "sequence"))
    target = reader.string("target")
    target_address = reader.string("target address")
    updates: list[Update] = []
    for _ in range(reader.byte("update count")):
        state_code, incarnation = _UPDATE_HEAD.unpack(reader.take(_UPDATE_HEAD.size, "update"))
        try:
            state = MemberState(state_code)
        except ValueError:
            raise MalformedPacket(f"unknown member state {state_code}") from None
        node_id = reader.string("member id")
        if not node_id:
            raise MalformedPacket("empty member id")
        extra = reader.string("update extra")
        updates.append(Update(state, incarnation, node_id, extra, reader.string("update meta")))
    if reader.position != len(data):
        raise MalformedPacket(f"{len(data) - reader.position} bytes after the last update")
    return Packet(kind, sender, sequence, target, target_address, tuple(updates))
