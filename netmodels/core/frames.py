"""
The netmodels wire protocol, sans-IO: frames, message types and codecs.

No Twisted here: the decoder is fed bytes in any chunking and returns whole
frames, so it can be tested, fuzzed and reused by every transport.

A frame is a 4-byte big-endian length, then that many bytes: a 1-byte message
type and its body. The length counts the type byte, so the smallest frame is
``00 00 00 01 TT``. See ``docs/protocol.md`` for the full specification.
"""

from __future__ import annotations

import enum
import json
import struct
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from attrs import field, frozen

from netmodels.core.keepalive import KeepaliveSettings

__all__ = [
    "BAD_LENGTH",
    "CORE_TYPES",
    "DEFAULT_MAX_FRAME",
    "MAX_HELLO",
    "PROTOCOL_VERSION",
    "EmptyFrame",
    "FrameDecoder",
    "FrameTooLarge",
    "Hello",
    "MalformedMessage",
    "MessageType",
    "MessageTypeConflict",
    "ProtocolError",
    "UnknownMessageType",
    "decode_bye",
    "decode_correlated",
    "decode_hello",
    "decode_ping",
    "encode_bye",
    "encode_correlated",
    "encode_frame",
    "encode_hello",
    "encode_ping",
    "known_message_types",
    "message_type_name",
    "register_message_types",
    "walk_frames",
]


#: The protocol version netmodels speaks. A peer with another major version is
#: refused at HELLO with reason ``protocol-error``.
PROTOCOL_VERSION: Final = 1


#: Default hard limit on a frame (type byte plus body): 1 MiB.
DEFAULT_MAX_FRAME: Final = 1024 * 1024


#: HELLO bodies are small JSON objects; anything larger is hostile.
MAX_HELLO: Final = 16 * 1024


class MessageType(enum.IntEnum):
    """
    netmodels' own message types. Topologies register theirs
    (:func:`register_message_types`); any other type ends the connection
    with ``protocol-error``.
    """

    HELLO = 0x01
    DATA = 0x02
    PING = 0x03
    PONG = 0x04
    BYE = 0x05
    REQUEST = 0x06
    RESPONSE = 0x07
    ERROR = 0x08
    #: A Noise handshake message (secure sessions, before HELLO).
    NOISE = 0xF0
    #: An encrypted record carrying frames (secure sessions, after the handshake).
    SEALED = 0xF1


#: Every message type a decoder accepts: netmodels' own, then what plugins
#: register (:func:`register_message_types`). A frame of any other type is
#: a protocol error at the framing layer.
_KNOWN_TYPES: Final[set[int]] = {int(t) for t in MessageType}
#: The same codes as bytes, for checking a run of type bytes in C (``bytes.translate``).
_KNOWN_TYPE_BYTES: Final = bytearray(sorted(_KNOWN_TYPES))
#: Who registered each message type, and its name, by code.
_REGISTERED: Final[dict[int, tuple[str, str]]] = {}
#: The codes netmodels' core keeps to itself.
CORE_TYPES: Final = frozenset(range(0x01, 0x09)) | {0xF0, 0xF1}


class MessageTypeConflict(ValueError):
    """Two plugins claim one message type code or name."""


def register_message_types(owner: str, types: Mapping[str, int]) -> None:
    """
    Register ``owner``'s message types (name -> code, 1 to 255) so decoders
    accept them. A code of netmodels' core, or a code or name another owner
    registered, raises :class:`MessageTypeConflict` naming both; registering
    the same types again for the same owner is a no-op.
    """
    for name, code in types.items():
        if not 0 < code < 256:
            raise MessageTypeConflict(f"{owner}: message type {name} has code {code}, not 1 to 255")
        if code in CORE_TYPES:
            raise MessageTypeConflict(
                f"{owner}: message type {name} takes code 0x{code:02x} of netmodels' {MessageType(code).name}"
            )
        holder = _REGISTERED.get(code)
        if holder is not None and holder != (owner, name):
            raise MessageTypeConflict(
                f"{owner}: message type {name} takes code 0x{code:02x}, which {holder[0]} registered "
                f"for {holder[1]}"
            )
        for other_code, (other_owner, other_name) in _REGISTERED.items():
            if other_name == name and other_owner != owner:
                raise MessageTypeConflict(
                    f"{owner}: message type name {name} is taken by {other_owner} (code 0x{other_code:02x})"
                )
    for name, code in types.items():
        _REGISTERED[code] = (owner, name)
        if code not in _KNOWN_TYPES:
            _KNOWN_TYPES.add(code)
            _KNOWN_TYPE_BYTES.append(code)


