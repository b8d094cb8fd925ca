"""
Fuzz target: an encrypted session (``--cluster-key-file``) fed by a hostile peer.

A real :class:`netmodels.runtime.node.Node` with a cluster key gets one
connection on an in-memory transport, as in ``fuzz_handshake``. What the
peer sends depends on the mode:

- ``raw``: the fuzzer's bytes from the first byte, in place of the Noise
  handshake (forged handshake messages, cleartext frames, garbage);
- ``after-handshake``: the harness runs a real handshake with the node's key,
  then sends the fuzzer's bytes unsealed (forged and replayed records);
- ``sealed`` / ``sealed-unreliable``: a real handshake and a valid HELLO,
  then the fuzzer's bytes sealed by the harness as records of the reliable
  or unreliable space (hostile plaintext that passed authentication).

Input layout::

    byte 0    mode (see MODES)
    byte 1    which node (see NODES)
    byte 2    chunk size in bytes (0: everything in one chunk)
    byte 3    seconds the clock moves after each chunk, in tenths
    the rest  what the peer sends

Properties checked: no failure is logged; the connection ends by the
deadlines at the latest; netmodels ends it only with ``protocol-error``,
``timeout`` or ``rejected``; nothing reaches the application before a
sealed HELLO; stopping the node leaves no delayed call behind.

    python fuzz/fuzz_secure.py fuzz/corpus/secure -max_total_time=300
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from fuzz.fuzz_handshake import (
    DRAIN,
    HANDSHAKE_TIMEOUT,
    KEEPALIVE,
    PeerTransport,
    connect,
    main,
    no_logged_failures,
    stop_and_check,
)
from netmodels.core.connection import ConnectionRecord
from netmodels.core.frames import FrameDecoder, Hello, MessageType, encode_hello
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.core.secure import (
    MAX_RECORD_FRAME,
    NoiseHandshake,
    SecureChannel,
    new_private_key,
    noise_frame,
)
from netmodels.runtime.application import Application
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.registry import topologies
from netmodels.topologies.p2p.options import P2PSettings

MODES = ("raw", "after-handshake", "sealed", "sealed-unreliable")
#: (topology, our role, the peer's role).
NODES = (
    ("client-server", "server", "client"),
    ("client-server", "client", "server"),
    ("p2p", "peer", "peer"),
)
KEY = bytes(range(32))
LOCAL_REASONS = frozenset({CloseReason.PROTOCOL_ERROR, CloseReason.TIMEOUT, CloseReason.REJECTED})


class Watching(Application):
    """Counts what reaches the application."""

    def __init__(self) -> None:
        self.calls = 0

    def peer_ready(self, peer: Any) -> None:
        self.calls += 1

    def message_received(self, peer: Any, payload: bytes) -> None:
        self.calls += 1

    def request_received(self, peer: Any, payload: bytes) -> bytes:
        self.calls += 1
        return payload


def parse(data: bytes) -> tuple[str, int, int, float, bytes]:
    header = data[:4].ljust(4, b"\0")
    return MODES[header[0] % len(MODES)], header[1] % len(NODES), header[2], header[3] / 10, data[4:]


def make_node(index: int, clock: MemoryReactorClock, application: Application) -> Node:
    topology_name, role, _ = NODES[index]
    config = NodeConfig(
        topology=topology_name,
        role=role,
        node_id="fuzzed",
        keepalive=KEEPALIVE,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        listen=("tcp:8750:interface=10.0.0.1",) if role != "client" else (),
        connect=("tcp:10.0.0.1:8750",) if role == "client" else (),
        interval=0.0,
        cluster_keys=(KEY,),
        # p2p by connections (--swim off): the stream is what this reactor carries (no UDP).
        settings=P2PSettings(swim=None) if topology_name == "p2p" else None,
    )
    node = Node(config, topologies()[topology_name], application, clock)
    node.build()
    return node


def handshake(protocol: ManagedConnection, transport: PeerTransport, node_dialled: bool) -> SecureChannel:
    """Complete a real handshake with the node; the harness's channel."""
    ours = NoiseHandshake((KEY,), new_private_key(), initiator=not node_dialled)
    decoder = FrameDecoder(MAX_RECORD_FRAME)

    def from_node() -> bytes:
        written = transport.value()
        transport.clear()
        # The node's last handshake message may come with its first record (its HELLO).
        kind, body = decoder.feed(written)[0]
        assert kind == MessageType.NOISE, kind
        return body

    message = ours.first_message() if not node_dialled else ours.receive(from_node())
    while ours.result is None or message is not None:
        assert message is not None
        protocol.dataReceived(noise_frame(message))
        if ours.result is not None:
            break
        message = ours.receive(from_node())
    assert ours.result is not None
    return SecureChannel(ours.result)


def peer_hello(index: int) -> bytes:
    topology, _, peer_role = NODES[index]
    listen = ("tcp:10.0.0.2:8750",) if topology == "p2p" else ()
    return encode_hello(Hello("peer", topology, peer_role, KEEPALIVE, listen=listen))


def check_closure(record: ConnectionRecord) -> None:
    if not record.closed:
        raise AssertionError(f"connection still {record.state} {DRAIN:g} s after the peer's last byte")
    if record.initiator is Initiator.LOCAL and record.reason not in LOCAL_REASONS:
        raise AssertionError(f"closed {record.reason} (local): {record.detail}")


def test_one_input(data: bytes) -> None:
    mode, index, chunk, step, stream = parse(data)
    clock = MemoryReactorClock()
    application = Watching()
    node = make_node(index, clock, application)
    node.startService()
    protocol, transport = connect(node, NODES[index][1] == "client", clock)
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)] if chunk else [stream]
    with no_logged_failures():
        if mode != "raw" and not transport.disconnecting:
            channel = handshake(protocol, transport, NODES[index][1] == "client")
            if mode == "sealed":
                chunks = [channel.seal(peer_hello(index))] + [channel.seal(piece) for piece in chunks]
            elif mode == "sealed-unreliable":
                chunks = [channel.seal(peer_hello(index))] + [
                    channel.seal_unreliable(piece) for piece in chunks
                ]
        for piece in chunks:
            if transport.lost:
                break
            if not transport.disconnecting:
                protocol.dataReceived(piece)
            clock.advance(step)
            if mode in ("raw", "after-handshake") and application.calls:
                raise AssertionError("the application heard from a peer that never sent a sealed HELLO")
        stop_and_check(node, clock, lambda: check_closure(protocol.record))


def seeds() -> dict[str, bytes]:
    """Seeds: each mode on each node, with a few streams worth starting from."""
    from netmodels.core.frames import encode_frame, encode_ping

    streams = {
        "empty": b"",
        "data": encode_frame(MessageType.DATA, b"hello") + encode_ping(1),
        "forged-record": encode_frame(MessageType.SEALED, bytes(8) + bytes(40)),
        "noise-junk": noise_frame(bytes(48)) + noise_frame(bytes(96)),
        "cleartext-hello": encode_hello(Hello("x", "client-server", "client", KEEPALIVE)),
        "huge-length": b"\x7f\xff\xff\xff\xf1",
    }
    out = {}
    for mode_index, mode in enumerate(MODES):
        for node_index, (topology, role, _) in enumerate(NODES):
            for name, stream in streams.items():
                out[f"{mode}-{topology}-{role}-{name}"] = bytes([mode_index, node_index, 0, 2]) + stream
    out["raw-bytewise-noise"] = bytes([0, 0, 1, 0]) + noise_frame(bytes(48))
    return out


if __name__ == "__main__":
    main(sys.argv, test_one_input)
