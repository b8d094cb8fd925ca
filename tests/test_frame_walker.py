"""
The one walker of length-prefixed frames (:func:`walk_frames`), which the
stream decoder, the UDP transport and the datagram codecs share.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.datagram import whole_frames
from netmodels.core.frames import (
    BAD_LENGTH,
    EmptyFrame,
    FrameDecoder,
    FrameTooLarge,
    MessageType,
    encode_frame,
    walk_frames,
)

LIMIT = 1024
FRAMES = [encode_frame(MessageType.DATA, b"x" * n) for n in (0, 1, 7, 300)]
RUN = b"".join(FRAMES)


def ends_of(frames: list[bytes]) -> list[int]:
    ends, position = [], 0
    for frame in frames:
        position += len(frame)
        ends.append(position)
    return ends


class WalkFramesTests(SynchronousTestCase):
    def test_nothing(self) -> None:
        self.assertEqual(walk_frames(b"", LIMIT), ([], 0))

    def test_a_run_of_whole_frames(self) -> None:
        self.assertEqual(walk_frames(RUN, LIMIT), (ends_of(FRAMES), 0))

    def test_every_cut_of_a_run(self) -> None:
        """Cut anywhere: the whole frames before the cut, and what the next one needs."""
        ends = ends_of(FRAMES)
        for cut in range(len(RUN) + 1):
            whole = [end for end in ends if end <= cut]
            last = whole[-1] if whole else 0
            if cut == last:
                needed = 0
            elif cut - last < 4:
                needed = 4
            else:
                needed = len(FRAMES[len(whole)])
            self.assertEqual(walk_frames(RUN[:cut], LIMIT), (whole, needed), f"cut at {cut}")

    def test_oversize_stops_at_the_prefix(self) -> None:
        """A length over the limit is refused with its 4 bytes, before any body arrives."""
        claim = (LIMIT + 1).to_bytes(4, "big")
        self.assertEqual(walk_frames(FRAMES[0] + claim, LIMIT), ([5], BAD_LENGTH))
        self.assertEqual(walk_frames(claim[:3], LIMIT), ([], 4))
        limit_frame = encode_frame(MessageType.DATA, b"y" * (LIMIT - 1))
        self.assertEqual(walk_frames(limit_frame, LIMIT), ([LIMIT + 4], 0))

    def test_empty_frame_is_bad(self) -> None:
        self.assertEqual(walk_frames(FRAMES[1] + b"\0\0\0\0" + FRAMES[1], LIMIT), ([6], BAD_LENGTH))

    def test_walks_a_bytearray(self) -> None:
        self.assertEqual(walk_frames(bytearray(RUN), LIMIT), (ends_of(FRAMES), 0))

    @given(st.binary(max_size=64), st.integers(1, 64))
    def test_ends_are_frame_boundaries(self, data: bytes, limit: int) -> None:
        ends, needed = walk_frames(data, limit)
        position = 0
        for end in ends:
            length = int.from_bytes(data[position : position + 4], "big")
            self.assertTrue(1 <= length <= limit)
            self.assertEqual(end, position + 4 + length)
            position = end
        rest = len(data) - position
        if needed == 0:
            self.assertEqual(rest, 0)
        elif needed > 0:
            self.assertLess(rest, needed)


class WalkerUsersTests(SynchronousTestCase):
    """The walker's verdicts, as the decoder and the datagram check report them."""

    def test_decoder_in_any_chunking(self) -> None:
        expected = [(MessageType.DATA, frame[5:]) for frame in FRAMES]
        for size in (1, 2, 3, 4, 5, 6, 13, len(RUN)):
            decoder = FrameDecoder(LIMIT)
            got = []
            for start in range(0, len(RUN), size):
                got += decoder.feed(RUN[start : start + size])
            self.assertEqual(got, expected, f"chunks of {size}")
            self.assertEqual(decoder.buffered, 0)

    def test_decoder_oversize_and_empty(self) -> None:
        decoder = FrameDecoder(LIMIT)
        self.assertEqual(decoder.feed(FRAMES[0] + (LIMIT + 1).to_bytes(4, "big")), [(MessageType.DATA, b"")])
        self.assertIsInstance(decoder.error, FrameTooLarge)
        decoder = FrameDecoder(LIMIT)
        self.assertEqual(decoder.feed(b"\0\0"), [])
        self.assertEqual(decoder.feed(b"\0\0"), [])
        self.assertIsInstance(decoder.error, EmptyFrame)

    def test_decoder_checks_a_partial_frames_type(self) -> None:
        decoder = FrameDecoder(LIMIT)
        decoder.feed(b"\0\0\0\x10")
        self.assertIsNone(decoder.error)
        decoder.feed(b"\xee")
        self.assertIsNotNone(decoder.error)

    def test_whole_frames(self) -> None:
        self.assertTrue(whole_frames(RUN))
        self.assertTrue(whole_frames(b""))
        self.assertFalse(whole_frames(RUN[:-1]))
        self.assertFalse(whole_frames(FRAMES[1] + b"\0\0\0\0"))
