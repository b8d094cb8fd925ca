"""
Run every example in this folder and keep its output for the docs.

Each example must exit 0 within 10 seconds. The output of each one is written
to ``output/<name>.txt``, which the documentation pages include, so after a
change to netmodels run this and rebuild the docs. Also checks that the
example plugins in ``plugins/`` are found by ``twistd netmodels``.

Run: python docs/examples/run_all.py   (from any directory; about 20 s)
     python docs/examples/run_all.py --output DIR   (keep the outputs elsewhere,
     as the test suite does, leaving the committed ones alone)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "output"
LIMIT = 10.0
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def run(name: str, command: list[str], env: dict[str, str] | None = None) -> bool:
    """Run one example; keep its output in OUTPUT/<name>.txt. False if it failed."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=LIMIT, env=env, cwd=HERE.parent.parent
        )
    except subprocess.TimeoutExpired:
        print(f"FAIL  {name}: still running after {LIMIT:g} s")
        return False
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        print(f"FAIL  {name}: exit {result.returncode} after {elapsed:.1f} s\n{result.stderr}")
        return False
    (OUTPUT / f"{name}.txt").write_text(result.stdout)
    print(f"ok    {name} ({elapsed:.1f} s)")
    return True


def main() -> int:
    global OUTPUT
    if sys.argv[1:2] == ["--output"] and len(sys.argv) == 3:
        OUTPUT = Path(sys.argv[2]).resolve()
    OUTPUT.mkdir(exist_ok=True)
    examples = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    ok = all([run(path.stem, [sys.executable, str(path)]) for path in examples])
    plugins = {**os.environ, "PYTHONPATH": str(HERE / "plugins")}
    for option in ("--list-apps", "--list-topologies"):
        name = option.strip("-")
        ok = run(name, [*TWISTD, "netmodels", option], plugins) and ok
    listed = (OUTPUT / "list-apps.txt").read_text() if (OUTPUT / "list-apps.txt").exists() else ""
    if "shout" not in listed:
        print("FAIL  the example plugin 'shout' is not listed by --list-apps")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
