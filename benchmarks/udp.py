"""
netmodels over UDP (``transport="udp"``) against raw Twisted ``DatagramProtocol``.

1. One-way datagram rate. A C sender (``udpgen.c``, on the other CPU) sends
   small datagrams as fast as it can; the receiver counts what it delivers
   over the window, and the kernel's count of datagrams it dropped because
   the receive buffer was full (``/proc/net/udp``), so the figure is the
   receiver's maximum sustained rate.

   raw       : a ``DatagramProtocol`` whose ``datagramReceived`` counts.
               Datagrams of 82 bytes (13 + 5 + 64), the size of netmodels'.
   netmodels : a server ``Node`` on ``udp:0``; ``Application.message_received``
               counts. The sender does the netmodels handshake (INIT, COOKIE,
               OPEN, ACCEPT, then its HELLO on the reliable channel), then
               sends DATA datagrams of one frame each: 13-byte header,
               4-byte length, type 0x02, a 64-byte message.

2. Request/response. One client process, one socket / session, 1 or 16
   requests in flight (each a closed loop), 32-byte payloads, the server on
   one CPU and the client on the other; round trips/s and latency measured by
   the client, server CPU per round trip.

   raw       : a connected ``DatagramProtocol`` client (a 4-byte slot number
               leads the payload) and a ``DatagramProtocol`` echo server.
   netmodels : a client ``Node`` calling ``session.request(payload)`` and a
               server ``Node`` answering each request with its payload;
               default settings (unreliable channel, keepalive 15,10,3).
   nm-cb     : the same, the client calling ``session.send_request(payload,
               on_response, on_error)``: callbacks instead of a ``Deferred``.

3. Reliable channel goodput (``NodeConfig(reliable=True)`` on both ends):
   a bulk transfer of 8 KiB DATA messages between two network namespaces
   joined by a veth pair, with 0 %, 1 % and 5 % of the packets arriving at
   the receiver's namespace dropped by ``iptables -m statistic --mode random``
   (real loss: the kernel drops them before the socket). The receiver checks
   that every message arrived once and in order (a sequence number in each,
   and a CRC-32 of the whole stream compared with the sender's); the sender
   reports its retransmissions. For reference, the same transfer over TCP
   with an ``Int32StringReceiver`` on each end (raw Twisted, the kernel's
   TCP doing the recovery). Without network namespaces (not root, no ``ip``
   or ``iptables``) it says so loudly and drops received datagrams in the
   receiving process instead (seeded RNG; no TCP reference then).

Peers (``peers.py``; ``--no-peers`` leaves them out) for parts 1 and 2: an
``asyncio.DatagramProtocol`` on the standard library's loop and on uvloop,
written as the raw Twisted ends are (the same sender, in raw mode, for part
1). pyzmq has no column here: ZeroMQ has no UDP transport in its stable API
(RADIO/DISH over UDP are draft sockets, not in pyzmq's builds).

    python benchmarks/udp.py [--seconds 3] [--reps 3] [--quick] [--part oneway,rr,reliable]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import common
import peers
from common import Row, median

BODY = 64
RR_PAYLOAD = 32
INFLIGHT = (1, 16)
BULK_MESSAGE = 8192
LOSSES = (0.0, 0.01, 0.05)
#: A rate both receivers sustain without drops, to compare their CPU per message.
PACED_RATE = 40_000.0
RELIABLE_COLUMNS = ("TCP (reference)", "netmodels reliable UDP")
UDPGEN_SOURCE = common.HERE / "udpgen.c"
UDPGEN = common.BIN / "udpgen"
PARTS = ("oneway", "rr", "reliable")
#: The peers of the one-way and request/response parts, in the table's order.
PEERS = ("asyncio", "uvloop")
#: Why pyzmq has no column in the UDP tables.
NO_ZMQ = "no pyzmq column: ZeroMQ has no UDP transport in its stable API (RADIO/DISH are draft sockets)"


def build_udpgen() -> Path:
    """Compile udpgen.c into bin/udpgen unless an up-to-date binary exists."""
    if UDPGEN.exists() and UDPGEN.stat().st_mtime >= UDPGEN_SOURCE.stat().st_mtime:
        return UDPGEN
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit("benchmarks need gcc (or cc) to build the C UDP sender")
    common.BIN.mkdir(exist_ok=True)
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(UDPGEN), str(UDPGEN_SOURCE)], check=True)
    return UDPGEN


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to ``port`` (receive buffer full)."""
    wanted = f":{port:04X}"
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(wanted):
                    return int(fields[-1])
    return 0


def udp_server_node(reactor: Any, application: Any, interface: str, reliable: bool | None = None) -> Any:
    """A started netmodels server node on ``udp:0``; returns (node, port number)."""
    from netmodels.runtime.node import Node, NodeConfig
    from netmodels.topologies.client_server import ClientServer

    config = NodeConfig(
        role="server",
        transport="udp",
        listen=(f"udp:0:interface={interface}",),
        node_id="udp-bench-server",
        reliable=reliable,
    )
    node = Node(config, ClientServer(), application, reactor)
    node.build()
    node.startService()
    return node, node.listeners[0].port.getHost().port


