"""
The callback topology: deliveries per second, and the latency from
``CallbackServer.deliver`` to the client application, for the callback path
and the fallback path, in one run.

Each repetition runs in a fresh process: a callback server node and a client
node on 127.0.0.1 (real TCP sockets, one reactor, default settings: keepalive,
the connection manager and the token check are on). Three set-ups:

callback         : the client registers a callback port; the server dials it
                   once and delivers there (outbox in memory).
fallback         : the client registers no callback port; the server delivers
                   on the control connection (outbox in memory).
callback, SQLite : as ``callback``, with the outbox and the client's delivered
                   ids in SQLite files (WAL, ``synchronous=NORMAL``) in a
                   temporary folder: every accept, acknowledgement and
                   delivery is a committed write.

For each, two phases after a warm-up:

latency    : one message at a time: ``deliver`` is called, the time is taken,
             and the next message goes when the application has the last one
             (unloaded latency, p50 and p99 over the window).
throughput : the server keeps 1,000 messages accepted and not yet received;
             each message the application receives makes room for one more
             (``deliver`` per message: the outbox, the window of 64 in flight
             and the acknowledgements all take part). Messages received per
             second over the window.

Payloads are 64 bytes. There is no raw Twisted equivalent (raw Twisted has no
outbox or acknowledgement); the table shows netmodels only.

    python benchmarks/callback.py [--seconds 3] [--warmup 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import common
from common import Row

PAYLOAD = 64
#: Messages accepted and not yet received in the throughput phase.
OUTSTANDING = 1000
MODES = ("callback", "fallback", "callback-sqlite")
COLUMNS = ("raw Twisted", "netmodels median")
TOKEN = "bench-token"


# --------------------------------------------------------------------------
# The measured process


def child(mode: str, warmup: float, seconds: float) -> None:
    common.quiet_logging()
    from netmodels.runtime.application import Application
    from netmodels.runtime.node import Node, NodeConfig
    from netmodels.topologies.callback.options import CallbackSettings
    from netmodels.topologies.callback.server import CallbackServer
    from netmodels.topologies.callback.topology import Callback, callback_of
    from twisted.internet import reactor

    folder = tempfile.mkdtemp(prefix="netmodels-bench-callback-")
    durable = mode == "callback-sqlite"
    listen = f"tcp:0:interface={common.HOST}"
    server_config = NodeConfig(
        topology="callback",
        role="server",
        listen=(listen,),
        node_id="bench-server",
        settings=CallbackSettings(
            token=TOKEN,
            outbox=os.path.join(folder, "outbox.sqlite") if durable else None,
            outbox_limit=100_000,
        ),
    )
    server = Node(server_config, Callback(), Application(), reactor)
    server.build()
    server.startService()
    callback = callback_of(server)
    assert isinstance(callback, CallbackServer)
    port = server.listeners[0].port.getHost().port  # type: ignore[union-attr]

    sent_at: dict[int, float] = {}
    state: dict[str, Any] = {"phase": "warmup-latency", "latencies": [], "received": 0}
    result: dict[str, Any] = {"mode": mode}
    now = time.perf_counter

    class Timing(Application):
        def message_received(self, peer: Any, payload: bytes) -> None:
            sequence = int.from_bytes(payload[:8], "big")
            started = sent_at.pop(sequence, None)
            phase = state["phase"]
            if phase.endswith("latency"):
                if started is not None and phase == "latency":
                    state["latencies"].append(now() - started)
                send()
            elif phase.endswith("throughput"):
                if phase == "throughput":
                    state["received"] += 1
                send()

    counter = [0]

    def send() -> None:
        counter[0] += 1
        sequence = counter[0]
        sent_at[sequence] = now()
        callback.deliver("bench-client", sequence.to_bytes(8, "big") + b"x" * (PAYLOAD - 8)).addErrback(
            lambda failure: common.progress(f"deliver failed: {failure.getErrorMessage()}")
        )

    client_config = NodeConfig(
        topology="callback",
        role="client",
        connect=(f"tcp:{common.HOST}:{port}",),
        node_id="bench-client",
        settings=CallbackSettings(
            token=TOKEN,
            callback=None if mode == "fallback" else listen,
            outbox=os.path.join(folder, "client.sqlite") if durable else None,
        ),
    )
    client = Node(client_config, Callback(), Timing(), reactor)
    client.build()

    def registered(event: str, client_id: str) -> None:
        if event != "registered" or "began" in state:
            return
        state["began"] = True
        send()
        reactor.callLater(warmup, latency)

    def latency() -> None:
        state["phase"] = "latency"
        reactor.callLater(seconds, warm_throughput)

    def warm_throughput() -> None:
        state["phase"] = "warmup-throughput"
        for _ in range(OUTSTANDING):
            send()
        reactor.callLater(warmup, throughput)

    def throughput() -> None:
        state["phase"] = "throughput"
        state["received"] = 0
        state["started"] = now()
        reactor.callLater(seconds, finish)

    def finish() -> None:
        elapsed = now() - state["started"]
        latencies = sorted(state["latencies"])
        link = callback.status()["clients"]["bench-client"]
        result.update(
            per_second=state["received"] / elapsed,
            p50_us=common.percentile(latencies, 0.5) * 1e6,
            p99_us=common.percentile(latencies, 0.99) * 1e6,
            samples=len(latencies),
            delivered=link["delivered"],
            last_callback=link["last_callback"],
        )
        state["phase"] = "done"
        common.emit("RESULT", result)
        shutil.rmtree(folder, ignore_errors=True)
        reactor.stop()

    callback.observers.append(registered)
    client.startService()
    reactor.run()


# --------------------------------------------------------------------------
# The orchestrator


def measure(mode: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for rep in range(args.reps):
        common.progress(f"callback: {mode}, run {rep + 1}/{args.reps}")
        with common.Children() as children:
            process = children.start(
                f"callback-{mode}",
                common.python_command("callback.py", "child", mode, str(args.warmup), str(args.seconds)),
            )
            results.append(process.result(2 * (args.warmup + args.seconds) + 30))
    return results


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    labels = {"raw_label": "raw Twisted (none)", "nm_label": "netmodels"}
    for mode in MODES:
        results = measure(mode, args)
        name = {"callback-sqlite": "callback, SQLite files"}.get(mode, f"{mode} path")
        rows += [
            Row(f"{name}: deliveries/s", "/s", [], [r["per_second"] for r in results], **labels),
            Row(f"{name}: latency p50", "µs", [], [r["p50_us"] for r in results], **labels),
            Row(f"{name}: latency p99", "µs", [], [r["p99_us"] for r in results], **labels),
        ]
        paths = {json.dumps(r["delivered"], sort_keys=True) for r in results}
        notes.append(f"{name}: acknowledged per path (whole run): {', '.join(sorted(paths))}")
    notes += [
        "latency = deliver() called -> the client application's message_received, one message at a time",
        f"deliveries/s = messages the application received per second with {OUTSTANDING} outstanding",
        "one process, one reactor, both nodes on 127.0.0.1: the two ends share a CPU",
        "no raw Twisted equivalent: raw Twisted has no outbox, acknowledgement or de-duplication",
    ]
    return rows, notes


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser)
    args = parser.parse_args()
    common.apply_quick(args)
    print("\n".join(common.machine_info()))
    began = time.monotonic()
    rows, notes = run(args)
    print(
        common.format_table(
            "callback topology", rows, [*notes, f"took {time.monotonic() - began:.0f} s"], COLUMNS
        )
    )
    print(json.dumps({row.workload: row.nm_median for row in rows}))


if __name__ == "__main__":
    main()
