"""
Tests for :mod:`netmodels.core.frames`: framing, the frame decoder and the codecs.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.frames import (
    DEFAULT_MAX_FRAME,
    MAX_HELLO,
    PROTOCOL_VERSION,
    EmptyFrame,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    MalformedMessage,
    MessageType,
    ProtocolError,
    UnknownMessageType,
    decode_bye,
    decode_correlated,
    decode_hello,
    decode_ping,
    encode_bye,
    encode_correlated,
    encode_frame,
    encode_hello,
    encode_ping,
)
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.secure import noise_frame
from netmodels.topologies.callback.messages import ACK, DELIVER, REGISTER
from netmodels.topologies.p2p.messages import BROADCAST, PEERS, Broadcast, decode_broadcast, encode_broadcast

#: Seeds for the pseudo-random chunkings: fixed, so every run feeds the same.
RANDOM_SEEDS = range(20)

#: The length prefix of a frame.
HEADER_LENGTH = 4

#: A frame limit small enough that test frames can cross it cheaply.
SMALL_LIMIT = 64

#: The size of the "large frame" tests: near the 1 MiB default limit.
LARGE_BODY_SIZE = 900 * 1024

#: The largest chunk a transport is likely to hand the decoder at once.
MAX_CHUNK = 4096

#: A message type byte that is not a :class:`MessageType`.
UNKNOWN_TYPE = 0x7F

SETTINGS = KeepaliveSettings(10, 5, 3)


def length_prefix(length: int) -> bytes:
    """The 4-byte big-endian length that opens a frame."""
    return struct.pack("!I", length)


def sample_hello(**changes: Any) -> Hello:
    fields: dict[str, Any] = {
        "node_id": "node-a",
        "topology": "client-server",
        "role": "client",
        "keepalive": SETTINGS,
    }
    fields.update(changes)
    return Hello(**fields)


def hello_body(hello: Hello) -> bytes:
    """The body of ``hello``'s frame, without its 5-byte header."""
    return encode_hello(hello)[HEADER_LENGTH + 1 :]


#: One encoded frame of every message type, with the ``(type, body)`` the
#: decoder must return for it.
SAMPLE_FRAMES: list[tuple[bytes, tuple[int, bytes]]] = [
    (
        encode_hello(sample_hello()),
        (MessageType.HELLO, hello_body(sample_hello())),
    ),
    (encode_frame(MessageType.DATA, b"payload"), (MessageType.DATA, b"payload")),
    (encode_frame(MessageType.DATA), (MessageType.DATA, b"")),
    (encode_ping(7), (MessageType.PING, b"\x00\x00\x00\x07")),
    (encode_ping(7, pong=True), (MessageType.PONG, b"\x00\x00\x00\x07")),
    (encode_bye("clean", "done"), (MessageType.BYE, b'{"reason": "clean", "detail": "done"}')),
    (
        encode_correlated(MessageType.REQUEST, 1, b"question"),
        (MessageType.REQUEST, b"\x00\x00\x00\x01question"),
    ),
    (
        encode_correlated(MessageType.RESPONSE, 1, b"answer"),
        (MessageType.RESPONSE, b"\x00\x00\x00\x01answer"),
    ),
    (
        encode_correlated(MessageType.ERROR, 2, b"oops"),
        (MessageType.ERROR, b"\x00\x00\x00\x02oops"),
    ),
    (encode_frame(PEERS, b"[]"), (PEERS, b"[]")),
    (
        encode_broadcast(Broadcast("n1", 3, 7, b"hi", "n2")),
        (BROADCAST, b"\x02\x02" + (3).to_bytes(8, "big") + (7).to_bytes(4, "big") + b"n1n2hi"),
    ),
    (encode_frame(REGISTER, b'{"port":25}'), (REGISTER, b'{"port":25}')),
    (
        encode_frame(DELIVER, (9).to_bytes(8, "big") + b"mail"),
        (DELIVER, (9).to_bytes(8, "big") + b"mail"),
    ),
    (encode_frame(ACK, (9).to_bytes(8, "big")), (ACK, (9).to_bytes(8, "big"))),
    (noise_frame(b"\x01" * 48), (MessageType.NOISE, b"\x01" * 48)),
    (
        encode_frame(MessageType.SEALED, (5).to_bytes(8, "big") + b"\x02" * 20),
        (MessageType.SEALED, (5).to_bytes(8, "big") + b"\x02" * 20),
    ),
]