def udp_client_node(
    reactor: Any, application: Any, host: str, port: int, reliable: bool | None = None
) -> Any:
    from netmodels.runtime.node import Node, NodeConfig
    from netmodels.topologies.client_server import ClientServer

    config = NodeConfig(
        role="client",
        transport="udp",
        connect=(f"udp:{host}:{port}",),
        node_id="udp-bench-client",
        interval=0,
        reliable=reliable,
    )
    node = Node(config, ClientServer(), application, reactor)
    node.build()
    node.startService()
    return node


# --------------------------------------------------------------------------
# 1. One-way: the receiving process


def receive_loop(impl: str, warmup: float, seconds: float) -> None:
    """The counting receiver on asyncio's or uvloop's loop."""
    loop = peers.new_loop(impl)
    counter = [0]
    drops = [0]
    port = [0]

    def done(result: dict[str, Any]) -> None:
        result["dropped"] = kernel_drops(port[0]) - drops[0]
        result["offered_rate"] = (result["count"] + result["dropped"]) / result["elapsed"]
        common.emit("RESULT", result)
        loop.stop()

    def opened() -> None:
        drops[0] = kernel_drops(port[0])

    window = common.Window(peers.LoopClock(loop), warmup, seconds, lambda: counter[0], done, None, opened)

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            counter[0] += 1
            if not window.started:
                window.begin()

    transport, _ = loop.run_until_complete(loop.create_datagram_endpoint(Sink, local_addr=(common.HOST, 0)))
    port[0] = transport.get_extra_info("sockname")[1]
    common.emit("READY", str(port[0]))
    loop.run_forever()


def receive(impl: str, warmup: float, seconds: float, profile: str | None) -> None:
    if impl in peers.LOOPS:
        receive_loop(impl, warmup, seconds)
        return
    common.quiet_logging()
    from twisted.internet import reactor

    counter = [0]
    drops = [0, 0]
    port = [0]

    def done(result: dict[str, Any]) -> None:
        drops[1] = kernel_drops(port[0])
        result["dropped"] = drops[1] - drops[0]
        result["offered_rate"] = (result["count"] + result["dropped"]) / result["elapsed"]
        if impl == "nm":
            result["listener"] = {k: v for k, v in node.listeners[0].port.counters.items() if v}
        common.emit("RESULT", result)
        reactor.stop()

    def opened() -> None:
        drops[0] = kernel_drops(port[0])

    window = common.Window(reactor, warmup, seconds, lambda: counter[0], done, profile, opened)
    if impl == "raw":
        from twisted.internet.protocol import DatagramProtocol

        class Sink(DatagramProtocol):
            noisy = False

            def datagramReceived(self, data: bytes, addr: Any) -> None:
                counter[0] += 1
                if not window.started:
                    window.begin()

        listening = reactor.listenUDP(0, Sink(), interface=common.HOST)
        port[0] = listening.getHost().port
    else:
        from netmodels.runtime.application import Application

        class Counting(Application):
            def peer_ready(self, peer: Any) -> None:
                window.begin()

            def message_received(self, peer: Any, payload: bytes) -> None:
                counter[0] += 1

        node, port[0] = udp_server_node(reactor, Counting(), common.HOST)
    common.emit("READY", str(port[0]))
    reactor.run()


def oneway_once(impl: str, args: argparse.Namespace, rep: int, rate: float = 0) -> dict[str, Any]:
    profile = common.profile_path(args, f"udp-oneway-{rep}-nm") if impl == "nm" else None
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    with common.Children() as children:
        server_args = ["receive", "--impl", impl, *timing]
        if profile:
            server_args += ["--profile", profile]
        server = children.start(
            f"udp {impl} receiver",
            common.pinned(common.python_command("udp.py", *server_args), common.server_cpu()),
        )
        port = server.expect("READY", 30)
        command = [
            str(UDPGEN),
            "-m",
            "nm" if impl == "nm" else "raw",
            "-p",
            port,
            "-s",
            str(BODY),
            "-t",
            str(args.warmup + args.seconds + 2),
        ]
        if rate:
            command += ["-r", str(rate)]
        if impl == "nm":
            command += ["-x", common.netmodels_hello_hex()]
        sender = children.start(f"udpgen {impl}", common.pinned(command, common.client_cpu()))
        sender.expect("READY", 15)
        result = server.result(args.warmup + args.seconds + 30)
        line = sender.expect("SENT", 15)
        result["sender"] = {key: float(value) for key, value in (part.split("=") for part in line.split())}
    return result


def oneway_disturbed(result: dict[str, Any]) -> str | None:
    sender = result["sender"]
    wait = max(result["runq_wait"], sender["runq_wait"] / max(sender["elapsed"], 1e-9))
    return None if wait <= 0.03 else f"waited for a CPU {wait:.0%} of the window"


