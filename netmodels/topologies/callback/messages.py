"""
The callback topology's messages, sans-IO: REGISTER, DELIVER and ACK, their codes and codecs.
"""

from __future__ import annotations

import json
import struct
from typing import Final

from netmodels.core.frames import MalformedMessage, encode_frame, register_message_types

__all__ = [
    "ACK",
    "DELIVER",
    "KINDS",
    "MESSAGE_TYPES",
    "REGISTER",
    "decode_ack",
    "decode_deliver",
    "decode_register",
    "encode_ack",
    "encode_deliver",
    "encode_register",
]


_ID = struct.Struct("!Q")


#: A client registers its callback endpoint (JSON).
REGISTER: Final = 0x0B


#: A message for the client: a u64 message id, then the payload.
DELIVER: Final = 0x0C


#: The client has every message up to this u64 id.
ACK: Final = 0x0D


#: The callback topology's message types, registered on import so that any
#: decoder (a test's too) accepts them.
MESSAGE_TYPES: Final = {"REGISTER": REGISTER, "DELIVER": DELIVER, "ACK": ACK}


#: The kinds of callback endpoint a server knows how to dial.
KINDS = ("tcp", "tls", "udp")


def encode_register(port: int | None, kind: str = "tcp") -> bytes:
    """REGISTER: the port the client listens on for callbacks (``None``: none), and its kind."""
    return encode_frame(REGISTER, json.dumps({"port": port, "kind": kind}).encode())


def decode_register(body: bytes) -> tuple[int | None, str]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedMessage("REGISTER is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedMessage("REGISTER must be a JSON object")
    port = document.get("port")
    kind = document.get("kind", "tcp")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise MalformedMessage("REGISTER port must be null or an integer from 1 to 65535")
    if kind not in KINDS:
        raise MalformedMessage(f"REGISTER kind must be one of {', '.join(KINDS)}")
    return port, str(kind)


def encode_deliver(message_id: int, payload: bytes) -> bytes:
    return encode_frame(DELIVER, _ID.pack(message_id) + payload)


def decode_deliver(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise MalformedMessage("DELIVER body shorter than its 8-byte id")
    return int(_ID.unpack_from(body)[0]), body[8:]


def encode_ack(message_id: int) -> bytes:
    return encode_frame(ACK, _ID.pack(message_id))


def decode_ack(body: bytes) -> int:
    if len(body) != 8:
        raise MalformedMessage(f"ACK body must be 8 bytes, not {len(body)}")
    return int(_ID.unpack(body)[0])


register_message_types("topology callback", MESSAGE_TYPES)
