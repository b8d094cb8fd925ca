"""
Fuzz target: :class:`netmodels.core.frames.FrameDecoder` on any bytes, in any chunking.

Input layout (all of it chosen by the fuzzer)::

    byte 0        the decoder's frame limit (one of LIMITS)
    byte 1        n, the number of chunk sizes that follow (0 to 15)
    bytes 2..n+1  chunk sizes, 1 to 256 bytes each, used in turn
    the rest      the stream

Properties checked: ``feed`` never raises; every frame has a known type and a
body under the limit; a bad stream sets ``error`` to a ``ProtocolError`` and
stays latched; the chunked stream gives exactly the frames and the error of
the same stream fed whole. Anything else raises ``AssertionError``.

Run it (needs ``pip install atheris``)::

    python fuzz/fuzz_frames.py fuzz/corpus/frames -max_total_time=300
"""

from __future__ import annotations

import sys

from netmodels.core.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    MessageType,
    ProtocolError,
    encode_frame,
    known_message_types,
)
from netmodels.runtime.registry import topologies

#: Frame limits the fuzzer picks from: tiny (most frames too large) up to the default.
LIMITS = (1, 2, 5, 16, 64, 1024, DEFAULT_MAX_FRAME)

# A node decodes its built-in topologies' message types too: register them as it does.
topologies()
_KNOWN = known_message_types()
_PING = encode_frame(MessageType.PING, b"\0\0\0\0")


def split(data: bytes) -> tuple[int, list[bytes], bytes]:
    """``(limit, chunks, stream)`` from a fuzzer input (see the module docstring)."""
    if len(data) < 2:
        return DEFAULT_MAX_FRAME, [data] if data else [], data
    limit = LIMITS[data[0] % len(LIMITS)]
    count = data[1] % 16
    sizes = [size + 1 for size in data[2 : 2 + count]] or [len(data)]
    stream = data[2 + count :]
    chunks = []
    position = 0
    turn = 0
    while position < len(stream):
        size = sizes[turn % len(sizes)]
        chunks.append(stream[position : position + size])
        position += size
        turn += 1
    return limit, chunks, stream


def test_one_input(data: bytes) -> None:
    limit, chunks, stream = split(data)
    decoder = FrameDecoder(limit)
    frames: list[tuple[int, bytes]] = []
    for chunk in chunks:
        latched = decoder.error is not None
        got = decoder.feed(chunk)
        if latched and got:
            raise AssertionError("frames returned after the decoder latched an error")
        frames.extend(got)
    for message_type, body in frames:
        if message_type not in _KNOWN:
            raise AssertionError(f"frame of unknown type {message_type:#x} returned")
        if not isinstance(body, bytes) or len(body) + 1 > limit:
            raise AssertionError(f"body of {len(body)} bytes returned by a decoder limited to {limit}")
    if decoder.error is not None:
        if not isinstance(decoder.error, ProtocolError):
            raise AssertionError(f"error is {decoder.error!r}, not a ProtocolError")
        if decoder.feed(_PING):
            raise AssertionError("a valid frame was decoded after an error: the error did not latch")
    whole = FrameDecoder(limit)
    expected = whole.feed(stream)
    if frames != expected or type(decoder.error) is not type(whole.error):
        raise AssertionError(
            f"chunking changed the result: {frames!r} / {decoder.error!r} "
            f"against {expected!r} / {whole.error!r} fed whole"
        )
    if decoder.error is None and whole.error is None and decoder.buffered != whole.buffered:
        raise AssertionError(f"{decoder.buffered} bytes held back, against {whole.buffered} fed whole")


def main(argv: list[str]) -> None:
    import atheris  # type: ignore[import-not-found]

    atheris.instrument_all()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