STREAM = b"".join(encoded for encoded, _ in SAMPLE_FRAMES)
EXPECTED = [expected for _, expected in SAMPLE_FRAMES]


def fixed_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def random_chunks(data: bytes, seed: int, largest: int = 16) -> Iterator[bytes]:
    """``data`` cut into pieces of 1 to ``largest`` bytes, reproducibly."""
    rng = random.Random(seed)
    start = 0
    while start < len(data):
        size = rng.randint(1, largest)
        yield data[start : start + size]
        start += size


def feed_all(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[tuple[int, bytes]]:
    frames: list[tuple[int, bytes]] = []
    for chunk in chunks:
        frames.extend(decoder.feed(chunk))
    return frames


class FrameRoundTripTests(SynchronousTestCase):
    """Every message type survives encoding and decoding in any chunking."""

    def test_samples_cover_every_message_type(self) -> None:
        """The sample stream holds a frame of each type: netmodels' own and the built-in topologies'."""
        self.assertEqual({t for t, _ in EXPECTED}, {*MessageType, PEERS, BROADCAST, REGISTER, DELIVER, ACK})

    def test_whole_stream(self) -> None:
        """The whole stream in one feed decodes to every frame, in order."""
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(STREAM), EXPECTED)
        self.assertIsNone(decoder.error)
        self.assertEqual(decoder.buffered, 0)

    def test_each_frame_alone(self) -> None:
        """Each frame fed on its own to a fresh decoder decodes to itself."""
        for encoded, expected in SAMPLE_FRAMES:
            decoder = FrameDecoder()
            self.assertEqual(decoder.feed(encoded), [expected])
            self.assertEqual(decoder.buffered, 0)

    def test_byte_by_byte(self) -> None:
        """The stream fed one byte at a time decodes to every frame."""
        decoder = FrameDecoder()
        self.assertEqual(feed_all(decoder, fixed_chunks(STREAM, 1)), EXPECTED)
        self.assertIsNone(decoder.error)
        self.assertEqual(decoder.buffered, 0)

    def test_every_fixed_chunk_size(self) -> None:
        """Every fixed chunk size from 1 byte to the whole stream decodes the same."""
        for size in range(1, len(STREAM) + 1):
            decoder = FrameDecoder()
            frames = feed_all(decoder, fixed_chunks(STREAM, size))
            self.assertEqual(frames, EXPECTED, f"chunk size {size}")
            self.assertEqual(decoder.buffered, 0, f"chunk size {size}")

    def test_random_chunk_sizes(self) -> None:
        """Reproducible random chunkings decode the same as the whole stream."""
        for seed in RANDOM_SEEDS:
            decoder = FrameDecoder()
            frames = feed_all(decoder, random_chunks(STREAM, seed))
            self.assertEqual(frames, EXPECTED, f"seed {seed}")
            self.assertIsNone(decoder.error, f"seed {seed}")

    def test_empty_feed(self) -> None:
        """Feeding no bytes returns no frames and changes nothing."""
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(b""), [])
        self.assertIsNone(decoder.error)
        self.assertEqual(decoder.buffered, 0)

    def test_partial_frame_is_held(self) -> None:
        """An incomplete frame is buffered, not returned, until it completes."""
        encoded = encode_frame(MessageType.DATA, b"payload")
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(encoded[:-1]), [])
        self.assertEqual(decoder.buffered, len(encoded) - 1)
        self.assertEqual(decoder.feed(encoded[-1:]), [(MessageType.DATA, b"payload")])
        self.assertEqual(decoder.buffered, 0)

    def test_frame_layout(self) -> None:
        """A frame is a 4-byte big-endian length counting the type byte, then type and body."""
        self.assertEqual(encode_frame(MessageType.DATA, b"ab"), b"\x00\x00\x00\x03\x02ab")
        self.assertEqual(encode_frame(MessageType.BYE), b"\x00\x00\x00\x01\x05")


