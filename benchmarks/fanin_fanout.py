"""
Many-to-one fan-in and fan-out against raw Twisted, side by side in one run.

fan-in  : the C load generator (``loadgen -m stream``) streams 64-byte frames
          over 100 connections into one server, as ``ingest.py`` does, but the
          netmodels server is a **many-to-one** server node (the ``Hub`` tracks
          every client); ``Application.message_received`` counts. Raw:
          ``Int32StringReceiver.stringReceived`` counts. Messages/s.

fan-out : one server sends every message to 100 clients, framed once, as
          fast as the clients read it and no faster (lossless): it offers the
          next message only while no connection is paused by Twisted (more
          than 64 KiB unsent). Raw: a server writing one ready-made frame
          (4-byte length + 64-byte body) to each of 100
          ``Int32StringReceiver`` connections, pausing on Twisted's producer
          signal. netmodels: a many-to-one server node, ``Hub.broadcast``
          (``Node.broadcast``: DATA framed once, ``Session.write_frame`` per
          client, slow-consumer policy on), pausing while any session is not
          ``writable``. The clients are the C generator in read mode
          (``loadgen -m read``) on the other CPU, counting the frames it
          receives; deliveries/s = messages x clients, counted by the server
          over the window; the run is checked lossless: the generator's count
          equals everything the server sent.

          Two paces: 1 message per reactor turn, and bursts of 16 per turn.

Peers (``peers.py``; ``--no-peers`` leaves them out), same generator:
fan-in as ``ingest.py`` (asyncio and uvloop protocols, pyzmq PULL); fan-out
with ``asyncio.Protocol`` connections on each loop, written to as raw Twisted
does and pausing on ``pause_writing``, and pyzmq PUB/SUB: an ``XPUB`` with
``XPUB_NODROP`` (a full subscriber queue blocks ``send`` instead of dropping,
so the run is lossless like the others) sending in a blocking loop, each
generator connection a SUB speaking ZMTP 3.0 (``loadgen -m read -Z``).
pyzmq has no reactor turns: its one figure is in the 16-per-turn row.

    python benchmarks/fanin_fanout.py [--seconds 3] [--reps 3] [--conns 100]
"""

from __future__ import annotations

import argparse
import struct
import time
from typing import Any

import common
import ingest
import peers
from common import Row

BODY = 64
#: Listen backlog: 100 connections arriving at once overflow the default (50).
BACKLOG = 1024
BURST_ROW = 16


def netmodels_hello_hex(node_id: str = "loadgen") -> str:
    """A many-to-one client HELLO, as hex for the generator's ``-x``."""
    from netmodels.core.frames import Hello, encode_hello
    from netmodels.core.keepalive import DEFAULT

    hello = Hello(node_id=node_id, topology="many-to-one", role="client", keepalive=DEFAULT)
    return encode_hello(hello).hex()


# --------------------------------------------------------------------------
# The server processes


def build_server(reactor: Any, application: Any) -> Any:
    """A started many-to-one server node on 127.0.0.1 (default settings), port chosen by the kernel."""
    from netmodels.runtime.node import Node, NodeConfig
    from netmodels.topologies.many_to_one.topology import ManyToOne

    listen = f"tcp:0:interface={common.HOST}:backlog={BACKLOG}"
    config = NodeConfig(topology="many-to-one", role="server", listen=(listen,), node_id="bench-server")
    topology = ManyToOne()
    node = Node(config, topology, application, reactor)
    node.build()
    node.startService()
    return node


#: The peers of fan-in and of fan-out, in the table's order.
PEERS = ("asyncio", "uvloop", "zmq")


def serve_fanin(impl: str, warmup: float, seconds: float, profile: str | None, conns: int) -> None:
    if impl != "m21":
        ingest.serve(impl, warmup, seconds, profile, conns)  # raw and the peers: as ingest.py
        return
    common.quiet_logging()
    from netmodels.runtime.application import Application
    from twisted.internet import reactor

    counter = [0]
    ready = [0]
    window = common.Window(
        reactor, warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r), profile
    )

    class Counting(Application):
        def peer_ready(self, peer: Any) -> None:
            ready[0] += 1
            if ready[0] == 1:
                reactor.callLater(5.0, window.begin)
            if ready[0] >= conns:
                window.begin()

        def message_received(self, peer: Any, payload: bytes) -> None:
            counter[0] += 1

    node = build_server(reactor, Counting())
    common.emit("READY", str(node.listeners[0].port.getHost().port))
    reactor.run()