def run_oneway(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    build_udpgen()
    log: list[str] = []
    chosen = peers.chosen(args, PEERS, log)
    impls = ("raw", "nm", *chosen)
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    paced: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for rep in range(args.reps):
        for impl in impls:
            label = f"udp one-way rep {rep + 1}/{args.reps}: {impl}"
            common.progress(label)
            results[impl].append(
                common.measured(
                    lambda impl=impl, rep=rep: oneway_once(impl, args, rep),
                    oneway_disturbed,
                    args.retries,
                    label,
                    log,
                )
            )
        for impl in impls:
            label = f"udp one-way paced at {PACED_RATE:g}/s, rep {rep + 1}/{args.reps}: {impl}"
            common.progress(label)
            paced[impl].append(
                common.measured(
                    lambda impl=impl, rep=rep: oneway_once(impl, args, rep, PACED_RATE),
                    oneway_disturbed,
                    args.retries,
                    label,
                    log,
                )
            )

    def series(impl: str, key: str) -> list[float]:
        return [r[key] for r in results[impl] if r.get(key) is not None]

    def dropped(impl: str) -> list[float]:
        return [100.0 * r["dropped"] / max(1, r["count"] + r["dropped"]) for r in results[impl]]

    def paced_series(impl: str, key: str) -> list[float]:
        return [r[key] for r in paced[impl] if r.get(key)]

    def of_peers(values: Any) -> dict[str, list[float]]:
        return {peer: values(peer) for peer in chosen}

    rows = [
        Row(
            f"one-way datagrams/s delivered, {BODY} B messages",
            "msg/s",
            series("raw", "rate"),
            series("nm", "rate"),
            (">=", 0.85),
            peers=of_peers(lambda impl: series(impl, "rate")),
        ),
        Row(
            "  receiver CPU per message, same (saturated)",
            "µs",
            series("raw", "cpu_us_per_op"),
            series("nm", "cpu_us_per_op"),
            peers=of_peers(lambda impl: series(impl, "cpu_us_per_op")),
        ),
        Row(
            f"receiver CPU per message, paced at {PACED_RATE / 1000:g} k msg/s (both keep up)",
            "µs",
            paced_series("raw", "cpu_us_per_op"),
            paced_series("nm", "cpu_us_per_op"),
            ("<=", 1 / 0.85),
            peers=of_peers(lambda impl: paced_series(impl, "cpu_us_per_op")),
        ),
        Row(
            f"  delivered, paced at {PACED_RATE / 1000:g} k msg/s",
            "msg/s",
            [r["rate"] for r in paced["raw"]],
            [r["rate"] for r in paced["nm"]],
            peers=of_peers(lambda impl: [r["rate"] for r in paced[impl]]),
        ),
        Row(
            "offered by the sender (delivered + dropped)",
            "msg/s",
            series("raw", "offered_rate"),
            series("nm", "offered_rate"),
            peers=of_peers(lambda impl: series(impl, "offered_rate")),
        ),
        Row(
            "dropped by the kernel (receive buffer full)",
            "%",
            dropped("raw"),
            dropped("nm"),
            peers=of_peers(dropped),
        ),
    ]
    extra = [r.get("listener") for r in results["nm"] if r.get("listener")]
    if median(dropped("raw")) < 1.0:
        log.insert(
            0,
            "RAW KEPT UP WITH THE SENDER (under 1 % dropped): its delivered rate is the sender's limit, "
            "a lower bound of raw's capacity, so the delivered ratio flatters netmodels; the CPU per "
            "message rows compare the receivers' costs directly",
        )
    notes = [
        "the C sender (udpgen) sends faster than either receiver can take; the kernel drops the excess "
        "at the full receive buffer, so 'delivered' is each receiver's maximum sustained rate",
        f"82-byte datagrams both ways; netmodels: 13-byte DATA header + 5-byte frame header "
        f"+ {BODY}-byte message",
        *(f"netmodels listener counters: {c}" for c in extra[:1]),
        *(["asyncio / uvloop = asyncio.DatagramProtocol counting, the sender in raw mode"] if chosen else []),
        *([NO_ZMQ] if not args.no_peers else []),
        *log,
    ]
    return rows, notes


# --------------------------------------------------------------------------
# 2. Request/response


def echo_loop(impl: str, warmup: float, seconds: float) -> None:
    """The echo server on asyncio's or uvloop's loop."""
    loop = peers.new_loop(impl)
    counter = [0]
    window = common.Window(
        peers.LoopClock(loop), warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r)
    )

    class Echo(asyncio.DatagramProtocol):
        transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            counter[0] += 1
            self.transport.sendto(data, addr)
            if not window.started:
                window.begin()

    transport, _ = loop.run_until_complete(loop.create_datagram_endpoint(Echo, local_addr=(common.HOST, 0)))
    common.emit("READY", str(transport.get_extra_info("sockname")[1]))
    loop.run_forever()


def rr_client_loop(impl: str, port: int, inflight: int, warmup: float, seconds: float) -> None:
    """The client of N closed loops on one connected socket, on asyncio's or uvloop's loop."""
    loop = peers.new_loop(impl)
    perf_counter = time.perf_counter
    count = [0]
    samples: list[float] = []

    def finished(result: dict[str, Any]) -> None:
        common.emit_latencies(result, samples)
        loop.stop()

    window = common.Window(peers.LoopClock(loop), warmup, seconds, lambda: count[0], finished)
    sent_at = [0.0] * inflight

    class Pinger(asyncio.DatagramProtocol):
        transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            window.begin()
            for slot in range(inflight):
                sent_at[slot] = perf_counter()
                transport.sendto(slot.to_bytes(4, "big") + b"p" * (RR_PAYLOAD - 4))

        def datagram_received(self, data: bytes, addr: Any) -> None:
            now = perf_counter()
            slot = int.from_bytes(data[:4], "big")
            if window.measuring:
                samples.append(now - sent_at[slot])
            count[0] += 1
            sent_at[slot] = perf_counter()
            self.transport.sendto(data)

    loop.run_until_complete(loop.create_datagram_endpoint(Pinger, remote_addr=(common.HOST, port)))
    loop.run_forever()