class LargeFrameTests(SynchronousTestCase):
    """A frame near the default limit decodes correctly in small chunks."""

    def setUp(self) -> None:
        self.body = bytes(range(256)) * (LARGE_BODY_SIZE // 256)
        self.encoded = encode_frame(MessageType.DATA, self.body)

    def assertDecodes(self, chunks: Iterable[bytes]) -> None:
        decoder = FrameDecoder()
        frames = feed_all(decoder, chunks)
        self.assertIsNone(decoder.error)
        self.assertEqual(len(frames), 1)
        message_type, body = frames[0]
        self.assertEqual(message_type, MessageType.DATA)
        self.assertEqual(len(body), LARGE_BODY_SIZE)
        self.assertTrue(body == self.body, "large body corrupted")
        self.assertEqual(decoder.buffered, 0)

    def test_large_frame_fixed_chunks(self) -> None:
        """900 KiB in fixed chunks of 1 byte, odd sizes and up to 4 KiB decodes intact."""
        for size in (1, 3, 1000, MAX_CHUNK):
            self.assertDecodes(fixed_chunks(self.encoded, size))

    def test_large_frame_random_chunks(self) -> None:
        """900 KiB in random chunks of 1 byte to 4 KiB decodes intact."""
        self.assertDecodes(random_chunks(self.encoded, seed=1, largest=MAX_CHUNK))

    def test_large_frame_is_held_until_complete(self) -> None:
        """No frame is returned before the last byte of a large frame arrives."""
        decoder = FrameDecoder()
        self.assertEqual(feed_all(decoder, fixed_chunks(self.encoded[:-1], MAX_CHUNK)), [])
        self.assertEqual(decoder.buffered, len(self.encoded) - 1)
        self.assertEqual(len(decoder.feed(self.encoded[-1:])), 1)


class FrameLimitTests(SynchronousTestCase):
    """Lengths over the limit, or zero, are rejected without allocating them."""

    def assertTooLarge(self, decoder: FrameDecoder, length: int, limit: int) -> None:
        error = decoder.error
        self.assertIsInstance(error, FrameTooLarge)
        assert isinstance(error, FrameTooLarge)
        self.assertEqual((error.length, error.limit), (length, limit))

    def test_max_frame_must_be_positive(self) -> None:
        """A decoder limit below one byte is refused at construction."""
        self.assertRaises(ValueError, FrameDecoder, 0)

    def test_default_limit(self) -> None:
        """The default limit is 1 MiB."""
        self.assertEqual(FrameDecoder().max_frame, DEFAULT_MAX_FRAME)
        self.assertEqual(DEFAULT_MAX_FRAME, 1024 * 1024)

    def test_length_at_limit_accepted(self) -> None:
        """A frame whose length equals the limit exactly is accepted."""
        decoder = FrameDecoder(SMALL_LIMIT)
        encoded = encode_frame(MessageType.DATA, b"x" * (SMALL_LIMIT - 1))
        self.assertEqual(decoder.feed(encoded), [(MessageType.DATA, b"x" * (SMALL_LIMIT - 1))])
        self.assertIsNone(decoder.error)

    def test_oversized_length_rejected_on_four_header_bytes(self) -> None:
        """Four length bytes over the limit set FrameTooLarge before any type or body."""
        decoder = FrameDecoder(SMALL_LIMIT)
        self.assertEqual(decoder.feed(length_prefix(SMALL_LIMIT + 1)), [])
        self.assertTooLarge(decoder, SMALL_LIMIT + 1, SMALL_LIMIT)
        self.assertLessEqual(decoder.buffered, HEADER_LENGTH)

    def test_oversized_length_rejected_when_header_is_split(self) -> None:
        """
        The four length bytes are checked as soon as they have all arrived,
        however the transport split them (not held until a fifth byte comes).
        """
        header = length_prefix(DEFAULT_MAX_FRAME + 1)
        for cut in range(1, HEADER_LENGTH):
            decoder = FrameDecoder()
            decoder.feed(header[:cut])
            decoder.feed(header[cut:])
            self.assertIsInstance(decoder.error, FrameTooLarge, f"header split at byte {cut}")

    def test_oversized_length_rejected_byte_by_byte(self) -> None:
        """
        A header fed one byte at a time is rejected on its fourth byte, not
        when a fifth arrives.
        """
        decoder = FrameDecoder()
        feed_all(decoder, fixed_chunks(length_prefix(0xFFFFFFFF), 1))
        self.assertIsInstance(decoder.error, FrameTooLarge)

    def test_oversized_length_after_good_frame_in_one_chunk(self) -> None:
        """A good frame followed by four oversized length bytes returns the frame and errs."""
        decoder = FrameDecoder(SMALL_LIMIT)
        chunk = encode_ping(1) + length_prefix(SMALL_LIMIT + 1)
        self.assertEqual(decoder.feed(chunk), [(MessageType.PING, b"\x00\x00\x00\x01")])
        self.assertTooLarge(decoder, SMALL_LIMIT + 1, SMALL_LIMIT)

    def test_oversized_frame_never_buffered(self) -> None:
        """The claimed body of an oversized frame is never held, however much arrives."""
        decoder = FrameDecoder()
        decoder.feed(length_prefix(0xFFFFFFFF))
        for _ in range(256):
            self.assertEqual(decoder.feed(b"\x02" + b"\x00" * MAX_CHUNK), [])
            self.assertLessEqual(decoder.buffered, HEADER_LENGTH)
        self.assertTooLarge(decoder, 0xFFFFFFFF, DEFAULT_MAX_FRAME)

    def test_oversized_with_type_byte_rejected(self) -> None:
        """A full 5-byte header with an oversized length is rejected too."""
        decoder = FrameDecoder(SMALL_LIMIT)
        decoder.feed(length_prefix(SMALL_LIMIT + 1) + bytes([MessageType.DATA]))
        self.assertTooLarge(decoder, SMALL_LIMIT + 1, SMALL_LIMIT)
        self.assertEqual(decoder.buffered, 0)

    def test_zero_length_rejected_on_four_bytes(self) -> None:
        """A zero length (no room for the type byte) is rejected from its 4 bytes alone."""
        decoder = FrameDecoder()
        decoder.feed(length_prefix(0))
        self.assertIsInstance(decoder.error, EmptyFrame)

    def test_zero_length_with_type_byte_rejected(self) -> None:
        """A zero length followed by a valid type byte is still rejected."""
        decoder = FrameDecoder()
        decoder.feed(length_prefix(0) + bytes([MessageType.DATA]))
        self.assertIsInstance(decoder.error, EmptyFrame)


class FrameErrorTests(SynchronousTestCase):
    """Unknown types, good frames before a bad one, and the error latch."""

    def test_unknown_type(self) -> None:
        """A frame of a type outside MessageType sets UnknownMessageType."""
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(encode_frame(UNKNOWN_TYPE, b"x")), [])
        error = decoder.error
        self.assertIsInstance(error, UnknownMessageType)
        assert isinstance(error, UnknownMessageType)
        self.assertEqual(error.message_type, UNKNOWN_TYPE)

    def test_type_zero_is_unknown(self) -> None:
        """Type 0x00 is not a message type."""
        decoder = FrameDecoder()
        decoder.feed(encode_frame(0x00, b""))
        self.assertIsInstance(decoder.error, UnknownMessageType)

    def test_unknown_type_rejected_from_header_alone(self) -> None:
        """The type is checked from the 5-byte header, before the body arrives."""
        decoder = FrameDecoder()
        decoder.feed(length_prefix(SMALL_LIMIT) + bytes([UNKNOWN_TYPE]))
        self.assertIsInstance(decoder.error, UnknownMessageType)
        self.assertEqual(decoder.buffered, 0)

    def test_good_frames_before_bad_are_returned(self) -> None:
        """Frames ahead of a bad one in the same chunk are returned with the error set."""
        decoder = FrameDecoder()
        frames = decoder.feed(STREAM + encode_frame(UNKNOWN_TYPE, b"x") + encode_ping(9))
        self.assertEqual(frames, EXPECTED)
        self.assertIsInstance(decoder.error, UnknownMessageType)

    def test_error_latches(self) -> None:
        """After an error every feed returns nothing, even whole valid frames."""
        decoder = FrameDecoder()
        decoder.feed(encode_frame(UNKNOWN_TYPE, b"x"))
        error = decoder.error
        self.assertEqual(decoder.feed(STREAM), [])
        self.assertEqual(decoder.feed(encode_ping(1)), [])
        self.assertIs(decoder.error, error)

    def test_error_latches_after_split_header(self) -> None:
        """An error found once buffered bytes complete a header also latches."""
        decoder = FrameDecoder()
        bad = encode_frame(UNKNOWN_TYPE, b"x")
        decoder.feed(bad[:2])
        decoder.feed(bad[2:])
        self.assertIsInstance(decoder.error, UnknownMessageType)
        self.assertEqual(decoder.feed(STREAM), [])

    def test_errors_are_protocol_errors(self) -> None:
        """Every decoding error is a ProtocolError, itself a ValueError."""
        for error_type in (FrameTooLarge, UnknownMessageType, MalformedMessage):
            self.assertTrue(issubclass(error_type, ProtocolError), error_type)
        self.assertTrue(issubclass(ProtocolError, ValueError))