def serve_fanout_loop(impl: str, warmup: float, seconds: float, conns: int, burst: int) -> None:
    """Fan-out on asyncio's or uvloop's loop: raw Twisted's server, written with asyncio.Protocol."""
    loop = peers.new_loop(impl)
    deliveries = [0]
    state = {"running": True, "scheduled": False, "paused": 0}
    targets: list[Any] = []
    frame = struct.pack("!I", BODY) + b"x" * BODY

    def finish(result: dict[str, Any]) -> None:
        state["running"] = False
        result["total_deliveries"] = deliveries[0]
        result["clients"] = len(targets)
        common.emit("RESULT", result)

    window = common.Window(peers.LoopClock(loop), warmup, seconds, lambda: deliveries[0], finish)

    class Client(peers.Int32Protocol):
        paused = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            targets.append(self)
            if len(targets) >= conns:
                window.begin()
                kick()

        def pause_writing(self) -> None:
            if not self.paused:
                self.paused = True
                state["paused"] += 1

        def resume_writing(self) -> None:
            if self.paused:
                self.paused = False
                state["paused"] -= 1
                kick()

        def string_received(self, string: bytes) -> None:
            pass

    def pump() -> None:
        state["scheduled"] = False
        if not state["running"]:
            return
        for _ in range(burst):
            if state["paused"]:
                return  # resume_writing kicks the pump again
            for protocol in targets:
                protocol.transport.write(frame)
            deliveries[0] += len(targets)
        kick()

    def kick() -> None:
        if state["running"] and not state["scheduled"]:
            state["scheduled"] = True
            loop.call_soon(pump)

    server = loop.run_until_complete(loop.create_server(Client, common.HOST, 0, backlog=BACKLOG))
    common.emit("READY", str(server.sockets[0].getsockname()[1]))
    loop.run_forever()


def serve_fanout_zmq(warmup: float, seconds: float, conns: int) -> None:
    """
    Fan-out through a pyzmq XPUB with XPUB_NODROP, in a blocking loop: once
    every client has subscribed, send as fast as the slowest subscriber's
    queue (the default high-water mark, 1,000 messages) lets it.
    """
    import zmq

    sock = zmq.Context().socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not just the first of a topic
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    number = sock.bind_to_random_port(f"tcp://{common.HOST}")
    deliveries = [0]
    state = {"running": True}

    done: list[dict[str, Any]] = []

    def finish(result: dict[str, Any]) -> None:
        done.append(result)
        state["running"] = False

    window = peers.ThreadWindow(warmup, seconds, lambda: deliveries[0], finish)
    common.emit("READY", str(number))
    for _ in range(conns):
        sock.recv()  # one subscription per client
    message = b"x" * BODY
    send = sock.send
    window.begin()
    while state["running"]:
        send(message)
        deliveries[0] += conns
    # The total is read here, not in the window's thread, which may run between a send and its count.
    result = done[0]
    result["total_deliveries"] = deliveries[0]
    result["clients"] = conns
    common.emit("RESULT", result)
    while True:
        time.sleep(1)  # until the harness stops this process


def serve_fanout(
    impl: str, warmup: float, seconds: float, profile: str | None, conns: int, burst: int
) -> None:
    if impl in peers.LOOPS:
        serve_fanout_loop(impl, warmup, seconds, conns, burst)
        return
    if impl == "zmq":
        serve_fanout_zmq(warmup, seconds, conns)
        return
    common.quiet_logging()
    from twisted.internet import reactor

    deliveries = [0]
    state = {"running": True, "scheduled": False, "paused": 0}
    targets: list[Any] = []

    def finish(result: dict[str, Any]) -> None:
        state["running"] = False
        result["total_deliveries"] = deliveries[0]
        result["clients"] = len(targets)
        common.emit("RESULT", result)

    window = common.Window(reactor, warmup, seconds, lambda: deliveries[0], finish, profile)

    if impl == "raw":
        from twisted.internet.interfaces import IPushProducer
        from twisted.internet.protocol import Factory
        from twisted.protocols.basic import Int32StringReceiver
        from zope.interface import implementer

        frame = struct.pack("!I", BODY) + b"x" * BODY

        def send_one() -> int:
            for protocol in targets:
                protocol.transport.write(frame)
            return len(targets)

        def can_send() -> bool:
            return state["paused"] == 0

        @implementer(IPushProducer)
        class Client(Int32StringReceiver):
            paused = False

            def connectionMade(self) -> None:
                self.transport.setTcpNoDelay(True)
                self.transport.registerProducer(self, True)
                targets.append(self)
                if len(targets) >= conns:
                    start()

            def pauseProducing(self) -> None:
                if not self.paused:
                    self.paused = True
                    state["paused"] += 1

            def resumeProducing(self) -> None:
                if self.paused:
                    self.paused = False
                    state["paused"] -= 1
                    kick()

            def stopProducing(self) -> None:
                pass

            def stringReceived(self, string: bytes) -> None:
                pass

        port = reactor.listenTCP(0, Factory.forProtocol(Client), interface=common.HOST, backlog=BACKLOG)
        number = port.getHost().port
    else:
        from netmodels.runtime.application import Application
        from netmodels.topologies.many_to_one.hub import hub_of

        payload = b"x" * (BODY - 1)

        class Ready(Application):
            def peer_ready(self, peer: Any) -> None:
                targets.append(peer)
                if len(targets) >= conns:
                    start()

        node = build_server(reactor, Ready())
        hub = hub_of(node)
        assert hub is not None
        sessions = targets

        def send_one() -> int:
            return hub.broadcast(payload)

        def can_send() -> bool:
            return all(session.writable for session in sessions)

        # Resumed sessions restart the pump: wrap resumeProducing once per class.
        from netmodels.runtime.session import Session

        original_resume = Session.resumeProducing

        def resume(self: Session) -> None:
            original_resume(self)
            kick()

        Session.resumeProducing = resume  # type: ignore[method-assign]
        number = node.listeners[0].port.getHost().port

    def pump() -> None:
        state["scheduled"] = False
        if not state["running"]:
            return
        for _ in range(burst):
            if not can_send():
                return  # resumeProducing kicks the pump again
            deliveries[0] += send_one()
        kick()

    def kick() -> None:
        if state["running"] and not state["scheduled"]:
            state["scheduled"] = True
            reactor.callLater(0, pump)

    def start() -> None:
        window.begin()
        kick()

    common.emit("READY", str(number))
    reactor.run()


