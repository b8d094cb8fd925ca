"""
The fault matrix: each :class:`Fault` is one row -- a fault, the topology and
transport it runs on, who observes it, what that observer must record and in
which time window -- with the function that runs it in a :class:`Lab`.

Every scenario runs real ``twistd netmodels`` processes in lab hosts, injects
the fault ``repeat`` times and reads what the observer recorded from its
``GET /status``: the close reason, initiator and errno of the connection that
was open at injection, and ``closed_at`` minus the injection time (both are
this machine's wall clock). :func:`run_fault` turns that into a
:class:`FaultResult`; the tests require every repetition to be classified as
expected and detected inside its window.

Extension points: a new topology or transport adds its scenarios and
:class:`Fault` rows to :data:`FAULTS` (``topology=``, ``transport=``), and
:data:`PLANNED` says which combinations have no scenario yet; ``matrix.py``
and the tests pick both up.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .netlab import Host, Lab, LabError, LabProcess, wait_until

__all__ = [
    "FAULTS",
    "FROM_FAULT",
    "PLANNED",
    "Fault",
    "FaultResult",
    "Observation",
    "fault",
    "faults",
    "repeat_count",
    "run_fault",
]

# --- settings --------------------------------------------------------------------------

#: Keepalive of every lab node: idle 1 s, then 3 probes 0.5 s apart.
IDLE, INTERVAL, PROBES = 1.0, 0.5, 3
KEEPALIVE = f"{IDLE:g},{INTERVAL:g},{PROBES}"
#: A dead peer is declared at most this long after the last thing it sent.
BOUND = IDLE + INTERVAL * PROBES
#: Slack on each side of a window: timers fire late on a loaded 2-core machine.
LOWER_EPSILON = 0.1
UPPER_EPSILON = 0.5
#: What the kernel does at once (FIN, RST) must be recorded within this.
IMMEDIATE = 0.5

SERVICE_PORT = 8750
STATUS_PORT = 7001
#: Deadlines for the lab's own waits (not the windows under test).
START_TIMEOUT = 20.0
CLOSE_TIMEOUT = BOUND + 8.0
RECONNECT_TIMEOUT = 20.0

REPEAT_ENV = "NETMODELS_LAB_REPEAT"
SOAK_ENV = "NETMODELS_LAB_SOAK"
SEED_ENV = "NETMODELS_LAB_SEED"

#: Picks where in the keepalive cycle each fault lands; seeded by NETMODELS_LAB_SEED if set.
_phases = random.Random(os.environ.get(SEED_ENV))


def repeat_count() -> int:
    """Repetitions of each fault: ``NETMODELS_LAB_REPEAT`` (default 3, at least 1)."""
    try:
        return max(1, int(os.environ.get(REPEAT_ENV, "3")))
    except ValueError:
        return 3


def soak_seconds() -> float:
    """Seconds of each loss soak repetition: ``NETMODELS_LAB_SOAK`` (default 7)."""
    try:
        return max(1.0, float(os.environ.get(SOAK_ENV, "7")))
    except ValueError:
        return 7.0


# --- what a run produces ---------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A two-sided window for the detection time, in seconds."""

    low: float
    high: float

    def __contains__(self, seconds: float) -> bool:
        return self.low <= seconds <= self.high

    def __str__(self) -> str:
        return f"{max(0.0, self.low):.2f} to {self.high:.2f}"