def echo(impl: str, warmup: float, seconds: float, profile: str | None, opcodes: str | None = None) -> None:
    if impl in peers.LOOPS:
        echo_loop(impl, warmup, seconds)
        return
    common.quiet_logging()
    from twisted.internet import reactor

    counter = [0]
    window = common.Window(
        reactor,
        warmup,
        seconds,
        lambda: counter[0],
        lambda r: common.emit("RESULT", r),
        profile,
        opcodes=opcodes,
    )
    if impl == "raw":
        from twisted.internet.protocol import DatagramProtocol

        class Echo(DatagramProtocol):
            noisy = False

            def datagramReceived(self, data: bytes, addr: Any) -> None:
                counter[0] += 1
                self.transport.write(data, addr)
                if not window.started:
                    window.begin()

        number = reactor.listenUDP(0, Echo(), interface=common.HOST).getHost().port
    else:
        from netmodels.runtime.application import Application

        class CountingEcho(Application):
            def peer_ready(self, peer: Any) -> None:
                window.begin()

            def request_received(self, peer: Any, payload: bytes) -> bytes:
                counter[0] += 1
                return payload

        _, number = udp_server_node(reactor, CountingEcho(), common.HOST)
    common.emit("READY", str(number))
    reactor.run()


def rr_client(
    impl: str, port: int, inflight: int, warmup: float, seconds: float, opcodes: str | None = None
) -> None:
    if impl in peers.LOOPS:
        rr_client_loop(impl, port, inflight, warmup, seconds)
        return
    common.quiet_logging()
    from twisted.internet import reactor

    perf_counter = time.perf_counter
    count = [0]
    samples: list[float] = []

    def finished(result: dict[str, Any]) -> None:
        common.emit_latencies(result, samples)
        reactor.stop()

    window = common.Window(reactor, warmup, seconds, lambda: count[0], finished, opcodes=opcodes)
    sent_at = [0.0] * inflight

    if impl == "raw":
        from twisted.internet.protocol import DatagramProtocol

        class Pinger(DatagramProtocol):
            noisy = False

            def startProtocol(self) -> None:
                self.transport.connect(common.HOST, port)
                window.begin()
                for slot in range(inflight):
                    sent_at[slot] = perf_counter()
                    self.transport.write(slot.to_bytes(4, "big") + b"p" * (RR_PAYLOAD - 4))

            def datagramReceived(self, data: bytes, addr: Any) -> None:
                now = perf_counter()
                slot = int.from_bytes(data[:4], "big")
                if window.measuring:
                    samples.append(now - sent_at[slot])
                count[0] += 1
                sent_at[slot] = perf_counter()
                self.transport.write(data)

        reactor.listenUDP(0, Pinger(), interface=common.HOST)
    else:
        from functools import partial

        from netmodels.runtime.application import Application

        payload = b"p" * RR_PAYLOAD
        callbacks = impl == "nm-cb"

        class ClosedLoops(Application):
            peer: Any = None

            def peer_ready(self, peer: Any) -> None:
                self.peer = peer
                # send_request's callables, one per loop, made once.
                self.on_response = [partial(self.answered, slot=slot) for slot in range(inflight)]
                window.begin()
                for slot in range(inflight):
                    self.send_next(slot)

            def send_next(self, slot: int) -> None:
                sent_at[slot] = perf_counter()
                if callbacks:
                    self.peer.send_request(payload, self.on_response[slot], self.error)
                else:
                    self.peer.request(payload).addCallbacks(self.answered, self.failed, callbackArgs=(slot,))

            def answered(self, reply: bytes, slot: int) -> None:
                now = perf_counter()
                if window.measuring:
                    samples.append(now - sent_at[slot])
                count[0] += 1
                self.send_next(slot)

            def failed(self, failure: Any) -> None:
                print(f"request failed: {failure.getErrorMessage()}", file=sys.stderr)

            def error(self, error: Exception) -> None:
                print(f"request failed: {error}", file=sys.stderr)

        udp_client_node(reactor, ClosedLoops(), common.HOST, port)
    reactor.run()


def rr_once(
    impl: str, inflight: int, args: argparse.Namespace, rep: int, opcodes: str | None = None
) -> dict[str, Any]:
    """One run; with ``opcodes``, each end counts its bytecodes into ``opcodes``.server / .client."""
    profile = common.profile_path(args, f"udp-rr{inflight}-{rep}-nm") if impl == "nm" else None
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    with common.Children() as children:
        server_args = ["echo", "--impl", impl, *timing]
        if profile:
            server_args += ["--profile", profile]
        if opcodes:
            server_args += ["--opcodes", f"{opcodes}.server"]
        server = children.start(
            f"udp rr {impl} server",
            common.pinned(common.python_command("udp.py", *server_args), common.server_cpu()),
        )
        port = server.expect("READY", 30)
        client = children.start(
            f"udp rr {impl} client",
            common.pinned(
                common.python_command(
                    "udp.py",
                    "rr-client",
                    "--impl",
                    impl,
                    "--port",
                    port,
                    "--inflight",
                    str(inflight),
                    *timing,
                    *(["--opcodes", f"{opcodes}.client"] if opcodes else []),
                ),
                common.client_cpu(),
            ),
        )
        result = client.result(args.warmup + args.seconds + 30)
        result["server"] = server.result(10)
    return result


def rr_disturbed(result: dict[str, Any]) -> str | None:
    wait = max(result["runq_wait"], result["server"]["runq_wait"])
    return None if wait <= 0.03 else f"waited for a CPU {wait:.0%} of the window"