def known_message_types() -> frozenset[int]:
    """Every type a decoder accepts now: netmodels' own and those registered."""
    return frozenset(_KNOWN_TYPES)


def message_type_name(code: int) -> str:
    """``2`` -> ``"DATA"``; a registered plugin's type by its name; else the code in hex."""
    if code in CORE_TYPES:
        return MessageType(code).name
    registered = _REGISTERED.get(code)
    if registered is not None:
        return registered[1]
    return f"0x{code:02x}"


_HEADER: Final = struct.Struct("!IB")


_LENGTH: Final = struct.Struct("!I")


class _UniformLayouts(dict[int, struct.Struct]):
    """By frame length: the layout that cuts a run of frames that long into (type, body) pairs, in C."""

    def __missing__(self, length: int) -> struct.Struct:
        layout = struct.Struct(f"!4xB{length - 1}s")
        if len(self) < 64:  # message sizes vary: keep the common few
            self[length] = layout
        return layout


_UNIFORM: Final = _UniformLayouts()


_U32: Final = struct.Struct("!I")


_CORRELATED: Final = struct.Struct("!IBI")


class ProtocolError(ValueError):
    """The peer broke the wire protocol. Ends that connection only."""


class FrameTooLarge(ProtocolError):
    """A frame claimed more bytes than the limit. The claimed size is never allocated."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class EmptyFrame(ProtocolError):
    """A frame of length 0: it cannot even hold its type byte."""

    def __init__(self) -> None:
        super().__init__("frame of length 0 has no message type")


class UnknownMessageType(ProtocolError):
    """A frame whose type byte this version does not know."""

    def __init__(self, message_type: int) -> None:
        super().__init__(f"unknown message type 0x{message_type:02x}")
        self.message_type = message_type


class MalformedMessage(ProtocolError):
    """A frame of a known type whose body does not parse."""


class FrameDecoder:
    """
    Split a byte stream into ``(message_type, body)`` frames.

    :meth:`feed` returns the whole frames found so far. On the first bad frame
    it stores the error in :attr:`error` and returns the good frames that came
    before it; from then on it latches: every later :meth:`feed` returns
    nothing. A claimed length over :attr:`max_frame` is rejected as soon as its
    four bytes arrive, so the claimed size is never allocated.
    """

    __slots__ = ("_buffer", "_needed", "error", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be at least 1")
        self.max_frame = max_frame
        self.error: ProtocolError | None = None
        # Created only when a partial frame must be kept: most connections
        # sit between whole frames, and at 10,000 of them it adds up.
        self._buffer: bytearray | None = None
        # Bytes the buffer must hold before a whole frame can be cut from it;
        # small chunks of a large frame are appended without re-parsing.
        self._needed = 0

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return 0 if self._buffer is None else len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return the ``(message_type, body)`` frames it completed."""
        if self.error is not None:
            return []
        buffer = self._buffer
        if buffer is None:
            size = len(data)
            if size > 4:
                (length,) = _LENGTH.unpack_from(data)
                if length == size - 4:
                    # The most common read, one whole frame (a request, a PING
                    # or a PONG) with nothing held back, needs no walk.
                    if length <= self.max_frame and data[4] in _KNOWN_TYPES:
                        return [(data[4], data[5:])]
                elif length and not size % (length + 4) and length <= self.max_frame:
                    uniform = _uniform_frames(data, length)
                    if uniform is not None:
                        return uniform
        else:
            buffer += data
            if len(buffer) < self._needed:
                return []
            data = bytes(buffer)
            self._buffer = None
        ends, needed = walk_frames(data, self.max_frame)
        frames: list[tuple[int, bytes]] = []
        append = frames.append
        known = _KNOWN_TYPES
        position = 0
        for end in ends:
            message_type = data[position + 4]
            if message_type not in known:
                self.error = UnknownMessageType(message_type)
                return frames
            append((message_type, data[position + 5 : end]))
            position = end
        rest = len(data) - position
        if not rest:
            return frames
        if needed == BAD_LENGTH:
            (length,) = _LENGTH.unpack_from(data, position)
            self.error = FrameTooLarge(length, self.max_frame) if length else EmptyFrame()
            return frames
        if rest >= 5:
            # A partial frame's type is checked as soon as it arrives.
            if data[position + 4] not in known:
                self.error = UnknownMessageType(data[position + 4])
                return frames
        elif rest == 4:
            needed = 5
        self._needed = needed
        self._buffer = bytearray(data[position:])
        return frames