@dataclass
class Observation:
    """What the observer recorded in one repetition."""

    rep: int
    #: The observer's close reason; ``None`` if the connection stayed open.
    reason: str | None
    initiator: str | None = None
    errno: str | None = None
    detail: str = ""
    #: Detection time (see the fault's ``measures``); ``None`` if not measured.
    seconds: float | None = None
    #: What the other side recorded, and how long reconnecting took once healed.
    other: str | None = None
    reconnect: float | None = None
    #: Seconds between the connection being ready and the fault (its phase in the keepalive cycle).
    phase: float | None = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of_record(cls, rep: int, record: dict[str, Any], since: float) -> Observation:
        return cls(
            rep,
            record["reason"],
            record["initiator"],
            record["errno"],
            record["detail"] or "",
            record["closed_at"] - since,
        )

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        seen = (
            "still open" if self.reason is None else f"{self.reason} ({self.initiator}, {self.errno or '-'})"
        )
        text = f"rep {self.rep}: {seen}"
        if self.phase is not None:
            text = f"rep {self.rep} (fault {self.phase:.2f} s after ready): {seen}"
        if self.seconds is not None:
            text += f" after {self.seconds:.3f} s"
        if self.other is not None:
            text += f"; other side: {self.other}"
        if self.reconnect is not None:
            text += f"; reconnected {self.reconnect:.2f} s after healing"
        if self.detail:
            text += f"; detail: {self.detail}"
        if self.problems:
            text += "\n    PROBLEM: " + "\n    PROBLEM: ".join(self.problems)
        return text


@dataclass
class Run:
    """What a scenario returns: one observation per repetition, plus problems of the whole run."""

    observations: list[Observation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: What the run showed beyond each repetition (backoff ratios, requests answered).
    notes: list[str] = field(default_factory=list)


Scenario = Callable[[Lab, int], Run]


@dataclass(frozen=True)
class Fault:
    """One row of the matrix."""

    key: str
    title: str
    topology: str
    transport: str
    #: Which node's status is read: "server" or "client".
    observer: str
    #: The reason the observer must record (``None``: the connection must stay open).
    reason: str | None
    initiator: str | None
    #: The errno the observer must record; ``None`` means not checked.
    errno: str | None
    window: Window | None
    #: What the detection time is measured from and to.
    measures: str
    #: The window as the docs state it.
    bound: str
    scenario: Scenario
    #: How many lab hosts the scenario needs.
    hosts: int = 2
    #: What this fault does on the wire, for the docs.
    wire: str = ""

    def check(self, observation: Observation) -> None:
        """Add to ``observation.problems`` what does not match this row."""
        if observation.reason != self.reason:
            expected = "the connection to stay open" if self.reason is None else repr(self.reason)
            observation.problems.append(f"expected {expected}, observer recorded {observation.reason!r}")
        if self.reason is not None and observation.initiator != self.initiator:
            observation.problems.append(f"expected initiator {self.initiator}, got {observation.initiator}")
        if self.errno is not None and observation.errno != self.errno:
            observation.problems.append(f"expected errno {self.errno}, got {observation.errno}")
        if self.window is not None:
            if observation.seconds is None:
                observation.problems.append("no detection time measured")
            elif observation.seconds not in self.window:
                observation.problems.append(
                    f"detected after {observation.seconds:.3f} s, outside the window [{self.window}] s"
                )


@dataclass
class FaultResult:
    fault: Fault
    observations: list[Observation]
    problems: list[str]
    elapsed: float
    #: The exception that stopped the scenario, with the lab's logs.
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.problems
            and bool(self.observations)
            and all(observation.ok for observation in self.observations)
        )

    def reason_counts(self) -> Counter[str]:
        return Counter(
            "still open" if observation.reason is None else observation.reason
            for observation in self.observations
        )

    def times(self) -> list[float]:
        return sorted(o.seconds for o in self.observations if o.seconds is not None)

    def reconnects(self) -> list[float]:
        return sorted(o.reconnect for o in self.observations if o.reconnect is not None)

    def others(self) -> Counter[str]:
        return Counter(o.other for o in self.observations if o.other is not None)

    def report(self) -> str:
        fault = self.fault
        expected = "stays open" if fault.reason is None else f"{fault.reason} ({fault.initiator})"
        lines = [
            f"{fault.title} [{fault.topology}/{fault.transport}], observer {fault.observer}: "
            f"expected {expected}, window {fault.bound}; {len(self.observations)} repetitions "
            f"in {self.elapsed:.1f} s: {'PASS' if self.ok else 'FAIL'}",
            *(f"  {observation}" for observation in self.observations),
            *(f"  note: {note}" for note in self.notes),
            *(f"  PROBLEM: {problem}" for problem in self.problems),
        ]
        if self.error is not None:
            lines.append(f"  ERROR: {self.error}")
        return "\n".join(lines)