def run_rr(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    log: list[str] = []
    chosen = peers.chosen(args, PEERS, log)
    impls = ("raw", "nm", "nm-cb", *chosen)
    for inflight in INFLIGHT:
        results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        for rep in range(args.reps):
            for impl in impls:
                label = f"udp rr x{inflight} rep {rep + 1}/{args.reps}: {impl}"
                common.progress(label)
                results[impl].append(
                    common.measured(
                        lambda impl=impl, rep=rep, inflight=inflight: rr_once(impl, inflight, args, rep),
                        rr_disturbed,
                        args.retries,
                        label,
                        log,
                    )
                )

        def series(impl: str, key: str, results: dict[str, list[dict[str, Any]]] = results) -> list[float]:
            return [r[key] for r in results[impl]]

        def server_series(
            impl: str, key: str, results: dict[str, list[dict[str, Any]]] = results
        ) -> list[float]:
            return [r["server"][key] for r in results[impl] if r["server"].get(key) is not None]

        def of_peers(key: str, server: bool = False) -> dict[str, list[float]]:
            return {peer: (server_series if server else series)(peer, key) for peer in chosen}

        rows += [
            Row(
                f"round trips/s, {RR_PAYLOAD} B, {inflight} in flight",
                "RTT/s",
                series("raw", "rate"),
                series("nm", "rate"),
                (">=", 0.95 if inflight == 1 else 0.85),
                peers=of_peers("rate"),
            ),
            Row(
                f"  the same, send_request (callbacks), {inflight} in flight",
                "RTT/s",
                series("raw", "rate"),
                series("nm-cb", "rate"),
                (">=", 0.95 if inflight == 1 else 0.85),
            ),
            Row(
                f"  latency p50, {inflight} in flight",
                "µs",
                series("raw", "p50_us"),
                series("nm", "p50_us"),
                peers=of_peers("p50_us"),
            ),
            Row(
                f"  latency p99, {inflight} in flight",
                "µs",
                series("raw", "p99_us"),
                series("nm", "p99_us"),
                peers=of_peers("p99_us"),
            ),
            Row(
                f"  server CPU per round trip, {inflight} in flight",
                "µs",
                server_series("raw", "cpu_us_per_op"),
                server_series("nm", "cpu_us_per_op"),
                peers=of_peers("cpu_us_per_op", server=True),
            ),
            Row(
                f"  client CPU per round trip, {inflight} in flight",
                "µs",
                series("raw", "cpu_us_per_op"),
                series("nm", "cpu_us_per_op"),
                peers=of_peers("cpu_us_per_op"),
            ),
            Row(
                f"  client CPU per round trip, send_request, {inflight} in flight",
                "µs",
                series("raw", "cpu_us_per_op"),
                series("nm-cb", "cpu_us_per_op"),
            ),
        ]
    notes = [
        "server on one CPU, client on the other; one socket / session, N closed loops on it",
        "raw = DatagramProtocol client + echo server; netmodels = client Node session.request() + "
        "server Node answering with the payload (unreliable channel, default keepalive); "
        "send_request: the same client answered through callbacks instead of a Deferred",
        *(["asyncio / uvloop = asyncio.DatagramProtocol client + echo server, as raw"] if chosen else []),
        *([NO_ZMQ] if not args.no_peers else []),
        *log,
    ]
    return rows, notes


def count_rr_opcodes(args: argparse.Namespace) -> None:
    """
    Bytecodes per round trip at one request in flight, by layer, for each
    end of raw Twisted and of netmodels: where the Python time of a round
    trip goes, in a figure the host's load does not move.
    """
    import tempfile

    columns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for impl in ("raw", "nm", "nm-cb"):
            common.progress(f"udp rr x1, counting bytecodes: {impl}")
            path = f"{folder}/{impl}"
            rr_once(impl, 1, args, 0, opcodes=path)
            name = {"raw": "raw", "nm": "request", "nm-cb": "send_request"}[impl]
            columns[f"{name} client"] = common.opcodes_per_unit(f"{path}.client")
            columns[f"{name} server"] = common.opcodes_per_unit(f"{path}.server")
    print("\n".join(common.opcode_table(columns, "round trip")))
    print("note: request/send_request = netmodels, the client calling session.request() / send_request();")
    print("note: the reactor's own loop (epoll, timers) is counted in Twisted for every end alike")


# --------------------------------------------------------------------------
# 3. Reliable goodput: the two ends


def _message(index: int, filler: bytes) -> bytes:
    return index.to_bytes(8, "big") + filler


def bulk_receive(impl: str, interface: str, total: int, size: int, deadline: float, loss: float) -> None:
    common.quiet_logging()
    from twisted.internet import reactor

    state: dict[str, Any] = {"bytes": 0, "messages": 0, "crc": 0, "bad": 0, "first": None, "last": None}
    expected_messages = total // size
    cpu0 = [0.0]

    def finish(complete: bool) -> None:
        if state.get("done"):
            return
        state["done"] = True
        first, last = state["first"], state["last"]
        elapsed = (last - first) if first is not None and last is not None else 0.0
        common.emit(
            "RESULT",
            {
                "complete": complete,
                "bytes": state["bytes"],
                "messages": state["messages"],
                "out_of_order": state["bad"],
                "crc": state["crc"],
                "elapsed": elapsed,
                "mbps": state["bytes"] / elapsed / 1e6 if elapsed > 0 else 0.0,
                "cpu": common.cpu_seconds() - cpu0[0],
            },
        )
        reactor.callLater(0.2, reactor.stop)

    def received(payload: bytes) -> None:
        now = time.monotonic()
        if state["first"] is None:
            state["first"] = now
            cpu0[0] = common.cpu_seconds()
        if int.from_bytes(payload[:8], "big") != state["messages"]:
            state["bad"] += 1
        state["messages"] += 1
        state["bytes"] += len(payload)
        state["crc"] = zlib.crc32(payload, state["crc"])
        state["last"] = now
        if state["messages"] == expected_messages:
            finish(True)

    reactor.callLater(deadline, finish, False)
    if impl == "tcp":
        from twisted.internet.protocol import Factory
        from twisted.protocols.basic import Int32StringReceiver

        class Sink(Int32StringReceiver):
            MAX_LENGTH = 1 << 20

            def stringReceived(self, string: bytes) -> None:
                received(string)

        number = reactor.listenTCP(0, Factory.forProtocol(Sink), interface=interface).getHost().port
    else:
        from netmodels.runtime.application import Application

        class Checking(Application):
            def message_received(self, peer: Any, payload: bytes) -> None:
                received(payload)

        node, number = udp_server_node(reactor, Checking(), interface, reliable=True)
        if loss:
            # No network namespaces: drop received datagrams here (seeded), before netmodels sees them.
            import random

            rng = random.Random(1234)
            listener = node.listeners[0].port.listener
            deliver = listener.datagramReceived

            def lossy(data: bytes, addr: Any) -> None:
                if rng.random() >= loss:
                    deliver(data, addr)

            listener.datagramReceived = lossy
    common.emit("READY", str(number))
    reactor.run()


def bulk_send(impl: str, host: str, port: int, total: int, size: int) -> None:
    common.quiet_logging()
    from twisted.internet import reactor

    filler = bytes(range(256)) * (size // 256 + 1)
    filler = filler[: size - 8]
    count = total // size
    state: dict[str, Any] = {"next": 0, "crc": 0, "cpu": common.cpu_seconds()}

    def next_message() -> bytes:
        message = _message(state["next"], filler)
        state["next"] += 1
        state["crc"] = zlib.crc32(message, state["crc"])
        return message

    if impl == "tcp":
        from twisted.internet.interfaces import IPushProducer
        from twisted.internet.protocol import ClientFactory
        from twisted.protocols.basic import Int32StringReceiver
        from zope.interface import implementer

        @implementer(IPushProducer)
        class Source(Int32StringReceiver):
            paused = False

            def connectionMade(self) -> None:
                state["cpu"] = common.cpu_seconds()
                self.transport.registerProducer(self, True)
                self.resumeProducing()

            def pauseProducing(self) -> None:
                self.paused = True

            def resumeProducing(self) -> None:
                self.paused = False
                while not self.paused and state["next"] < count:
                    self.sendString(next_message())
                if state["next"] >= count and not state.get("reported"):
                    state["reported"] = True
                    cpu = common.cpu_seconds() - state["cpu"]
                    common.emit(
                        "RESULT",
                        {"crc": state["crc"], "messages": count, "retransmissions": None, "cpu": cpu},
                    )

            def stopProducing(self) -> None:
                pass

        reactor.connectTCP(host, port, ClientFactory.forProtocol(Source))
    else:
        from netmodels.runtime.application import Application

        class Source(Application):  # type: ignore[no-redef]
            peer: Any = None

            def peer_ready(self, peer: Any) -> None:
                state["cpu"] = common.cpu_seconds()
                self.peer = peer
                resume = peer.resumeProducing

                def resumed() -> None:
                    resume()
                    self.pump()

                peer.resumeProducing = resumed
                self.pump()

            def pump(self) -> None:
                peer = self.peer
                while peer.writable and state["next"] < count:
                    peer.send(next_message())
                if state["next"] >= count and not state.get("finished"):
                    state["finished"] = True
                    self.wait_acked()

            def wait_acked(self) -> None:
                datagrams = self.peer.transport.transport
                sender = datagrams._sender
                if sender.buffered or sender.in_flight:
                    reactor.callLater(0.01, self.wait_acked)
                    return
                common.emit(
                    "RESULT",
                    {
                        "crc": state["crc"],
                        "messages": count,
                        "retransmissions": sender.retransmissions,
                        "segments": sender.acknowledged,
                        "datagrams_out": datagrams.datagrams_out,
                        "srtt_ms": (sender.rtt.srtt or 0) * 1e3,
                        "rto_ms": sender.rtt.rto * 1e3,
                        "cpu": common.cpu_seconds() - state["cpu"],
                    },
                )

        udp_client_node(reactor, Source(), host, port, reliable=True)
    reactor.run()


# --------------------------------------------------------------------------
# 3. Reliable goodput: the lab (two namespaces and a veth pair)


class Lab:
    """Two network namespaces joined by a veth pair; loss injected into the receiver's INPUT."""

    SENDER_ADDRESS = "10.78.0.1"
    RECEIVER_ADDRESS = "10.78.0.2"

    def __init__(self) -> None:
        self.sender = f"nmbench-{os.getpid()}-snd"
        self.receiver = f"nmbench-{os.getpid()}-rcv"
        self.loss = 0.0

    @staticmethod
    def unavailable() -> str | None:
        if os.geteuid() != 0:
            return "not root"
        missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
        if missing:
            return f"{', '.join(missing)} not found"
        return None

    @staticmethod
    def _run(*argv: str) -> None:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=15, check=False)
        if result.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")

    def __enter__(self) -> Lab:
        try:
            self._run("ip", "netns", "add", self.sender)
            self._run("ip", "netns", "add", self.receiver)
            self._run(
                "ip",
                "-n",
                self.sender,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.receiver,
            )
            for namespace, address in (
                (self.sender, self.SENDER_ADDRESS),
                (self.receiver, self.RECEIVER_ADDRESS),
            ):
                self._run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
                # No TCP segmentation offload: the TCP reference then sends packets of one MTU,
                # so the random loss hits TCP and the datagrams alike, per packet.
                self._run("ip", "-n", namespace, "link", "set", "dev", "eth0", "gso_max_size", "1500")
                self._run("ip", "-n", namespace, "link", "set", "eth0", "up")
                self._run("ip", "-n", namespace, "link", "set", "lo", "up")
            self._run("ip", "netns", "exec", self.receiver, "iptables", "-w", "-S")
        except BaseException:
            self.__exit__()
            raise
        return self

    def set_loss(self, loss: float) -> None:
        if loss == self.loss:
            return
        iptables = ("ip", "netns", "exec", self.receiver, "iptables", "-w")
        self._run(*iptables, "-F", "INPUT")
        if loss:
            self._run(
                *iptables, "-A", "INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random",
                "--probability", f"{loss:g}", "-j", "DROP",
            )  # fmt: skip
        self.loss = loss

    def __exit__(self, *exc: object) -> None:
        for namespace in (self.sender, self.receiver):
            # Kill what the benchmark left running in it, then delete it.
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
            )
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)


