"""
Write the seed corpus of each fuzz target into ``fuzz/corpus/<target>/``.

    python -m fuzz.make_corpus

Seeds are valid streams (so the fuzzer starts from inputs that reach deep
code) and a few classic hostile ones. Files are named ``seed-<name>``;
inputs the fuzzer found a bug with are kept as ``crash-<what>`` next to them.
"""

from __future__ import annotations

import json
from pathlib import Path

from netmodels.core.frames import MessageType, encode_bye, encode_correlated, encode_frame, encode_ping
from netmodels.topologies.p2p.messages import PEERS, Broadcast, encode_broadcast

from .fuzz_handshake import KEEPALIVE, NODES, peer_hello

CORPUS = Path(__file__).resolve().parent / "corpus"

_PEERS = encode_frame(
    PEERS,
    json.dumps(
        {
            "members": [
                {"id": "peer", "endpoints": ["tcp:host=*:port=8750"], "incarnation": 1, "state": "alive"},
                {"id": "other", "endpoints": ["tcp:host=10.0.0.3:port=8750"], "state": "suspect"},
                {"id": "fuzzed", "incarnation": 5, "state": "dead"},
            ]
        }
    ).encode(),
)

#: After a valid HELLO: what a well-behaved or a hostile peer sends next.
_AFTER_HELLO = {
    "data": encode_frame(MessageType.DATA, b"hello") + encode_frame(MessageType.DATA, b"@room hi"),
    "request": encode_correlated(MessageType.REQUEST, 7, b"ping?"),
    "response": encode_correlated(MessageType.RESPONSE, 1, b"late")
    + encode_correlated(MessageType.ERROR, 2, b""),
    "ping-pong": encode_ping(1) + encode_ping(1, pong=True) + encode_ping(2),
    "bye": encode_bye("timeout", "bye now", fatal=True),
    "bye-junk": encode_frame(MessageType.BYE, b"\xff{not json"),
    "peers": _PEERS,
    "broadcast": encode_broadcast(Broadcast("other", 1, 1, b"news"))
    + encode_broadcast(Broadcast("other", 1, 2, b"to you", destination="fuzzed")),
    "hello-twice": encode_frame(MessageType.HELLO, b"{}"),
    "short-ping": encode_frame(MessageType.PING, b"\0"),
    "short-request": encode_frame(MessageType.REQUEST, b"\0\0"),
    "unknown-type": b"\0\0\0\x01\x7f",
    "oversized": b"\x7f\xff\xff\xff\x02",
}

#: From the first byte, without a valid HELLO first.
_RAW = {
    "http": b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-hello": bytes.fromhex("16030100a5010000a10303") + bytes(32),
    "empty-frame": b"\0\0\0\0",
    "hello-not-json": encode_frame(MessageType.HELLO, b"{not json"),
    "hello-array": encode_frame(MessageType.HELLO, b"[1,2,3]"),
    "hello-version-2": encode_frame(
        MessageType.HELLO,
        json.dumps(
            {
                "version": 2,
                "node_id": "x",
                "topology": "client-server",
                "role": "client",
                "keepalive": {"idle": 1, "interval": 1, "probes": 1},
            }
        ).encode(),
    ),
    "hello-bad-keepalive": encode_frame(
        MessageType.HELLO,
        json.dumps(
            {
                "version": 1,
                "node_id": "x",
                "topology": "p2p",
                "role": "peer",
                "keepalive": {"idle": -1, "interval": 1e308, "probes": 2**70},
                "max_frame": 64,
            }
        ).encode(),
    ),
    "deep-json": encode_frame(MessageType.HELLO, b"[" * 5000 + b"]" * 5000),
}


def frame_seeds() -> dict[str, bytes]:
    """Seeds of ``fuzz_frames``: limit byte, chunk sizes, stream."""
    valid = b"".join(_AFTER_HELLO[name] for name in ("data", "request", "ping-pong", "peers", "broadcast"))
    seeds = {
        "valid-whole": bytes([6, 0]) + valid,
        "valid-bytewise": bytes([6, 1, 0]) + valid,
        "valid-odd-chunks": bytes([6, 3, 2, 6, 0]) + valid,
        "small-limit": bytes([3, 2, 3, 1]) + valid,
        "header-split": bytes([4, 1, 1]) + b"\0\0\x01\0\x02" + b"x" * 255,
        "empty-frame": bytes([6, 0]) + encode_ping(1) + b"\0\0\0\0\x02",
        "unknown-type": bytes([6, 2, 4, 0]) + encode_ping(1) + b"\0\0\0\x01\x7f",
        "oversized": bytes([5, 0]) + b"\x00\x10\x00\x00\x02",
        "garbage": bytes([6, 1, 7]) + _RAW["http"] + _RAW["tls-hello"],
    }
    return seeds


def handshake_seeds() -> dict[str, bytes]:
    """Seeds of ``fuzz_handshake``: node, flags, chunk size, clock step, stream."""
    seeds: dict[str, bytes] = {}
    for index, (topology, role, _) in enumerate(NODES):
        node = f"{topology}-{role}"
        seeds[f"{node}-hello-only"] = bytes([index, 1, 0, 0])
        seeds[f"{node}-hello-then-fin"] = bytes([index, 3, 0, 0])
        seeds[f"{node}-hello-bytewise"] = bytes([index, 0, 1, 0]) + peer_hello(index)
        seeds[f"{node}-slow-hello"] = bytes([index, 0, 16, 3]) + peer_hello(index)
        for name, stream in _AFTER_HELLO.items():
            seeds[f"{node}-{name}"] = bytes([index, 1, 0, 2]) + stream
        for name, stream in _RAW.items():
            seeds[f"{node}-raw-{name}"] = bytes([index, 0, 0, 0]) + stream
    seeds["keepalive-answered"] = bytes([0, 1, 0, 5]) + encode_ping(1, pong=True) * 3
    assert KEEPALIVE.idle > 0
    return seeds


def main() -> None:
    from .fuzz_secure import seeds as secure_seeds

    for target, seeds in (
        ("frames", frame_seeds()),
        ("handshake", handshake_seeds()),
        ("secure", secure_seeds()),
    ):
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / f"seed-{name}").write_bytes(data)
        print(f"{directory}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
