"""
Idle connections: server memory (RSS) per connection and idle CPU.

The C load generator (``loadgen.c -m idle``, a separate process on the other
CPU) opens N connections (default 10,000; the open-files hard limit here is
20,000 per process) and then sends nothing. For netmodels it sends a client
HELLO first and answers every keepalive PING with a PONG, as a live netmodels
peer does.

raw       : Twisted with an ``Int32StringReceiver`` per connection (TCP_NODELAY), no timers.
raw-hello : the same, doing a handshake's work on the wire: it reads the
            client's HELLO frame and answers with a server's, the bytes a node
            exchanges. The baseline of accept + handshake.
netmodels : a server ``Node`` with the defaults: connection manager, application
            keepalive 15,10,3 (a timer per connection), kernel keepalive.

Accept + handshake is timed from when the server listens to when the last
connection came up (for raw-hello and netmodels: answered the HELLO), and
the server's CPU in that time is shared out per connection. For those two,
the generator stays awake until every connection has heard the server
(``loadgen -P``): over loopback, waking a sleeping receiver is work the
sending CPU does, and otherwise the slower server pays for more wake-ups.

The server samples its RSS (``VmRSS``) after listening (baseline) and again
once all N connections are up (for netmodels: handshaken) and it has settled
for a second, after a ``gc.collect()`` in both cases; per connection =
(after - baseline) / N. Idle CPU is the server's CPU time over an idle
window (default 15 s = one keepalive idle period) that opens one idle period
later, once every connection has sent its first probe. Keepalive is then in
its steady state: each connection sends one PING in the window, gets its
PONG back, and has its timer run as often as in any period. A window from
the start would hold the first probes but miss timer runs that follow them
(the floor checks each probe an interval later). ``--quick`` opens the
window at once and uses 3 s, which catches no probe. Kernel socket memory
(~10 KB per loopback pair) is not in RSS and not counted.

``--count-opcodes`` counts instead the bytecodes per probe, by layer, for
netmodels and the floor (see ``--floor``): the probe, its answer and the check
after it, a figure that does not move with the host's load.

    python benchmarks/idle_mem.py [--idle-conns 10000] [--idle-seconds 15] [--idle-reps 1]

To see where the netmodels server's idle CPU goes: ``--profile-dir DIR``
writes a cProfile of its window (``DIR/idle-nm-REP.prof``; the CPU figure of
such a run is not valid), and ``--attach COMMAND`` runs COMMAND (``{pid}``
replaced by the netmodels server's pid) for the length of its window and stops
it with SIGINT, e.g. ``--attach 'strace -c -f -p {pid}'`` for the system calls
per probe, or ``--attach 'perf stat -e instructions -p {pid}'``.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

import common
from common import Row

BACKLOG = 4096
#: The default keepalive's idle period: after it every connection has sent its
#: first probe, and a window then holds probes and the checks after them alike.
STEADY_AFTER = 15.0


def serve(
    impl: str,
    conns: int,
    settle: float,
    seconds: float,
    trace: str | None = None,
    profile: str | None = None,
    opcodes: str | None = None,
    steady: float = 0.0,
) -> None:
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    common.quiet_logging()
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    connected = [0]
    #: When the last of the connections came up, timed at that moment (a poll
    #: would round it up to its period, which is most of raw Twisted's figure).
    all_up: list[float] = []
    accept_cpu: list[float] = []

    def count_up() -> None:
        connected[0] += 1
        if connected[0] == conns and not all_up:
            all_up.append(time.monotonic())
            accept_cpu.append(common.cpu_seconds())

    #: Probes the floor implementation sent.
    floor_probes = [0]
    node = None
    if impl == "floor":
        number = serve_floor(reactor, connected, floor_probes)
    elif impl in ("raw", "raw-hello"):
        from twisted.internet.protocol import Factory
        from twisted.protocols.basic import Int32StringReceiver

        # raw-hello does the handshake's work on the wire: it reads the
        # client's HELLO frame and answers with a server's, as a node does.
        reply = bytes.fromhex(common.netmodels_hello_hex("server", "server"))[4:]

        class Idle(Int32StringReceiver):
            #: raw-hello: the client's HELLO was answered.
            greeted = False

            def connectionMade(self) -> None:
                self.transport.setTcpNoDelay(True)
                if impl == "raw":
                    count_up()

            def connectionLost(self, reason: Any = None) -> None:
                connected[0] -= 1

            def stringReceived(self, string: bytes) -> None:
                if impl == "raw-hello" and not self.greeted:
                    self.greeted = True
                    self.sendString(reply)
                    count_up()

        port = reactor.listenTCP(0, Factory.forProtocol(Idle), interface=common.HOST, backlog=BACKLOG)
        number = port.getHost().port
    else:
        from netmodels.runtime.application import Application

        import ingest

        class Counting(Application):
            def peer_ready(self, peer: Any) -> None:
                count_up()

            def peer_lost(self, peer: Any, record: Any) -> None:
                connected[0] -= 1

        node = ingest.build_netmodels_server(
            reactor, Counting(), keepalive=True, max_connections=max(10_000, conns), backlog=BACKLOG
        )
        number = node.listeners[0].port.getHost().port
    gc.collect()
    baseline = common.rss_kb()
    before = None
    if trace:
        import tracemalloc

        before = tracemalloc.take_snapshot()
    started = time.monotonic()
    cpu_started = common.cpu_seconds()
    result: dict[str, Any] = {"rss_base_kb": baseline, "conns": conns}
    common.emit("READY", str(number))

    def probes_sent() -> int:
        if node is None:
            return floor_probes[0]
        return sum(c.record.probes_sent for c in node.manager.live.values())

    profiler: Any = None
    counter: common.OpcodeCounter | None = None
    # The garbage collector's passes in the window, by generation, and their time.
    collections = [0, 0, 0]
    collecting = [0.0, 0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            collections[info["generation"]] += 1
            collecting[1] += time.perf_counter() - collecting[0]

    def system_seconds() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_stime

    def finish_window(cpu0: float, t0: float, probes0: int, system0: float, switches0: int) -> None:
        elapsed = time.monotonic() - t0
        cpu = common.cpu_seconds() - cpu0
        # The kernel's share (sampled at the scheduler tick, so rough over a short window).
        result["idle_system_share"] = (system_seconds() - system0) / cpu if cpu else None
        gc.callbacks.remove(on_gc)
        result["gc_collections"] = collections
        result["gc_ms"] = collecting[1] * 1e3
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        if counter is not None:
            counter.stop()
            assert opcodes is not None
            counter.write(opcodes, probes_sent() - probes0)
        result["server_wakeups"] = common.context_switches()[0] - switches0
        result["idle_seconds"] = elapsed
        result["idle_cpu_pct"] = 100 * cpu / elapsed
        result["conns_at_end"] = connected[0]
        if node is not None:
            result["pings_answered"] = sum(1 for c in node.manager.live.values() if c.record.rtt is not None)
        if impl in ("nm", "floor"):
            probes = probes_sent() - probes0
            result["probes_in_window"] = probes
            # All the server's CPU in the window, shared out over the probes.
            result["cpu_us_per_probe"] = cpu / probes * 1e6 if probes else None
        common.emit("RESULT", result)

    def measure() -> None:
        gc.collect()
        rss = common.rss_kb()
        result["rss_kb"] = rss
        result["conns_measured"] = connected[0]
        result["kb_per_conn"] = (rss - baseline) / max(1, connected[0])
        if trace and before is not None:
            write_trace(trace, before, max(1, connected[0]))
        # The window opens once the connections' keepalive has reached its
        # steady state: a window from the start would hold each connection's
        # first probe but not the check an interval after it.
        reactor.callLater(steady, open_window)

    def open_window() -> None:
        nonlocal profiler, counter
        probes0 = probes_sent()
        common.emit("WINDOW", str(os.getpid()))
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        if opcodes:
            counter = common.OpcodeCounter()
            counter.start()
        gc.callbacks.append(on_gc)
        reactor.callLater(
            seconds,
            finish_window,
            common.cpu_seconds(),
            time.monotonic(),
            probes0,
            system_seconds(),
            common.context_switches()[0],
        )

    def poll() -> None:
        elapsed = time.monotonic() - started
        if connected[0] >= conns or elapsed > 120:
            loop.stop()
            result["connect_seconds"] = all_up[0] - started if all_up else elapsed
            if accept_cpu:
                result["connect_cpu_us"] = (accept_cpu[0] - cpu_started) / conns * 1e6
            reactor.callLater(settle, measure)

    loop = LoopingCall(poll)
    reactor.callLater(0.2, loop.start, 0.05)
    reactor.run()


def serve_floor(reactor: Any, connected: list[int], probes: list[int]) -> int:
    """
    The floor under netmodels' idle cost: raw Twisted, no framing, sending
    each connection a ready-made PING one idle period (15 s) after it was last
    heard from, and checking an interval (10 s) after each probe, on 1/64 s
    slots as netmodels' timer wheel does. What it costs is the probes' system
    calls, wakeups and Twisted's own read path. Returns the port.
    """
    import math
    import struct

    from twisted.internet.protocol import Factory, Protocol

    ping = struct.pack("!IBI", 5, 3, 1)
    idle, interval, granularity = 15.0, 10.0, 1 / 64
    slots: dict[int, list[Probed]] = {}
    seconds = reactor.seconds

    def add(protocol: Probed, when: float) -> None:
        slot = math.ceil(when / granularity)
        bucket = slots.get(slot)
        if bucket is None:
            slots[slot] = [protocol]
            reactor.callLater(max(0.0, slot * granularity - seconds()), due, slot)
        else:
            bucket.append(protocol)

    def due(slot: int) -> None:
        now = seconds()
        for protocol in slots.pop(slot):
            if protocol.last >= protocol.sent and now < protocol.last + idle:
                add(protocol, protocol.last + idle)
                continue
            protocol.sent = now
            probes[0] += 1
            protocol.send(ping)
            add(protocol, now + interval)

    class Probed(Protocol):
        last = 0.0
        sent = -1.0

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            self.send = self.transport.socket.send
            self.last = seconds()
            connected[0] += 1
            add(self, self.last + idle)

        def dataReceived(self, data: bytes) -> None:
            self.last = seconds()

        def connectionLost(self, reason: Any = None) -> None:
            connected[0] -= 1

    port = reactor.listenTCP(0, Factory.forProtocol(Probed), interface=common.HOST, backlog=BACKLOG)
    return int(port.getHost().port)


def write_trace(path: str, before: Any, connections: int) -> None:
    """Python allocations per connection by source line (tracemalloc), biggest first."""
    import tracemalloc

    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    with open(path, "w") as out:
        out.write(
            f"Python heap growth: {total / connections:.0f} B per connection over {connections} "
            "connections (tracemalloc; RSS also counts allocator overhead)\n"
        )
        for stat in stats[:40]:
            frame = stat.traceback[0]
            out.write(
                f"{stat.size_diff / connections:8.1f} B/conn {stat.count_diff / connections:6.2f} "
                f"blocks/conn  {frame.filename}:{frame.lineno}\n"
            )


def run_once(impl: str, args: argparse.Namespace, rep: int = 0, opcodes: str | None = None) -> dict[str, Any]:
    loadgen = common.build_loadgen()
    profile = common.profile_path(args, f"idle-{impl}-{rep}") if impl == "nm" else None
    with common.Children() as children:
        server = children.start(
            f"idle {impl} server",
            common.pinned(
                common.python_command(
                    "idle_mem.py",
                    "server",
                    "--impl",
                    impl,
                    "--idle-conns",
                    str(args.idle_conns),
                    "--idle-seconds",
                    # Only its accept time is used: no idle window to wait out.
                    "0.1" if impl == "raw-hello" else str(args.idle_seconds),
                    *(
                        ["--trace-memory", f"{args.trace_memory}.{impl}.txt"]
                        if getattr(args, "trace_memory", None)
                        else []
                    ),
                    *(["--profile", profile] if profile else []),
                    *(["--opcodes", opcodes] if opcodes else []),
                    *(
                        ["--steady", str(STEADY_AFTER)]
                        if impl in ("nm", "floor") and not opcodes and not getattr(args, "quick", False)
                        else []
                    ),
                ),
                common.server_cpu(),
            ),
        )
        port = server.expect("READY", 30)
        command = [str(loadgen), "-m", "idle", "-p", port, "-c", str(args.idle_conns), "-t", "3600"]
        if impl != "raw":
            command += ["-x", common.netmodels_hello_hex()]
        if impl in ("raw-hello", "nm"):
            # Awake until each connection has the server's HELLO: waking it
            # is not the server's work (loadgen.c says why).
            command += ["-P", "60"]
        loadgen_child = children.start("loadgen idle", common.pinned(command, common.client_cpu()))
        pid = server.expect("WINDOW", 200)
        woken = voluntary_switches(loadgen_child.proc.pid)
        attached = None
        if impl != "raw" and getattr(args, "attach", None):
            attached = subprocess.Popen([part.replace("{pid}", pid) for part in shlex.split(args.attach)])
        result = server.result(args.idle_seconds + 200)
        # How often the load generator slept and was woken in the window.
        result["loadgen_wakeups"] = voluntary_switches(loadgen_child.proc.pid) - woken
        if attached is not None:
            attached.send_signal(signal.SIGINT)
            attached.wait(30)
            sys.stdout.flush()
        server.stop()  # the server first: closing 10,000 sockets by exiting is quickest
    return result


def count_opcodes(args: argparse.Namespace) -> None:
    """
    Bytecodes per keepalive probe, by layer, in the idle window: netmodels
    and the floor (raw Twisted sending the same probes). The probe, its
    timer and its answer's read, in a figure the host's load does not move.
    """
    import tempfile

    # A window over each connection's whole keepalive period: the probe at
    # 15 s, its answer, and any timer run an interval (10 s) later (the
    # floor's check); not the next probe, at 30 s. Tracing slows the server
    # many times over, so fewer connections keep that inside the window.
    args.idle_seconds = 26.0
    args.idle_conns = min(args.idle_conns, 2000)
    columns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for impl, name in (("floor", "floor"), ("nm", "netmodels")):
            common.progress(f"idle, counting bytecodes: {impl}, {args.idle_conns} connections")
            run_once(impl, args, opcodes=f"{folder}/{impl}")
            columns[name] = common.opcodes_per_unit(f"{folder}/{impl}")
    print("\n".join(common.opcode_table(columns, "probe")))
    print("note: floor = raw Twisted sending ready-made PINGs on the same schedule (see --floor)")
    print(
        f"note: {args.idle_conns} connections; per probe: the probe, its answer, the check an interval later"
    )


def voluntary_switches(pid: int) -> int:
    """The voluntary context switches of process ``pid`` so far (its sleeps)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    impls = (
        ("raw", "raw-hello", "nm", "floor") if getattr(args, "floor", False) else ("raw", "raw-hello", "nm")
    )
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for rep in range(args.idle_reps):
        for impl in impls:
            common.progress(f"idle rep {rep + 1}/{args.idle_reps}: {impl}, {args.idle_conns} connections")
            results[impl].append(run_once(impl, args, rep))

    def series(impl: str, key: str) -> list[float]:
        return [r[key] for r in results[impl] if r.get(key) is not None]

    rows = [
        Row(
            f"RSS per idle connection ({args.idle_conns:,})",
            "KB",
            series("raw", "kb_per_conn"),
            series("nm", "kb_per_conn"),
            ("<=", 2.5),
            1.6,
            absolute=True,
        ),
        Row(
            f"idle CPU over {args.idle_seconds:g} s",
            "%",
            series("raw", "idle_cpu_pct"),
            series("nm", "idle_cpu_pct"),
            # Without a keepalive probe in the window the figure says nothing about the target.
            ("<=", 1.0) if args.idle_seconds >= 15 else None,
            0.2,
            absolute=True,
        ),
        Row(
            "accept + handshake, all of them",
            "s",
            series("raw-hello", "connect_seconds"),
            series("nm", "connect_seconds"),
        ),
        Row(
            "server CPU per accept + handshake",
            "µs",
            series("raw-hello", "connect_cpu_us"),
            series("nm", "connect_cpu_us"),
            ("<=", 2.0),
        ),
    ]
    notes = [
        "raw = Int32StringReceiver per connection, no timers; netmodels = server Node with "
        "keepalive (15,10,3) + kernel keepalive + connection manager on (defaults)",
        "accept + handshake: raw = the same, reading the client's HELLO frame and answering with "
        "a server's (the bytes a node exchanges); its wall time is mostly a SYN the kernel dropped "
        "while Twisted accepted too slowly (a dropped SYN waits a second); "
        "raw accepting alone, no handshake: "
        + ", ".join(f"{s:.3f} s" for s in series("raw", "connect_seconds")),
        "targets 'nm ≤ …' bound the netmodels value itself (performance.md), not the ratio",
    ]
    for impl, runs in results.items():
        for r in runs:
            if r.get("conns_measured", 0) < r["conns"] or r.get("conns_at_end", 0) < r["conns"]:
                notes.append(
                    f"{impl}: only {r.get('conns_measured')} connections up at the measurement "
                    f"and {r.get('conns_at_end')} at the end of {r['conns']}"
                )
    if args.idle_seconds < 15:
        notes.append(
            f"idle window {args.idle_seconds:g} s is shorter than the keepalive idle (15 s): "
            "it contains no keepalive probe, so idle CPU is not judged (run without --quick)"
        )
    else:
        answered = [r.get("pings_answered") for r in results["nm"]]
        notes.append(f"netmodels connections with an answered keepalive probe in the window: {answered}")
        per_probe = [
            f"{r['cpu_us_per_probe']:.1f} ({100 * (r.get('idle_system_share') or 0):.0f} % system)"
            for r in results["nm"]
            if r.get("cpu_us_per_probe") is not None
        ]
        probes = [r.get("probes_in_window") for r in results["nm"]]
        wakeups = [(r.get("server_wakeups"), r.get("loadgen_wakeups")) for r in results["nm"]]
        notes.append(f"netmodels window: (server, load generator) sleeps and wakeups: {wakeups}")
        notes.append(f"netmodels probes sent in the window: {probes}; server CPU µs per probe: {per_probe}")
    accept_only = [f"{r['connect_cpu_us']:.1f}" for r in results["raw"] if r.get("connect_cpu_us")]
    notes.append(f"raw accepting alone: server CPU µs per connection {accept_only}")
    gcs = [f"{r.get('gc_collections')} in {r.get('gc_ms', 0):.1f} ms" for r in results["nm"]]
    notes.append(f"netmodels garbage collections in the window (gen 0, 1, 2): {gcs}")
    for r in results.get("floor", []):
        notes.append(
            f"floor (raw Twisted sending ready-made PINGs on the same schedule): idle CPU "
            f"{r['idle_cpu_pct']:.2f} %, {r.get('probes_in_window')} probes, "
            f"{r.get('cpu_us_per_probe') or 0:.1f} µs per probe "
            f"({100 * (r.get('idle_system_share') or 0):.0f} % system), (server, load generator) "
            f"wakeups {r.get('server_wakeups')}, {r.get('loadgen_wakeups')}"
        )
    return rows, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle-conns", type=int, default=10_000)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=15.0,
        help="idle CPU window (default 15 s, one keepalive idle period)",
    )
    parser.add_argument("--idle-reps", type=int, default=1)
    parser.add_argument(
        "--trace-memory",
        default=None,
        metavar="PREFIX",
        help="write the servers' tracemalloc growth per connection to PREFIX.{raw,nm}.txt "
        "(slows the servers; the RSS figures then include tracemalloc's own overhead)",
    )