def _uniform_frames(data: bytes, length: int) -> list[tuple[int, bytes]] | None:
    """
    ``data`` cut into frames of ``length`` (with their prefix, ``length + 4``
    bytes each, filling it exactly), if every frame is that long and of a
    known type: a flood of one message size, checked and cut in C rather
    than walked one frame at a time. ``None`` if not: walk it.
    """
    step = length + 4
    count = len(data) // step
    # Each byte of the length prefix, across all frames, is one stride of data.
    for offset in range(4):
        if data[offset::step] != data[offset : offset + 1] * count:
            return None
    if data[4::step].translate(None, _KNOWN_TYPE_BYTES):
        return None  # an unknown type: the walk finds which, and where
    return list(_UNIFORM[length].iter_unpack(data))


#: What :func:`walk_frames` returns for ``needed`` at a frame whose length
#: is 0 or over the limit.
BAD_LENGTH: Final = -1


def walk_frames(data: bytes | bytearray, max_frame: int) -> tuple[list[int], int]:
    """
    Walk the length-prefixed frames at the start of ``data``: the one frame
    walker, for streams (:class:`FrameDecoder`) and datagrams alike.

    Returns the end offset of each whole frame, and what stopped the walk:
    ``0`` at the end of ``data``; :data:`BAD_LENGTH` at a frame whose length
    is 0 or over ``max_frame`` (checked once its 4 length bytes are there, so
    a claimed size is never waited for); otherwise the bytes the partial
    frame after the last end needs in all, its prefix included (4 while the
    prefix itself is partial).
    """
    ends: list[int] = []
    append = ends.append
    unpack = _LENGTH.unpack_from
    size = len(data)
    position = 0
    while size - position >= 4:
        (length,) = unpack(data, position)
        if length > max_frame or length == 0:
            return ends, BAD_LENGTH
        end = position + 4 + length
        if end > size:
            return ends, end - position
        append(end)
        position = end
    return ends, 4 if position < size else 0


def encode_frame(message_type: int, body: bytes = b"") -> bytes:
    """One frame. The caller enforces its own size limit (see ``Session``)."""
    return _HEADER.pack(len(body) + 1, message_type) + body


_PING_FRAME: Final = struct.Struct("!IBI")
_PING_TYPE: Final = int(MessageType.PING)
_PONG_TYPE: Final = int(MessageType.PONG)


def encode_ping(sequence: int, pong: bool = False) -> bytes:
    """A keepalive probe (PING) or its answer (PONG), carrying a u32 sequence number."""
    # One pack, no concatenation: this runs once per probe per connection.
    return _PING_FRAME.pack(5, _PONG_TYPE if pong else _PING_TYPE, sequence & 0xFFFFFFFF)


