"""
Shared plumbing for the netmodels benchmarks: processes, CPU pinning, the C
load generator, measurement windows, statistics and the result tables.

Nothing here imports netmodels, so the orchestrating process stays light; the
server and client processes import what they measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"
LOADGEN_SOURCE = HERE / "loadgen.c"
LOADGEN = BIN / "loadgen"
PINGPONG_SOURCE = HERE / "pingpong.c"
PINGPONG = BIN / "pingpong"
HOST = "127.0.0.1"

# --------------------------------------------------------------------------
# Machine and pinning


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def have_taskset() -> bool:
    return shutil.which("taskset") is not None


def pinning_note() -> str:
    available = cpus()
    if not have_taskset():
        return "taskset not found: processes run UNPINNED (results are noisier)"
    if len(available) < 2:
        return f"only CPU {available} available: server and clients share it"
    return f"server pinned to CPU {available[0]}, clients to CPU {available[1]} (taskset)"


def server_cpu() -> int | None:
    available = cpus()
    return available[0] if have_taskset() else None


def client_cpu() -> int | None:
    available = cpus()
    if not have_taskset():
        return None
    return available[1] if len(available) > 1 else available[0]


def pinned(command: Sequence[str], cpu: int | None) -> list[str]:
    if cpu is None:
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


def machine_info() -> list[str]:
    import twisted

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from twisted.internet import default

        reactor_name = default.install.__module__.rsplit(".", 1)[-1]
    except Exception:  # pragma: no cover - informational only
        reactor_name = "?"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        f"netmodels: {netmodels_version()}",
        f"machine : {platform.node()}  {platform.system()} {platform.release()}  "
        f"nproc={os.cpu_count()} (usable CPUs {cpus()})  {model}",
        f"python  : {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"twisted : {twisted.__version__}  default reactor: {reactor_name}",
        f"pinning : {pinning_note()}",
        f"limits  : open files soft={soft} hard={hard}",
    ]


def netmodels_version() -> str:
    """The commit of the netmodels tree measured, and whether netmodels/ had local changes."""
    root = HERE.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "netmodels"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "? (not a git checkout)"
    return f"{commit}" + ("  [+ uncommitted changes in netmodels/]" if dirty else "")


# --------------------------------------------------------------------------
# The C load generator


def build_c(source: Path, binary: Path, force: bool = False) -> Path:
    """Compile ``source`` into ``binary`` unless an up-to-date binary exists."""
    if not force and binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit(f"benchmarks need gcc (or cc) to build {source.name}")
    BIN.mkdir(exist_ok=True)
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def build_loadgen(force: bool = False) -> Path:
    """Compile loadgen.c into bin/loadgen unless an up-to-date binary exists."""
    return build_c(LOADGEN_SOURCE, LOADGEN, force)


def build_pingpong() -> Path:
    """Compile pingpong.c (the C ceiling of request/response) into bin/pingpong."""
    return build_c(PINGPONG_SOURCE, PINGPONG)


def netmodels_hello_hex(role: str = "client", node_id: str = "loadgen") -> str:
    """A valid client HELLO frame for the client-server topology, as hex."""
    from netmodels.core.frames import Hello, encode_hello
    from netmodels.core.keepalive import DEFAULT

    return encode_hello(Hello(node_id=node_id, topology="client-server", role=role, keepalive=DEFAULT)).hex()


# --------------------------------------------------------------------------
# Child processes


class Child:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str] | None = None):
        self.name = name
        self.command = list(command)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=True,
        )
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip("\n"))
            del self._stderr[:-40]

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr[-15:])

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the first stdout line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {prefix!r} line within {timeout:g} s", self)
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                time.sleep(0.05)
                raise BenchError(f"{self.name}: exited ({self.proc.poll()}) before printing {prefix!r}", self)
            self.seen.append(line)
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def result(self, timeout: float) -> dict[str, Any]:
        return json.loads(self.expect("RESULT", timeout))  # type: ignore[no-any-return]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL, to this child only (its own session)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


class BenchError(RuntimeError):
    def __init__(self, message: str, child: Child | None = None) -> None:
        if child is not None and child.stderr_tail:
            message += "\n--- stderr of " + child.name + " ---\n" + child.stderr_tail
        super().__init__(message)


def python_command(script: str, *args: str) -> list[str]:
    return [sys.executable, "-u", str(HERE / script), *args]


class Children:
    """A context manager that stops every child it started, in reverse order."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, command: Sequence[str]) -> Child:
        child = Child(name, command)
        self.children.append(child)
        return child

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            child.stop()


# --------------------------------------------------------------------------
# Inside the measured processes