def run_fault(fault: Fault, repeat: int | None = None, lab: Lab | None = None) -> FaultResult:
    """Run ``fault`` ``repeat`` times in ``lab`` (a fresh one, closed after, if not given)."""
    repeat = repeat_count() if repeat is None else repeat
    started = time.monotonic()
    own = lab is None
    run = Run()
    error = None
    try:
        if lab is None:
            lab = Lab(fault.hosts)
        run = fault.scenario(lab, repeat)
        for observation in run.observations:
            fault.check(observation)
        if len(run.observations) < repeat:
            run.problems.append(f"only {len(run.observations)} of {repeat} repetitions ran")
    except (AssertionError, LabError, OSError, KeyError, ValueError) as e:
        error = "".join(traceback.format_exception_only(e)).strip()
        error += "\n" + "".join(traceback.format_tb(e.__traceback__)[-3:]).rstrip()
        if lab is not None:
            error += "\n" + lab.logs()
    finally:
        if own and lab is not None:
            lab.close()
    if error is None and not all(o.ok for o in run.observations) and lab is not None:
        run.problems.append("logs:\n" + lab.logs())
    return FaultResult(fault, run.observations, run.problems, time.monotonic() - started, error, run.notes)


# --- nodes -----------------------------------------------------------------------------


@dataclass
class LabNode:
    """A ``twistd netmodels`` process in a lab host, read through its ``GET /status``."""

    host: Host
    node_id: str
    process: LabProcess

    def status(self) -> Any:
        return self.host.status(STATUS_PORT)

    def connections(self) -> list[dict[str, Any]]:
        connections: list[dict[str, Any]] = self.status()["connections"]
        return connections

    def record(self, connection_id: int) -> dict[str, Any] | None:
        return next((c for c in self.connections() if c["id"] == connection_id), None)

    def open_to(self, peer_id: str, exclude: Iterable[int] = ()) -> dict[str, Any] | None:
        skip = set(exclude)
        return next(
            (
                c
                for c in self.connections()
                if c["state"] == "open" and c["peer_id"] == peer_id and c["id"] not in skip
            ),
            None,
        )

    def wait_closed(self, connection_id: int, timeout: float = CLOSE_TIMEOUT) -> dict[str, Any]:
        def closed() -> dict[str, Any] | None:
            record = self.record(connection_id)
            if record is None:
                raise LabError(f"{self.node_id} has no record of connection {connection_id}")
            return record if record["state"] in ("closed", "failed") else None

        return wait_until(
            closed,
            timeout,
            f"{self.node_id} to record connection {connection_id} closed",
            0.01,
            lambda: f"record: {self.record(connection_id)}",
        )

    def describe(self) -> str:
        return f"{self.node_id} status: {self.status()}"


def spawn_node(host: Host, node_id: str, args: Iterable[str]) -> LabNode:
    """Start a node and wait until its status endpoint answers."""
    process = host.spawn_twistd(
        [
            "netmodels",
            "--topology",
            "client-server",
            "--keepalive",
            KEEPALIVE,
            "--status",
            f"tcp:{STATUS_PORT}:interface=127.0.0.1",
            "--node-id",
            node_id,
            *args,
        ],
        node_id,
    )
    node = LabNode(host, node_id, process)

    def up() -> bool:
        if not process.running:
            raise LabError(f"{node_id} exited ({process.popen.returncode}):\n{process.log_tail()}")
        return bool(node.status())

    wait_until(up, START_TIMEOUT, f"{node_id} to serve its status", 0.02)
    return node


