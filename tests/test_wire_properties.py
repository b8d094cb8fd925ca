"""
Property tests for :mod:`netmodels.core.frames`: the decoder and HELLO parser on
arbitrary input.

Hypothesis runs derandomized and without its example database, so every run
tries the same examples: these tests are deterministic.
"""

from __future__ import annotations

import json
from itertools import pairwise

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.frames import (
    FrameDecoder,
    Hello,
    MalformedMessage,
    MessageType,
    ProtocolError,
    decode_hello,
    encode_frame,
)

#: Examples per property: enough to find shallow bugs, small enough to stay fast.
MAX_EXAMPLES = 200

PROPERTY_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KNOWN_TYPES = frozenset(int(t) for t in MessageType)

#: A valid frame: a known type and a short body.
frames = st.tuples(st.sampled_from(MessageType), st.binary(max_size=64))

#: Decoder limits from tiny (most frames too large) to the default.
limits = st.one_of(st.integers(min_value=1, max_value=128), st.just(1024 * 1024))


def encode_all(frame_list: list[tuple[MessageType, bytes]]) -> bytes:
    return b"".join(encode_frame(t, body) for t, body in frame_list)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, valid frames, or valid frames with garbage around them."""
    garbage = st.binary(max_size=256)
    valid = st.lists(frames, max_size=8).map(encode_all)
    return draw(
        st.one_of(
            garbage,
            valid,
            st.tuples(valid, garbage, valid).map(b"".join),
            # Valid frames then a cut-off header: the stream ends mid-header.
            st.tuples(valid, st.binary(min_size=1, max_size=4)).map(b"".join),
        )
    )


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` split at arbitrary points (possibly with empty chunks)."""
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=32))
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


@st.composite
def chunked_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(streams())
    return data, draw(chunkings(data))


#: Any JSON value, nested a little.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

HELLO_KEYS = ("version", "node_id", "topology", "role", "app", "listen", "keepalive")


@st.composite
def hello_like_bodies(draw: st.DrawFn) -> bytes:
    """JSON objects shaped like a HELLO, with arbitrary values in some fields."""
    document: dict[str, object] = {
        "version": 1,
        "node_id": "n",
        "topology": "t",
        "role": "r",
        "keepalive": {"idle": 10, "interval": 5, "probes": 3},
    }
    for key in draw(st.lists(st.sampled_from(HELLO_KEYS), unique=True)):
        document[key] = draw(json_values)
    if draw(st.booleans()):
        document["keepalive"] = draw(
            st.dictionaries(st.sampled_from(["idle", "interval", "probes"]), json_values)
        )
    return json.dumps(document).encode()


hello_bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda value: json.dumps(value).encode()),
    hello_like_bodies(),
)


