"""
Fuzz target: a node's session fed by a hostile peer, from the first byte.

A real :class:`netmodels.runtime.node.Node` (client-server server or client,
many-to-one server, p2p peer), started on a ``MemoryReactorClock``, gets one
connection on an in-memory transport; the fuzzer's bytes arrive as what the
peer sends, in chunks, with the clock moved on between chunks so the
handshake deadline and keepalive fire in between.

Input layout (all of it chosen by the fuzzer)::

    byte 0    which node (see NODES)
    byte 1    flags: bit 0 -- a valid HELLO from the right kind of peer goes
              first (so the fuzzer starts past the handshake); bit 1 -- the
              peer closes (FIN) after its last byte
    byte 2    chunk size in bytes (0: everything in one chunk)
    byte 3    seconds the clock moves after each chunk, in tenths
    the rest  what the peer sends

Properties checked: nothing the peer sends makes netmodels log a failure (an
exception escaping a handler, caught and logged, is a bug here); the
connection ends by the handshake deadline or keepalive at the latest; a
connection that netmodels ends itself is ``protocol-error`` or ``timeout``,
never ``aborted`` for an application error; and stopping the node leaves no
delayed call behind. Anything else raises ``AssertionError``.

Run it (needs ``pip install atheris``)::

    python fuzz/fuzz_handshake.py fuzz/corpus/handshake -max_total_time=300
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from netmodels.core.connection import ConnectionRecord, Direction
from netmodels.core.frames import Hello, encode_hello
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.registry import applications, topologies
from netmodels.topologies.p2p.options import P2PSettings

#: The node under test: (topology, our role, the role of the peer it expects).
NODES = (
    ("client-server", "server", "client"),
    ("client-server", "client", "server"),
    ("many-to-one", "server", "client"),
    ("p2p", "peer", "peer"),
)

#: Short, so that the deadlines fire within the clock steps the fuzzer picks.
HANDSHAKE_TIMEOUT = 1.0
KEEPALIVE = KeepaliveSettings(1.0, 0.5, 3)
#: Long enough for the handshake, keepalive and the close deadline to run out.
DRAIN = 60.0

PEER = IPv4Address("TCP", "10.0.0.2", 40000)
HOST = IPv4Address("TCP", "10.0.0.1", 8750)

#: What netmodels may decide on its own when a peer misbehaves or goes quiet.
LOCAL_REASONS = frozenset({CloseReason.PROTOCOL_ERROR, CloseReason.TIMEOUT})

_TOPOLOGIES = topologies()
_APPLICATIONS = applications()


class _Failures:
    """Log events carrying a failure, collected while one input runs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.active = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.active and event.get("log_failure") is not None:
            self.events.append(event)


_failures = _Failures()
globalLogPublisher.addObserver(_failures)


class PeerTransport(StringTransport):
    """An in-memory TCP transport whose close reaches the protocol on the next clock tick."""

    def __init__(self, clock: MemoryReactorClock) -> None:
        super().__init__(hostAddress=HOST, peerAddress=PEER)
        self.clock = clock
        self.protocol: Any = None
        self.lost = False

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.clock.callLater(0, self.connection_lost, ConnectionDone())

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.clock.callLater(0, self.connection_lost, ConnectionAborted())

    def connection_lost(self, reason: Exception) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(reason))


def parse(data: bytes) -> tuple[int, bool, bool, int, float, bytes]:
    """``(node, hello_first, fin_after, chunk, step, stream)`` from a fuzzer input."""
    header = data[:4].ljust(4, b"\0")
    return (
        header[0] % len(NODES),
        bool(header[1] & 1),
        bool(header[1] & 2),
        header[2],
        header[3] / 10,
        data[4:],
    )


