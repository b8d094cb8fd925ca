"""
What one ``GET /metrics`` scrape costs, and what the metrics add per close.

In one process, no sockets: a node whose manager holds 10,000 records
(``--records``), either closed ones in the history or live connections,
scraped as ``GET /metrics`` does (``generate_latest`` on the site's
registry), next to ``GET /status``'s document for the same node (it lists
every record). Then the bookkeeping the metrics added to a close (the
``closes`` and ``ended`` totals), per close. Nothing is added per message:
``micro.py`` before and after shows that.

    python benchmarks/metrics_scrape.py [--records 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any


def best_ms(fn: Callable[[], Any], repeat: int = 7) -> float:
    results = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        results.append((time.perf_counter() - start) * 1e3)
    return min(results)


def make_node(records: int) -> Any:
    from netmodels.runtime.application import Application
    from netmodels.runtime.node import Node, NodeConfig
    from netmodels.topologies.client_server import ClientServer
    from twisted.internet.task import Clock

    config = NodeConfig(node_id="bench", history=records, max_connections=None)
    node = Node(config, ClientServer(), Application(), Clock())
    node.build()
    return node


def fill_history(node: Any, count: int) -> None:
    """``count`` connections that opened, carried traffic and closed, as the manager records them."""
    from netmodels.core.connection import ConnectionState, Direction
    from netmodels.core.reasons import CloseReason, Closure, Initiator

    draw = random.Random(1)
    reasons = list(CloseReason)
    for _ in range(count):
        record = node.manager._new_record(Direction.INBOUND, "10.0.0.1:4000")
        record.state = ConnectionState.CLOSED
        record.bytes_in = record.bytes_out = draw.randrange(10_000)
        record.messages_in = record.messages_out = draw.randrange(100)
        node.manager._finish(record, Closure(draw.choice(reasons), draw.choice(list(Initiator))))


def fill_live(node: Any, count: int) -> None:
    """``count`` open connections, each with an RTT, as ``manager.live`` holds them."""
    from netmodels.core.connection import ConnectionState, Direction

    draw = random.Random(2)
    for _ in range(count):
        record = node.manager._new_record(Direction.INBOUND, "10.0.0.1:4000")
        record.state = ConnectionState.OPEN
        record.bytes_in = record.bytes_out = draw.randrange(10_000)
        record.messages_in = record.messages_out = draw.randrange(100)
        record.rtt = draw.uniform(0.0001, 0.2)
        node.manager.live[record.id] = SimpleNamespace(record=record, wrappedProtocol=None)


def close_cost(count: int) -> float:
    """µs per close of the metrics' bookkeeping (``closes`` and ``ended``), best of 7."""
    from netmodels.core.connection import ConnectionRecord, Direction
    from netmodels.core.reasons import CloseReason, Initiator
    from netmodels.runtime.manager import ConnectionManager, _add_counts

    manager = ConnectionManager(SimpleNamespace())  # type: ignore[arg-type]
    record = ConnectionRecord(id=1, direction=Direction.INBOUND, peer="10.0.0.1:4000")

    def closes() -> None:
        for _ in range(count):
            manager.closes[CloseReason.CLEAN, Initiator.REMOTE, record.direction] += 1
            _add_counts(manager.ended, record)

    return best_ms(closes) * 1e3 / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    args = parser.parse_args()
    from netmodels.daemon.metrics import metrics_registry
    from prometheus_client import generate_latest

    import common

    print("\n".join(common.machine_info()))
    print(f"== one scrape, {args.records:,} records (ms, best of 7) ==")
    for label, fill in (("closed, in the history", fill_history), ("live connections", fill_live)):
        node = make_node(args.records)
        fill(node, args.records)
        registry = metrics_registry([node])
        size = len(generate_latest(registry))
        scrape = best_ms(lambda registry=registry: generate_latest(registry))
        status = best_ms(lambda node=node: json.dumps(node.status(), default=str))
        print(f"{label:24} GET /metrics {scrape:8.2f} ms ({size:,} bytes)   GET /status {status:8.2f} ms")
    empty = make_node(1)
    registry = metrics_registry([empty])
    print(f"{'no connection':24} GET /metrics {best_ms(lambda: generate_latest(registry)):8.2f} ms")
    print("== bookkeeping the metrics add to each close (not to messages) ==")
    print(f"closes and ended totals, per close {close_cost(100_000):8.3f} µs")


if __name__ == "__main__":
    main()