def bulk_once(impl: str, loss: float, args: argparse.Namespace, lab: Lab | None) -> dict[str, Any]:
    total = args.bulk_mb * 1_000_000 // BULK_MESSAGE * BULK_MESSAGE
    sizes = ["--total", str(total), "--size", str(BULK_MESSAGE)]
    if lab is not None:
        lab.set_loss(loss)
        receiver_prefix = ["ip", "netns", "exec", lab.receiver]
        sender_prefix = ["ip", "netns", "exec", lab.sender]
        interface, in_process_loss = lab.RECEIVER_ADDRESS, 0.0
    else:
        receiver_prefix = sender_prefix = []
        interface, in_process_loss = common.HOST, loss
    deadline = args.bulk_deadline
    with common.Children() as children:
        receiver = children.start(
            f"bulk {impl} receiver",
            receiver_prefix
            + common.pinned(
                common.python_command(
                    "udp.py", "bulk-receive", "--impl", impl, "--interface", interface, *sizes,
                    "--deadline", str(deadline), "--loss", str(in_process_loss),
                ),
                common.server_cpu(),
            ),
        )  # fmt: skip
        port = receiver.expect("READY", 30)
        sender = children.start(
            f"bulk {impl} sender",
            sender_prefix
            + common.pinned(
                common.python_command(
                    "udp.py", "bulk-send", "--impl", impl, "--host", interface, "--port", port, *sizes
                ),
                common.client_cpu(),
            ),
        )
        result = receiver.result(deadline + 30)
        try:
            result["sender"] = sender.result(10 if result["complete"] else 1)
        except common.BenchError:
            result["sender"] = {}
    result["intact"] = (
        result["complete"] and result["out_of_order"] == 0 and result["crc"] == result["sender"].get("crc")
    )
    return result