def decode_ping(body: bytes) -> int:
    """The sequence number of a PING or PONG body."""
    if len(body) != 4:
        raise MalformedMessage(f"PING/PONG body must be 4 bytes, not {len(body)}")
    return int(_U32.unpack(body)[0])


def encode_correlated(message_type: int, correlation_id: int, body: bytes) -> bytes:
    """REQUEST, RESPONSE or ERROR: a 4-byte correlation id, then the body."""
    return _CORRELATED.pack(len(body) + 5, message_type, correlation_id) + body


def decode_correlated(body: bytes) -> tuple[int, bytes]:
    """``(correlation_id, payload)`` of a REQUEST, RESPONSE or ERROR body."""
    if len(body) < 4:
        raise MalformedMessage("REQUEST/RESPONSE/ERROR body shorter than its 4-byte id")
    return int(_U32.unpack_from(body)[0]), body[4:]


def encode_bye(reason: str = "clean", detail: str = "", fatal: bool = False) -> bytes:
    """
    BYE: the sender is closing, and says why, so the peer records the same
    close reason. ``fatal`` tells a reconnecting peer that retrying cannot help.
    """
    # Cut by characters, so a multi-byte character is never split.
    document: dict[str, Any] = {"reason": reason, "detail": detail[:512]}
    if fatal:
        document["fatal"] = True
    return encode_frame(MessageType.BYE, json.dumps(document).encode())


def decode_bye(body: bytes) -> tuple[str, str, bool]:
    """``(reason, detail, fatal)``. Tolerant: an unreadable BYE still means a clean close."""
    try:
        document = json.loads(body)
        reason = document.get("reason", "clean")
        if not isinstance(reason, str):
            raise TypeError
        return reason[:32], str(document.get("detail", ""))[:512], bool(document.get("fatal", False))
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):
        return "clean", body[:512].decode("utf-8", "replace"), False


def _text(name: str, max_length: int = 128) -> Any:
    def check(instance: object, attribute: object, value: object) -> None:
        if not isinstance(value, str) or not 0 < len(value) <= max_length:
            raise MalformedMessage(f"HELLO {name} must be a string of 1-{max_length} characters")

    return check


def _check_app(value: object) -> None:
    if not isinstance(value, str) or len(value) > 64:
        raise MalformedMessage("HELLO app must be a string of at most 64 characters")


@frozen
class Hello:
    """The first message each side sends: who it is and how it keeps alive."""

    node_id: str = field(validator=_text("node_id"))
    topology: str = field(validator=_text("topology", 64))
    role: str = field(validator=_text("role", 64))
    keepalive: KeepaliveSettings
    version: int = PROTOCOL_VERSION
    app: str = field(default="", validator=lambda i, a, v: _check_app(v))
    #: Endpoints this node accepts connections on (used by p2p and callback).
    listen: tuple[str, ...] = ()
    #: The largest frame the sender accepts; peers never send it more.
    max_frame: int = DEFAULT_MAX_FRAME
    #: Topology-specific fields, kept so newer peers can add to HELLO.
    extra: Mapping[str, Any] = field(factory=dict)


def encode_hello(hello: Hello) -> bytes:
    """A HELLO frame: a JSON object (see ``docs/protocol.md``)."""
    document = dict(hello.extra)
    document.update(
        version=hello.version,
        node_id=hello.node_id,
        topology=hello.topology,
        role=hello.role,
        app=hello.app,
        listen=list(hello.listen),
        max_frame=hello.max_frame,
        keepalive={
            "idle": hello.keepalive.idle,
            "interval": hello.keepalive.interval,
            "probes": hello.keepalive.probes,
        },
    )
    return encode_frame(MessageType.HELLO, json.dumps(document, separators=(",", ":")).encode())


# Shared by HELLOs without topology fields: a session keeps its peer's HELLO.
_NO_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})


_HELLO_FIELDS: Final = frozenset(
    {"version", "node_id", "topology", "role", "app", "listen", "keepalive", "max_frame"}
)


