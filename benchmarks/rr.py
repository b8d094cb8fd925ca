"""
Request/response round trips: one connection, 32-byte payloads, one request in
flight (closed loop: the next request goes out when the response arrives).

raw       : an ``Int32StringReceiver`` client and an ``Int32StringReceiver``
            echo server doing ping-pong.
netmodels : a netmodels client-server pair: a server ``Node`` with the echo
            application and a client ``Node`` whose application calls
            ``peer.request(payload)`` and sends the next request from the
            response's callback. Default settings, so keepalive (application
            and kernel), the connection manager and errno capture are all on.

Peers (``peers.py``; ``--no-peers`` leaves them out): the same ping-pong with
``asyncio.Protocol`` ends on the standard library's loop and on uvloop, pyzmq
REQ/REP (a blocking ``send``/``recv`` loop at each end; ZeroMQ frames instead of
the length prefix), and the C ceiling (``pingpong.c``, blocking system calls).

By default both ends run on ONE CPU (performance.md's first row); ``--cpus two``
puts the server and the client on different CPUs. The client measures round
trips per second and the latency of each round trip over the window; the
server measures its own CPU time over its window.

    python benchmarks/rr.py [--seconds 3] [--reps 3] [--cpus one|two]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import common
import peers
from common import Row

PAYLOAD = b"p" * 32


# --------------------------------------------------------------------------
# Processes


def serve_loop(impl: str, warmup: float, seconds: float) -> None:
    """The echo server on asyncio's or uvloop's loop."""
    loop = peers.new_loop(impl)
    counter = [0]
    window = common.Window(
        peers.LoopClock(loop), warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r)
    )

    class Echo(peers.Int32Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            window.begin()

        def string_received(self, string: bytes) -> None:
            counter[0] += 1
            self.send_string(string)

    server = loop.run_until_complete(loop.create_server(Echo, common.HOST, 0))
    common.emit("READY", str(server.sockets[0].getsockname()[1]))
    loop.run_forever()


def serve_zmq(warmup: float, seconds: float) -> None:
    """A pyzmq REP socket echoing in a blocking loop."""
    import zmq

    sock = zmq.Context().socket(zmq.REP)
    number = sock.bind_to_random_port(f"tcp://{common.HOST}")
    counter = [0]
    window = peers.ThreadWindow(warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r))
    common.emit("READY", str(number))
    recv, send = sock.recv, sock.send
    send(recv())
    window.begin()
    while True:
        message = recv()
        counter[0] += 1
        send(message)


def serve(impl: str, warmup: float, seconds: float, profile: str | None) -> None:
    if impl in peers.LOOPS:
        serve_loop(impl, warmup, seconds)
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
    if impl == "raw":
        from twisted.internet.protocol import Factory
        from twisted.protocols.basic import Int32StringReceiver

        class Echo(Int32StringReceiver):
            def connectionMade(self) -> None:
                self.transport.setTcpNoDelay(True)
                window.begin()

            def stringReceived(self, string: bytes) -> None:
                counter[0] += 1
                self.sendString(string)

        port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface=common.HOST)
        number = port.getHost().port
    else:
        from netmodels.runtime.node import Node, NodeConfig
        from netmodels.topologies.client_server import ClientServer, EchoApplication

        class CountingEcho(EchoApplication):
            def peer_ready(self, peer: Any) -> None:
                window.begin()

            def request_received(self, peer: Any, payload: bytes) -> bytes:
                counter[0] += 1
                return payload

        config = NodeConfig(role="server", listen=(f"tcp:0:interface={common.HOST}",), node_id="rr-server")
        node = Node(config, ClientServer(), CountingEcho(config), reactor)
        node.build()
        node.startService()
        number = node.listeners[0].port.getHost().port
    common.emit("READY", str(number))
    reactor.run()


def client_loop(impl: str, port: int, warmup: float, seconds: float) -> None:
    """The closed-loop client on asyncio's or uvloop's loop."""
    loop = peers.new_loop(impl)
    perf_counter = time.perf_counter
    state = {"count": 0, "sent_at": 0.0}
    samples: list[float] = []

    def finished(result: dict[str, Any]) -> None:
        common.emit_latencies(result, samples)
        loop.stop()

    window = common.Window(peers.LoopClock(loop), warmup, seconds, lambda: state["count"], finished)

    class Pinger(peers.Int32Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            window.begin()
            state["sent_at"] = perf_counter()
            self.send_string(PAYLOAD)

        def string_received(self, string: bytes) -> None:
            now = perf_counter()
            if window.measuring:
                samples.append(now - state["sent_at"])
            state["count"] += 1
            state["sent_at"] = perf_counter()
            self.send_string(PAYLOAD)

    loop.run_until_complete(loop.create_connection(Pinger, common.HOST, port))
    loop.run_forever()


def client_zmq(port: int, warmup: float, seconds: float) -> None:
    """A pyzmq REQ socket in a blocking closed loop."""
    import os

    import zmq

    sock = zmq.Context().socket(zmq.REQ)
    sock.connect(f"tcp://{common.HOST}:{port}")
    perf_counter = time.perf_counter
    count = [0]
    samples: list[float] = []

    def finished(result: dict[str, Any]) -> None:
        taken = sorted(samples)
        result["p50_us"] = common.percentile(taken, 0.50) * 1e6
        result["p99_us"] = common.percentile(taken, 0.99) * 1e6
        result["samples"] = len(taken)
        common.emit("RESULT", result)

    window = peers.ThreadWindow(warmup, seconds, lambda: count[0], finished)
    send, recv = sock.send, sock.recv
    send(PAYLOAD)
    recv()
    window.begin()
    while not window.finished:
        sent_at = perf_counter()
        send(PAYLOAD)
        recv()
        now = perf_counter()
        if window.measuring:
            samples.append(now - sent_at)
        count[0] += 1
    os._exit(0)  # without waiting for the context to close the sockets


def client(impl: str, port: int, warmup: float, seconds: float) -> None:
    if impl in peers.LOOPS:
        client_loop(impl, port, warmup, seconds)
        return
    if impl == "zmq":
        client_zmq(port, warmup, seconds)
        return
    common.quiet_logging()
    from twisted.internet import reactor

    perf_counter = time.perf_counter
    state = {"count": 0, "sent_at": 0.0}
    samples: list[float] = []

    def finished(result: dict[str, Any]) -> None:
        common.emit_latencies(result, samples)
        reactor.stop()

    window = common.Window(reactor, warmup, seconds, lambda: state["count"], finished)

    def answered() -> None:
        now = perf_counter()
        if window.measuring:
            samples.append(now - state["sent_at"])
        state["count"] += 1

    if impl == "raw":
        from twisted.internet.protocol import ClientFactory
        from twisted.protocols.basic import Int32StringReceiver

        class Pinger(Int32StringReceiver):
            def connectionMade(self) -> None:
                self.transport.setTcpNoDelay(True)
                window.begin()
                state["sent_at"] = perf_counter()
                self.sendString(PAYLOAD)

            def stringReceived(self, string: bytes) -> None:
                answered()
                state["sent_at"] = perf_counter()
                self.sendString(PAYLOAD)

        reactor.connectTCP(common.HOST, port, ClientFactory.forProtocol(Pinger))
    else:
        from netmodels.runtime.application import Application
        from netmodels.runtime.node import Node, NodeConfig
        from netmodels.topologies.client_server import ClientServer

        class ClosedLoop(Application):
            peer: Any = None

            def peer_ready(self, peer: Any) -> None:
                self.peer = peer
                window.begin()
                self.send_next()

            def send_next(self) -> None:
                state["sent_at"] = perf_counter()
                self.peer.request(PAYLOAD).addCallbacks(self.answered, self.failed)

            def answered(self, reply: bytes) -> None:
                answered()
                self.send_next()

            def failed(self, failure: Any) -> None:
                print(f"request failed: {failure.getErrorMessage()}", file=sys.stderr)

        config = NodeConfig(
            role="client",
            connect=(f"tcp:{common.HOST}:{port}",),
            node_id="rr-client",
            interval=0,
        )
        node = Node(config, ClientServer(), ClosedLoop(), reactor)
        node.build()
        node.startService()
    reactor.run()


# --------------------------------------------------------------------------
# Orchestration


def run_once(impl: str, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    if args.cpus == "one":
        server_cpu = client_cpu = common.server_cpu()
    else:
        server_cpu, client_cpu = common.server_cpu(), common.client_cpu()
    profile = common.profile_path(args, f"rr-{impl}-{rep}") if impl == "nm" else None
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    if impl == "c":
        return run_c_once(args, server_cpu, client_cpu)
    with common.Children() as children:
        server_args = ["server", "--impl", impl, *timing]
        if profile:
            server_args += ["--profile", profile]
        server = children.start(
            f"rr {impl} server", common.pinned(common.python_command("rr.py", *server_args), server_cpu)
        )
        port = server.expect("READY", 30)
        pinger = children.start(
            f"rr {impl} client",
            common.pinned(
                common.python_command("rr.py", "client", "--impl", impl, "--port", port, *timing),
                client_cpu,
            ),
        )
        result = pinger.result(args.warmup + args.seconds + 30)
        result["server"] = server.result(10)
    return result


def run_c_once(args: argparse.Namespace, server_cpu: int | None, client_cpu: int | None) -> dict[str, Any]:
    """The C ceiling: pingpong.c at both ends, the same window."""
    binary = str(common.build_pingpong())
    timing = ["-w", str(args.warmup), "-t", str(args.seconds), "-s", str(len(PAYLOAD))]
    with common.Children() as children:
        server = children.start("rr C server", common.pinned([binary, "-m", "server", *timing], server_cpu))
        port = server.expect("READY", 30)
        pinger = children.start(
            "rr C client", common.pinned([binary, "-m", "client", "-p", port, *timing], client_cpu)
        )
        result = pinger.result(args.warmup + args.seconds + 30)
        result["server"] = server.result(10)
    return result


def disturbed(args: argparse.Namespace, result: dict[str, Any]) -> str | None:
    """Did another process take CPU time from this repetition?"""
    server = result["server"]
    if args.cpus == "one":
        # Client and server take turns on one CPU: together they should fill it.
        busy = result["cpu_util"] + server["cpu_util"]
        return None if busy >= 0.9 else f"client + server used only {busy:.0%} of their CPU"
    wait = max(result["runq_wait"], server["runq_wait"])
    return None if wait <= 0.03 else f"waited for a CPU {wait:.0%} of the window"


#: The peers of request/response, in the table's order.
PEERS = ("asyncio", "uvloop", "zmq", "c")


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    log: list[str] = []
    chosen = peers.chosen(args, PEERS, log)
    if "c" in chosen:
        common.build_pingpong()
    impls = ("raw", "nm", *chosen)
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for rep in range(args.reps):
        for impl in impls:
            label = f"rr rep {rep + 1}/{args.reps}: {impl}"
            common.progress(label)
            results[impl].append(
                common.measured(
                    lambda impl=impl, rep=rep: run_once(impl, args, rep),
                    lambda r: disturbed(args, r),
                    args.retries,
                    label,
                    log,
                )
            )
    where = "both ends on one CPU" if args.cpus == "one" else "ends on two CPUs"

    def series(impl: str, key: str) -> list[float]:
        return [r[key] for r in results[impl]]

    def server_series(impl: str, key: str) -> list[float]:
        return [r["server"][key] for r in results[impl] if r["server"].get(key) is not None]

    def of_peers(key: str, server: bool = False) -> dict[str, list[float]]:
        return {peer: (server_series if server else series)(peer, key) for peer in chosen}

    rows = [
        Row(
            f"round trips/s, 32 B, {where}",
            "RTT/s",
            series("raw", "rate"),
            series("nm", "rate"),
            (">=", 0.90),
            0.95,
            peers=of_peers("rate"),
        ),
        Row("latency p50", "µs", series("raw", "p50_us"), series("nm", "p50_us"), peers=of_peers("p50_us")),
        Row(
            "latency p99",
            "µs",
            series("raw", "p99_us"),
            series("nm", "p99_us"),
            ("<=", 1.30),
            peers=of_peers("p99_us"),
        ),
        Row(
            "server CPU per round trip",
            "µs",
            server_series("raw", "cpu_us_per_op"),
            server_series("nm", "cpu_us_per_op"),
            peers=of_peers("cpu_us_per_op", server=True),
        ),
    ]
    notes = [
        "raw = Int32StringReceiver client + server; netmodels = client Node doing "
        "session.request() in a closed loop + server Node with the echo application, "
        "default keepalive (15,10,3) and kernel keepalive on",
        "latency is measured by the client around each round trip, over the window only",
        *(
            ["asyncio / uvloop = the same ping-pong with asyncio.Protocol ends on each loop"]
            if set(chosen) & set(peers.LOOPS)
            else []
        ),
        *(
            [
                "pyzmq = REQ/REP, a blocking send/recv loop at each end (ZeroMQ frames, not the "
                "length prefix); its server CPU counts libzmq's I/O thread too"
            ]
            if "zmq" in chosen
            else []
        ),
        *(["C = pingpong.c at both ends, blocking send/recv: the ceiling"] if "c" in chosen else []),
        *log,
    ]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    for name in ("server", "client"):
        p = sub.add_parser(name)
        p.add_argument("--impl", choices=("raw", "nm", *peers.LOOPS, "zmq"), required=True)
        p.add_argument("--warmup", type=float, default=1.0)
        p.add_argument("--seconds", type=float, default=3.0)
        if name == "server":
            p.add_argument("--profile", default=None)
        else:
            p.add_argument("--port", type=int, required=True)
    common.add_common_arguments(parser)
    parser.add_argument("--cpus", choices=("one", "two"), default="one")
    args = parser.parse_args()
    if args.command == "server":
        serve(args.impl, args.warmup, args.seconds, args.profile)
    elif args.command == "client":
        client(args.impl, args.port, args.warmup, args.seconds)
    else:
        common.apply_quick(args)
        print("\n".join(common.machine_info()))
        rows, notes = run(args)
        print(common.format_table("request/response", rows, notes))


if __name__ == "__main__":
    main()
