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
import signal
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
#: Nodes of the p2p restart storm (peer-1 observes; the others are killed and restarted).
STORM_PEERS = 5
STATUS_PORT = 7001
#: Deadlines for the lab's own waits (not the windows under test).
START_TIMEOUT = 20.0
CLOSE_TIMEOUT = BOUND + 8.0
RECONNECT_TIMEOUT = 20.0
#: p2p: seconds from a connection's close until SWIM has its member dead at the observer: a
#: failed probe (1 s period), then the shortest suspicion of 5 periods once peer-3 confirms
#: it, with room for a busy machine.
SWIM_VIEW_BOUND = 15.0

REPEAT_ENV = "NETMODELS_LAB_REPEAT"
SOAK_ENV = "NETMODELS_LAB_SOAK"
SEED_ENV = "NETMODELS_LAB_SEED"

#: Picks where in the keepalive cycle each fault lands; seeded by NETMODELS_LAB_SEED if set.
_phases = random.Random(os.environ.get(SEED_ENV))


def repeat_count(default: int = 3) -> int:
    """Repetitions of each fault: ``NETMODELS_LAB_REPEAT`` (else ``default``; at least 1)."""
    try:
        return max(1, int(os.environ.get(REPEAT_ENV, str(default))))
    except ValueError:
        return default


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
    #: What a topology's own checks saw (``served``, ``view: dead``, ``rejoined``).
    notes: list[str] = field(default_factory=list)
    #: Whether the observer dialled the connection (``outbound``) or accepted it (``inbound``).
    direction: str | None = None
    #: ``(reason, initiator, errno, window)`` to match instead of the row's, where the row's
    #: rule depends on what else the scenario saw (see :func:`restart_storm`).
    expected: tuple[str, str, str | None, Window] | None = None

    @classmethod
    def of_record(cls, rep: int, record: dict[str, Any], since: float) -> Observation:
        return cls(
            rep,
            record["reason"],
            record["initiator"],
            record["errno"],
            record["detail"] or "",
            record["closed_at"] - since,
            direction=record["direction"],
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
        if self.notes:
            text += f"; {', '.join(self.notes)}"
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
    #: What the observer must record instead if it dialled the connection:
    #: ``(reason, initiator, errno, window)``. Over UDP only a dialler's connected
    #: socket hears the ICMP a dead peer's host sends back.
    dialled: tuple[str, str, str | None, Window] | None = None
    #: ``(reason, initiator, errno)`` the observer may record instead, in the
    #: same window: a race the wire decides (see the row's ``wire``).
    otherwise: tuple[str, str, str | None] | None = None

    def expected(self, observation: Observation) -> tuple[str | None, str | None, str | None, Window | None]:
        """The reason, initiator, errno and window ``observation`` must match."""
        if observation.expected is not None:
            return observation.expected
        if self.dialled is not None and observation.direction == "outbound":
            return self.dialled
        return self.reason, self.initiator, self.errno, self.window

    def check(self, observation: Observation) -> None:
        """Add to ``observation.problems`` what does not match this row."""
        reason, initiator, errno, window = self.expected(observation)
        if (
            self.otherwise is not None
            and observation.expected is None
            and (observation.reason, observation.initiator, observation.errno) == self.otherwise
        ):
            reason, initiator, errno = self.otherwise
        if observation.reason != reason:
            expected = "the connection to stay open" if reason is None else repr(reason)
            observation.problems.append(f"expected {expected}, observer recorded {observation.reason!r}")
        if reason is not None and observation.initiator != initiator:
            observation.problems.append(f"expected initiator {initiator}, got {observation.initiator}")
        if errno is not None and observation.errno != errno:
            observation.problems.append(f"expected errno {errno}, got {observation.errno}")
        if window is not None:
            if observation.seconds is None:
                observation.problems.append("no detection time measured")
            elif observation.seconds not in window:
                observation.problems.append(
                    f"detected after {observation.seconds:.3f} s, outside the window [{window}] s"
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
        tally = Counter(note for observation in run.observations for note in observation.notes)
        run.notes[:0] = [f"{note}: {count}" for note, count in sorted(tally.items())]
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


def spawn_node(host: Host, node_id: str, args: Iterable[str], topology: str = "client-server") -> LabNode:
    """Start a node of ``topology`` and wait until its status endpoint answers."""
    node = launch_node(host, node_id, args, topology)
    wait_serving(node)
    return node


def launch_node(host: Host, node_id: str, args: Iterable[str], topology: str = "client-server") -> LabNode:
    """Start a node of ``topology`` (see :func:`wait_serving`)."""
    process = host.spawn_twistd(
        [
            "netmodels",
            "--topology",
            topology,
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
    return LabNode(host, node_id, process)


def wait_serving(node: LabNode) -> None:
    """Wait until ``node`` answers on its status endpoint."""
    process = node.process

    def up() -> bool:
        if not process.running:
            raise LabError(f"{node.node_id} exited ({process.popen.returncode}):\n{process.log_tail()}")
        return bool(node.status())

    wait_until(up, START_TIMEOUT, f"{node.node_id} to serve its status", 0.02)


class Cluster:
    """
    The nodes of one topology in a lab, as the fault scenarios see them: an
    *observer* whose record of its connection to the *faulty* node is read,
    the faulty node, in :attr:`faulty_host` where faults are injected, and
    (:meth:`check_fault`, :meth:`check_healed`) what else a topology must
    show while the fault lasts and once it is healed.

    Every node runs over :attr:`transport` (``--transport``), with
    ``--delivery`` :attr:`delivery` if given (``None``: the application's
    default).
    """

    faulty_host: Host
    #: Whether :meth:`delivered` must come in the order sent (one path; p2p floods take several).
    ordered = True
    #: The number every receiver's messages start from (``None``: a receiver may join late).
    first: int | None = None

    def __init__(self, lab: Lab, transport: str = "tcp", delivery: str | None = None) -> None:
        self.lab = lab
        self.transport = transport
        self.delivery = delivery

    def start(self, interval: float = 0.0) -> tuple[LabNode, LabNode]:
        """Start the nodes, the faulty one sending every ``interval`` s (0: idle); ``(observer, faulty)``."""
        raise NotImplementedError

    def link(
        self, exclude: tuple[set[int], set[int]] = (set(), set())
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The connection between observer and faulty node, open on both sides: their records."""
        raise NotImplementedError

    def restart_faulty(self) -> LabNode:
        """Start the faulty node again (after a SIGKILL)."""
        raise NotImplementedError

    def before_fault(self) -> None:
        """Called with the link ready, just before the fault is injected."""

    def check_fault(self, observation: Observation) -> None:
        """Called once the observer recorded the close, before healing."""

    def check_healed(self, observation: Observation) -> None:
        """Called once the link is back."""

    def delivered(self) -> dict[str, list[int]]:
        """What each receiver logged of the faulty node's numbered messages (sent every ``interval``)."""
        raise NotImplementedError

    def failures(self) -> int:
        """How many of the faulty node's requests failed (timed out, or their connection ended)."""
        return 0

    # Endpoints and command lines

    def listen(self, host: Host) -> list[str]:
        return ["--listen", f"{self.transport}:{SERVICE_PORT}:interface={host.address}"]

    def connect(self, host: Host) -> list[str]:
        return ["--connect", f"{self.transport}:{host.address}:{SERVICE_PORT}"]

    def spawn(self, host: Host, node_id: str, args: Iterable[str], topology: str) -> LabNode:
        """Start ``node_id`` in ``host`` with this cluster's transport and delivery."""
        extra = ["--transport", self.transport]
        if self.delivery is not None:
            extra += ["--delivery", self.delivery]
        return spawn_node(host, node_id, [*args, *extra], topology)


def numbers(pattern: str, log: str) -> list[int]:
    """The first group of each match of ``pattern`` in ``log``, as integers, in order."""
    return [int(number) for number in re.findall(pattern, log)]


class ClientServerPair(Cluster):
    """
    The client-server topology: the server in host 1, clients in host 2
    (faulty; the server observes). The echo client sends a request every
    ``interval`` seconds (``client_interval`` when restarted) and logs each
    answer.
    """

    server_id = "server"
    # Requests are numbered from 1 only once the client is connected.
    first = 1

    def __init__(
        self, lab: Lab, transport: str = "tcp", delivery: str | None = None, client_interval: float = 0.0
    ) -> None:
        super().__init__(lab, transport, delivery)
        self.client_interval = client_interval
        self.server_host, self.client_host = lab.hosts[0], lab.hosts[1]
        self.faulty_host = self.client_host
        self.server: LabNode | None = None
        self.clients: list[LabNode] = []

    def start(self, interval: float = 0.0) -> tuple[LabNode, LabNode]:
        return self.start_server(), self.start_client("client", interval or self.client_interval)

    def start_clients(self) -> LabNode:
        """Start the client only (no server yet); it is the one observed."""
        return self.start_client("client", self.client_interval)

    def restart_faulty(self) -> LabNode:
        return self.start_client("client", self.client_interval)

    def link(
        self, exclude: tuple[set[int], set[int]] = (set(), set())
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.wait_pair(self.clients[-1], exclude)

    def start_server(self) -> LabNode:
        self.server = self.spawn(
            self.server_host,
            self.server_id,
            ["--role", "server", *self.listen(self.server_host)],
            "client-server",
        )
        return self.server

    def start_client(self, node_id: str = "client", interval: float = 0.0) -> LabNode:
        args = ["--role", "client", *self.connect(self.server_host), "--interval", f"{interval:g}"]
        client = self.spawn(self.client_host, node_id, args, "client-server")
        self.clients.append(client)
        return client

    def delivered(self) -> dict[str, list[int]]:
        # The echo client logs "answered 'hello N'" for each answer to its request N.
        client = self.clients[-1]
        return {client.node_id: numbers(r"answered 'hello (\d+)'", client.process.log)}

    def failures(self) -> int:
        return len(re.findall(r"request to \S+ failed", self.clients[-1].process.log))

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


class ManyToOneGroup(Cluster):
    """
    many-to-one: the server in host 1, the faulty client in host 2, and two
    bystander clients in hosts 3 and 4, all idle unless the faulty client
    is told to chat. While one client is faulted, the server must go on
    serving the others: their connections stay the same and open, and keep
    exchanging messages.
    """

    server_id = "server"
    faulty_id = "client-a"
    bystander_ids = ("client-b", "client-c")

    def __init__(self, lab: Lab, transport: str = "tcp") -> None:
        super().__init__(lab, transport)
        self.server_host, self.faulty_host = lab.hosts[0], lab.hosts[1]
        self.bystander_hosts = lab.hosts[2:4]
        self.server: LabNode | None = None
        self.faulty: LabNode | None = None
        self.bystanders: list[LabNode] = []
        self.interval = 0.0
        self._before: dict[str, dict[str, Any]] = {}

    def _client(self, host: Host, node_id: str, interval: float = 0.0) -> LabNode:
        args = ["--role", "client", *self.connect(self.server_host), "--interval", f"{interval:g}"]
        return self.spawn(host, node_id, args, "many-to-one")

    def start_server(self) -> LabNode:
        self.server = self.spawn(
            self.server_host,
            self.server_id,
            ["--role", "server", *self.listen(self.server_host)],
            "many-to-one",
        )
        return self.server

    def start_clients(self) -> LabNode:
        """Start the three clients (the faulty one last, and observed); no server yet."""
        self.bystanders = [
            self._client(host, node_id)
            for host, node_id in zip(self.bystander_hosts, self.bystander_ids, strict=True)
        ]
        return self.restart_faulty()

    def start(self, interval: float = 0.0) -> tuple[LabNode, LabNode]:
        self.interval = interval
        server = self.start_server()
        return server, self.start_clients()

    def restart_faulty(self) -> LabNode:
        self.faulty = self._client(self.faulty_host, self.faulty_id, self.interval)
        return self.faulty

    def delivered(self) -> dict[str, list[int]]:
        # A chat client says "hello from <id> #n"; the others log it as "[<them>] <id>: hello from <id> #n".
        pattern = rf"\] {self.faulty_id}: hello from {self.faulty_id} #(\d+)"
        return {node.node_id: numbers(pattern, node.process.log) for node in self.bystanders}

    def link(
        self, exclude: tuple[set[int], set[int]] = (set(), set())
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        server, faulty = self.server, self.faulty
        assert server is not None and faulty is not None

        def ready() -> tuple[dict[str, Any], dict[str, Any]] | None:
            on_faulty = faulty.open_to(server.node_id, exclude[1])
            on_server = server.open_to(faulty.node_id, exclude[0])
            bystanders = all(server.open_to(node_id) for node_id in self.bystander_ids)
            return (on_server, on_faulty) if on_server and on_faulty and bystanders else None

        return wait_until(
            ready,
            RECONNECT_TIMEOUT,
            "every client to have an open connection to the server",
            0.01,
            server.describe,
        )

    def before_fault(self) -> None:
        server = self.server
        assert server is not None
        self._before = {}
        for node_id in self.bystander_ids:
            record = server.open_to(node_id)
            assert record is not None, f"{node_id} not connected before the fault"
            self._before[node_id] = record

    def check_fault(self, observation: Observation) -> None:
        """The bystanders' connections are the same, open, and still exchanging messages."""
        server = self.server
        assert server is not None

        def served() -> bool:
            for before in self._before.values():
                now = server.record(before["id"])
                if now is None or now["state"] != "open" or now["messages_in"] <= before["messages_in"]:
                    return False
            return True

        try:
            wait_until(served, BOUND, "the other clients to keep being served", 0.05)
        except AssertionError:
            now = {node_id: server.record(before["id"]) for node_id, before in self._before.items()}
            observation.problems.append(
                f"the other clients were not served: before {self._before}, now {now}"
            )
            return
        observation.notes.append("served")


class P2PMesh(Cluster):
    """
    p2p, three nodes in hosts 1 to 3 (``peer-1`` .. ``peer-3``), meshed
    from ``peer-1``'s endpoint. ``peer-2`` is faulted; ``peer-1``
    observes. Once the fault is detected, ``peer-1``'s membership view must
    show ``peer-2`` as :attr:`expected_state` (``dead`` when it failed,
    ``left`` when it said BYE) while the link between ``peer-1`` and
    ``peer-3`` stays up; once healed, ``peer-2`` must rejoin (alive again).
    """

    ids = ("peer-1", "peer-2", "peer-3")
    # peer-2's broadcasts reach peer-1 directly and through peer-3: either copy may come first.
    ordered = False

    def __init__(self, lab: Lab, expected_state: str = "dead", transport: str = "tcp") -> None:
        super().__init__(lab, transport)
        self.expected_state = expected_state
        self.faulty_host = lab.hosts[1]
        self.nodes: list[LabNode] = []
        self.interval = 0.0
        self._witness: dict[str, Any] | None = None

    def _spawn(self, index: int) -> LabNode:
        host = self.lab.hosts[index]
        interval = self.interval if index == 1 else 0.0
        args = ["--role", "peer", *self.listen(host), "--interval", f"{interval:g}"]
        if index:
            args += self.connect(self.lab.hosts[0])
        return self.spawn(host, self.ids[index], args, "p2p")

    def start(self, interval: float = 0.0) -> tuple[LabNode, LabNode]:
        self.interval = interval
        self.nodes = [self._spawn(index) for index in range(3)]
        return self.nodes[0], self.nodes[1]

    def restart_faulty(self) -> LabNode:
        self.nodes[1] = self._spawn(1)
        return self.nodes[1]

    def delivered(self) -> dict[str, list[int]]:
        # A broadcast node floods "hello #n from <id>"; the others log each once.
        pattern = rf"hello #(\d+) from {self.ids[1]}\b"
        return {
            node.node_id: numbers(pattern, node.process.log)
            for node in self.nodes
            if node is not self.nodes[1]
        }

    def member(self, node: LabNode, peer_id: str) -> dict[str, Any] | None:
        return next((m for m in node.status().get("peers", []) if m["id"] == peer_id), None)

    def link(
        self, exclude: tuple[set[int], set[int]] = (set(), set())
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        observer, faulty, witness = self.nodes

        def single(node: LabNode, peer_id: str, skip: Iterable[int] = ()) -> dict[str, Any] | None:
            skipped = set(skip)
            links = [c for c in node.connections() if c["state"] == "open" and c["peer_id"] == peer_id]
            member = self.member(node, peer_id)
            if len(links) != 1 or links[0]["id"] in skipped or not member or member["state"] != "alive":
                return None
            return links[0]

        def settling(node: LabNode, other: LabNode) -> bool:
            # A connection to or from the other node still under way may end as a
            # duplicate of the link seen open, and deduplication may close either one.
            # Its peer id is unknown before the HELLO: a dial names the member dialled
            # or the endpoint, a connection the address it came from.
            address = re.compile(rf"(^|[:=]){re.escape(other.host.address)}(:|$)")
            return any(
                c["state"] in ("connecting", "handshaking")
                and (c["peer"] == other.node_id or address.search(c["peer"]) is not None)
                for c in node.connections()
            )

        def meshed() -> tuple[dict[str, Any], dict[str, Any]] | None:
            on_observer = single(observer, faulty.node_id, exclude[0])
            on_faulty = single(faulty, observer.node_id, exclude[1])
            ok = (
                on_observer
                and on_faulty
                # Both ends' records are of one connection: the dialler's outbound, the other's inbound.
                and on_observer["direction"] != on_faulty["direction"]
                and not settling(observer, faulty)
                and not settling(faulty, observer)
                and single(observer, witness.node_id)
            )
            return (on_observer, on_faulty) if ok else None  # type: ignore[return-value]

        return wait_until(
            meshed,
            RECONNECT_TIMEOUT,
            "the three peers to be meshed",
            0.02,
            lambda: f"{observer.describe()}\n{faulty.describe()}",
        )

    def before_fault(self) -> None:
        self._witness = self.nodes[0].open_to(self.ids[2])

    def check_fault(self, observation: Observation) -> None:
        observer = self.nodes[0]
        faulty_id = self.ids[1]

        def marked() -> dict[str, Any] | None:
            # SWIM (the default membership): the link is down at once; the member is
            # suspect first, and dead once its suspicion runs out (left: at once).
            member = self.member(observer, faulty_id)
            marked = member and member["state"] == self.expected_state and not member["connected"]
            return member if marked else None

        try:
            member = wait_until(marked, SWIM_VIEW_BOUND, f"{faulty_id} {self.expected_state} at peer-1", 0.02)
        except AssertionError:
            observation.problems.append(f"view of peer-1: {self.member(observer, faulty_id)}")
            return
        observation.notes.append(f"view: {member['state']}")
        if member["state"] != self.expected_state:
            observation.problems.append(
                f"peer-1 sees {faulty_id} {member['state']}, expected {self.expected_state}"
            )
        witness = self._witness
        now = None if witness is None else observer.record(witness["id"])
        if now is None or now["state"] != "open":
            observation.problems.append(f"the link peer-1 -- peer-3 did not stay up: {now}")

    def check_healed(self, observation: Observation) -> None:
        member = self.member(self.nodes[0], self.ids[1])
        if not member or member["state"] != "alive":
            observation.problems.append(f"{self.ids[1]} did not rejoin: {member}")
        else:
            observation.notes.append("rejoined")


def stop(nodes: Cluster, faulty: LabNode) -> None:
    faulty.process.terminate()


def kill(nodes: Cluster, faulty: LabNode) -> None:
    faulty.process.sigkill()


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


Inject = Callable[[Cluster, LabNode], None]


def heal_after(
    inject: Inject,
    heal: Inject,
    interval: float = 0.0,
    cluster: Callable[[Lab], Cluster] = ClientServerPair,
) -> Scenario:
    """
    A scenario: with the faulty node (the client) connected and idle,
    ``inject`` the fault, wait for the observer (the server) to record the
    close, ``heal``, and wait for the link to come back; repeat. The other
    side's record is kept too, and the cluster checks what else its
    topology must show.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        nodes = cluster(lab)
        observer, faulty = nodes.start(interval)
        run = Run()
        seen: tuple[set[int], set[int]] = (set(), set())
        for rep in range(1, repeat + 1):
            on_observer, on_faulty = nodes.link(seen)
            seen[0].add(on_observer["id"])
            seen[1].add(on_faulty["id"])
            nodes.before_fault()
            # Land the fault at a random point of the keepalive cycle (both
            # sides probe once a second when idle), so that the whole window is
            # exercised, not only its upper end. Not a wait for an outcome.
            phase = _phases.uniform(0.0, IDLE)
            time.sleep(phase)
            injected = time.time()
            inject(nodes, faulty)
            try:
                observation = Observation.of_record(rep, observer.wait_closed(on_observer["id"]), injected)
                nodes.check_fault(observation)
            finally:
                healed = time.time()
                heal(nodes, faulty)
            observation.other = _other_side(faulty, on_faulty["id"])
            _, again = nodes.link(seen)
            observation.reconnect = again["opened_at"] - healed
            observation.phase = phase
            nodes.check_healed(observation)
            run.observations.append(observation)
        return run

    return scenario


def written_then_reset(observation: Observation, before: dict[str, Any], record: dict[str, Any]) -> None:
    """
    A socket closed with data unread sends RST, not FIN, however its process
    ended. If the observer wrote to the connection after ``before`` was read
    (gossip, a probe), the peer may have died with that unread: then
    ``reset`` at once is what the wire showed, and what ``observation`` must
    match instead of its row's reason.
    """
    if record["reason"] == "reset" and record["bytes_out"] > before["bytes_out"]:
        observation.expected = ("reset", "remote", "ECONNRESET", Window(0.0, IMMEDIATE))
        observation.notes.append("reset: it died with what the observer wrote unread")


def restart_after(stop: Inject, cluster: Callable[[Lab], Cluster]) -> Scenario:
    """
    A scenario: ``stop`` the faulty node while its link is idle (SIGKILL:
    nothing is unread, so its kernel sends FIN; SIGTERM: it says BYE), wait
    for the observer's record, start the node again and wait for the link to
    come back; repeat.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        nodes = cluster(lab)
        observer, faulty = nodes.start()
        run = Run()
        seen: tuple[set[int], set[int]] = (set(), set())
        for rep in range(1, repeat + 1):
            on_observer, _ = nodes.link(seen)
            seen[0].add(on_observer["id"])
            nodes.before_fault()
            killed = time.time()
            stop(nodes, faulty)
            record = observer.wait_closed(on_observer["id"])
            observation = Observation.of_record(rep, record, killed)
            written_then_reset(observation, on_observer, record)
            nodes.check_fault(observation)
            restarted = time.time()
            faulty = nodes.restart_faulty()
            _, again = nodes.link(seen)
            observation.reconnect = again["opened_at"] - restarted
            nodes.check_healed(observation)
            run.observations.append(observation)
        return run

    return scenario


#: The clusters with one server and clients: what a refused connect needs.
ServedCluster = ClientServerPair | ManyToOneGroup


#: Refused connects per repetition: 3 ratios between their gaps. A jittered ratio
#: is within 0.02 of 2 about 3 % of the time, so one alone would cry "no jitter" in
#: 3 % of runs; three together, in 0.003 %.
REFUSALS = 5


def refused_then_restart(cluster: Callable[[Lab], ServedCluster] = ClientServerPair) -> Scenario:
    """
    No server: the observed client's connects are refused, with a growing,
    jittered backoff; start the server on the same port and the client
    reconnects within its next delay (with every other client). Then SIGKILL
    the server and do it again.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        return _refused_then_restart(cluster(lab), repeat)

    return scenario


def _refused_then_restart(pair: ServedCluster, repeat: int) -> Run:
    client = pair.start_clients()
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
            return failed if len(failed) >= REFUSALS else None

        failed = wait_until(refusals, 15.0, f"{REFUSALS} failed connect attempts", 0.02, client.describe)
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
        server.process.wait_for_log(rf"listening on {pair.transport}:", START_TIMEOUT)
        # Listening began at most the time of one poll of the log ago.
        listening = time.time()
        failures = client.status()["node"]["connecting"][0]["failures"]
        _, on_client = pair.link()
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


def restart_storm(peers: int) -> Scenario:
    """
    p2p over TCP with ``peers`` idle nodes in hosts 1 to ``peers``, meshed
    from ``peer-1``. SIGKILL every node but ``peer-1`` at once: ``peer-1``
    must record each of its links closed by the peer within
    :data:`IMMEDIATE` -- ``clean`` (the dead kernel's FIN) unless ``peer-1``
    wrote to that link after the kill (its gossip about the first deaths),
    which may also draw an RST (``reset``) from a socket closed with it
    unread. Restart them all at once: the whole mesh must come back -- exactly
    one open connection per pair, every member alive in every view, and in
    ``peer-1``'s with a newer incarnation -- however the simultaneous dials race; the
    duplicates they resolve are counted. One observation per link.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        mesh = P2PMesh(lab)
        ids = [f"peer-{index}" for index in range(1, peers + 1)]

        def launch(index: int) -> LabNode:
            host = lab.hosts[index]
            # Idle (no broadcasts), so that nothing is unread when the peers die.
            args = [*mesh.listen(host), "--role", "peer", "--interval", "0", "--max-peers", str(peers)]
            if index:
                args += mesh.connect(lab.hosts[0])
            return launch_node(host, ids[index], args, "p2p")

        def start(indexes: range) -> list[LabNode]:
            started = [launch(index) for index in indexes]
            for node in started:
                wait_serving(node)
            return started

        def meshed() -> float | None:
            # The time the last link of a whole mesh opened; None until every pair has one.
            latest = 0.0
            for node in nodes:
                views = {m["id"]: m for m in node.status().get("peers", [])}
                for other in ids:
                    if other == node.node_id:
                        continue
                    links = [c for c in node.connections() if c["state"] == "open" and c["peer_id"] == other]
                    member = views.get(other)
                    if len(links) != 1 or not member or member["state"] != "alive":
                        return None
                    latest = max(latest, links[0]["opened_at"])
            return latest

        def describe() -> str:
            return "\n".join(node.describe() for node in nodes)

        nodes = start(range(peers))
        run = Run()
        for rep in range(1, repeat + 1):
            wait_until(meshed, RECONNECT_TIMEOUT, f"{peers} peers to be fully meshed", 0.05, describe)
            observer = nodes[0]
            links = [c for c in observer.connections() if c["state"] == "open"]
            killed = time.time()
            # Every signal first, then the reaping, so that the peers die together.
            for node in nodes[1:]:
                node.process.signal(signal.SIGKILL)
            for node in nodes[1:]:
                node.process.wait(5.0)
            incarnations = {m["id"]: m["incarnation"] for m in observer.status().get("peers", [])}
            for before in links:
                record = observer.wait_closed(before["id"])
                observation = Observation.of_record(rep, record, killed)
                written_then_reset(observation, before, record)
                run.observations.append(observation)
            restarted = time.time()
            nodes[1:] = start(range(1, peers))
            latest = wait_until(meshed, RECONNECT_TIMEOUT, "the mesh to come back", 0.05, describe)
            # Back before SWIM's suspicion of the old ones ran out: a newer incarnation replaced each.
            after = {m["id"]: m["incarnation"] for m in observer.status().get("peers", [])}
            stale = sorted(i for i in ids[1:] if after.get(i, 0) <= incarnations.get(i, 0))
            if stale:
                run.observations[-1].problems.append(f"peer-1 holds an old incarnation of {stale}")
            duplicates = sum(
                1
                for node in nodes
                for c in node.connections()
                if "duplicate connection" in (c["detail"] or "") and (c["closed_at"] or 0) >= restarted
            )
            for observation in run.observations[-len(links) :]:
                observation.reconnect = latest - restarted
            run.notes.append(
                f"repetition {rep}: whole mesh back {latest - restarted:.2f} s after the restart, "
                f"{duplicates} duplicate connections closed"
            )
        return run

    return scenario


#: How often the faulty node sends a numbered message during a soak.
SEND_INTERVAL = 0.1


def gaps(received: list[int], ordered: bool, first: int | None = None) -> str | None:
    """``None`` if ``received`` holds a run of consecutive numbers (from ``first`` if given),
    each once (and in order if ``ordered``); else what is wrong."""
    if not received:
        return "nothing received"
    if first is not None and min(received) != first:
        return f"the first message received is {min(received)}, not {first}"
    if ordered:
        for index, (before, after) in enumerate(itertools.pairwise(received), start=1):
            if after != before + 1:
                nearby = received[max(0, index - 4) : index + 4]
                return f"message {after} came after {before} (around it: {nearby})"
        return None
    missing = sorted(set(range(min(received), max(received) + 1)) - set(received))
    repeated = sorted(n for n, count in Counter(received).items() if count > 1)
    if missing or repeated:
        return f"missing {missing[:10]}, repeated {repeated[:10]}"
    return None


def loss_soak(percent: float, cluster: Callable[[Lab], Cluster] = ClientServerPair) -> Scenario:
    """
    The faulty node sends a numbered message every :data:`SEND_INTERVAL` s
    (client-server: an echo request; many-to-one: a chat line to the other
    clients; p2p: a broadcast) while ``percent`` % of its packets are
    dropped both ways, for a soak of several keepalive bounds. No false
    death on either side, no request fails, and every receiver gets every
    message once (in order, where there is one path), none missing: the
    transport's retransmissions hide the loss from the keepalive.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        nodes = cluster(lab)
        observer, faulty = nodes.start(SEND_INTERVAL)
        soak = soak_seconds()
        run = Run()
        counts: list[str] = []
        for rep in range(1, repeat + 1):
            # The same connection from one repetition to the next, unless one ended.
            on_observer, on_faulty = nodes.link()
            before = {receiver: len(seen) for receiver, seen in nodes.delivered().items()}
            failed_before = nodes.failures()
            nodes.faulty_host.loss(percent)
            started = time.monotonic()
            closed: dict[str, Any] | None = None
            try:
                # The soak itself: look at both records twice a second until it is over.
                while closed is None and time.monotonic() - started < soak:
                    time.sleep(0.5)
                    for node, record in ((observer, on_observer), (faulty, on_faulty)):
                        now = node.record(record["id"])
                        if now is not None and now["state"] != "open":
                            closed = now
            finally:
                nodes.faulty_host.heal()

            # Once healed, what was being retransmitted gets through: a few more messages each.
            def caught_up(before: dict[str, int] = before) -> bool:
                return all(len(seen) >= before[r] + 5 for r, seen in nodes.delivered().items())

            if closed is None:
                wait_until(caught_up, BOUND, "every receiver to get messages again after healing", 0.05)
            observation = (
                Observation(rep, None) if closed is None else Observation.of_record(rep, closed, 0.0)
            )
            observation.seconds = None
            failed = nodes.failures() - failed_before
            if failed:
                observation.problems.append(f"{failed} requests failed")
            during = []
            for receiver, seen in nodes.delivered().items():
                wrong = gaps(seen, nodes.ordered, nodes.first)
                if wrong:
                    observation.problems.append(f"{receiver}: {wrong}")
                during.append(len(seen) - before[receiver])
            expected = soak / SEND_INTERVAL
            if min(during) < expected * 0.5:
                observation.problems.append(
                    f"only {min(during)} messages received in {soak:g} s (about {expected:.0f} sent)"
                )
            stats = (faulty.record(on_faulty["id"]) or on_faulty).get("datagram")
            resent = f", {stats.get('retransmissions', 0)} retransmitted" if stats else ""
            counts.append(f"{min(during)}{resent}")
            run.observations.append(observation)
        run.notes.append(
            f"messages received per {soak:g} s soak at {percent:g} % loss (one sent every "
            f"{SEND_INTERVAL:g} s), fewest over the receivers: "
            + "; ".join(counts)
            + "; each once, none missing"
        )
        return run

    return scenario


def blackhole(direction: str) -> Inject:
    return lambda nodes, faulty: nodes.faulty_host.blackhole(direction)


def heal(nodes: Cluster, faulty: LabNode) -> None:
    nodes.faulty_host.heal()


def reject_reset(nodes: Cluster, faulty: LabNode) -> None:
    nodes.faulty_host.reject_tcp_reset(SERVICE_PORT)


def freeze(nodes: Cluster, faulty: LabNode) -> None:
    faulty.process.sigstop()


def thaw(nodes: Cluster, faulty: LabNode) -> None:
    faulty.process.sigcont()


def link_down(nodes: Cluster, faulty: LabNode) -> None:
    nodes.faulty_host.link_down()


def link_up(nodes: Cluster, faulty: LabNode) -> None:
    nodes.faulty_host.link_up()


# --- the matrix ------------------------------------------------------------------------

KEEPALIVE_WINDOW = Window(INTERVAL * PROBES - LOWER_EPSILON, BOUND + UPPER_EPSILON)
KEEPALIVE_BOUND = (
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
        KEEPALIVE_WINDOW,
        FROM_FAULT,
        KEEPALIVE_BOUND,
        heal_after(blackhole("both"), heal),
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
        KEEPALIVE_WINDOW,
        FROM_FAULT,
        KEEPALIVE_BOUND,
        heal_after(blackhole("out"), heal),
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
        KEEPALIVE_WINDOW,
        FROM_FAULT,
        KEEPALIVE_BOUND,
        heal_after(blackhole("in"), heal),
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
        heal_after(reject_reset, heal),
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
        KEEPALIVE_WINDOW,
        FROM_FAULT,
        KEEPALIVE_BOUND,
        heal_after(freeze, thaw),
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
        KEEPALIVE_WINDOW,
        FROM_FAULT,
        KEEPALIVE_BOUND,
        heal_after(link_down, link_up),
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
        refused_then_restart(),
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
        "0 false timeouts; every request answered once, in order",
        loss_soak(10.0),
        wire="TCP retransmits what is lost; keepalive must not mistake the delays for a dead peer.",
    ),
]


def row(
    key: str,
    title: str,
    topology: str,
    reason: str | None,
    initiator: str | None,
    errno: str | None,
    window: Window | None,
    bound: str,
    scenario: Scenario,
    hosts: int,
    wire: str,
    transport: str = "tcp",
    observer: str | None = None,
    measures: str = FROM_FAULT,
    dialled: tuple[str, str, str | None, Window] | None = None,
    otherwise: tuple[str, str, str | None] | None = None,
) -> Fault:
    """A row of a topology other than client-server (observer: the server, or peer-1)."""
    if observer is None:
        observer = "server" if topology == "many-to-one" else "peer-1"
    return Fault(
        key,
        title,
        topology,
        transport,
        observer,
        reason,
        initiator,
        errno,
        window,
        measures,
        bound,
        scenario,
        hosts=hosts,
        wire=wire,
        dialled=dialled,
        otherwise=otherwise,
    )


_M2O = "many-to-one"
_SERVED = " The other two clients keep being served."
_VIEW = " SWIM: peer-1 marks peer-2 {state} while its link to peer-3 stays up; peer-2 rejoins after {heal}."

FAULTS += [
    row(
        "m2o-sigkill-idle",
        "client SIGKILL, idle",
        _M2O,
        "clean",
        "remote",
        None,
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        restart_after(kill, ManyToOneGroup),
        4,
        "As client-server: the dead client's kernel sends FIN." + _SERVED,
    ),
    row(
        "m2o-blackhole-both",
        "client blackholed both ways, idle",
        _M2O,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("both"), heal, cluster=ManyToOneGroup),
        4,
        "Only the server's unanswered probes tell." + _SERVED,
    ),
    row(
        "m2o-reject-reset",
        "REJECT --reject-with tcp-reset at the client",
        _M2O,
        "reset",
        "remote",
        "ECONNRESET",
        Window(0.0, IDLE + IMMEDIATE),
        f"≤ {IDLE + IMMEDIATE:g}",
        heal_after(reject_reset, heal, cluster=ManyToOneGroup),
        4,
        "The next segment the server sends that client draws an RST." + _SERVED,
    ),
    row(
        "m2o-sigstop",
        "client frozen (SIGSTOP, then SIGCONT)",
        _M2O,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(freeze, thaw, cluster=ManyToOneGroup),
        4,
        "Only the application PINGs go unanswered." + _SERVED,
    ),
    row(
        "p2p-sigterm",
        "peer stops (SIGTERM: BYE, then FIN)",
        "p2p",
        "clean",
        "remote",
        None,
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        restart_after(stop, lambda lab: P2PMesh(lab, "left")),
        3,
        "The stopping node says BYE to every peer." + _VIEW.format(state="left", heal="a restart"),
    ),
    row(
        "p2p-sigkill-idle",
        "peer SIGKILL, idle",
        "p2p",
        "clean",
        "remote",
        None,
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        restart_after(kill, P2PMesh),
        3,
        "FIN without a BYE: a crash, not a leave." + _VIEW.format(state="dead", heal="a restart"),
    ),
    row(
        "p2p-blackhole-both",
        "peer blackholed both ways (partition), idle",
        "p2p",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("both"), heal, cluster=P2PMesh),
        3,
        "Silence on every link of peer-2." + _VIEW.format(state="dead", heal="healing"),
    ),
    row(
        "p2p-reject-reset",
        "REJECT --reject-with tcp-reset at the peer",
        "p2p",
        "reset",
        "remote",
        "ECONNRESET",
        Window(0.0, IDLE + IMMEDIATE),
        f"≤ {IDLE + IMMEDIATE:g}",
        heal_after(reject_reset, heal, cluster=lambda lab: P2PMesh(lab, "alive")),
        3,
        "The next probe or answer draws an RST. SWIM's probes (UDP) still pass: peer-1 keeps peer-2 "
        "alive, unlinked, while its link to peer-3 stays up; the link comes back after healing.",
    ),
    row(
        "p2p-sigstop",
        "peer frozen (SIGSTOP, then SIGCONT)",
        "p2p",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(freeze, thaw, cluster=P2PMesh),
        3,
        "The link times out after three unanswered keepalive probes; SWIM has peer-2 suspect after one "
        "failed probe round, dead when the suspicion runs out." + _VIEW.format(state="dead", heal="SIGCONT"),
    ),
    row(
        "m2o-blackhole-out",
        "client's outbound blackholed",
        _M2O,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("out"), heal, cluster=ManyToOneGroup),
        4,
        "The server hears nothing from that client and times out; its RST reaches the client." + _SERVED,
    ),
    row(
        "m2o-blackhole-in",
        "client's inbound blackholed",
        _M2O,
        "reset",
        "remote",
        "ECONNRESET",
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("in"), heal, cluster=ManyToOneGroup),
        4,
        "The client hears nothing and times out; the RST it sends reaches the server." + _SERVED,
    ),
    row(
        "m2o-link-down",
        "client's link down",
        _M2O,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(link_down, link_up, cluster=ManyToOneGroup),
        4,
        "Frames to that client go nowhere." + _SERVED,
    ),
    row(
        "m2o-refused",
        "connect refused (no server), then server restarted on the same port",
        _M2O,
        "refused",
        "remote",
        "ECONNREFUSED",
        None,
        "≤ the pending backoff delay + 0.5; each gap 1 to 4 times the last, jittered",
        refused_then_restart(ManyToOneGroup),
        4,
        "Every client's SYN draws an RST; each backs off on its own jitter, and all three are back "
        "within their next delay once the server listens.",
        observer="client-a",
        measures="server listening → client-a reconnected",
    ),
    row(
        "m2o-loss-10",
        "10 % random loss both ways at a chatting client (a line every 0.1 s)",
        _M2O,
        None,
        None,
        None,
        None,
        "0 false timeouts; every line relayed once, in order",
        loss_soak(10.0, ManyToOneGroup),
        4,
        "TCP retransmits what is lost: no false death, and both other clients get every line of the "
        "lossy one once, in order.",
        observer="both",
        measures="— (soak)",
    ),
    row(
        "p2p-blackhole-out",
        "peer's outbound blackholed (one-way partition)",
        "p2p",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("out"), heal, cluster=P2PMesh),
        3,
        "peer-1 hears nothing from peer-2 and times out; its RST reaches peer-2."
        + _VIEW.format(state="dead", heal="healing"),
    ),
    row(
        "p2p-blackhole-in",
        "peer's inbound blackholed (one-way partition)",
        "p2p",
        "reset",
        "remote",
        "ECONNRESET",
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("in"), heal, cluster=P2PMesh),
        3,
        "peer-2 hears nothing and times out; the RST it sends reaches peer-1. Unless peer-2 "
        "sent something just before the fault, or after it, before its probes: that is never "
        "acknowledged, its probes queue behind TCP's retransmissions of it, peer-1 hears "
        "nothing either, and it may time out first (``timeout``, local), as the row allows."
        + _VIEW.format(state="dead", heal="healing"),
        otherwise=("timeout", "local", None),
    ),
    row(
        "p2p-link-down",
        "peer's link down",
        "p2p",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(link_down, link_up, cluster=P2PMesh),
        3,
        "Silence on every link of peer-2." + _VIEW.format(state="dead", heal="the link comes back"),
    ),
    row(
        "p2p-restart-storm",
        f"{STORM_PEERS - 1} of {STORM_PEERS} peers SIGKILLed at once, then restarted at once",
        "p2p",
        "clean",
        "remote",
        None,
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g} for every link; reset (ECONNRESET) only where peer-1 wrote after the kill",
        restart_storm(STORM_PEERS),
        STORM_PEERS,
        "Every killed peer's kernel sends its FINs, or an RST where peer-1's gossip about the first "
        "deaths reached a dying socket; restarted together, the peers dial one another at once and "
        "must settle on one connection per pair (the one the smaller id dialled), with every member "
        "alive in every view. One observation per link of peer-1.",
        measures="fault injected → peer-1's record of each link closed; reconnect: restart → whole mesh",
    ),
    row(
        "p2p-loss-10",
        "10 % random loss both ways at a broadcasting peer (a line every 0.1 s)",
        "p2p",
        None,
        None,
        None,
        None,
        "0 false timeouts; every broadcast delivered once",
        loss_soak(10.0, P2PMesh),
        3,
        "TCP retransmits what is lost: no false death, and peer-1 and peer-3 each deliver every "
        "broadcast of peer-2 once (flooding de-duplicates the copies).",
        observer="both",
        measures="— (soak)",
    ),
]


#: Topology/transport combinations the lab does not run yet (extension points).
PLANNED: list[tuple[str, str, str]] = [
    ("many-to-one", "udp", "one-way blackholes and link down, as client-server over UDP"),
    ("p2p", "udp", "one-way partitions, link down, and loss (broadcast is unreliable over UDP)"),
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