_KEEPALIVE_SEEN: dict[tuple[Any, ...], KeepaliveSettings] = {}


def _intern(value: object) -> object:
    # Every peer's HELLO names the same few topologies, roles and apps.
    return sys.intern(value) if isinstance(value, str) and len(value) <= 64 else value


_JSON: Final = json.JSONDecoder()


def _json_object(body: bytes) -> Any:
    """``json.loads(body)``, in half the time for a body that opens with ``{``."""
    # json.loads(bytes) first guesses the encoding from where the NUL bytes
    # are (UTF-8, -16 or -32) and decodes; "{" and a byte that is not NUL
    # is UTF-8 to that guess, which is every HELLO netmodels sends.
    if body[:1] == b"{" and body[1:2] not in (b"", b"\x00"):
        return _JSON.decode(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)


def decode_hello(body: bytes) -> Hello:
    """Parse a HELLO body; any defect raises :class:`MalformedMessage`."""
    if len(body) > MAX_HELLO:
        raise MalformedMessage(f"HELLO of {len(body)} bytes exceeds {MAX_HELLO}")
    try:
        document = _json_object(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise MalformedMessage(f"HELLO is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise MalformedMessage("HELLO must be a JSON object")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise MalformedMessage("HELLO version must be a non-negative integer")
    keepalive = document.get("keepalive")
    if not isinstance(keepalive, dict):
        raise MalformedMessage("HELLO keepalive must be an object")
    numbers = (keepalive.get("idle"), keepalive.get("interval"), keepalive.get("probes"))
    # Only exact types hit the cache: 3.0 == 3, yet 3.0 is no probe count.
    cacheable = type(numbers[0]) in (int, float) and type(numbers[1]) in (int, float)
    settings = _KEEPALIVE_SEEN.get(numbers) if cacheable and type(numbers[2]) is int else None
    if settings is None:
        try:
            settings = KeepaliveSettings(*numbers)  # type: ignore[arg-type]
        except (ValueError, TypeError, OverflowError) as e:
            raise MalformedMessage(f"HELLO keepalive: {e}") from None
        if len(_KEEPALIVE_SEEN) < 64:
            # Peers nearly all share a few settings: keep one object for each.
            _KEEPALIVE_SEEN[numbers] = settings
    listen = document.get("listen", [])
    if (
        not isinstance(listen, list)
        or len(listen) > 16
        or (listen and not all(isinstance(item, str) and len(item) <= 512 for item in listen))
    ):
        raise MalformedMessage("HELLO listen must be a list of at most 16 endpoint strings")
    max_frame = document.get("max_frame", DEFAULT_MAX_FRAME)
    if not isinstance(max_frame, int) or isinstance(max_frame, bool) or not 64 <= max_frame < 2**32:
        raise MalformedMessage("HELLO max_frame must be an integer from 64 to 2**32 - 1")
    if max_frame == DEFAULT_MAX_FRAME:
        # The value nearly every peer sends, as one object: a session keeps its peer's HELLO.
        max_frame = DEFAULT_MAX_FRAME
    app = document.get("app", "")
    if not isinstance(app, str) or len(app) > 64:
        raise MalformedMessage("HELLO app must be a string of at most 64 characters")
    # A C-level subset test first: most HELLOs have no extra fields.
    extra = (
        None
        if document.keys() <= _HELLO_FIELDS
        else {k: v for k, v in document.items() if k not in _HELLO_FIELDS}
    )
    return Hello(
        node_id=document.get("node_id"),  # type: ignore[arg-type]
        topology=_intern(document.get("topology")),  # type: ignore[arg-type]
        role=_intern(document.get("role")),  # type: ignore[arg-type]
        keepalive=settings,
        version=version,
        app=_intern(app),  # type: ignore[arg-type]
        listen=tuple(listen),
        max_frame=max_frame,
        extra=extra or _NO_EXTRA,
    )