#: Marks a HELLO field to be left out of the document.
REMOVE = object()


def hello_document(**changes: Any) -> dict[str, Any]:
    """A valid HELLO document with ``changes`` applied (``REMOVE`` deletes)."""
    document: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "node_id": "node-a",
        "topology": "client-server",
        "role": "client",
        "app": "",
        "listen": [],
        "keepalive": {"idle": 10, "interval": 5, "probes": 3},
    }
    for key, value in changes.items():
        if value is REMOVE:
            del document[key]
        else:
            document[key] = value
    return document


def keepalive_document(**changes: Any) -> dict[str, Any]:
    """A valid HELLO document whose keepalive object has ``changes`` applied."""
    keepalive: dict[str, Any] = {"idle": 10, "interval": 5, "probes": 3}
    keepalive.update(changes)
    return hello_document(keepalive=keepalive)


def to_body(document: object) -> bytes:
    return json.dumps(document).encode()


@contextmanager
def describing(case: object) -> Iterator[None]:
    """Prefix an assertion failure inside the block with the case that caused it."""
    try:
        yield
    except AssertionError as e:
        raise AssertionError(f"case {case!r}: {e}") from None


class HelloRoundTripTests(SynchronousTestCase):
    """HELLO survives encode_hello, the frame decoder and decode_hello."""

    def round_trip(self, hello: Hello) -> Hello:
        [(message_type, body)] = FrameDecoder().feed(encode_hello(hello))
        self.assertEqual(message_type, MessageType.HELLO)
        return decode_hello(body)

    def test_minimal_round_trip(self) -> None:
        """A HELLO with only the required fields decodes equal to itself."""
        hello = sample_hello()
        self.assertEqual(self.round_trip(hello), hello)

    def test_full_round_trip(self) -> None:
        """app, listen, extra and fractional keepalive all survive the round trip."""
        hello = sample_hello(
            keepalive=KeepaliveSettings(0.5, 0.25, 4),
            app="chat",
            listen=("tcp:4000", "tcp:4001:interface=::1"),
            extra={"region": "eu", "weights": [1, 2, 3], "nested": {"a": None}},
        )
        decoded = self.round_trip(hello)
        self.assertEqual(decoded, hello)
        self.assertEqual(decoded.listen, ("tcp:4000", "tcp:4001:interface=::1"))
        self.assertEqual(dict(decoded.extra), dict(hello.extra))

    def test_listen_decodes_as_tuple(self) -> None:
        """listen is a JSON list on the wire and a tuple once decoded."""
        decoded = decode_hello(to_body(hello_document(listen=["tcp:1"])))
        self.assertEqual(decoded.listen, ("tcp:1",))

    def test_optional_fields_default(self) -> None:
        """A HELLO without app or listen decodes with their defaults."""
        decoded = decode_hello(to_body(hello_document(app=REMOVE, listen=REMOVE)))
        self.assertEqual((decoded.app, decoded.listen, dict(decoded.extra)), ("", (), {}))

    def test_unknown_fields_kept_in_extra(self) -> None:
        """Fields a newer peer adds are kept in extra, not rejected."""
        decoded = decode_hello(to_body(hello_document(future={"x": 1})))
        self.assertEqual(dict(decoded.extra), {"future": {"x": 1}})

    def test_other_version_decodes(self) -> None:
        """Another version number is decoded; refusing it is the session's job."""
        decoded = decode_hello(to_body(hello_document(version=PROTOCOL_VERSION + 1)))
        self.assertEqual(decoded.version, PROTOCOL_VERSION + 1)

    def test_limits_accepted_at_boundary(self) -> None:
        """node_id of 128, app of 64 and 16 listen entries of 512 characters are accepted."""
        document = hello_document(node_id="n" * 128, app="a" * 64, listen=["l" * 512] * 16, role="r" * 64)
        decoded = decode_hello(to_body(document))
        self.assertEqual(len(decoded.node_id), 128)
        self.assertEqual(len(decoded.listen), 16)

    def test_body_of_max_hello_accepted(self) -> None:
        """A HELLO of exactly MAX_HELLO bytes is accepted."""
        body = to_body(hello_document())
        body += b" " * (MAX_HELLO - len(body))
        self.assertEqual(len(body), MAX_HELLO)
        self.assertEqual(decode_hello(body).node_id, "node-a")

    def test_any_encoding_json_accepts(self) -> None:
        """
        A body is read as ``json.loads`` reads bytes: UTF-16 and UTF-32 too
        (found by where the NUL bytes are), and a UTF-8 byte order mark;
        the quicker path taken for UTF-8 changes none of that.
        """
        text = json.dumps(hello_document())
        for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            self.assertEqual(decode_hello(text.encode(encoding)).node_id, "node-a", encoding)
        self.assertEqual(decode_hello(b" \n" + text.encode()).node_id, "node-a")


