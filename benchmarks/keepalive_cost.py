"""
What keepalive costs on the hot path: the fan-in ingest of ``ingest.py`` with
netmodels keepalive ON (the defaults) against keepalive OFF, interleaved.

ON  : the defaults: application keepalive 15,10,3 (a time stamp per received
      chunk, one timer per connection per idle period), kernel keepalive
      (SO_KEEPALIVE + TCP_KEEPIDLE/INTVL/CNT) and TCP_USER_TIMEOUT = 45 s.
OFF : no kernel keepalive (``kernel_keepalive=False``), no TCP_USER_TIMEOUT
      (``user_timeout=0``), and an application keepalive of 1e6,1e6,1 whose
      timer never fires. The session still stamps the time of each received
      chunk (it does for its deadlines whatever the keepalive). Everything
      else (manager, framing, errno capture) is the same.

The ratio is ON/OFF messages per second; the target is >= 0.97 (stretch 0.99).

    python benchmarks/keepalive_cost.py [--seconds 3] [--reps 3]
"""

from __future__ import annotations

import argparse

import common
import ingest
from common import Row

COLUMNS = ("keepalive OFF median", "keepalive ON median")


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    log: list[str] = []
    results = ingest.measure(("nm-off", "nm"), args, "keepalive", log)

    def series(impl: str, key: str) -> list[float]:
        return [r[key] for r in results[impl] if r.get(key) is not None]

    labels = {"raw_label": "keepalive OFF", "nm_label": "keepalive ON"}
    rows = [
        Row(
            f"ingest, keepalive on vs off, {args.conns} conns",
            "msg/s",
            series("nm-off", "rate"),
            series("nm", "rate"),
            (">=", 0.97),
            0.99,
            **labels,
        ),
        Row(
            "server CPU per message",
            "µs",
            series("nm-off", "cpu_us_per_op"),
            series("nm", "cpu_us_per_op"),
            **labels,
        ),
    ]
    notes = [
        "both columns are netmodels; ratio = keepalive ON / keepalive OFF",
        "OFF = no kernel keepalive, no TCP_USER_TIMEOUT, application keepalive 1e6,1e6,1 "
        "(its timer never fires)",
        *ingest.saturation_notes(results),
        *log,
    ]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ingest.add_arguments(parser)
    args = parser.parse_args()
    common.apply_quick(args)
    print("\n".join(common.machine_info()))
    rows, notes = run(args)
    print(common.format_table("keepalive cost", rows, notes, COLUMNS))


if __name__ == "__main__":
    main()