def run_reliable(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    why = Lab.unavailable()
    lab: Lab | None = None
    notes: list[str] = []
    stack = contextlib.ExitStack()
    if why is None:
        try:
            lab = stack.enter_context(Lab())
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            why = str(e)
    if lab is None:
        banner = (
            f"!!! NETWORK NAMESPACES UNAVAILABLE ({why}): loss is injected IN PROCESS "
            "(received datagrams dropped by a seeded RNG), no TCP reference !!!"
        )
        print(banner, file=sys.stderr, flush=True)
        notes.append(banner)
    impls = ("tcp", "nm") if lab is not None else ("nm",)
    rows: list[Row] = []
    reps = args.bulk_reps
    with stack:
        for loss in LOSSES:
            results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in ("tcp", "nm")}
            for rep in range(reps):
                for impl in impls:
                    common.progress(f"udp reliable goodput, {loss:.0%} loss, rep {rep + 1}/{reps}: {impl}")
                    results[impl].append(bulk_once(impl, loss, args, lab))
            nm = results["nm"]
            rows.append(
                Row(
                    f"reliable goodput, {loss:.0%} loss",
                    "MB/s",
                    [r["mbps"] for r in results["tcp"]],
                    [r["mbps"] for r in nm],
                    raw_label="TCP Int32StringReceiver",
                    nm_label="netmodels reliable UDP",
                )
            )
            retransmitted = [
                100.0 * r["sender"]["retransmissions"] / max(1, r["sender"]["segments"])
                for r in nm
                if r["sender"].get("retransmissions") is not None
            ]
            rows.append(Row(f"  retransmitted segments, {loss:.0%} loss", "%", [], retransmitted))
            rows.append(
                Row(
                    f"  receiver CPU per MB, {loss:.0%} loss",
                    "ms",
                    [r["cpu"] / r["bytes"] * 1e9 for r in results["tcp"] if r["bytes"]],
                    [r["cpu"] / r["bytes"] * 1e9 for r in nm if r["bytes"]],
                )
            )
            rows.append(
                Row(
                    f"  sender CPU per MB, {loss:.0%} loss",
                    "ms",
                    [r["sender"]["cpu"] / r["bytes"] * 1e9 for r in results["tcp"] if r["sender"].get("cpu")],
                    [r["sender"]["cpu"] / r["bytes"] * 1e9 for r in nm if r["sender"].get("cpu")],
                )
            )
            intact = sum(1 for r in nm if r["intact"])
            detail = "; ".join(
                f"{r['messages']} msgs, {r['out_of_order']} out of order, "
                f"crc {'ok' if r['intact'] else 'MISMATCH'}, {r['sender'].get('retransmissions')} "
                f"retransmissions, srtt {r['sender'].get('srtt_ms', 0):.2f} ms"
                for r in nm
            )
            notes.append(f"{loss:.0%} loss: netmodels runs intact {intact}/{len(nm)} ({detail})")
    for row in rows:
        row.raw_label, row.nm_label = "TCP", "netmodels"
    where = (
        "two network namespaces joined by a veth pair; iptables -m statistic --mode random drops the "
        "given fraction of packets entering the receiver's namespace"
        if lab is not None
        else "127.0.0.1, loss injected in the receiving process"
    )
    notes[:0] = [
        f"{args.bulk_mb} MB of {BULK_MESSAGE}-byte DATA messages, receiver on one CPU, "
        f"sender on the other; {where}",
        "goodput = application bytes delivered / (last message - first message), at the receiver",
        "the TCP column is a reference (the kernel's TCP over the same link and loss), no target",
    ]
    return rows, notes


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """All three parts in one table (``run_all.py`` prints them as three sections)."""
    rows: list[Row] = []
    notes: list[str] = []
    for job in (run_oneway, run_rr, run_reliable):
        part_rows, part_notes = job(args)
        rows += part_rows
        notes += part_notes
    return rows, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bulk-mb", type=int, default=32, help="reliable goodput: MB per transfer (default 32)"
    )
    parser.add_argument(
        "--bulk-reps", type=int, default=2, help="reliable goodput: transfers per loss rate (default 2)"
    )
    parser.add_argument(
        "--bulk-deadline", type=float, default=60.0, help="reliable goodput: give up after (s)"
    )
    parser.add_argument(
        "--count-opcodes",
        action="store_true",
        help="instead of timing: bytecodes per round trip (1 in flight) by layer, each end",
    )


