"""
The datagram layer under netmodels sessions on UDP, without I/O.

UDP has no connection, no FIN, no RST, no retransmission and no keepalive;
this module supplies them as pure state machines that :mod:`netmodels.transports.udp`
drives from a Twisted ``DatagramProtocol``:

* the datagram format (:func:`parse`, and one ``encode_*`` per kind), whose
  parser never raises anything but :class:`MalformedDatagram`;
* a stateless-cookie handshake (:class:`CookieJar`): the listening side keeps
  nothing and sends at most 3x what it received until the peer has proved it
  owns its address, so it cannot amplify traffic towards a spoofed source;
* :class:`SequenceWindow`: loss, duplicate and reordering counts for the
  unreliable channel (duplicates are dropped);
* and, in :mod:`netmodels.core.reliable`, the reliable channel: an ordered,
  reliable byte stream over SEGMENT and ACK datagrams.

Every datagram of a session starts with its kind and the 64-bit session id the
listening side chose; see ``docs/protocol.md`` for the byte layout.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from netmodels.core.frames import walk_frames

__all__ = [
    "DATAGRAM_VERSION",
    "DEFAULT_MAX_DATAGRAM",
    "MAX_DATAGRAM",
    "MIN_DATAGRAM",
    "CookieJar",
    "Kind",
    "MalformedDatagram",
    "Packet",
    "SequenceWindow",
    "parse",
]

#: Version of the datagram layer, carried by INIT and OPEN.
DATAGRAM_VERSION: Final = 1
#: A datagram that fits a 1280-byte IPv6 path MTU (minus the IPv6 and UDP
#: headers) with room to spare, as QUIC chooses.
DEFAULT_MAX_DATAGRAM: Final = 1200
#: The largest UDP payload over IPv4.
MAX_DATAGRAM: Final = 65507
#: Below this, a session could not carry its own HELLO in a few segments.
MIN_DATAGRAM: Final = 256
#: INIT is padded to this size, so that the COOKIE answer is smaller than it.
INIT_SIZE: Final = 64
#: A cookie is honoured for this many seconds after it was issued.
COOKIE_LIFETIME: Final = 30


class Kind(enum.IntEnum):
    """The first byte of every datagram."""

    #: client -> server: version, nonce, padding to :data:`INIT_SIZE`.
    INIT = 0xC1
    #: server -> client: nonce, issue time, MAC (keeps no state).
    COOKIE = 0xC2
    #: client -> server: version, nonce, issue time, MAC (proves the address).
    OPEN = 0xC3
    #: server -> client: nonce, session id.
    ACCEPT = 0xC4
    #: Unreliable: session id, sequence number, whole frames.
    DATA = 0xD0
    #: Reliable: session id, sequence number, flags, a slice of the stream.
    SEGMENT = 0xD1
    #: Session id, next expected segment, bitmap of the 64 after it (the
    #: whole default window, so every segment held can be acknowledged).
    ACK = 0xD2
    #: Session id: the session is gone (our RST).
    RESET = 0xD3


#: SEGMENT flag: the last segment of the stream (our FIN).
FIN: Final = 0x01
#: Segments after the next expected one that an ACK's bitmap reports.
ACK_BITS: Final = 64

_SID = struct.Struct("!BQ")
_INIT = struct.Struct("!BBQ")
_COOKIE = struct.Struct("!BQI16s")
_OPEN = struct.Struct("!BBQI16s")
_ACCEPT = struct.Struct("!BQQ")
_DATA = struct.Struct("!BQI")
_SEGMENT = struct.Struct("!BQIB")
_ACK = struct.Struct("!BQIQ")

#: Header bytes before the frames of a DATA datagram.
DATA_HEADER: Final = _DATA.size
#: Header bytes before the stream bytes of a SEGMENT.
SEGMENT_HEADER: Final = _SEGMENT.size


class MalformedDatagram(ValueError):
    """A datagram that is not ours, or is truncated: dropped and counted."""


class Packet(NamedTuple):
    """A parsed datagram; fields that a kind lacks are 0 or empty."""

    kind: Kind
    session: int = 0
    sequence: int = 0
    flags: int = 0
    payload: bytes = b""
    nonce: int = 0
    issued: int = 0
    mac: bytes = b""
    version: int = 0
    ack_bits: int = 0


def parse(datagram: bytes) -> Packet:
    """
    Parse one datagram. Raises :class:`MalformedDatagram` (only) for
    anything that is not a well-formed netmodels datagram.
    """
    if not datagram:
        raise MalformedDatagram("empty datagram")
    kind = datagram[0]
    size = len(datagram)
    try:
        if kind == Kind.DATA:
            _, session, sequence = _DATA.unpack_from(datagram)
            return Packet(Kind.DATA, session, sequence, payload=datagram[DATA_HEADER:])
        if kind == Kind.SEGMENT:
            _, session, sequence, flags = _SEGMENT.unpack_from(datagram)
            if flags & ~FIN:
                raise MalformedDatagram(f"unknown segment flags {flags:#x}")
            return Packet(Kind.SEGMENT, session, sequence, flags, datagram[SEGMENT_HEADER:])
        if kind == Kind.ACK:
            _, session, sequence, bits = _exact(_ACK, datagram)
            return Packet(Kind.ACK, session, sequence, ack_bits=bits)
        if kind == Kind.RESET:
            _, session = _exact(_SID, datagram)
            return Packet(Kind.RESET, session)
        if kind == Kind.INIT:
            if size != INIT_SIZE:
                raise MalformedDatagram(f"INIT of {size} bytes, expected {INIT_SIZE}")
            _, version, nonce = _INIT.unpack_from(datagram)
            return Packet(Kind.INIT, nonce=nonce, version=version)
        if kind == Kind.COOKIE:
            _, nonce, issued, mac = _exact(_COOKIE, datagram)
            return Packet(Kind.COOKIE, nonce=nonce, issued=issued, mac=mac)
        if kind == Kind.OPEN:
            _, version, nonce, issued, mac = _exact(_OPEN, datagram)
            return Packet(Kind.OPEN, nonce=nonce, issued=issued, mac=mac, version=version)
        if kind == Kind.ACCEPT:
            _, nonce, session = _exact(_ACCEPT, datagram)
            return Packet(Kind.ACCEPT, session, nonce=nonce)
    except struct.error:
        raise MalformedDatagram(f"truncated {Kind(kind).name} datagram of {size} bytes") from None
    raise MalformedDatagram(f"unknown datagram kind {kind:#04x}")


def _exact(layout: struct.Struct, datagram: bytes) -> tuple[Any, ...]:
    if len(datagram) != layout.size:
        raise MalformedDatagram(f"{Kind(datagram[0]).name} of {len(datagram)} bytes, expected {layout.size}")
    return layout.unpack(datagram)


def encode_init(nonce: int) -> bytes:
    return _INIT.pack(Kind.INIT, DATAGRAM_VERSION, nonce).ljust(INIT_SIZE, b"\0")


def encode_cookie(nonce: int, issued: int, mac: bytes) -> bytes:
    return _COOKIE.pack(Kind.COOKIE, nonce, issued, mac)


def encode_open(nonce: int, issued: int, mac: bytes) -> bytes:
    return _OPEN.pack(Kind.OPEN, DATAGRAM_VERSION, nonce, issued, mac)


def encode_accept(nonce: int, session: int) -> bytes:
    return _ACCEPT.pack(Kind.ACCEPT, nonce, session)


def encode_data_header(session: int, sequence: int) -> bytes:
    return _DATA.pack(Kind.DATA, session, sequence & 0xFFFFFFFF)


def encode_segment(session: int, sequence: int, flags: int, payload: bytes) -> bytes:
    return _SEGMENT.pack(Kind.SEGMENT, session, sequence & 0xFFFFFFFF, flags) + payload


def encode_ack(session: int, expected: int, bits: int) -> bytes:
    return _ACK.pack(Kind.ACK, session, expected & 0xFFFFFFFF, bits)


def encode_reset(session: int) -> bytes:
    return _SID.pack(Kind.RESET, session)


def unwrap(wire: int, near: int) -> int:
    """The 64-bit-and-up sequence number closest to ``near`` whose low 32 bits are ``wire``."""
    return near + ((wire - near + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def whole_frames(payload: bytes) -> bool:
    """Whether ``payload`` is a run of complete length-prefixed frames (none of them empty)."""
    return walk_frames(payload, len(payload))[1] == 0


#: Where a DATA datagram's sequence number starts (after its kind and session id).
_SEQUENCE_AT: Final = 9
_BYTE_CYCLE: Final = bytes(range(256))


def single_frames_in_order(joined: bytes, size: int, first: int, count: int) -> bool:
    """
    Whether ``joined``, ``count`` DATA datagrams of ``size`` bytes each one
    after the other, carry the sequence numbers ``first`` to ``first +
    count - 1`` in turn (``first + count`` at most 2**32) and one whole frame
    each: a flood of one message size, arriving in order.

    Checked a header byte at a time: one byte of every header is one stride
    of ``joined``, compared in C with the bytes it must hold.
    """
    length = (size - DATA_HEADER - 4).to_bytes(4, "big")
    for offset in range(4):
        if joined[DATA_HEADER + offset :: size] != length[offset : offset + 1] * count:
            return False
    last = first + count - 1
    for offset, shift in enumerate((24, 16, 8, 0)):
        if joined[_SEQUENCE_AT + offset :: size] != _sequence_bytes(first, last, shift):
            return False
    return True


def _sequence_bytes(first: int, last: int, shift: int) -> bytes:
    """Byte ``(s >> shift) & 0xFF`` of each sequence number ``s`` from ``first`` to ``last``."""
    count = last - first + 1
    if shift == 0:
        start = first & 0xFF
        return (_BYTE_CYCLE * ((start + count - 1) // 256 + 1))[start : start + count]
    high, top = first >> shift, last >> shift
    if high == top:
        return bytes((high & 0xFF,)) * count
    run = 1 << shift
    parts = [bytes((high & 0xFF,)) * (run - (first & (run - 1)))]
    parts += [bytes((value & 0xFF,)) * run for value in range(high + 1, top)]
    parts.append(bytes((top & 0xFF,)) * ((last & (run - 1)) + 1))
    return b"".join(parts)


# The handshake


class CookieJar:
    """
    Stateless cookies: ``mint`` answers an INIT with a MAC over the source
    address, the client's nonce and the time; ``check`` verifies an OPEN.
    Nothing is stored between the two, so a flood of INITs costs no memory.

    :param now: seconds (the reactor's clock), injected.
    :param secret: the MAC key; random per process unless given.
    """

    def __init__(self, now: Callable[[], float], secret: bytes | None = None) -> None:
        self._now = now
        self._secret = secret or os.urandom(32)

    def _mac(self, address: str, nonce: int, issued: int) -> bytes:
        message = f"{address}|{nonce}|{issued}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:16]

    def mint(self, address: str, nonce: int) -> bytes:
        """The COOKIE datagram answering ``nonce`` from ``address``."""
        issued = int(self._now()) & 0xFFFFFFFF
        return encode_cookie(nonce, issued, self._mac(address, nonce, issued))

    def check(self, address: str, packet: Packet) -> str | None:
        """``None`` if ``packet`` (an OPEN) carries a cookie we minted for ``address``; else why not."""
        if not hmac.compare_digest(packet.mac, self._mac(address, packet.nonce, packet.issued)):
            return "bad cookie"
        age = (int(self._now()) - packet.issued) & 0xFFFFFFFF
        if age > COOKIE_LIFETIME:
            return "expired cookie"
        return None


# The unreliable channel


class SequenceWindow:
    """
    Receive-side accounting for the unreliable channel: each DATA datagram
    carries the next sequence number, and this counts what arrived, what went
    missing, duplicates (dropped) and datagrams that arrived out of order, in
    a 64-datagram window (as IPsec's anti-replay window).
    """

    __slots__ = ("_bits", "_first", "duplicates", "highest", "late", "received", "reordered")

    WIDTH: Final = 64

    def __init__(self) -> None:
        self.highest = -1
        self._first = -1
        self._bits = 0
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        #: Older than the window: cannot tell a duplicate from a late one; dropped.
        self.late = 0

    def accept(self, wire_sequence: int) -> bool:
        """Count one datagram; ``False`` if it must be dropped (a duplicate, or too late)."""
        highest = self.highest
        if highest < 0:
            self.highest = self._first = wire_sequence
            self._bits = 1
            self.received = 1
            return True
        sequence = unwrap(wire_sequence, highest)
        if sequence > highest:
            self._bits = ((self._bits << (sequence - highest)) | 1) & 0xFFFFFFFFFFFFFFFF
            self.highest = sequence
            self.received += 1
            return True
        offset = highest - sequence
        if offset >= self.WIDTH:
            self.late += 1
            return False
        if (self._bits >> offset) & 1:
            self.duplicates += 1
            return False
        self._bits |= 1 << offset
        self.reordered += 1
        self.received += 1
        return True

    def take_next(self, wire_sequence: int) -> bool:
        """
        Count a datagram if it carries the sequence number right after the
        highest (the usual case, one check); ``False``, counting nothing,
        otherwise (or before the first): then :meth:`accept` decides.
        """
        highest = self.highest
        if highest < 0 or wire_sequence != (highest + 1) & 0xFFFFFFFF:
            return False
        self._bits = ((self._bits << 1) | 1) & 0xFFFFFFFFFFFFFFFF
        self.highest = highest + 1
        self.received += 1
        return True

    def advance(self, count: int) -> None:
        """
        Count ``count`` datagrams that carried the ``count`` sequence numbers
        after the highest, in order: what ``accept`` does for each of them.
        """
        self._bits = ((self._bits << count) | ((1 << count) - 1)) & 0xFFFFFFFFFFFFFFFF
        self.highest += count
        self.received += count

    @property
    def lost(self) -> int:
        """Sequence numbers not (yet) seen between the first and the highest."""
        if self.highest < 0:
            return 0
        return self.highest - self._first + 1 - self.received

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "late": self.late,
        }
