"""
The pubsub messages on the wire, sans-IO: bytes in, values out, no Twisted.

Each is one netmodels frame of the topology's own type; its body is made of
strings prefixed by their length in UTF-8 bytes (a big-endian u16), then the
payload, which runs to the end of the frame:

* ``SUBSCRIBE`` (client to broker): ``topic``.
* ``PUBLISH`` (client to broker): ``topic``, then the payload.
* ``FORWARD`` (broker to subscriber): ``publisher`` (its node id), ``topic``,
  then the payload. The broker encodes it once for all of a topic's subscribers.

A body that does not parse raises :class:`~netmodels.core.frames.MalformedMessage`,
which the glue turns into a ``protocol-error`` close of that peer's connection.
"""

from __future__ import annotations

import struct
import unicodedata
from typing import Final

from attrs import frozen

from netmodels.core.frames import MalformedMessage, encode_frame

__all__ = [
    "FORWARD",
    "MAX_PUBLISHER",
    "MAX_TOPIC",
    "MESSAGE_TYPES",
    "PUBLISH",
    "SUBSCRIBE",
    "Forward",
    "Publish",
    "check_topic",
    "decode_forward",
    "decode_publish",
    "decode_subscribe",
    "encode_forward",
    "encode_publish",
    "encode_subscribe",
]

#: The topology's own message types. 0x00-0x1F belong to netmodels; plugins use 0x40 and up.
SUBSCRIBE: Final = 0x40
PUBLISH: Final = 0x41
FORWARD: Final = 0x42
MESSAGE_TYPES: Final = {"SUBSCRIBE": SUBSCRIBE, "PUBLISH": PUBLISH, "FORWARD": FORWARD}

#: The longest topic, in UTF-8 bytes: a broker keeps every topic it is told.
MAX_TOPIC: Final = 128
#: A node id is at most 128 characters (HELLO's limit), so at most 512 bytes.
MAX_PUBLISHER: Final = 512

_LENGTH: Final = struct.Struct("!H")


def check_topic(topic: str) -> str:
    """
    ``topic`` if it is 1 to :data:`MAX_TOPIC` UTF-8 bytes without control
    characters, else ``ValueError`` saying why. The same rule holds on the
    command line and on the wire.
    """
    size = len(topic.encode("utf-8", "surrogatepass"))
    if not 0 < size <= MAX_TOPIC:
        raise ValueError(f"a topic is 1 to {MAX_TOPIC} bytes of UTF-8, not {size}")
    # Topics end up in logs and in GET /status: no newlines, escapes or NULs.
    if any(unicodedata.category(c).startswith("C") for c in topic):
        raise ValueError(f"a topic has no control characters: {topic!r}")
    return topic


@frozen
class Publish:
    """A publication as a client sends it."""

    topic: str
    payload: bytes


@frozen
class Forward:
    """A publication as the broker forwards it: who published it, too."""

    publisher: str
    topic: str
    payload: bytes


# Encoding


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _LENGTH.pack(len(data)) + data


def encode_subscribe(topic: str) -> bytes:
    """A SUBSCRIBE frame. ``ValueError`` if the topic breaks :func:`check_topic`."""
    return encode_frame(SUBSCRIBE, _string(check_topic(topic)))


def encode_publish(topic: str, payload: bytes) -> bytes:
    """A PUBLISH frame. ``ValueError`` if the topic breaks :func:`check_topic`."""
    return encode_frame(PUBLISH, _string(check_topic(topic)) + payload)


def encode_forward(publisher: str, topic: str, payload: bytes) -> bytes:
    """A FORWARD frame, for every subscriber of ``topic``."""
    return encode_frame(FORWARD, _string(publisher) + _string(check_topic(topic)) + payload)


# Decoding


def _take_string(body: bytes, position: int, what: str, limit: int) -> tuple[str, int]:
    """The string at ``position`` and the position after it."""
    if len(body) - position < _LENGTH.size:
        raise MalformedMessage(f"{what}: body ends before its length")
    (size,) = _LENGTH.unpack_from(body, position)
    start = position + _LENGTH.size
    if size > limit:
        raise MalformedMessage(f"{what} of {size} bytes exceeds {limit}")
    if len(body) - start < size:
        raise MalformedMessage(f"{what}: {size} bytes announced, {len(body) - start} left")
    try:
        text = body[start : start + size].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"{what} is not UTF-8") from None
    return text, start + size


def _take_topic(body: bytes, position: int, message: str) -> tuple[str, int]:
    topic, position = _take_string(body, position, f"{message} topic", MAX_TOPIC)
    try:
        check_topic(topic)
    except ValueError as e:
        raise MalformedMessage(f"{message}: {e}") from None
    return topic, position


def decode_subscribe(body: bytes) -> str:
    """The topic of a SUBSCRIBE body; nothing may follow it."""
    topic, end = _take_topic(body, 0, "SUBSCRIBE")
    if end != len(body):
        raise MalformedMessage(f"SUBSCRIBE: {len(body) - end} bytes after the topic")
    return topic


def decode_publish(body: bytes) -> Publish:
    """A PUBLISH body: its topic and payload (possibly empty)."""
    topic, end = _take_topic(body, 0, "PUBLISH")
    return Publish(topic, body[end:])


def decode_forward(body: bytes) -> Forward:
    """A FORWARD body: publisher, topic and payload."""
    publisher, position = _take_string(body, 0, "FORWARD publisher", MAX_PUBLISHER)
    if not publisher:
        raise MalformedMessage("FORWARD: empty publisher")
    topic, end = _take_topic(body, position, "FORWARD")
    return Forward(publisher, topic, body[end:])
