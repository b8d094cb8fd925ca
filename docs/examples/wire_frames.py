"""
Real netmodels frames, byte by byte, and how the decoder treats bad ones.

Every frame is a 4-byte big-endian length (counting the type byte), a 1-byte
message type, then the body. This prints one frame of each message type as
made by netmodels.wire, then feeds the decoder a stream in awkward chunks and
a few broken frames.

Run: python docs/examples/wire_frames.py   (instant)
"""

import json

from netmodels.core.frames import (
    FrameDecoder,
    Hello,
    MessageType,
    encode_bye,
    encode_correlated,
    encode_frame,
    encode_hello,
    encode_ping,
    message_type_name,
)
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.topologies.p2p.messages import PEERS, Broadcast, encode_broadcast


def dump(title, frame):
    length, kind = int.from_bytes(frame[:4], "big"), message_type_name(frame[4])
    print(f"{title}: {len(frame)} bytes (length field {length}, type 0x{frame[4]:02x} {kind})")
    for offset in range(0, len(frame), 16):
        chunk = frame[offset : offset + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        print(f"  {offset:04x}  {chunk.hex(' '):47}  {text}")


hello = Hello(
    node_id="server-1",
    topology="client-server",
    role="server",
    keepalive=KeepaliveSettings(15, 10, 3),
    app="echo",
    listen=("tcp:8750",),
)
dump("HELLO", encode_hello(hello))
dump("DATA 'hello'", encode_frame(MessageType.DATA, b"hello"))
dump("DATA, empty (the smallest frame)", encode_frame(MessageType.DATA))
dump("PING sequence 1", encode_ping(1))
dump("PONG sequence 1", encode_ping(1, pong=True))
dump("REQUEST id 1 'hello 1'", encode_correlated(MessageType.REQUEST, 1, b"hello 1"))
dump("RESPONSE id 1 'hello 1'", encode_correlated(MessageType.RESPONSE, 1, b"hello 1"))
dump("ERROR id 2 'boom'", encode_correlated(MessageType.ERROR, 2, b"boom"))
dump("BYE clean", encode_bye("clean"))
dump(
    "BYE fatal protocol error",
    encode_bye("protocol-error", "peer speaks protocol version 2, we speak 1", True),
)
# p2p: peer exchange (JSON, as netmodels.p2p writes it) and a flooded message.
member = {
    "id": "n2",
    "endpoints": ["tcp:host=10.0.0.2:port=8760"],
    "incarnation": 1700000000000,
    "state": "alive",
}
dump("PEERS, one member (p2p)", encode_frame(PEERS, json.dumps({"members": [member]}).encode()))
dump("BROADCAST 'hi' from n1 to all (p2p)", encode_broadcast(Broadcast("n1", 1700000000000, 7, b"hi")))
dump(
    "BROADCAST 'hi' from n1 relayed to n3 (p2p)",
    encode_broadcast(Broadcast("n1", 1700000000000, 8, b"hi", "n3")),
)

print()
print("a stream cut anywhere still decodes: feeding DATA + PING one byte at a time")
decoder = FrameDecoder()
stream = encode_frame(MessageType.DATA, b"hi") + encode_ping(7)
for index, byte in enumerate(stream):
    frames = decoder.feed(bytes([byte]))
    if frames:
        print(f"  after byte {index + 1:2}: {[(message_type_name(t), body) for t, body in frames]}")

print()
print("broken frames end the connection with reason protocol-error:")
for title, data in (
    ("length 0 (no type byte)", b"\x00\x00\x00\x00"),
    ("length ff ff ff ff, just those 4 bytes", b"\xff\xff\xff\xff"),
    ("length 2 MiB with --max-frame 1 MiB", (2 * 1024 * 1024).to_bytes(4, "big")),
    ("unknown type 0x7f", b"\x00\x00\x00\x01\x7f"),
):
    decoder = FrameDecoder(max_frame=1024 * 1024)
    decoder.feed(data)
    print(f"  {title:38} -> {type(decoder.error).__name__}: {decoder.error}")

print()
print("good frames before a bad one are delivered; after it the decoder latches:")
decoder = FrameDecoder()
print(
    "  feed(DATA 'ok' + type 0x7f):",
    decoder.feed(encode_frame(MessageType.DATA, b"ok") + b"\x00\x00\x00\x01\x7f"),
)
print("  error:", decoder.error)
print(
    "  feed(DATA 'more'):",
    decoder.feed(encode_frame(MessageType.DATA, b"more")),
    "(ignored: the stream stays bad)",
)