class MalformedHelloTests(SynchronousTestCase):
    """Every defect in a HELLO body raises MalformedMessage, nothing else."""

    def assertMalformed(self, body: bytes) -> None:
        try:
            result = decode_hello(body)
        except MalformedMessage:
            return
        except Exception as e:  # the point: nothing else may escape
            self.fail(f"decode_hello raised {type(e).__name__}, not MalformedMessage: {e}")
        self.fail(f"decode_hello accepted a malformed HELLO: {result!r}")

    def test_not_json(self) -> None:
        """Bytes that are not JSON are malformed."""
        self.assertMalformed(b"not json")

    def test_empty_body(self) -> None:
        """An empty body is malformed."""
        self.assertMalformed(b"")

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 are malformed."""
        self.assertMalformed(b'{"version": "\xff\xfe"}')

    def test_not_an_object(self) -> None:
        """JSON that is not an object (list, string, number, null) is malformed."""
        for document in ([], "hello", 1, None, [hello_document()]):
            with describing(document):
                self.assertMalformed(to_body(document))

    def test_version_missing(self) -> None:
        """A HELLO without a version is malformed."""
        self.assertMalformed(to_body(hello_document(version=REMOVE)))

    def test_version_bad_types(self) -> None:
        """A version that is a bool, float, string, null, list or negative is malformed."""
        for version in (True, False, 1.0, "1", None, [1], -1):
            with describing(version):
                self.assertMalformed(to_body(hello_document(version=version)))

    def test_keepalive_missing(self) -> None:
        """A HELLO without keepalive is malformed."""
        self.assertMalformed(to_body(hello_document(keepalive=REMOVE)))

    def test_keepalive_not_an_object(self) -> None:
        """keepalive given as a list or string is malformed."""
        for keepalive in ([10, 5, 3], "10,5,3", None):
            with describing(keepalive):
                self.assertMalformed(to_body(hello_document(keepalive=keepalive)))

    def test_keepalive_field_missing(self) -> None:
        """A keepalive object missing idle, interval or probes is malformed."""
        for name in ("idle", "interval", "probes"):
            document = hello_document()
            del document["keepalive"][name]
            with describing(name):
                self.assertMalformed(to_body(document))

    def test_keepalive_bad_values(self) -> None:
        """Zero, negative, string or out-of-range keepalive values are malformed."""
        cases: list[dict[str, Any]] = [
            {"idle": 0},
            {"idle": -1},
            {"idle": "10"},
            {"interval": 0},
            {"interval": -0.5},
            {"probes": 0},
            {"probes": 128},
            {"probes": True},
            {"probes": 3.0},
        ]
        for case in cases:
            with describing(case):
                self.assertMalformed(to_body(keepalive_document(**case)))

    def test_keepalive_huge_integer(self) -> None:
        """
        A keepalive number too large for a float is malformed, not an
        ``OverflowError`` (from ``math.isfinite``) escaping ``decode_hello``.
        """
        self.assertMalformed(to_body(keepalive_document(idle=10**400)))

    def test_deeply_nested_json(self) -> None:
        """
        Deeply nested JSON under MAX_HELLO is malformed, not a crash: the
        ``RecursionError`` of ``json.loads`` does not escape ``decode_hello``.
        """
        self.assertMalformed(b"[" * 5000)

    def test_node_id_missing(self) -> None:
        """A HELLO without node_id is malformed."""
        self.assertMalformed(to_body(hello_document(node_id=REMOVE)))

    def test_node_id_empty(self) -> None:
        """An empty node_id is malformed."""
        self.assertMalformed(to_body(hello_document(node_id="")))

    def test_node_id_too_long(self) -> None:
        """A node_id over 128 characters is malformed."""
        self.assertMalformed(to_body(hello_document(node_id="n" * 129)))

    def test_node_id_not_a_string(self) -> None:
        """A numeric node_id is malformed."""
        self.assertMalformed(to_body(hello_document(node_id=7)))

    def test_topology_and_role_required(self) -> None:
        """A HELLO without topology or role is malformed."""
        for name in ("topology", "role"):
            with describing(name):
                self.assertMalformed(to_body(hello_document(**{name: REMOVE})))

    def test_listen_not_a_list(self) -> None:
        """listen given as a string or object is malformed."""
        for listen in ("tcp:4000", {"tcp": 4000}):
            with describing(listen):
                self.assertMalformed(to_body(hello_document(listen=listen)))

    def test_listen_entry_not_a_string(self) -> None:
        """A listen entry that is not a string is malformed."""
        self.assertMalformed(to_body(hello_document(listen=[4000])))

    def test_listen_entry_too_long(self) -> None:
        """A listen entry over 512 characters is malformed."""
        self.assertMalformed(to_body(hello_document(listen=["l" * 513])))

    def test_listen_too_long(self) -> None:
        """More than 16 listen entries is malformed."""
        self.assertMalformed(to_body(hello_document(listen=["tcp:1"] * 17)))

    def test_app_bad(self) -> None:
        """An app that is not a string or is over 64 characters is malformed."""
        for app in (1, None, "a" * 65):
            with describing(app):
                self.assertMalformed(to_body(hello_document(app=app)))

    def test_over_max_hello(self) -> None:
        """A valid document padded past MAX_HELLO bytes is malformed for its size alone."""
        body = to_body(hello_document())
        body += b" " * (MAX_HELLO + 1 - len(body))
        self.assertMalformed(body)


class PingCodecTests(SynchronousTestCase):
    """PING and PONG carry a 4-byte sequence number."""

    def test_ping_round_trip(self) -> None:
        """A PING frame decodes to its sequence number."""
        [(message_type, body)] = FrameDecoder().feed(encode_ping(123456))
        self.assertEqual(message_type, MessageType.PING)
        self.assertEqual(decode_ping(body), 123456)

    def test_pong_round_trip(self) -> None:
        """pong=True makes a PONG frame with the same sequence number."""
        [(message_type, body)] = FrameDecoder().feed(encode_ping(42, pong=True))
        self.assertEqual(message_type, MessageType.PONG)
        self.assertEqual(decode_ping(body), 42)

    def test_sequence_wraps(self) -> None:
        """Sequence numbers wrap modulo 2**32."""
        self.assertEqual(encode_ping(2**32 + 5), encode_ping(5))
        self.assertEqual(decode_ping(encode_ping(2**32 - 1)[5:]), 2**32 - 1)

    def test_wrong_length_malformed(self) -> None:
        """A PING/PONG body of other than 4 bytes is malformed."""
        for body in (b"", b"\x00" * 3, b"\x00" * 5):
            self.assertRaises(MalformedMessage, decode_ping, body)


class CorrelatedCodecTests(SynchronousTestCase):
    """REQUEST, RESPONSE and ERROR carry a 4-byte correlation id, then a body."""

    def test_round_trip(self) -> None:
        """Each correlated type decodes to its type, id and body."""
        for message_type in (MessageType.REQUEST, MessageType.RESPONSE, MessageType.ERROR):
            encoded = encode_correlated(message_type, 0xDEADBEEF, b"body")
            [(decoded_type, body)] = FrameDecoder().feed(encoded)
            self.assertEqual(decoded_type, message_type)
            self.assertEqual(decode_correlated(body), (0xDEADBEEF, b"body"))

    def test_empty_body(self) -> None:
        """A correlated frame may have an empty body."""
        [(_, body)] = FrameDecoder().feed(encode_correlated(MessageType.REQUEST, 9, b""))
        self.assertEqual(decode_correlated(body), (9, b""))

    def test_frame_length_counts_id(self) -> None:
        """The frame length covers the type byte, the 4-byte id and the body."""
        encoded = encode_correlated(MessageType.REQUEST, 1, b"abc")
        self.assertEqual(encoded[:4], length_prefix(1 + 4 + 3))

    def test_short_body_malformed(self) -> None:
        """A body shorter than the 4-byte id is malformed."""
        for length in range(4):
            self.assertRaises(MalformedMessage, decode_correlated, b"\x00" * length)


class ByeCodecTests(SynchronousTestCase):
    """BYE carries a JSON object: the close reason, a detail and a fatal flag."""

    def test_round_trip(self) -> None:
        """A BYE decodes to the reason, detail and fatal flag it was made with."""
        [(message_type, body)] = FrameDecoder().feed(encode_bye("rejected", "full", fatal=True))
        self.assertEqual(message_type, MessageType.BYE)
        self.assertEqual(decode_bye(body), ("rejected", "full", True))

    def test_defaults(self) -> None:
        """A plain BYE is a clean, non-fatal close."""
        [(_, body)] = FrameDecoder().feed(encode_bye())
        self.assertEqual(decode_bye(body), ("clean", "", False))

    def test_detail_capped_by_characters(self) -> None:
        """A detail over 512 characters is cut at a character boundary."""
        [(_, body)] = FrameDecoder().feed(encode_bye("clean", "a" + "\u00e9" * 600))
        _, detail, _ = decode_bye(body)
        self.assertEqual(detail, "a" + "\u00e9" * 511)

    def test_unreadable_bye_is_clean(self) -> None:
        """A BYE that is not our JSON still counts as a clean close, keeping its text."""
        for body in (b"done", b"[1]", b'{"reason": 5}', b"\xff\xfe", b"[" * 5000):
            reason, _, fatal = decode_bye(body)
            self.assertEqual((reason, fatal), ("clean", False))


class BroadcastCodecTests(SynchronousTestCase):
    """BROADCAST: origin, incarnation and sequence identify a message; destination is optional."""

    def test_round_trip(self) -> None:
        for message in (
            Broadcast("node-a", 2**40, 2**32 - 1, b"payload"),
            Broadcast("\u00e9", 0, 0, b"", "node-b"),
        ):
            [(message_type, body)] = FrameDecoder().feed(encode_broadcast(message))
            self.assertEqual((message_type, decode_broadcast(body)), (BROADCAST, message))

    def test_malformed(self) -> None:
        """Short headers, empty origins, lengths past the end and bad UTF-8 are malformed."""
        good = encode_broadcast(Broadcast("node-a", 1, 1, b"x", "node-b"))[5:]
        for body in (good[:5], b"\x00" + good[1:], good[:16], b"\x02\x00" + good[2:14] + b"\xff\xfe"):
            self.assertRaises(MalformedMessage, decode_broadcast, body)