def quiet_logging() -> None:
    """
    Send Twisted's log to stderr at level warn and above, as a deployment
    would, instead of leaving it buffered in memory: without an observer
    Twisted keeps up to 64 Ki events (netmodels logs each open and close at
    level info), which would show up as memory per connection.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def context_switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw, usage.ru_nivcsw


def runqueue_wait_seconds(thread: int | None = None) -> float:
    """Seconds this thread (or thread id ``thread``) spent runnable but not running: CPU contention."""
    where = "/proc/thread-self/schedstat" if thread is None else f"/proc/self/task/{thread}/schedstat"
    try:
        fields = Path(where).read_text().split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy(sample: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``sample`` seconds (from /proc/stat)."""

    def snapshot() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    try:
        total0, idle0 = snapshot()
        time.sleep(sample)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else 0.0


def wait_until_quiet(limit: float = 0.15, patience: float = 60.0) -> str | None:
    """
    Wait up to ``patience`` seconds for the machine to be quiet (others using
    less than ``limit`` of all CPUs). Returns a warning if it never was.
    """
    deadline = time.monotonic() + patience
    busy = machine_busy()
    while busy > limit and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = machine_busy()
    if busy > limit:
        return f"other processes kept {busy:.0%} of all CPUs busy: figures are disturbed"
    return None


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Window:
    """
    A measurement window in a reactor process: ``begin()`` starts the warm-up;
    after it ``counter()`` and the CPU time are sampled, and again after
    ``seconds``; then ``done(result)`` is called with the figures.
    """

    reactor: Any
    warmup: float
    seconds: float
    counter: Callable[[], int]
    done: Callable[[dict[str, Any]], None]
    profile: str | None = None
    on_open: Callable[[], None] | None = None
    #: Write the window's bytecodes per unit of ``counter`` here (OpcodeCounter).
    opcodes: str | None = None
    started: bool = False
    measuring: bool = False
    _start: tuple[float, float, int, float, tuple[int, int]] = (0.0, 0.0, 0, 0.0, (0, 0))
    _profiler: Any = field(default=None, repr=False)
    _opcodes: OpcodeCounter | None = field(default=None, repr=False)

    def begin(self) -> None:
        if self.started:
            return
        self.started = True
        self.reactor.callLater(self.warmup, self._open)

    def _open(self) -> None:
        if self.profile:
            import cProfile

            self._profiler = cProfile.Profile()
        self._start = (
            time.monotonic(),
            cpu_seconds(),
            self.counter(),
            runqueue_wait_seconds(),
            context_switches(),
        )
        self.measuring = True
        if self.on_open is not None:
            self.on_open()
        if self._profiler is not None:
            self._profiler.enable()
        if self.opcodes:
            self._opcodes = OpcodeCounter()
            self._opcodes.start()
        self.reactor.callLater(self.seconds, self._close)

    def _close(self) -> None:
        if self._profiler is not None:
            self._profiler.disable()
        if self._opcodes is not None:
            self._opcodes.stop()
            assert self.opcodes is not None
            self._opcodes.write(self.opcodes, self.counter() - self._start[2])
        end = (
            time.monotonic(),
            cpu_seconds(),
            self.counter(),
            runqueue_wait_seconds(),
            context_switches(),
        )
        self.measuring = False
        if self._profiler is not None:
            self._profiler.dump_stats(self.profile)
        elapsed = end[0] - self._start[0]
        count = end[2] - self._start[2]
        cpu = end[1] - self._start[1]
        self.done(
            {
                "elapsed": elapsed,
                "count": count,
                "rate": count / elapsed if elapsed > 0 else 0.0,
                "cpu": cpu,
                "cpu_util": cpu / elapsed if elapsed > 0 else 0.0,
                "cpu_us_per_op": cpu / count * 1e6 if count else None,
                # Time spent runnable but waiting for the CPU, as a fraction of the window.
                "runq_wait": (end[3] - self._start[3]) / elapsed if elapsed > 0 else 0.0,
                "vcsw_per_op": (end[4][0] - self._start[4][0]) / count if count else None,
                "ivcsw_per_op": (end[4][1] - self._start[4][1]) / count if count else None,
            }
        )


#: Where executed bytecode is charged, by the path of its code's file.
OPCODE_LAYERS = (
    ("/netmodels/core/", "netmodels core"),
    ("/netmodels/runtime/", "netmodels runtime"),
    ("/netmodels/transports/", "netmodels transports"),
    ("/twisted/", "Twisted"),
    (str(HERE) + "/", "benchmark (application)"),
)


