"""
Run every netmodels benchmark against raw Twisted in one go and print ratios.

    .venv/bin/python benchmarks/run_all.py            # default: 1 s warm-up, 3 s windows, 3 reps (~3 min)
    .venv/bin/python benchmarks/run_all.py --quick    # 0.5 s + 1.5 s windows, 2 reps (~1 min)
    .venv/bin/python benchmarks/run_all.py --only rr,ingest --seconds 5 --reps 5
    .venv/bin/python benchmarks/run_all.py --only mesh                # p2p mesh formation, ~20 s
    .venv/bin/python benchmarks/run_all.py --only many-to-one         # fan-in and fan-out, ~2 min
    .venv/bin/python benchmarks/run_all.py --only udp                 # UDP vs DatagramProtocol, ~4 min
    .venv/bin/python benchmarks/run_all.py --only callback            # callback vs fallback, ~1 min
    .venv/bin/python benchmarks/run_all.py --only secure              # noise and tls vs plain, ~2 min
    .venv/bin/python benchmarks/run_all.py --profile-dir /tmp/prof   # cProfile each netmodels server window
    .venv/bin/python benchmarks/run_all.py --no-peers   # raw Twisted and netmodels only (about half the time)

request/response, ingest, many-to-one and the UDP one-way and request/response
parts also run the peers a user would pick instead (asyncio protocols on the
standard loop and on uvloop, pyzmq where ZeroMQ has the workload, and the C
ceiling of request/response), interleaved with the others; each table shows
netmodels against raw Twisted and against each peer. ``--peers asyncio,c``
picks some; a peer whose library is missing is skipped with a note.

See benchmarks/README.md for the method. Results are informational: the exit
status is 0 whatever the verdicts (non-zero only if a benchmark could not run).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback

import callback
import common
import fanin_fanout
import idle_mem
import ingest
import keepalive_cost
import mesh_formation
import peers
import rr
import secure
import udp
from common import Row

BENCHMARKS = ("rr", "ingest", "keepalive", "idle", "mesh", "many-to-one", "callback", "udp", "secure")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser)
    parser.add_argument("--conns", type=int, default=100, help="ingest connections (default 100)")
    idle_mem.add_arguments(parser)
    mesh_formation.add_arguments(parser)
    udp.add_arguments(parser)
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--rr-two-cpus",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also run request/response with the ends on two CPUs (auto: not with --quick)",
    )
    args = parser.parse_args()
    common.apply_quick(args)
    idle_mem.apply_quick(args)
    udp.apply_quick(args)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    unknown = {name.strip() for name in args.peers.split(",") if name.strip()} - set(peers.ALL)
    if unknown:
        parser.error(f"--peers: unknown peer(s) {', '.join(sorted(unknown))}; known: {','.join(peers.ALL)}")

    try:
        import netmodels  # noqa: F401
    except ImportError:
        parser.error("netmodels is not importable: run with the project's venv python")

    print("netmodels benchmarks: netmodels against raw Twisted, same run, interleaved A/B")
    print("\n".join(common.machine_info()))
    print(
        f"method  : {args.warmup:g} s warm-up + {args.seconds:g} s window, {args.reps} interleaved "
        f"repetitions, medians; 127.0.0.1, 4-byte big-endian length prefix, TCP_NODELAY"
    )
    if args.profile_dir:
        print(
            f"PROFILING: the netmodels servers run their windows under cProfile into "
            f"{args.profile_dir}; the ratios of this run are NOT valid"
        )
    if args.no_peers:
        print("peers   : left out (--no-peers)")
    else:
        print(f"peers   : {peers_line(args)}")
    print(f"started : {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    common.build_loadgen()
    warning = common.wait_until_quiet(patience=30)
    print(
        "quiet   : "
        + (warning or "other processes used < 15% of the CPUs at the start")
        + f"; a repetition disturbed by CPU contention is re-run up to {args.retries} times",
        flush=True,
    )

    began = time.monotonic()
    summary: list[tuple[str, Row]] = []
    failures = 0

    def section(title: str, name: str, job: object, columns: tuple[str, str] | None = None) -> None:
        nonlocal failures
        start = time.monotonic()
        try:
            rows, notes = job()  # type: ignore[operator]
        except Exception:
            failures += 1
            print(f"\n== {title} == could not run:\n{traceback.format_exc()}", flush=True)
            return
        notes = [*notes, f"took {time.monotonic() - start:.0f} s"]
        print()
        if columns is None:
            print(common.format_table(title, rows, notes), flush=True)
        else:
            print(common.format_table(title, rows, notes, columns), flush=True)
        summary.extend((name, row) for row in rows)

    if "rr" in chosen:
        args.cpus = "one"
        section("1. request/response, one connection, both ends on one CPU", "rr", lambda: rr.run(args))
        if args.rr_two_cpus == "yes" or (args.rr_two_cpus == "auto" and not args.quick):
            args.cpus = "two"
            section(
                "1b. request/response, ends on two CPUs (informational)",
                "rr-2cpu",
                lambda: _informational(rr.run(args)),
            )
    if "ingest" in chosen:
        section("2. fan-in ingest, C generator", "ingest", lambda: ingest.run(args))
    if "keepalive" in chosen:
        section(
            "3. keepalive cost (netmodels on vs off)",
            "keepalive",
            lambda: keepalive_cost.run(args),
            keepalive_cost.COLUMNS,
        )
    if "idle" in chosen:
        section("4. idle connections", "idle", lambda: idle_mem.run(args))
    if "mesh" in chosen:
        section(
            "5. p2p mesh formation (no raw Twisted equivalent)",
            "mesh",
            lambda: mesh_formation.run(args),
            mesh_formation.COLUMNS,
        )
    if "many-to-one" in chosen:
        section("6. many-to-one fan-in and fan-out", "many-to-one", lambda: fanin_fanout.run(args))
    if "udp" in chosen:
        section("7a. udp: one-way datagram rate, C sender", "udp", lambda: udp.run_oneway(args))
        section("7b. udp: request/response, ends on two CPUs", "udp", lambda: udp.run_rr(args))
        section(
            "7c. udp: reliable channel goodput under packet loss",
            "udp",
            lambda: udp.run_reliable(args),
            udp.RELIABLE_COLUMNS,
        )
    if "callback" in chosen:
        section(
            "7. callback topology: callback vs fallback (no raw Twisted equivalent)",
            "callback",
            lambda: callback.run(args),
            callback.COLUMNS,
        )

    if "secure" in chosen:
        section(
            "8. encrypted sessions: noise and tls against plain (netmodels both ends)",
            "secure",
            lambda: secure.run(args),
            secure.COLUMNS,
        )

    print("\n== summary ==")
    width = max((len(f"{name}: {row.workload}") for name, row in summary), default=10)
    for name, row in summary:
        if row.target is None:
            continue
        label = f"{name}: {row.workload}"
        value = common.human(row.nm_median, row.unit) if row.absolute else f"{row.ratio:.3f}×"
        against = "  ".join(
            f"{common.PEER_LABELS[peer]} {row.peer_ratio(peer):.2f}×"
            for peer in common.PEER_LABELS
            if row.peers.get(peer)
        )
        print(
            f"{label.ljust(width)}  {value:>12}  target {row.target_text:<26} {row.verdict}"
            + (f"  | nm ÷ {against}" if against else "")
        )
    print(f"total time {time.monotonic() - began:.0f} s")
    return 1 if failures else 0


def peers_line(args: argparse.Namespace) -> str:
    """The peers asked for, and which of them cannot run here."""
    wanted = [name.strip() for name in args.peers.split(",") if name.strip()]
    parts = []
    for peer in wanted:
        why = peers.missing(peer)
        label = common.PEER_LABELS[peer]
        parts.append(label if why is None else f"{label} (skipped: {why})")
    versions = []
    for module in ("uvloop", "zmq"):
        with contextlib.suppress(ImportError):
            versions.append(f"{module} {__import__(module).__version__}")
    return ", ".join(parts) + (f"  [{', '.join(versions)}]" if versions else "")


def _informational(result: tuple[list[Row], list[str]]) -> tuple[list[Row], list[str]]:
    rows, notes = result
    for row in rows:
        row.target = None
        row.stretch = None
    return rows, [*notes, "performance.md sets no netmodels target for two CPUs: info only"]


if __name__ == "__main__":
    sys.exit(main())