# --------------------------------------------------------------------------
# Orchestration


def run_once(mode: str, impl: str, args: argparse.Namespace, tag: str, burst: int = 1) -> dict[str, Any]:
    loadgen = common.build_loadgen()
    profile = common.profile_path(args, f"{tag}-{impl}") if impl == "m21" else None
    with common.Children() as children:
        server_args = [
            "server",
            "--mode",
            mode,
            "--impl",
            impl,
            "--warmup",
            str(args.warmup),
            "--seconds",
            str(args.seconds),
            "--conns",
            str(args.conns),
            "--burst",
            str(burst),
        ]
        if profile:
            server_args += ["--profile", profile]
        server = children.start(
            f"{mode} {impl} server",
            common.pinned(common.python_command("fanin_fanout.py", *server_args), common.server_cpu()),
        )
        port = server.expect("READY", 30)
        run_for = args.warmup + args.seconds + (1.0 if mode == "fanin" else 2.0)
        command = [
            str(loadgen),
            "-m",
            "stream" if mode == "fanin" else "read",
            "-p",
            port,
            "-c",
            str(args.conns),
            "-s",
            str(BODY),
            "-t",
            str(run_for),
        ]
        if impl == "zmq":
            command += ["-Z", "-x", peers.zmtp_hello_hex("PUSH" if mode == "fanin" else "SUB")]
            if mode == "fanout":
                command += ["-X", peers.ZMTP_SUBSCRIBE_ALL_HEX]
        elif impl == "m21":
            command += ["-T", "2", "-x", netmodels_hello_hex()]
        generator = children.start("loadgen", common.pinned(command, common.client_cpu()))
        generator.expect("CONNECTED", 30)
        result = server.result(run_for + 30)
        try:
            sent = generator.expect("SENT", run_for + 10)
            result["loadgen"] = dict(item.split("=") for item in sent.split())
            if mode == "fanout":
                received = generator.expect("RECEIVED", 5)
                result["received"] = dict(item.split("=") for item in received.split())
        except common.BenchError:
            result.setdefault("loadgen", {})
    return result


def disturbed(result: dict[str, Any]) -> str | None:
    return ingest.disturbed(result)