class OpcodeCounter:
    """
    Bytecodes executed, per layer (:data:`OPCODE_LAYERS`), between
    :meth:`start` and :meth:`stop`: ``sys.settrace`` opcode events. Unlike
    CPU time the count does not move with the host's load, so a change to a
    per-message path shows in one run. Frames entered before :meth:`start`
    (the reactor's run loop) are not counted, what runs in C is not, and a
    traced process runs many times slower: its timings are not valid.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._layer_of: dict[Any, str] = {}

    def start(self) -> None:
        sys.settrace(self._trace)

    def stop(self) -> None:
        sys.settrace(None)

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            layer = self._layer_of.get(code)
            if layer is None:
                path = code.co_filename
                layer = next((name for part, name in OPCODE_LAYERS if part in path), "other")
                self._layer_of[code] = layer
            self.counts[layer] = self.counts.get(layer, 0) + 1
        elif event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        return self._trace

    def write(self, path: str, units: int) -> None:
        """Write the counts and the ``units`` (round trips, probes) they were spent on, as JSON."""
        Path(path).write_text(json.dumps({"units": units, "layers": self.counts}))


def opcodes_per_unit(path: str) -> dict[str, float]:
    """What :meth:`OpcodeCounter.write` wrote, per unit, with a ``total``."""
    document = json.loads(Path(path).read_text())
    units = max(1, document["units"])
    per_unit = {layer: count / units for layer, count in document["layers"].items()}
    per_unit["total"] = sum(per_unit.values())
    return per_unit


def opcode_table(columns: dict[str, dict[str, float]], unit: str) -> list[str]:
    """Lines of a table: bytecodes per ``unit`` by layer (rows) for each column."""
    layers = [name for _, name in OPCODE_LAYERS] + ["other", "total"]
    layers = [layer for layer in layers if any(column.get(layer) for column in columns.values())]
    width = max(len(unit) + 14, *(len(layer) for layer in layers))
    cell = max(len(name) for name in columns) + 2
    lines = [f"{'bytecodes per ' + unit:<{width}}" + "".join(f"{name:>{cell}}" for name in columns)]
    for layer in layers:
        cells = "".join(f"{column.get(layer, 0.0):>{cell}.0f}" for column in columns.values())
        lines.append(f"{layer:<{width}}{cells}")
    return lines


def emit(tag: str, payload: Any = "") -> None:
    if not isinstance(payload, str):
        payload = json.dumps(payload)
    print(f"{tag} {payload}".rstrip(), flush=True)


# --------------------------------------------------------------------------
# Statistics and tables


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def emit_latencies(result: dict[str, Any], samples: list[float]) -> None:
    """Add the p50/p99 (µs) of round-trip ``samples`` (seconds) to ``result`` and emit it."""
    samples.sort()
    result["p50_us"] = percentile(samples, 0.50) * 1e6
    result["p99_us"] = percentile(samples, 0.99) * 1e6
    result["samples"] = len(samples)
    emit("RESULT", result)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class Row:
    """One line of a result table: the raw and netmodels medians and their ratio."""

    workload: str
    unit: str
    raw: list[float]
    nm: list[float]
    #: ``(">=", 0.9)`` or ``("<=", 1.3)`` against the netmodels/raw ratio; None: info only.
    target: tuple[str, float] | None = None
    stretch: float | None = None
    raw_label: str = "raw Twisted"
    nm_label: str = "netmodels"
    #: The target bounds the netmodels median itself (in ``unit``), not the ratio.
    absolute: bool = False
    #: The peers' runs (``peers.LABELS`` keys, e.g. "asyncio", "uvloop", "zmq", "c"), same unit.
    #: A peer that is a column of the table but has no entry here shows "-" (the notes say why).
    peers: dict[str, list[float]] = field(default_factory=dict)

    def peer_ratio(self, peer: str) -> float:
        """netmodels median / the peer's median (nan if unknown)."""
        values = self.peers.get(peer)
        if not values or not self.nm:
            return float("nan")
        theirs = median(values)
        if not theirs or abs(self.nm_median) > 1000 * abs(theirs):
            return float("nan")
        return self.nm_median / theirs

    @property
    def raw_median(self) -> float:
        return median(self.raw)

    @property
    def nm_median(self) -> float:
        return median(self.nm)

    @property
    def ratio(self) -> float:
        raw, nm = self.raw_median, self.nm_median
        if not raw or abs(nm) > 1000 * abs(raw):
            return float("nan")  # raw is about zero: a ratio would mean nothing
        return nm / raw

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        if not self.raw or not self.nm:
            return "n/a"
        op, bound = self.target
        value = self.nm_median if self.absolute else self.ratio
        ok = value >= bound if op == ">=" else value <= bound
        return "PASS" if ok else "FAIL"

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        op, bound = self.target
        sign = "≥" if op == ">=" else "≤"
        if self.absolute:
            text = f"nm {sign} {bound:g} {self.unit}"
            if self.stretch is not None:
                text += f" (stretch {self.stretch:g})"
            return text
        text = f"{sign} {bound:.2f}×"
        if self.stretch is not None:
            text += f" (stretch {self.stretch:.2f}×)"
        return text