def apply_quick(args: argparse.Namespace) -> None:
    if getattr(args, "quick", False):
        args.bulk_mb = min(args.bulk_mb, 8)
        args.bulk_reps = 1
        args.bulk_deadline = min(args.bulk_deadline, 30.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    for name in ("receive", "echo", "rr-client"):
        p = sub.add_parser(name)
        p.add_argument("--impl", choices=("raw", "nm", "nm-cb", *PEERS), required=True)
        p.add_argument("--warmup", type=float, default=1.0)
        p.add_argument("--seconds", type=float, default=3.0)
        if name == "rr-client":
            p.add_argument("--port", type=int, required=True)
            p.add_argument("--inflight", type=int, default=1)
        else:
            p.add_argument("--profile", default=None)
        if name != "receive":
            p.add_argument("--opcodes", default=None, help="count bytecodes per round trip into this file")
    for name in ("bulk-receive", "bulk-send"):
        p = sub.add_parser(name)
        p.add_argument("--impl", choices=("tcp", "nm"), required=True)
        p.add_argument("--total", type=int, required=True)
        p.add_argument("--size", type=int, default=BULK_MESSAGE)
        if name == "bulk-receive":
            p.add_argument("--interface", default=common.HOST)
            p.add_argument("--deadline", type=float, default=60.0)
            p.add_argument("--loss", type=float, default=0.0)
        else:
            p.add_argument("--host", required=True)
            p.add_argument("--port", type=int, required=True)
    common.add_common_arguments(parser)
    add_arguments(parser)
    parser.add_argument(
        "--part", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = parser.parse_args()
    if args.command == "receive":
        receive(args.impl, args.warmup, args.seconds, args.profile)
    elif args.command == "echo":
        echo(args.impl, args.warmup, args.seconds, args.profile, args.opcodes)
    elif args.command == "rr-client":
        rr_client(args.impl, args.port, args.inflight, args.warmup, args.seconds, args.opcodes)
    elif args.command == "bulk-receive":
        bulk_receive(args.impl, args.interface, args.total, args.size, args.deadline, args.loss)
    elif args.command == "bulk-send":
        bulk_send(args.impl, args.host, args.port, args.total, args.size)
    else:
        common.apply_quick(args)
        apply_quick(args)
        if args.count_opcodes:
            count_rr_opcodes(args)
            return
        print("\n".join(common.machine_info()))
        parts = [part.strip() for part in args.part.split(",") if part.strip()]
        jobs = {"oneway": run_oneway, "rr": run_rr, "reliable": run_reliable}
        for part in parts:
            rows, notes = jobs[part](args)
            if part == "reliable":
                table = common.format_table(f"udp: {part}", rows, notes, RELIABLE_COLUMNS)
            else:
                table = common.format_table(f"udp: {part}", rows, notes)
            print(table, flush=True)


if __name__ == "__main__":
    main()