class ClientServerPair:
    """The client-server topology over TCP: the server in host 1, clients in host 2."""

    server_id = "server"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.server_host, self.client_host = lab.hosts[0], lab.hosts[1]
        self.server: LabNode | None = None
        self.clients: list[LabNode] = []

    def start_server(self) -> LabNode:
        listen = f"tcp:{SERVICE_PORT}:interface={self.server_host.address}"
        self.server = spawn_node(self.server_host, self.server_id, ["--role", "server", "--listen", listen])
        return self.server

    def start_client(self, node_id: str = "client", interval: float = 0.0) -> LabNode:
        connect = f"tcp:{self.server_host.address}:{SERVICE_PORT}"
        client = spawn_node(
            self.client_host,
            node_id,
            ["--role", "client", "--connect", connect, "--interval", f"{interval:g}"],
        )
        self.clients.append(client)
        return client

    def wait_pair(
        self, client: LabNode, exclude: tuple[set[int], set[int]] = (set(), set())
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The connection between the server and ``client``, open on both sides (ids not in ``exclude``)."""
        server = self.server
        assert server is not None

        def both_open() -> tuple[dict[str, Any], dict[str, Any]] | None:
            on_client = client.open_to(server.node_id, exclude[1])
            on_server = server.open_to(client.node_id, exclude[0])
            return (on_server, on_client) if on_server and on_client else None

        return wait_until(
            both_open,
            RECONNECT_TIMEOUT,
            f"{client.node_id} and {server.node_id} to have an open connection",
            0.01,
            lambda: f"{client.describe()}\n{server.describe()}",
        )


def _other_side(node: LabNode, connection_id: int) -> str:
    record = node.wait_closed(connection_id)
    errno = f", {record['errno']}" if record["errno"] else ""
    return f"{record['reason']} ({record['initiator']}{errno})"


# --- scenarios -------------------------------------------------------------------------


def peer_sigkill_idle(lab: Lab, repeat: int) -> Run:
    """SIGKILL a client right after its handshake (nothing unread): the server sees a FIN."""
    pair = ClientServerPair(lab)
    server = pair.start_server()
    run = Run()
    for rep in range(1, repeat + 1):
        client = pair.start_client(f"client-{rep}")
        on_server, _ = pair.wait_pair(client)
        # Within the first second after the handshake neither side sends
        # anything (keepalive waits a whole idle period): nothing is unread.
        killed = time.time()
        client.process.sigkill()
        run.observations.append(Observation.of_record(rep, server.wait_closed(on_server["id"]), killed))
    return run


def peer_sigkill_unread(lab: Lab, repeat: int) -> Run:
    """Freeze the server, let requests pile up unread in its socket, SIGKILL it: its kernel sends RST."""
    pair = ClientServerPair(lab)
    server = pair.start_server()
    client = pair.start_client("client", interval=0.05)
    run = Run()
    seen: tuple[set[int], set[int]] = (set(), set())
    for rep in range(1, repeat + 1):
        _, on_client = pair.wait_pair(client, seen)
        seen[1].add(on_client["id"])
        server.process.sigstop()

        def unread() -> bool:
            return any(
                s["state"] == "ESTAB" and s["local"].endswith(f":{SERVICE_PORT}") and s["recv_q"] > 0
                for s in pair.server_host.tcp_sockets(SERVICE_PORT)
            )

        wait_until(unread, 1.0, "unread data in the frozen server's receive queue", 0.01)
        killed = time.time()
        server.process.sigkill()
        run.observations.append(Observation.of_record(rep, client.wait_closed(on_client["id"]), killed))
        server = pair.start_server()
    return run


def heal_after(
    inject: Callable[[ClientServerPair, LabNode], None],
    heal: Callable[[ClientServerPair, LabNode], None],
    interval: float = 0.0,
) -> Scenario:
    """
    A scenario: with the client connected and idle, ``inject`` the fault,
    wait for the server to record the close, ``heal``, and wait for the
    client to reconnect; repeat. The other side's record is kept too.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        pair = ClientServerPair(lab)
        server = pair.start_server()
        client = pair.start_client("client", interval)
        run = Run()
        seen: tuple[set[int], set[int]] = (set(), set())
        for rep in range(1, repeat + 1):
            on_server, on_client = pair.wait_pair(client, seen)
            seen[0].add(on_server["id"])
            seen[1].add(on_client["id"])
            # Land the fault at a random point of the keepalive cycle (both
            # sides probe once a second when idle), so that the whole window is
            # exercised, not only its upper end. Not a wait for an outcome.
            phase = _phases.uniform(0.0, IDLE)
            time.sleep(phase)
            injected = time.time()
            inject(pair, client)
            try:
                observation = Observation.of_record(rep, server.wait_closed(on_server["id"]), injected)
            finally:
                healed = time.time()
                heal(pair, client)
            observation.other = _other_side(client, on_client["id"])
            _, again = pair.wait_pair(client, seen)
            observation.reconnect = again["opened_at"] - healed
            observation.phase = phase
            run.observations.append(observation)
        return run

    return scenario


def refused_then_restart(lab: Lab, repeat: int) -> Run:
    """
    No server: the client's connects are refused, with a growing, jittered
    backoff; start the server on the same port and the client reconnects
    within its next delay. Then SIGKILL the server and do it again.
    """
    pair = ClientServerPair(lab)
    client = pair.start_client("client")
    run = Run()
    ratios: list[float] = []
    refused = 0
    down_since = time.time()
    for rep in range(1, repeat + 1):
        if pair.server is not None:
            down_since = time.time()
            pair.server.process.sigkill()

        def refusals(since: float = down_since) -> list[dict[str, Any]] | None:
            failed = [
                c for c in client.connections() if c["state"] == "failed" and (c["closed_at"] or 0) >= since
            ]
            return failed if len(failed) >= 3 else None

        failed = wait_until(refusals, 15.0, "3 failed connect attempts", 0.02, client.describe)
        refused += len(failed)
        connecting = client.status()["node"]["connecting"][0]
        failed.sort(key=lambda c: c["closed_at"])
        odd = [
            c
            for c in failed
            if (c["reason"], c["initiator"], c["errno"]) != ("refused", "remote", "ECONNREFUSED")
        ]
        first = odd[0] if odd else failed[0]
        observation = Observation(
            rep, first["reason"], first["initiator"], first["errno"], first["detail"] or ""
        )
        if connecting["last_reason"] != "refused" or connecting["failures"] < 3:
            observation.problems.append(f"client's connecting status: {connecting}")
        times = [c["closed_at"] for c in failed]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for shorter, longer in itertools.pairwise(gaps):
            ratio = longer / shorter
            ratios.append(ratio)
            # Each delay doubles, less up to half of it: the next gap is 1 to 4 times the last.
            if not 0.95 <= ratio <= 4.2:
                observation.problems.append(f"backoff gaps {gaps}: ratio {ratio:.2f} outside [1, 4]")

        server = pair.start_server()
        server.process.wait_for_log(r"listening on tcp:", START_TIMEOUT)
        # Listening began at most the time of one poll of the log ago.
        listening = time.time()
        failures = client.status()["node"]["connecting"][0]["failures"]
        _, on_client = pair.wait_pair(client)
        observation.seconds = on_client["opened_at"] - listening
        # The pending delay is at most initial * 2 ** (failures - 1); one more doubling of slack
        # covers an attempt that started just before the server listened and was refused.
        bound = 0.5 * 2 ** max(0, failures) + UPPER_EPSILON
        if not observation.seconds <= bound:
            observation.problems.append(
                f"reconnected {observation.seconds:.2f} s after the server listened; bound {bound:.2f} s"
            )
        run.observations.append(observation)
    if ratios and all(abs(ratio - 2.0) < 0.02 for ratio in ratios):
        run.problems.append(f"no jitter: every backoff ratio is 2 ({ratios})")
    if ratios:
        run.notes.append(
            f"{refused} connects refused; each gap between them {min(ratios):.2f} to "
            f"{max(ratios):.2f} times the one before"
        )
    return run


def loss_soak(percent: float) -> Scenario:
    """Requests every 0.1 s while ``percent`` % of the client's packets are dropped both ways."""

    def scenario(lab: Lab, repeat: int) -> Run:
        pair = ClientServerPair(lab)
        server = pair.start_server()
        client = pair.start_client("client", interval=0.1)
        soak = soak_seconds()
        answers: list[int] = []
        failures = 0
        run = Run()
        for rep in range(1, repeat + 1):
            # The same connection from one repetition to the next, unless one ended.
            on_server, on_client = pair.wait_pair(client)
            log_mark = len(client.process.log)
            pair.client_host.loss(percent)
            started = time.monotonic()
            closed: dict[str, Any] | None = None
            try:
                # The soak itself: look at both records twice a second until it is over.
                while closed is None and time.monotonic() - started < soak:
                    time.sleep(0.5)
                    for node, record in ((server, on_server), (client, on_client)):
                        now = node.record(record["id"])
                        if now is not None and now["state"] != "open":
                            closed = now
            finally:
                pair.client_host.heal()
            after = client.record(on_client["id"]) or on_client
            # Responses (and the odd PONG) the client received during the soak.
            answered = after["messages_in"] - on_client["messages_in"]
            # The echo client logs each request that failed (timed out, or its connection ended).
            failed = len(re.findall(r"request to \S+ failed", client.process.log[log_mark:]))
            if closed is None:
                observation = Observation(rep, None)
            else:
                observation = Observation.of_record(rep, closed, 0.0)
                observation.seconds = None
            answers.append(answered)
            failures += failed
            if failed:
                observation.problems.append(f"{failed} requests failed")
            expected = soak / 0.1
            if answered < expected * 0.5:
                observation.problems.append(
                    f"only {answered} messages received in {soak:g} s (about {expected:.0f} requests sent)"
                )
            run.observations.append(observation)
        run.notes.append(
            f"messages received by the client per {soak:g} s soak: {', '.join(map(str, answers))} "
            f"(a request sent every 0.1 s); {failures} requests failed"
        )
        return run

    return scenario


def _blackhole(direction: str) -> Callable[[ClientServerPair, LabNode], None]:
    return lambda pair, client: pair.client_host.blackhole(direction)


def _heal(pair: ClientServerPair, client: LabNode) -> None:
    pair.client_host.heal()


def _freeze(pair: ClientServerPair, client: LabNode) -> None:
    client.process.sigstop()


def _thaw(pair: ClientServerPair, client: LabNode) -> None:
    client.process.sigcont()


def _link_down(pair: ClientServerPair, client: LabNode) -> None:
    pair.client_host.link_down()


def _link_up(pair: ClientServerPair, client: LabNode) -> None:
    pair.client_host.link_up()


# --- the matrix ------------------------------------------------------------------------

_KEEPALIVE_WINDOW = Window(INTERVAL * PROBES - LOWER_EPSILON, BOUND + UPPER_EPSILON)
_KEEPALIVE_BOUND = (
    f"{INTERVAL * PROBES - LOWER_EPSILON:.1f} to {BOUND + UPPER_EPSILON:.1f} (the keepalive window)"
)
#: What most rows measure.
FROM_FAULT = "fault injected → observer's record closed"

FAULTS: list[Fault] = [
    Fault(
        "sigkill-idle",
        "peer SIGKILL, idle",
        "client-server",
        "tcp",
        "server",
        "clean",
        "remote",
        None,
        Window(0.0, IMMEDIATE),
        FROM_FAULT,
        f"≤ {IMMEDIATE:g}",
        peer_sigkill_idle,
        wire="The dead process's kernel closes its sockets: with nothing unread it sends a FIN.",
    ),
    Fault(
        "sigkill-unread",
        "peer SIGKILL with unread data",
        "client-server",
        "tcp",
        "client",
        "reset",
        "remote",
        "ECONNRESET",
        Window(0.0, IMMEDIATE),
        FROM_FAULT,
        f"≤ {IMMEDIATE:g}",
        peer_sigkill_unread,
        wire="A socket closed with data still in its receive queue is reset: the kernel sends RST.",
    ),
    Fault(
        "blackhole-both",
        "peer blackholed both ways, idle",
        "client-server",
        "tcp",
        "server",
        "timeout",
        "local",
        None,
        _KEEPALIVE_WINDOW,
        FROM_FAULT,
        _KEEPALIVE_BOUND,
        heal_after(_blackhole("both"), _heal),
        wire="Nothing comes back, not even an error: only the probes going unanswered tell.",
    ),
    Fault(
        "blackhole-out",
        "peer's outbound blackholed",
        "client-server",
        "tcp",
        "server",
        "timeout",
        "local",
        None,
        _KEEPALIVE_WINDOW,
        FROM_FAULT,
        _KEEPALIVE_BOUND,
        heal_after(_blackhole("out"), _heal),
        wire="The server hears nothing and times out; its RST reaches the peer, which records reset.",
    ),
    Fault(
        "blackhole-in",
        "peer's inbound blackholed",
        "client-server",
        "tcp",
        "server",
        "reset",
        "remote",
        "ECONNRESET",
        _KEEPALIVE_WINDOW,
        FROM_FAULT,
        _KEEPALIVE_BOUND,
        heal_after(_blackhole("in"), _heal),
        wire="The peer hears nothing and times out; the RST it then sends reaches the server.",
    ),
    Fault(
        "reject-reset",
        "REJECT --reject-with tcp-reset at the peer",
        "client-server",
        "tcp",
        "server",
        "reset",
        "remote",
        "ECONNRESET",
        Window(0.0, IDLE + IMMEDIATE),
        FROM_FAULT,
        f"≤ {IDLE + IMMEDIATE:g} (idle + {IMMEDIATE:g}: the next probe draws the RST)",
        heal_after(lambda pair, client: pair.client_host.reject_tcp_reset(SERVICE_PORT), _heal),
        wire="The next segment the server sends (a probe, an answer) is answered by an RST.",
    ),
    Fault(
        "sigstop",
        "peer frozen (SIGSTOP, then SIGCONT)",
        "client-server",
        "tcp",
        "server",
        "timeout",
        "local",
        None,
        _KEEPALIVE_WINDOW,
        FROM_FAULT,
        _KEEPALIVE_BOUND,
        heal_after(_freeze, _thaw),
        wire="The frozen peer's kernel still ACKs data and answers kernel keepalive probes: only "
        "the application's PINGs go unanswered.",
    ),
    Fault(
        "link-down",
        "peer's link down",
        "client-server",
        "tcp",
        "server",
        "timeout",
        "local",
        None,
        _KEEPALIVE_WINDOW,
        FROM_FAULT,
        _KEEPALIVE_BOUND,
        heal_after(_link_down, _link_up),
        wire="Frames to the peer go nowhere; like a blackhole, silence is the only signal.",
    ),
    Fault(
        "refused",
        "connect refused (no server), then server restarted on the same port",
        "client-server",
        "tcp",
        "client",
        "refused",
        "remote",
        "ECONNREFUSED",
        None,
        "server listening → client reconnected",
        "≤ the pending backoff delay + 0.5; each gap 1 to 4 times the last, jittered",
        refused_then_restart,
        wire="A SYN to a port with no listener is answered by an RST: connect() fails with ECONNREFUSED.",
    ),
    Fault(
        "loss-10",
        "10 % random loss both ways, request every 0.1 s",
        "client-server",
        "tcp",
        "both",
        None,
        None,
        None,
        None,
        "— (soak)",
        "0 false timeouts",
        loss_soak(10.0),
        wire="TCP retransmits what is lost; keepalive must not mistake the delays for a dead peer.",
    ),
]

#: Topology/transport combinations the lab does not run yet (extension points).
PLANNED: list[tuple[str, str, str]] = [
    ("many-to-one", "tcp", "the same faults with N clients: only the faulty client's connection ends"),
    ("p2p", "tcp", "≥ 3 nodes: a killed peer is failed, a partitioned one suspect then alive after healing"),
    ("client-server", "udp", "peer gone or blackholed: only the application heartbeat detects it"),
]


def faults(topology: str | None = None, transport: str | None = None) -> list[Fault]:
    return [
        fault
        for fault in FAULTS
        if topology in (None, fault.topology) and transport in (None, fault.transport)
    ]


def fault(key: str) -> Fault:
    for candidate in FAULTS:
        if candidate.key == key:
            return candidate
    raise KeyError(key)