def human(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit in ("µs", "KB", "%"):
        return f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    for threshold, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g} {suffix}{unit}"
    return f"{value:.3g} {unit}"


#: Column headers of the peers, in table order.
PEER_LABELS = {"asyncio": "asyncio", "uvloop": "uvloop", "zmq": "pyzmq", "c": "C"}


def peer_cell(row: Row, peer: str) -> str:
    """A peer's median and netmodels' ratio to it: ``20.0 kRTT/s (1.45×)``."""
    values = row.peers.get(peer)
    if not values:
        return "-"
    ratio = row.peer_ratio(peer)
    return human(median(values), row.unit) + (f" ({ratio:.2f}×)" if ratio == ratio else "")


def format_table(
    title: str,
    rows: Sequence[Row],
    notes: Sequence[str] = (),
    columns: tuple[str, str] = ("raw median", "netmodels median"),
) -> str:
    peers = [peer for peer in PEER_LABELS if any(peer in row.peers for row in rows)]
    header = (
        "workload",
        *columns,
        "ratio",
        "target",
        "result",
        *(f"{PEER_LABELS[peer]} (nm ÷)" for peer in peers),
    )
    body = [
        (
            row.workload,
            human(row.raw_median, row.unit),
            human(row.nm_median, row.unit),
            f"{row.ratio:.3f}×" if row.ratio == row.ratio else "-",
            row.target_text,
            row.verdict,
            *(peer_cell(row, peer) for peer in peers),
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [f"== {title} ==", line(header), line(["-" * w for w in widths])]
    out.extend(line(cells) for cells in body)
    for row in rows:
        out.append(
            f"  {row.workload}: {row.raw_label} runs {', '.join(human(v, row.unit) for v in row.raw)}"
            f" | {row.nm_label} runs {', '.join(human(v, row.unit) for v in row.nm)}"
            + "".join(
                f" | {PEER_LABELS[peer]} runs {', '.join(human(v, row.unit) for v in values)}"
                for peer, values in row.peers.items()
                if values
            )
        )
    if peers:
        out.append(
            "  peers: each cell is the peer's median and, in brackets, netmodels' median divided by it "
            "(above 1 means netmodels is ahead for rates, behind for times)"
        )
    out.extend(f"  note: {note}" for note in notes)
    return "\n".join(out)


# --------------------------------------------------------------------------
# Command lines


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before it (default 1)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved A/B repetitions (default 3)")
    parser.add_argument(
        "--profile-dir",
        default=None,
        help="write a cProfile of each netmodels server's window into this folder",
    )
    parser.add_argument("--quick", action="store_true", help="short windows, 2 repetitions")
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="leave out the peers (asyncio, uvloop, pyzmq, C): raw Twisted and netmodels only",
    )
    parser.add_argument(
        "--peers",
        default="asyncio,uvloop,zmq,c",
        help="comma-separated peers to run where a benchmark has them (default asyncio,uvloop,zmq,c)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-run a repetition disturbed by another process on the CPUs (default 2)",
    )


def apply_quick(args: argparse.Namespace) -> None:
    if getattr(args, "quick", False):
        args.seconds = min(args.seconds, 1.5)
        args.warmup = min(args.warmup, 0.5)
        args.reps = min(args.reps, 2)


def profile_path(args: argparse.Namespace, name: str) -> str | None:
    if not getattr(args, "profile_dir", None):
        return None
    folder = Path(args.profile_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{name}.prof")


def measured(
    job: Callable[[], dict[str, Any]],
    disturbed: Callable[[dict[str, Any]], str | None],
    retries: int,
    label: str,
    log: list[str],
) -> dict[str, Any]:
    """
    Run one repetition; if ``disturbed(result)`` says another process took the
    CPU from it, wait for the machine to be quiet and run it again (up to
    ``retries`` times). What happened goes into ``log``.
    """
    for attempt in range(retries + 1):
        result = job()
        why = disturbed(result)
        if why is None:
            return result
        if attempt < retries:
            progress(f"{label}: disturbed ({why}); waiting for a quiet machine and re-running")
            warning = wait_until_quiet()
            if warning:
                progress(warning)
        else:
            log.append(f"{label} kept disturbed after {retries} re-runs ({why}); kept the last run")
            result["disturbed"] = why
            return result
    return result  # pragma: no cover


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)
