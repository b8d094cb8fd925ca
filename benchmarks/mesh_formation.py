"""
How long a p2p mesh takes to form: N nodes on loopback, all in one process
(one reactor), every node but the first bootstrapping from the first, all
started together.

"Formed" means every node's ``mesh.alive()`` holds every other node, directly
or by gossip: with the default ``--max-peers 32`` the 50-node mesh is a
partial mesh of dialled connections, and some members are known only through
gossip. Time runs (``time.monotonic``) from just before the first
``startService`` until a 10 ms ``LoopingCall`` first sees the condition hold.
At that moment the run also counts the TCP connections open (each once), the
connect attempts made, the duplicate connections closed by the one-per-pair
rule, and the bytes exchanged (the sum of every connection record's
``bytes_in`` and of SWIM's bytes received over all nodes, so each byte is
counted once, at its receiver). The nodes run the default membership, SWIM
(``--mesh-swim off``: membership by connections and PEERS gossip).

Each size runs 3 times, each run in a fresh process; the table shows medians.
There is no raw Twisted equivalent (raw Twisted has no membership); the
per-node figure (formation time / N) is given instead.

    python benchmarks/mesh_formation.py                   # 10, 20 and 50 nodes, 3 runs each
    python benchmarks/mesh_formation.py --mesh-sizes 10,100 --reps 5 --mesh-max-peers 8
    python benchmarks/mesh_formation.py --mesh-swim off      # membership by connections
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import common
from common import Row

SIZES = (10, 20, 50)
#: A run that has not formed by then is reported as failed.
DEADLINE = 60.0

COLUMNS = ("raw Twisted", "netmodels median")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mesh-sizes",
        default=",".join(str(n) for n in SIZES),
        help=f"comma-separated node counts (default {','.join(str(n) for n in SIZES)})",
    )
    parser.add_argument(
        "--mesh-max-peers", type=int, default=32, help="--max-peers of every mesh node (default 32)"
    )
    parser.add_argument(
        "--mesh-swim",
        choices=("auto", "off"),
        default="auto",
        help="the nodes' --swim: auto (SWIM, the default) or off (membership by connections)",
    )


# --------------------------------------------------------------------------
# The measured process


def child(count: int, max_peers: int, swim: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * count * min(count, max_peers + 1) + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    common.quiet_logging()

    from netmodels.daemon.tap import build_node
    from netmodels.runtime.node import NodeConfig
    from netmodels.topologies.p2p.options import P2PSettings
    from netmodels.topologies.p2p.topology import first_endpoint, mesh_of
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    nodes = []
    for index in range(count):
        config = NodeConfig(
            topology="p2p",
            role="peer",
            app="broadcast",
            interval=0,
            listen=("tcp:0:interface=127.0.0.1",),
            node_id=f"m{index:03d}",
            settings=P2PSettings(max_peers=max_peers, swim=None if swim == "off" else "auto"),
        )
        nodes.append(build_node(config, reactor))
    first = nodes[0]
    for node in nodes[1:]:
        mesh_of(node).bootstrap.append(lambda: first_endpoint(first))
    ids = [node.config.node_id for node in nodes]
    everyone = set(ids)

    def formed() -> bool:
        pairs = zip(ids, nodes, strict=True)
        return all(everyone - {node_id} <= set(mesh_of(node).alive()) for node_id, node in pairs)

    wanted_direct = min(count - 1, max_peers)

    def dialled() -> bool:
        # Every node holds as many direct connections as it will dial for.
        return all(
            mesh_of(node).status()["direct"] >= wanted_direct
            and mesh_of(node).status()["direct"] == len(node.manager.live)
            for node in nodes
        )

    def swim_bytes(node: Any) -> int:
        membership = mesh_of(node).swim  # None with --mesh-swim off
        port = None if membership is None else membership.port
        swim = None if port is None else port.swim
        return 0 if swim is None else swim.counts["bytes_received"]

    def snapshot(elapsed: float | None) -> dict[str, Any]:
        records = [record for node in nodes for record in node.manager.records()]
        return {
            "seconds": elapsed,
            "connections": sum(len(node.manager.live) for node in nodes) // 2,
            "connect_attempts": sum(node.manager.counters["connect_attempts"] for node in nodes),
            "duplicates": sum(1 for r in records if "duplicate" in r.detail) // 2,
            "bytes": sum(r.bytes_in for r in records) + sum(swim_bytes(node) for node in nodes),
            "min_direct": min(mesh_of(node).status()["direct"] for node in nodes),
            "max_direct": max(mesh_of(node).status()["direct"] for node in nodes),
        }

    def go() -> None:
        began = time.monotonic()
        for node in nodes:
            node.startService()
        started = time.monotonic() - began
        result: dict[str, Any] = {"nodes": count, "start_seconds": started}

        def check() -> None:
            elapsed = time.monotonic() - began
            if "alive" not in result and formed():
                result["alive"] = snapshot(elapsed)
            if "dialled" not in result and dialled():
                result["dialled"] = snapshot(elapsed)
            timed_out = elapsed > DEADLINE
            if timed_out or ("alive" in result and "dialled" in result):
                loop.stop()
                for milestone in ("alive", "dialled"):
                    result.setdefault(milestone, snapshot(None))
                common.emit("RESULT", result)
                reactor.stop()

        loop = LoopingCall(check)
        loop.start(0.01, now=False)

    reactor.callWhenRunning(go)
    reactor.run()


# --------------------------------------------------------------------------
# The orchestrator


def measure(count: int, max_peers: int, swim: str, reps: int) -> list[dict[str, Any]]:
    results = []
    for rep in range(reps):
        common.progress(f"mesh formation: {count} nodes, run {rep + 1}/{reps}")
        with common.Children() as children:
            process = children.start(
                f"mesh-{count}",
                common.python_command("mesh_formation.py", "child", str(count), str(max_peers), swim),
            )
            results.append(process.result(DEADLINE + 30))
    return results


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    sizes = [int(n) for n in str(getattr(args, "mesh_sizes", ",".join(map(str, SIZES)))).split(",") if n]
    max_peers = getattr(args, "mesh_max_peers", 32)
    swim = getattr(args, "mesh_swim", "auto")
    reps = args.reps
    rows: list[Row] = []
    notes: list[str] = []
    for count in sizes:
        results = measure(count, max_peers, swim, reps)
        kind = "full mesh" if count - 1 <= max_peers else f"partial mesh, max-peers {max_peers}"
        for milestone, title in (("alive", "all alive"), ("dialled", "dialling done")):
            runs = [r[milestone] for r in results if r[milestone]["seconds"] is not None]
            if len(runs) < len(results):
                notes.append(
                    f"{count} nodes, {title}: {len(results) - len(runs)} run(s) not reached in {DEADLINE:g} s"
                )

            def series(key: str, scale: float = 1.0, runs: list[dict[str, Any]] = runs) -> list[float]:
                return [r[key] * scale for r in runs]

            labels = {"raw_label": "raw Twisted (none)", "nm_label": "netmodels"}
            prefix = f"{count} nodes, {title}"
            rows += [
                Row(
                    f"{prefix} ({kind})" if milestone == "alive" else prefix,
                    "s",
                    [],
                    series("seconds"),
                    **labels,
                ),
                Row(f"{prefix}: per node", "ms", [], series("seconds", 1000 / count), **labels),
                Row(f"{prefix}: TCP connections", "", [], series("connections"), **labels),
                Row(f"{prefix}: connect attempts", "", [], series("connect_attempts"), **labels),
                Row(f"{prefix}: duplicates closed", "", [], series("duplicates"), **labels),
                Row(f"{prefix}: bytes exchanged", "B", [], series("bytes"), **labels),
            ]
            directs = sorted({(r["min_direct"], r["max_direct"]) for r in runs})
            notes.append(f"{prefix}: direct peers per node (min, max): {directs}")
        notes.append(
            f"{count} nodes: starting all nodes took "
            f"{common.median([r['start_seconds'] for r in results]) * 1000:.0f} ms of the time"
        )
    notes += [
        "all alive = every node's mesh.alive() holds every other node (directly or by gossip)",
        "dialling done = every node has min(N - 1, max-peers) direct connections, none half-open",
        "one process, one reactor, loopback; nodes bootstrap from node 0; maintenance tick 1 s, "
        "dial grace 2 s for smaller ids",
        "no raw Twisted equivalent: raw Twisted has no membership to form",
    ]
    return rows, notes


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3, help="runs per size (default 3)")
    parser.add_argument("--quick", action="store_true", help="2 runs per size")
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.reps = min(args.reps, 2)
    print("\n".join(common.machine_info()))
    began = time.monotonic()
    rows, notes = run(args)
    print(
        common.format_table(
            "p2p mesh formation", rows, [*notes, f"took {time.monotonic() - began:.0f} s"], COLUMNS
        )
    )
    print(json.dumps({row.workload: row.nm_median for row in rows}))


if __name__ == "__main__":
    main()
