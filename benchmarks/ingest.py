"""
Fan-in ingest of small messages: the C load generator (``loadgen.c``) streams
64-byte frames over 100 connections into one server; the server counts the
messages it delivers over the window. The server is what is measured, so the
generator runs on the other CPU and is several times faster than the server.

raw       : ``Int32StringReceiver``; ``stringReceived`` increments a counter.
            Frames are 4-byte length + 64-byte body.
netmodels : a server ``Node`` (client-server topology, default settings:
            application keepalive 15,10,3, kernel keepalive, manager, errno
            capture); ``Application.message_received`` increments a counter.
            Each connection first sends a valid client HELLO, then DATA frames
            (4-byte length + type 0x02 + 63-byte body): 68 bytes a frame, as raw.

Peers (``peers.py``; ``--no-peers`` leaves them out): an ``asyncio.Protocol``
counting in its framing loop, on the standard library's loop and on uvloop
(the generator's raw frames), and a pyzmq PULL socket counting in a blocking
``recv`` loop, fed by the same generator speaking ZMTP 3.0 (``loadgen -Z``:
PUSH, 64-byte messages in 66-byte frames).

``keepalive_cost.py`` runs the same measurement with netmodels keepalive on and off.

    python benchmarks/ingest.py [--seconds 3] [--reps 3] [--conns 100]
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import peers
from common import Row

BODY = 64
IMPLS = ("raw", "nm", "nm-off", *peers.LOOPS, "zmq")
#: The peers of ingest and fan-in, in the table's order.
PEERS = ("asyncio", "uvloop", "zmq")


# --------------------------------------------------------------------------
# The server process


def build_netmodels_server(
    reactor: Any,
    application: Any,
    keepalive: bool,
    max_connections: int | None = 10_000,
    backlog: int | None = None,
) -> Any:
    """
    A started netmodels server node on 127.0.0.1, port chosen by the kernel.

    With ``keepalive=False`` netmodels keepalive is OFF, meaning all of:
    no kernel keepalive (``SessionSettings.kernel_keepalive=False``), no
    ``TCP_USER_TIMEOUT`` (``user_timeout=0``), and an application keepalive
    that never probes (idle 1e6 s: its timer never fires). What stays is the
    session's time stamp per received chunk, which it takes for its
    deadlines whatever the keepalive.
    """
    import attrs
    from netmodels.core.keepalive import KeepaliveSettings
    from netmodels.runtime.node import Node, NodeConfig
    from netmodels.runtime.session import SessionFactory
    from netmodels.topologies.client_server import ClientServer

    listen = f"tcp:0:interface={common.HOST}"
    if backlog is not None:
        listen += f":backlog={backlog}"
    if keepalive:
        config = NodeConfig(
            role="server", listen=(listen,), node_id="bench-server", max_connections=max_connections
        )
    else:
        config = NodeConfig(
            role="server",
            listen=(listen,),
            node_id="bench-server",
            keepalive=KeepaliveSettings(1e6, 1e6, 1),
            user_timeout=0,
            max_connections=max_connections,
        )
    node = Node(config, ClientServer(), application, reactor)
    factory = None
    if not keepalive:
        node.session_settings = attrs.evolve(node.session_settings, kernel_keepalive=False)

        factory = SessionFactory(node.session_settings, node.clock)
    node.listen(listen, factory)
    node.startService()
    return node


#: Listen backlog: the default (50) overflows when 100 connections arrive at once, and a
#: dropped SYN stalls the generator's connect() for a whole second.
BACKLOG = 1024


def serve_loop(impl: str, warmup: float, seconds: float, conns: int) -> None:
    """The counting server on asyncio's or uvloop's loop."""
    loop = peers.new_loop(impl)
    counter = [0]
    window = common.Window(
        peers.LoopClock(loop), warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r)
    )
    ready = [0]

    class Sink(peers.Int32Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ready[0] += 1
            if ready[0] == 1:
                loop.call_later(5.0, window.begin)
            if ready[0] >= conns:
                window.begin()

        def string_received(self, string: bytes) -> None:
            counter[0] += 1

    server = loop.run_until_complete(loop.create_server(Sink, common.HOST, 0, backlog=BACKLOG))
    common.emit("READY", str(server.sockets[0].getsockname()[1]))
    loop.run_forever()


def serve_zmq(warmup: float, seconds: float) -> None:
    """
    A pyzmq PULL socket counting in a blocking loop. The generator completes
    every connection's handshake before it streams, so the first message
    means all are up: the warm-up starts there.
    """
    import zmq

    sock = zmq.Context().socket(zmq.PULL)
    number = sock.bind_to_random_port(f"tcp://{common.HOST}")
    counter = [0]
    window = peers.ThreadWindow(warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r))
    common.emit("READY", str(number))
    recv = sock.recv
    recv()
    window.begin()
    while True:
        recv()
        counter[0] += 1


def serve(impl: str, warmup: float, seconds: float, profile: str | None, conns: int) -> None:
    if impl in peers.LOOPS:
        serve_loop(impl, warmup, seconds, conns)
        return
    if impl == "zmq":
        serve_zmq(warmup, seconds)
        return
    common.quiet_logging()
    from twisted.internet import reactor

    counter = [0]
    window = common.Window(
        reactor, warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r), profile
    )
    ready = [0]

    def connected() -> None:
        # The warm-up starts once every generator connection is up (or 5 s after the first).
        ready[0] += 1
        if ready[0] == 1:
            reactor.callLater(5.0, window.begin)
        if ready[0] >= conns:
            window.begin()

    if impl == "raw":
        from twisted.internet.protocol import Factory
        from twisted.protocols.basic import Int32StringReceiver

        class Sink(Int32StringReceiver):
            def connectionMade(self) -> None:
                self.transport.setTcpNoDelay(True)
                connected()

            def stringReceived(self, string: bytes) -> None:
                counter[0] += 1

        port = reactor.listenTCP(0, Factory.forProtocol(Sink), interface=common.HOST, backlog=BACKLOG)
        number = port.getHost().port
    else:
        from netmodels.runtime.application import Application

        class Counting(Application):
            def peer_ready(self, peer: Any) -> None:
                connected()

            def message_received(self, peer: Any, payload: bytes) -> None:
                counter[0] += 1

        node = build_netmodels_server(reactor, Counting(), keepalive=impl == "nm", backlog=BACKLOG)
        number = node.listeners[0].port.getHost().port
    common.emit("READY", str(number))
    reactor.run()


# --------------------------------------------------------------------------
# Orchestration


def generator_options(impl: str, netmodels_hello: str) -> list[str]:
    """The generator's framing options for ``impl`` (raw frames unless told otherwise)."""
    if impl == "zmq":
        return ["-Z", "-x", peers.zmtp_hello_hex("PUSH")]
    if impl.startswith("nm") or impl == "m21":
        return ["-T", "2", "-x", netmodels_hello]
    return []