def apply_quick(args: argparse.Namespace) -> None:
    if getattr(args, "quick", False):
        args.idle_seconds = min(args.idle_seconds, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("server")
    p.add_argument("--impl", choices=("raw", "raw-hello", "nm", "floor"), required=True)
    add_arguments(p)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument(
        "--steady", type=float, default=0.0, help="seconds between the RSS sample and the idle window"
    )
    p.add_argument("--profile", default=None, help="write a cProfile of the idle window here")
    p.add_argument("--opcodes", default=None, help="count the window's bytecodes per probe into this file")
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--profile-dir",
        default=None,
        help="write a cProfile of the netmodels server's window into this folder (CPU figure not valid)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run the floor: raw Twisted sending the same probes (netmodels' cost per probe, compared)",
    )
    parser.add_argument(
        "--count-opcodes",
        action="store_true",
        help="instead of timing: bytecodes per keepalive probe by layer, netmodels and the floor",
    )
    parser.add_argument(
        "--attach",
        default=None,
        metavar="COMMAND",
        help="run COMMAND ({pid}: the server's pid; not for raw) over its idle window, stopped with SIGINT",
    )
    args = parser.parse_args()
    if args.command == "server":
        serve(
            args.impl,
            args.idle_conns,
            args.settle,
            args.idle_seconds,
            args.trace_memory,
            args.profile,
            args.opcodes,
            args.steady,
        )
        return
    apply_quick(args)
    if args.count_opcodes:
        count_opcodes(args)
        return
    print("\n".join(common.machine_info()))
    rows, notes = run(args)
    print(common.format_table("idle connections", rows, notes))


if __name__ == "__main__":
    main()