def make_node(index: int, clock: MemoryReactorClock) -> Node:
    topology_name, role, _ = NODES[index]
    topology = _TOPOLOGIES[topology_name]
    config = NodeConfig(
        topology=topology_name,
        role=role,
        app=topology.default_app,
        node_id="fuzzed",
        keepalive=KEEPALIVE,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        listen=("tcp:8750:interface=10.0.0.1",) if role != "client" else (),
        connect=("tcp:10.0.0.1:8750",) if role == "client" else (),
        interval=0.0,
        # p2p by connections (--swim off): its PEERS frames are what a peer can feed here
        # (SWIM runs over UDP, which this reactor has not; its packets have their own tests).
        settings=P2PSettings(swim=None) if topology_name == "p2p" else None,
    )
    node = Node(config, topology, _APPLICATIONS[config.app](config), clock)
    topology.build(node)
    return node


def peer_hello(index: int) -> bytes:
    topology, _, peer_role = NODES[index]
    listen = ("tcp:10.0.0.2:8750",) if topology == "p2p" else ()
    return encode_hello(Hello("peer", topology, peer_role, KEEPALIVE, listen=listen))


def connect(node: Node, dialled: bool, clock: MemoryReactorClock) -> tuple[ManagedConnection, PeerTransport]:
    """One connection to ``node``: accepted by its listener, or ``dialled`` by it (a client)."""
    if dialled:
        factory = node.manager.wrap_factory(node.session_factory(), Direction.OUTBOUND)
    else:
        factory = node.listeners[0].factory
    protocol = factory.buildProtocol(PEER)
    assert isinstance(protocol, ManagedConnection)
    transport = PeerTransport(clock)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def check_closure(record: ConnectionRecord) -> None:
    if not record.closed:
        raise AssertionError(f"connection still {record.state} {DRAIN:g} s after the peer's last byte")
    if record.initiator is Initiator.LOCAL and record.reason not in LOCAL_REASONS:
        raise AssertionError(f"closed {record.reason} (local): {record.detail}")


def test_one_input(data: bytes) -> None:
    index, hello_first, fin_after, chunk, step, stream = parse(data)
    clock = MemoryReactorClock()
    node = make_node(index, clock)
    node.startService()
    protocol, transport = connect(node, NODES[index][1] == "client", clock)
    if hello_first:
        stream = peer_hello(index) + stream
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)] if chunk else [stream]
    with no_logged_failures():
        for piece in chunks:
            if transport.lost:
                break
            if not transport.disconnecting:
                protocol.dataReceived(piece)
            clock.advance(step)
        if fin_after:
            transport.connection_lost(ConnectionDone())
        stop_and_check(node, clock, lambda: check_closure(protocol.record))


@contextlib.contextmanager
def no_logged_failures() -> Iterator[None]:
    """Raise ``AssertionError`` if netmodels logs a failure while the body runs."""
    _failures.active = True
    try:
        yield
    finally:
        _failures.active = False
        events, _failures.events = _failures.events, []
    if events:
        failure = events[0]["log_failure"]
        raise AssertionError(f"netmodels logged a failure: {failure.getTraceback()}")


def stop_and_check(node: Node, clock: MemoryReactorClock, check: Callable[[], None]) -> None:
    """
    After the peer's last byte: ``check()`` once the deadlines have run out,
    then the node stops cleanly and leaves no delayed call behind.
    """
    _advance(clock, DRAIN)
    check()
    stopped: list[Any] = []
    node.stopService().addBoth(stopped.append)
    _advance(clock, DRAIN)
    if not stopped or isinstance(stopped[0], Failure):
        raise AssertionError(f"stopping the node: {stopped}")
    if clock.getDelayedCalls():
        raise AssertionError(f"delayed calls left after stopping: {clock.getDelayedCalls()}")


def _advance(clock: MemoryReactorClock, seconds: float, step: float = 0.25) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)


def main(argv: list[str], target: Callable[[bytes], None] = test_one_input) -> None:
    import atheris  # type: ignore[import-not-found]

    atheris.instrument_all()
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