def run_once(impl: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    loadgen = common.build_loadgen()
    profile = common.profile_path(args, f"{tag}-{impl}") if impl.startswith("nm") else None
    with common.Children() as children:
        server_args = [
            "server",
            "--impl",
            impl,
            "--warmup",
            str(args.warmup),
            "--seconds",
            str(args.seconds),
            "--conns",
            str(args.conns),
        ]
        if profile:
            server_args += ["--profile", profile]
        server = children.start(
            f"ingest {impl} server",
            common.pinned(common.python_command("ingest.py", *server_args), common.server_cpu()),
        )
        port = server.expect("READY", 30)
        command = [
            str(loadgen),
            "-m",
            "stream",
            "-p",
            port,
            "-c",
            str(args.conns),
            "-s",
            str(BODY),
            "-t",
            str(args.warmup + args.seconds + 1.0),
        ]
        command += generator_options(impl, common.netmodels_hello_hex())
        generator = children.start("loadgen", common.pinned(command, common.client_cpu()))
        generator.expect("CONNECTED", 30)
        result = server.result(args.warmup + args.seconds + 30)
        try:
            sent = generator.expect("SENT", 10)
            result["loadgen"] = dict(item.split("=") for item in sent.split())
        except common.BenchError:
            result["loadgen"] = {}
    return result


def disturbed(result: dict[str, Any]) -> str | None:
    """Did another process take CPU time from the server or the generator?"""
    if not result["count"]:
        # Seen once on a loaded machine: the server saw its connections only after the generator stopped.
        return "nothing was counted in the window"
    wait = result["runq_wait"]
    if wait > 0.03:
        return f"the server waited for its CPU {wait:.0%} of the window"
    generator = result.get("loadgen", {})
    try:
        generator_wait = float(generator["runq_wait"]) / float(generator["elapsed"])
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    if generator_wait > 0.03:
        return f"the generator waited for its CPU {generator_wait:.0%} of its run"
    return None


def measure(
    impls: tuple[str, ...], args: argparse.Namespace, tag: str, log: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Interleaved A/B/A/B repetitions of ``impls``; results per impl."""
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for rep in range(args.reps):
        for impl in impls:
            label = f"{tag} rep {rep + 1}/{args.reps}: {impl}"
            common.progress(label)
            results[impl].append(
                common.measured(
                    lambda impl=impl, rep=rep: run_once(impl, args, f"{tag}-{rep}"),
                    disturbed,
                    args.retries,
                    label,
                    log,
                )
            )
    return results


def saturation_notes(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    notes = []
    for impl, runs in results.items():
        utils = [r["cpu_util"] for r in runs if not r.get("disturbed")]
        if utils and min(utils) < 0.93:
            notes.append(
                f"{impl} server CPU was only {min(utils):.0%} busy in some undisturbed window: "
                "the generator may not be saturating it"
            )
        for r in runs:
            lost = r.get("loadgen", {}).get("conns_lost")
            if lost not in (None, "0"):
                notes.append(f"{impl}: the generator lost {lost} connections (server closed them?)")
    return notes


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    log: list[str] = []
    chosen = peers.chosen(args, PEERS, log)
    results = measure(("raw", "nm", *chosen), args, "ingest", log)

    def series(impl: str, key: str, scale: float = 1.0) -> list[float]:
        return [scale * r[key] for r in results[impl] if r.get(key) is not None]

    def of_peers(key: str, scale: float = 1.0) -> dict[str, list[float]]:
        return {peer: series(peer, key, scale) for peer in chosen}

    rows = [
        Row(
            f"fan-in ingest, {args.conns} conns, 64 B frames",
            "msg/s",
            series("raw", "rate"),
            series("nm", "rate"),
            (">=", 1.00),
            1.20,
            peers=of_peers("rate"),
        ),
        Row(
            "server CPU per message",
            "µs",
            series("raw", "cpu_us_per_op"),
            series("nm", "cpu_us_per_op"),
            peers=of_peers("cpu_us_per_op"),
        ),
        Row(
            "server CPU busy",
            "%",
            series("raw", "cpu_util", 100),
            series("nm", "cpu_util", 100),
            peers=of_peers("cpu_util", 100),
        ),
    ]
    notes = [
        "raw = Int32StringReceiver.stringReceived counting; netmodels = server Node, "
        "Application.message_received counting, keepalive + kernel keepalive on (defaults)",
        "load: C generator (epoll, ~64 KB batched non-blocking sends) on the other CPU",
        *peer_notes(chosen),
        *saturation_notes(results),
        *log,
    ]
    return rows, notes


def peer_notes(chosen: list[str]) -> list[str]:
    notes = []
    if set(chosen) & set(peers.LOOPS):
        notes.append("asyncio / uvloop = asyncio.Protocol counting in its framing loop, raw frames")
    if "zmq" in chosen:
        notes.append(
            "pyzmq = PULL socket, blocking recv() loop; the generator speaks ZMTP 3.0 as PUSH "
            "(64-byte messages, 66 bytes a frame); the server's CPU counts libzmq's I/O thread too"
        )
    return notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument("--conns", type=int, default=100, help="generator connections (default 100)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("server")
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--profile", default=None)
    p.add_argument("--conns", type=int, default=100)
    add_arguments(parser)
    args = parser.parse_args()
    if args.command == "server":
        serve(args.impl, args.warmup, args.seconds, args.profile, args.conns)
        return
    common.apply_quick(args)
    print("\n".join(common.machine_info()))
    rows, notes = run(args)
    print(common.format_table("fan-in ingest", rows, notes))


if __name__ == "__main__":
    main()