class FrameDecoderPropertyTests(SynchronousTestCase):
    """The frame decoder on arbitrary and valid streams in arbitrary chunkings."""

    @PROPERTY_SETTINGS
    @given(chunked=chunked_streams(), limit=limits)
    def test_feed_never_raises(self, chunked: tuple[bytes, list[bytes]], limit: int) -> None:
        """
        Any bytes in any chunking either decode to well-formed frames or set
        ``error`` to a ProtocolError; ``feed`` itself never raises.
        """
        _, chunks = chunked
        decoder = FrameDecoder(limit)
        for chunk in chunks:
            for message_type, body in decoder.feed(chunk):
                self.assertIn(message_type, KNOWN_TYPES)
                self.assertIsInstance(body, bytes)
                self.assertLess(len(body), limit)
        if decoder.error is not None:
            self.assertIsInstance(decoder.error, ProtocolError)
            self.assertEqual(decoder.feed(encode_frame(MessageType.PING, b"\0" * 4)), [])

    @PROPERTY_SETTINGS
    @given(frame_list=st.lists(frames, max_size=16), data=st.data())
    def test_valid_frames_round_trip(
        self, frame_list: list[tuple[MessageType, bytes]], data: st.DataObject
    ) -> None:
        """Valid frames, concatenated and split anywhere, decode to exactly themselves."""
        chunks = data.draw(chunkings(encode_all(frame_list)))
        decoder = FrameDecoder()
        decoded = [frame for chunk in chunks for frame in decoder.feed(chunk)]
        self.assertEqual(decoded, [(int(t), body) for t, body in frame_list])
        self.assertIsNone(decoder.error)
        self.assertEqual(decoder.buffered, 0)

    @PROPERTY_SETTINGS
    @given(chunked=chunked_streams(), limit=limits)
    # An oversized length whose four bytes arrive in two feeds (see test_wire).
    @example(chunked=(b"\x00\x00\x01\x00", [b"\x00", b"\x00\x01\x00"]), limit=1)
    def test_chunking_does_not_matter(self, chunked: tuple[bytes, list[bytes]], limit: int) -> None:
        """
        A stream fed in any chunking gives the same frames and the same error
        as the stream fed whole.
        """
        data, chunks = chunked
        whole = FrameDecoder(limit)
        expected = whole.feed(data)
        chunked_decoder = FrameDecoder(limit)
        decoded = [frame for chunk in chunks for frame in chunked_decoder.feed(chunk)]
        self.assertEqual(decoded, expected)
        self.assertEqual(type(chunked_decoder.error), type(whole.error))


@st.composite
def uniform_runs(draw: st.DrawFn) -> bytes:
    """
    Frames all of one length (the decoder's cut-in-C path), some of an
    unknown type or with one length byte changed, some with a byte more or
    less at the end.
    """
    length = draw(st.integers(min_value=1, max_value=12))
    types = st.sampled_from([*KNOWN_TYPES, 0x7E, 0xEE])
    count = draw(st.integers(min_value=2, max_value=12))
    bodies = st.binary(min_size=length - 1, max_size=length - 1)
    frame_list = [bytes([draw(types)]) + draw(bodies) for _ in range(count)]
    data = bytearray(b"".join(len(frame).to_bytes(4, "big") + frame for frame in frame_list))
    if draw(st.booleans()):
        frame = draw(st.integers(min_value=0, max_value=count - 1))
        data[frame * (length + 4) + draw(st.integers(0, 3))] ^= 1 << draw(st.integers(0, 7))
    return bytes(data) + draw(st.sampled_from([b"", b"\0"]))


class UniformRunPropertyTests(SynchronousTestCase):
    """A run of frames of one length, cut in C, decodes exactly as when walked."""

    @PROPERTY_SETTINGS
    @given(data=uniform_runs(), limit=st.integers(min_value=1, max_value=16))
    def test_same_as_walked(self, data: bytes, limit: int) -> None:
        whole = FrameDecoder(limit)
        frames = whole.feed(data)
        # One byte first: the decoder holds a partial frame, so the rest is walked.
        walked = FrameDecoder(limit)
        expected = walked.feed(data[:1]) + walked.feed(data[1:])
        self.assertEqual(frames, expected)
        self.assertEqual(str(whole.error), str(walked.error))
        self.assertEqual(whole.buffered, walked.buffered)


class DecodeHelloPropertyTests(SynchronousTestCase):
    """decode_hello on arbitrary bytes."""

    @PROPERTY_SETTINGS
    @given(body=hello_bodies)
    def test_only_malformed_message_escapes(self, body: bytes) -> None:
        """decode_hello returns a Hello or raises MalformedMessage, and nothing else."""
        try:
            result = decode_hello(body)
        except MalformedMessage:
            return
        self.assertIsInstance(result, Hello)

    @PROPERTY_SETTINGS
    @given(body=st.binary(max_size=512))
    @example(body=b"")
    def test_arbitrary_bytes_only_malformed_message(self, body: bytes) -> None:
        """Raw arbitrary bytes give a Hello or MalformedMessage, and nothing else."""
        try:
            result = decode_hello(body)
        except MalformedMessage:
            return
        self.assertIsInstance(result, Hello)
