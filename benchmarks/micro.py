"""
In-process Python cost per message, no sockets: where netmodels' time goes.

Feeds ready-made bytes to the protocols over a transport that discards what
they write, so only the Python work per message is timed (no syscalls, no
scheduler). Each figure is the best of several runs, in µs per message.

- request/response, server side: one REQUEST frame in, one RESPONSE frame out
  (netmodels: ``ManagedConnection`` + ``Session`` + echo application) against
  ``Int32StringReceiver`` echoing a string;
- the server side again with a cluster key: past a real Noise handshake, one
  sealed REQUEST record in, one sealed RESPONSE out (what encryption adds);
- request/response, client side: one RESPONSE frame in, the Deferred fires, the
  application sends the next ``session.request()`` (closed loop) against
  ``Int32StringReceiver`` sending the next string from ``stringReceived``;
- ingest: 64 KB chunks of 68-byte frames, per message;
- then the pieces of the netmodels paths, to show what each layer costs.

The end-to-end benchmarks (rr.py) show larger differences than these hot-cache
figures: with both ends on one CPU each half round trip starts with cold caches.

    python benchmarks/micro.py
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from typing import Any

N_SMALL = 50_000
N_CHUNKS = 300
PAYLOAD = b"p" * 32


def best(fn: Callable[[], Any], n: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` µs per call of ``fn`` over ``n`` calls."""
    results = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - start) / n * 1e6)
    return min(results)


