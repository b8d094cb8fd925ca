"""
The p2p topology's messages: PEERS (membership by connections) and BROADCAST (a
flooded or relayed message), and their codecs; OVERLAY's packets are :mod:`.gossipsub`'s.
"""

from __future__ import annotations

import json
import struct
from typing import Final

from attrs import frozen

from netmodels.core.frames import MalformedMessage, encode_frame, register_message_types
from netmodels.topologies.p2p.members import PeerState

__all__ = [
    "BROADCAST",
    "MAX_MEMBERS",
    "MESSAGE_TYPES",
    "OVERLAY",
    "PEERS",
    "Broadcast",
    "decode_broadcast",
    "decode_peers",
    "encode_broadcast",
]

#: Peer exchange: a JSON list of members and their endpoints.
PEERS: Final = 0x09
#: A message flooded to every node, or relayed to one.
BROADCAST: Final = 0x0A
#: The p2p topology's message types, registered on import so that any
#: decoder (a test's too) accepts them.
#: With SWIM: one packet of the broadcast overlay (:mod:`.gossipsub`) over a link.
OVERLAY: Final = 0x0E
MESSAGE_TYPES: Final = {"PEERS": PEERS, "BROADCAST": BROADCAST, "OVERLAY": OVERLAY}
register_message_types("topology p2p", MESSAGE_TYPES)


_BROADCAST_HEADER: Final = struct.Struct("!BBQI")


@frozen
class Broadcast:
    """
    A flooded message. ``(origin, incarnation, sequence)`` identifies it, so
    each node delivers it once; ``destination`` is empty for everyone, or one
    node id for a message relayed to that node only.
    """

    origin: str
    incarnation: int
    sequence: int
    payload: bytes
    destination: str = ""

    @property
    def message_id(self) -> tuple[str, int, int]:
        return (self.origin, self.incarnation, self.sequence)


def encode_broadcast(message: Broadcast) -> bytes:
    """A BROADCAST frame: ``!BBQI`` (origin length, destination length,
    incarnation, sequence), then origin, destination and payload."""
    origin = message.origin.encode()
    destination = message.destination.encode()
    header = _BROADCAST_HEADER.pack(len(origin), len(destination), message.incarnation, message.sequence)
    return encode_frame(BROADCAST, header + origin + destination + message.payload)


def decode_broadcast(body: bytes) -> Broadcast:
    size = _BROADCAST_HEADER.size
    if len(body) < size:
        raise MalformedMessage("BROADCAST body shorter than its header")
    origin_length, destination_length, incarnation, sequence = _BROADCAST_HEADER.unpack_from(body)
    end = size + origin_length + destination_length
    if origin_length == 0 or len(body) < end:
        raise MalformedMessage("BROADCAST origin or destination runs past the body")
    try:
        origin = body[size : size + origin_length].decode()
        destination = body[size + origin_length : end].decode()
    except UnicodeDecodeError:
        raise MalformedMessage("BROADCAST origin or destination is not UTF-8") from None
    return Broadcast(origin, incarnation, sequence, body[end:], destination)


#: Most members one PEERS frame may carry.
MAX_MEMBERS: Final = 1024


def decode_peers(body: bytes) -> list[tuple[str, tuple[str, ...], int, PeerState]]:
    """A PEERS body: (id, endpoints, incarnation, state) per member; :class:`MalformedMessage` if bad."""
    try:
        document = json.loads(body)
        members = document["members"]
        if not isinstance(members, list) or len(members) > MAX_MEMBERS:
            raise ValueError("members must be a list")
        entries = []
        for entry in members:
            node_id = entry["id"]
            endpoints = entry.get("endpoints", [])
            incarnation = entry.get("incarnation", 0)
            if not isinstance(node_id, str) or not 0 < len(node_id) <= 128:
                raise ValueError("bad id")
            if not isinstance(endpoints, list) or len(endpoints) > 16:
                raise ValueError("bad endpoints")
            if not all(isinstance(e, str) and len(e) <= 512 for e in endpoints):
                raise ValueError("bad endpoints")
            if not isinstance(incarnation, int) or isinstance(incarnation, bool) or incarnation < 0:
                raise ValueError("bad incarnation")
            entries.append((node_id, tuple(endpoints), incarnation, PeerState(entry.get("state", "alive"))))
        return entries
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise MalformedMessage(f"PEERS: {e}") from None