def measure(
    mode: str, args: argparse.Namespace, log: list[str], burst: int = 1, chosen: tuple[str, ...] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Interleaved raw / netmodels / peers repetitions; results per impl."""
    impls = ("raw", "m21", *chosen)
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    tag = mode if burst == 1 else f"{mode}-burst{burst}"
    for rep in range(args.reps):
        for impl in impls:
            label = f"{tag} rep {rep + 1}/{args.reps}: {impl}"
            common.progress(label)
            results[impl].append(
                common.measured(
                    lambda impl=impl, rep=rep: run_once(mode, impl, args, f"{tag}-{rep}", burst),
                    disturbed,
                    args.retries,
                    label,
                    log,
                )
            )
    return results


def lossless_notes(results: dict[str, list[dict[str, Any]]], label: str) -> list[str]:
    notes = []
    for impl, runs in results.items():
        for number, r in enumerate(runs, 1):
            received = r.get("received", {}).get("frames")
            sent = r.get("total_deliveries")
            if received is None or sent is None:
                notes.append(f"{label} {impl} rep {number}: could not check losslessness")
            elif int(received) != int(sent):
                notes.append(
                    f"{label} {impl} rep {number}: NOT lossless: sent {sent} deliveries, "
                    f"the clients received {received}"
                )
            lost = r.get("loadgen", {}).get("conns_lost")
            if lost not in (None, "0"):
                notes.append(f"{label} {impl} rep {number}: the generator lost {lost} connections")
    return notes


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    log: list[str] = []
    chosen = tuple(peers.chosen(args, PEERS, log))
    loops = tuple(peer for peer in chosen if peer in peers.LOOPS)
    fanin = measure("fanin", args, log, chosen=chosen)
    fanout = measure("fanout", args, log, chosen=loops)
    bursts = measure("fanout", args, log, BURST_ROW, chosen=chosen)

    def series(
        results: dict[str, list[dict[str, Any]]], impl: str, key: str, scale: float = 1.0
    ) -> list[float]:
        return [scale * r[key] for r in results[impl] if r.get(key) is not None]

    def rows_for(
        results: dict[str, list[dict[str, Any]]], workload: str, unit: str, target: Any
    ) -> list[Row]:
        measured = [peer for peer in chosen if peer in results]

        def of_peers(key: str, scale: float = 1.0) -> dict[str, list[float]]:
            return {peer: series(results, peer, key, scale) for peer in measured}

        return [
            Row(
                workload,
                unit,
                series(results, "raw", "rate"),
                series(results, "m21", "rate"),
                target,
                nm_label="many-to-one",
                peers=of_peers("rate"),
            ),
            Row(
                "  server CPU per " + ("message" if unit == "msg/s" else "delivery"),
                "µs",
                series(results, "raw", "cpu_us_per_op"),
                series(results, "m21", "cpu_us_per_op"),
                nm_label="many-to-one",
                peers=of_peers("cpu_us_per_op"),
            ),
            Row(
                "  server CPU busy",
                "%",
                series(results, "raw", "cpu_util", 100),
                series(results, "m21", "cpu_util", 100),
                nm_label="many-to-one",
                peers=of_peers("cpu_util", 100),
            ),
        ]

    rows = [
        *rows_for(fanin, f"fan-in, {args.conns} clients, 64 B frames", "msg/s", (">=", 1.00)),
        *rows_for(
            fanout, f"fan-out to {args.conns} clients, 1 msg/turn, lossless", "deliveries/s", (">=", 0.90)
        ),
        *rows_for(
            bursts,
            f"fan-out to {args.conns} clients, {BURST_ROW} msgs/turn, lossless",
            "deliveries/s",
            (">=", 0.90),
        ),
    ]
    notes = [
        "fan-in: C generator streams into the server (as ingest.py); netmodels = many-to-one server node "
        "(defaults: keepalive, kernel keepalive, slow-consumer policy), message_received counts",
        f"fan-out: the server offers 1 (or {BURST_ROW}) messages per reactor turn while no client "
        "connection is paused; clients = C generator in read mode counting frames; raw writes one "
        "ready-made frame per connection, netmodels Hub.broadcast (framed once, corked per session)",
        *(
            [
                "asyncio / uvloop: fan-in as ingest.py; fan-out writes one ready-made frame per "
                "asyncio.Protocol connection, pausing on pause_writing (64 KiB high-water mark)"
            ]
            if loops
            else []
        ),
        *(
            [
                "pyzmq: fan-in = PULL (generator as ZMTP PUSH, 66-byte frames); fan-out = XPUB with "
                "XPUB_NODROP in a blocking send loop, to 100 ZMTP SUB connections of the generator; "
                "no reactor turns, so its one fan-out figure is in the 16-per-turn row; its CPU counts "
                "libzmq's I/O thread"
            ]
            if "zmq" in chosen
            else []
        ),
        *lossless_notes(fanout, "fan-out"),
        *lossless_notes(bursts, "fan-out bursts"),
        *ingest.saturation_notes({f"fan-in {impl}": runs for impl, runs in fanin.items()}),
        *log,
    ]
    return rows, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument("--conns", type=int, default=100, help="clients (default 100)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("server")
    p.add_argument("--mode", choices=("fanin", "fanout"), required=True)
    p.add_argument("--impl", choices=("raw", "m21", *PEERS), required=True)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--profile", default=None)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--burst", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args()
    if args.command == "server":
        if args.mode == "fanin":
            serve_fanin(args.impl, args.warmup, args.seconds, args.profile, args.conns)
        else:
            serve_fanout(args.impl, args.warmup, args.seconds, args.profile, args.conns, args.burst)
        return
    common.apply_quick(args)
    print("\n".join(common.machine_info()))
    rows, notes = run(args)
    print(common.format_table("many-to-one: fan-in and fan-out", rows, notes))


if __name__ == "__main__":
    main()