def build() -> dict[str, Callable[[], Any]]:
    from netmodels.core.frames import (
        FrameDecoder,
        Hello,
        decode_correlated,
        encode_correlated,
        encode_frame,
        encode_hello,
    )
    from netmodels.core.keepalive import DEFAULT
    from netmodels.core.secure import NoiseHandshake, SecureChannel, new_private_key, noise_frame
    from netmodels.runtime.application import Application
    from netmodels.runtime.node import Node, NodeConfig
    from netmodels.topologies.client_server import ClientServer, EchoApplication
    from twisted.internet import reactor
    from twisted.internet.address import IPv4Address
    from twisted.internet.defer import Deferred
    from twisted.internet.testing import StringTransport
    from twisted.protocols.basic import Int32StringReceiver

    class NullTransport(StringTransport):
        def write(self, data: bytes) -> None:
            pass

    address = IPv4Address("TCP", "127.0.0.1", 40000)

    def netmodels_connection(role: str, application: Any) -> Any:
        peer_role = "client" if role == "server" else "server"
        config = NodeConfig(
            role=role,
            listen=("tcp:0",) if role == "server" else (),
            connect=("tcp:127.0.0.1:1",) if role == "client" else (),
            node_id=f"micro-{role}",
            interval=0,
        )
        node = Node(config, ClientServer(), application, reactor)
        factory = node.manager.wrap_factory(node.session_factory())
        managed = factory.buildProtocol(address)
        managed.makeConnection(NullTransport(peerAddress=address))
        managed.dataReceived(
            encode_hello(Hello(node_id="peer", topology="client-server", role=peer_role, keepalive=DEFAULT))
        )
        assert managed.wrappedProtocol.machine.is_open()
        return managed

    peer_channel: Any = None

    def netmodels_secure_server(application: Any) -> Any:
        """A server connection with a cluster key, past a real Noise handshake (the peer's channel kept)."""
        nonlocal peer_channel
        key = bytes(32)
        config = NodeConfig(role="server", listen=("tcp:0",), node_id="micro-secure", cluster_keys=(key,))
        node = Node(config, ClientServer(), application, reactor)
        factory = node.manager.wrap_factory(node.session_factory())
        managed = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        managed.makeConnection(transport)
        peer = NoiseHandshake((key,), new_private_key(), initiator=True)
        managed.dataReceived(noise_frame(peer.first_message()))
        [(_, answer)] = FrameDecoder().feed(transport.value())
        managed.dataReceived(noise_frame(peer.receive(answer)))
        peer_channel = SecureChannel(peer.result)
        hello = encode_hello(
            Hello(node_id="peer", topology="client-server", role="client", keepalive=DEFAULT)
        )
        managed.dataReceived(peer_channel.seal(hello))
        assert managed.wrappedProtocol.machine.is_open()
        managed.transport = NullTransport(peerAddress=address)
        managed._direct = None
        return managed

    figures: dict[str, Callable[[], Any]] = {}

    # Server side of a round trip.
    class Echo(Int32StringReceiver):
        def stringReceived(self, string: bytes) -> None:
            self.sendString(string)

    echo = Echo()
    echo.makeConnection(NullTransport())
    raw_request = struct.pack("!I", len(PAYLOAD)) + PAYLOAD
    figures["rr server: raw"] = lambda: echo.dataReceived(raw_request)

    config = NodeConfig(role="server", listen=("tcp:0",))
    server = netmodels_connection("server", EchoApplication(config))
    request = encode_correlated(0x06, 1, PAYLOAD)
    figures["rr server: netmodels"] = lambda: server.dataReceived(request)
    session = server.wrappedProtocol
    figures["rr server: netmodels, Session alone (no ManagedConnection)"] = lambda: session.dataReceived(
        request
    )

    # The same, encrypted: a cluster key, a real handshake with a harness peer, then sealed requests.
    secure_server = netmodels_secure_server(EchoApplication(config))
    records = [peer_channel.seal(request) for _ in range(6 * N_SMALL + 10)]
    sealed = iter(records)
    figures["rr server: netmodels, encrypted (noise)"] = lambda: secure_server.dataReceived(next(sealed))
    seal_request = peer_channel.seal
    figures["piece: SecureChannel.seal, one REQUEST frame"] = lambda: seal_request(request)

    # Client side of a round trip.
    class Pinger(Int32StringReceiver):
        def stringReceived(self, string: bytes) -> None:
            self.sendString(PAYLOAD)

    pinger = Pinger()
    pinger.makeConnection(NullTransport())
    figures["rr client: raw"] = lambda: pinger.dataReceived(raw_request)

    class ClosedLoop(Application):
        peer: Any = None

        def peer_ready(self, peer: Any) -> None:
            self.peer = peer

        def send_next(self) -> None:
            self.peer.request(PAYLOAD).addCallback(self.answered)

        def answered(self, reply: bytes) -> None:
            self.send_next()

    loop = ClosedLoop()
    client = netmodels_connection("client", loop)
    client_session = client.wrappedProtocol
    loop.send_next()
    responses = [encode_correlated(0x07, i, PAYLOAD) for i in range(1, 6 * N_SMALL + 10)]
    position = iter(responses)
    figures["rr client: netmodels"] = lambda: client.dataReceived(next(position))

    # Ingest, per message, 64 KB chunks.
    count = [0]

    class Sink(Int32StringReceiver):
        def stringReceived(self, string: bytes) -> None:
            count[0] += 1

    sink = Sink()
    sink.makeConnection(NullTransport())
    frames = 65536 // 68
    raw_chunk = (struct.pack("!I", 64) + b"x" * 64) * frames
    figures[f"ingest per message ({frames}/chunk): raw"] = (
        lambda: sink.dataReceived(raw_chunk),
        frames,
    )  # type: ignore[assignment]

    class Counting(Application):
        def message_received(self, peer: Any, payload: bytes) -> None:
            count[0] += 1

    ingest = netmodels_connection("server", Counting())
    nm_chunk = encode_frame(0x02, b"x" * 63) * frames
    figures[f"ingest per message ({frames}/chunk): netmodels"] = (
        lambda: ingest.dataReceived(nm_chunk),
        frames,
    )  # type: ignore[assignment]

    # The pieces.
    decoder = FrameDecoder()
    figures["piece: FrameDecoder.feed, one REQUEST frame"] = lambda: decoder.feed(request)
    figures["piece: encode_correlated"] = lambda: encode_correlated(0x07, 1, PAYLOAD)
    body = request[5:]
    figures["piece: decode_correlated"] = lambda: decode_correlated(body)

    def deferred_round() -> None:
        d: Deferred[bytes] = Deferred()
        d.addCallback(lambda r: None)
        d.callback(b"")

    figures["piece: Deferred() + addCallback + callback"] = deferred_round
    figures["piece: reactor.seconds()"] = reactor.seconds
    record = server.record
    figures["piece: ConnectionRecord.closed (property)"] = lambda: record.closed
    figures["piece: ManagedConnection.write (to a discarding transport)"] = lambda: server.write(b"x")
    figures["piece: Session.request() alone (no response)"] = lambda: client_session.request(PAYLOAD)
    return figures


def run() -> list[tuple[str, float]]:
    results = []
    for name, job in build().items():
        if isinstance(job, tuple):
            fn, per = job
            results.append((name, best(fn, N_CHUNKS) / per))
        else:
            results.append((name, best(job, N_SMALL)))
    return results


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    import common

    print("\n".join(common.machine_info()))
    print("== in-process Python cost per message (µs, best of 5; no sockets) ==")
    for name, value in run():
        print(f"{name:62} {value:8.3f} µs")


if __name__ == "__main__":
    main()
