"""
The fault lab's rows for the callback topology, over TCP and over UDP.

A ``twistd netmodels --topology callback`` server runs in lab host 1 and one
client in host 2 (:class:`CallbackCluster`). The client holds a control
connection to the server and listens for callbacks on a fixed port,
:data:`CALLBACK_PORT`, on its own address; its record of what it has
delivered lives in a file in the lab's work directory, so a client restarted
after a SIGKILL keeps its de-duplication state. The client is faulted, the
server observes. Messages are injected with ``POST /deliver/client`` on the
server's status endpoint; the client's inbox logs each one it hands to the
application, with the path it came by (``via callback``/``via fallback``).

Besides when and how the server notices the fault, each row checks the
topology's promise: no message the server accepted (``202``) is lost or
shown twice, and they arrive in the order accepted -- while the client is
dead or cut off they wait in the outbox, and when its callback port is
refused they go on the control connection instead.

:data:`CALLBACK_FAULTS` is the list to add to the matrix.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Any

from netmodels.topologies.callback.server import CALLBACK_RETRY_POLICY

from .netlab import Lab, LabError, wait_until
from .scenarios import (
    IDLE,
    IMMEDIATE,
    KEEPALIVE_BOUND,
    KEEPALIVE_WINDOW,
    RECONNECT_TIMEOUT,
    SERVICE_PORT,
    STATUS_PORT,
    Cluster,
    Fault,
    LabNode,
    Observation,
    Run,
    Scenario,
    Window,
    blackhole,
    heal,
    heal_after,
    kill,
    restart_after,
    row,
)

__all__ = [
    "CALLBACK_FAULTS",
    "CALLBACK_PORT",
    "CallbackCluster",
    "callback_refused",
]

TOPOLOGY = "callback"
#: The shared secret of server and client (``--token``), also the bearer token of ``POST /deliver``.
TOKEN = "lab-token"
#: The server's admin token (``--admin-token-file``), the bearer token of ``POST /connections``.
ADMIN_TOKEN = "lab-admin-token"
#: Where the client listens for the server's callbacks (on its own address).
CALLBACK_PORT = SERVICE_PORT + 1
#: Messages delivered while the killed client is down.
QUEUED = 3
#: Deadline (lab's own, not a window under test) for accepted messages to reach the client.
DELIVERY_TIMEOUT = 10.0
#: Past the failed dial's record, how long until the server's retry timer has surely expired
#: (it is armed in the same reactor turn as the record is closed, microseconds later).
RETRY_MARGIN = 0.05
#: The server's hold-off after a first failed callback dial (the policy's first delay).
RETRY = CALLBACK_RETRY_POLICY.fallback.initial

_RECEIVED = re.compile(r"\] \[(?P<node>[^\]]+)\] via (?P<path>callback|fallback): (?P<payload>.*)$", re.M)


class CallbackCluster(Cluster):
    """
    The callback topology over ``transport`` (``tcp`` or ``udp``): the server
    in host 1 (``SERVICE_PORT``), the client in host 2 with its callback
    listener on :data:`CALLBACK_PORT` and its delivered-ids file in the lab's
    work directory. The client is faulted; the server observes its record of
    the client's control connection.

    ``queued`` messages are delivered once the server has recorded the close
    (:meth:`check_fault`: they must be accepted and wait in the outbox) and
    must reach the client once it is back (:meth:`check_healed`): each once,
    in the order accepted.
    """

    server_id = "server"
    client_id = "client"

    def __init__(self, lab: Lab, transport: str = "tcp", queued: int = 1) -> None:
        super().__init__(lab, transport)
        self.queued = queued
        self.server_host, self.client_host = lab.hosts[0], lab.hosts[1]
        self.faulty_host = self.client_host
        self.state = os.path.join(lab.workdir, f"{self.client_id}-delivered.sqlite")
        self.admin_token_file = os.path.join(lab.workdir, f"{self.server_id}-admin-token")
        with open(self.admin_token_file, "w") as file:
            file.write(ADMIN_TOKEN + "\n")
        self.server: LabNode | None = None
        self.client: LabNode | None = None
        #: Every message the server accepted (202), in order: what the client must log, each once.
        self.accepted: list[str] = []
        self._batches = itertools.count(1)

    # Nodes

    def start(self, interval: float = 0.0) -> tuple[LabNode, LabNode]:
        args = ["--role", "server", *self.listen(self.server_host), "--token", TOKEN]
        args += ["--admin-token-file", self.admin_token_file]
        self.server = self.spawn(self.server_host, self.server_id, args, TOPOLOGY)
        return self.server, self.restart_faulty()

    def restart_faulty(self) -> LabNode:
        """Start the client (again): the same node id, callback port and delivered-ids file."""
        args = [
            "--role",
            "client",
            *self.connect(self.server_host),
            "--callback",
            f"{self.transport}:{CALLBACK_PORT}:interface={self.client_host.address}",
            "--outbox",
            self.state,
            "--token",
            TOKEN,
        ]
        self.client = self.spawn(self.client_host, self.client_id, args, TOPOLOGY)
        return self.client

    def link(
        self, exclude: tuple[set[int], set[int]] = (set(), set())
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The control connection, open on both sides, with the client registered (alive)."""
        server, client = self.server, self.client
        assert server is not None and client is not None

        def control(node: LabNode, peer_id: str, direction: str, skip: set[int]) -> dict[str, Any] | None:
            # The callback connection joins the same two nodes the other way round.
            return next(
                (
                    c
                    for c in node.connections()
                    if c["state"] == "open"
                    and c["peer_id"] == peer_id
                    and c["direction"] == direction
                    and c["id"] not in skip
                ),
                None,
            )

        def ready() -> tuple[dict[str, Any], dict[str, Any]] | None:
            on_client = control(client, self.server_id, "outbound", exclude[1])
            on_server = control(server, self.client_id, "inbound", exclude[0])
            if on_server is None or on_client is None or not self.client_state().get("alive"):
                return None
            return on_server, on_client

        return wait_until(
            ready,
            RECONNECT_TIMEOUT,
            f"{self.client_id} to connect and register with {self.server_id}",
            0.01,
            lambda: f"{client.describe()}\n{server.describe()}",
        )

    # Messages

    def client_state(self) -> dict[str, Any]:
        """The server's ``callback`` status of the client (alive, outbox_depth, last_callback, ...)."""
        assert self.server is not None
        state: dict[str, Any] = self.server.status()["callback"]["clients"].get(self.client_id, {})
        return state

    def deliver(self, payload: str) -> int:
        """``POST /deliver/client``: must be accepted (202); the client's outbox depth after it."""
        code, answer = self.server_host.post(
            STATUS_PORT, f"/deliver/{self.client_id}", payload.encode(), TOKEN
        )
        if code != 202:
            raise LabError(f"POST /deliver/{self.client_id} {payload!r}: HTTP {code}: {answer}")
        self.accepted.append(payload)
        return int(answer["depth"])

    def received(self) -> list[tuple[str, str]]:
        """``(path, payload)`` of each message the client logged, in order, over all its runs."""
        assert self.client is not None
        # A restarted client appends to the same log file.
        return [
            (match["path"], match["payload"])
            for match in _RECEIVED.finditer(self.client.process.log)
            if match["node"] == self.client_id
        ]

    def wait_delivered(self) -> list[tuple[str, str]]:
        """Wait until the client logged as many messages as were accepted, and its outbox is empty."""

        def done() -> list[tuple[str, str]] | None:
            received = self.received()
            empty = self.client_state().get("outbox_depth") == 0
            return received if len(received) >= len(self.accepted) and empty else None

        return wait_until(
            done,
            DELIVERY_TIMEOUT,
            f"{len(self.accepted)} messages to reach {self.client_id} and its outbox to empty",
            0.02,
            lambda: f"received {self.received()}; server: {self.client_state()}",
        )

    def check_sequence(self, observation: Observation) -> list[str]:
        """
        Wait for every accepted message to be acknowledged; a problem unless the
        client logged exactly those, each once, in order, and the server counted
        as many acknowledged by each path as the client logged. The paths, in order.
        """
        received = self.wait_delivered()
        payloads = [payload for _, payload in received]
        if payloads != self.accepted:
            observation.problems.append(
                f"the client logged {payloads}, the server had accepted {self.accepted} (in that order)"
            )
        paths = [path for path, _ in received]
        counted = self.client_state().get("delivered", {})
        logged = {path: paths.count(path) for path in ("callback", "fallback")}
        if counted != logged:
            observation.problems.append(f"the server counts {counted} delivered, the client logged {logged}")
        return paths

    # What a fault must show

    def check_fault(self, observation: Observation) -> None:
        """The client is down: deliveries are accepted and queued, one more each."""
        batch = next(self._batches)
        before = self.client_state().get("outbox_depth", 0)
        depths = [self.deliver(f"queued {batch}.{n}") for n in range(1, self.queued + 1)]
        if depths != list(range(before + 1, before + self.queued + 1)):
            observation.problems.append(f"outbox depths after each delivery: {depths} (was {before})")
        state = self.client_state()
        if state.get("alive") or state.get("outbox_depth") != before + self.queued:
            observation.problems.append(f"with the client down, the server shows {state}")

    def check_healed(self, observation: Observation) -> None:
        """What waited reaches the client once it is back: each message once, in order."""
        paths = self.check_sequence(observation)[-self.queued :]
        if observation.ok:
            observation.notes.append(
                f"{self.queued} queued, delivered once, in order, via {'/'.join(sorted(set(paths)))}"
            )


def _refuse_callbacks(nodes: CallbackCluster) -> None:
    """Refuse the client's callback port as a port with no listener would be refused."""
    interface = nodes.client_host.interface
    if nodes.transport == "udp":
        rule = f"-p udp --dport {CALLBACK_PORT} -j REJECT --reject-with icmp-port-unreachable"
    else:
        rule = f"-p tcp --dport {CALLBACK_PORT} -j REJECT --reject-with tcp-reset"
    nodes.client_host.iptables(f"-A INPUT -i {interface} {rule}")


# --- a scenario of its own ---------------------------------------------------------------


def callback_refused(transport: str) -> Scenario:
    """
    The client's callback port is refused (iptables ``REJECT`` in its host),
    its control connection untouched. A delivery makes the server dial the
    callback endpoint: the dial's record must say ``refused`` at once, and
    the message must arrive by fallback on the control connection. Healed, a
    delivery right away still goes by fallback (the server does not dial
    again for :data:`RETRY` seconds after a first failure); one
    once that time is up goes by callback again, on a new dial.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        nodes = CallbackCluster(lab, transport)
        server, _ = nodes.start()
        run = Run()
        for rep in range(1, repeat + 1):
            nodes.link()
            _close_callback_link(nodes)
            dials = {c["id"] for c in server.connections() if c["direction"] == "outbound"}
            _refuse_callbacks(nodes)
            try:
                posted = time.time()
                nodes.deliver(f"refused {rep}")
                failed = _wait_dial(nodes, dials, "failed")
                observation = Observation.of_record(rep, failed, posted)
                last = nodes.client_state().get("last_callback") or {}
                if (last.get("result"), last.get("errno")) != (failed["reason"], failed["errno"]):
                    observation.problems.append(f"last_callback {last} does not match the dial's record")
                nodes.check_sequence(observation)
            finally:
                healed = time.time()
                nodes.faulty_host.heal()
            dials.add(failed["id"])
            # The retry hold-off: still by fallback, though the port is open again.
            nodes.deliver(f"held off {rep}")
            # The server's retry timer, armed when the dial failed: not a wait for an outcome.
            time.sleep(max(0.0, failed["closed_at"] + RETRY + RETRY_MARGIN - time.time()))
            nodes.deliver(f"healed {rep}")
            dial = _wait_dial(nodes, dials, "open")
            observation.reconnect = dial["opened_at"] - healed
            paths = nodes.check_sequence(observation)[-3:]
            if paths != ["fallback", "fallback", "callback"]:
                observation.problems.append(
                    f"refused, held off and healed went by {paths}; expected fallback, fallback, callback"
                )
            last = nodes.client_state().get("last_callback") or {}
            if last.get("result") != "ok":
                observation.problems.append(f"after healing, last_callback is {last}")
            if observation.ok:
                observation.notes.append("fallback while refused and held off, then callback")
            run.observations.append(observation)
        return run

    return scenario


def _close_callback_link(nodes: CallbackCluster) -> None:
    """
    Close the server's open callback connection, if any (the operator's ``POST
    /connections/<id>/close``: BYE, then FIN), so that the next delivery dials.
    A clean close sets no retry hold-off.
    """
    server = nodes.server
    assert server is not None
    for record in server.connections():
        if record["state"] == "open" and record["direction"] == "outbound":
            path = f"/connections/{record['id']}/close"
            code, answer = nodes.server_host.post(STATUS_PORT, path, b"", ADMIN_TOKEN)
            if code != 200:
                raise LabError(f"closing the callback connection {record['id']}: HTTP {code}: {answer}")
            server.wait_closed(record["id"])


def _wait_dial(nodes: CallbackCluster, known: set[int], state: str) -> dict[str, Any]:
    """The server's record of its first new dial to the callback port, once it is ``state``."""
    server = nodes.server
    assert server is not None
    peer = f"{nodes.client_host.address}:{CALLBACK_PORT}"

    def dialled() -> dict[str, Any] | None:
        for record in server.connections():
            if record["direction"] == "outbound" and record["peer"] == peer and record["id"] not in known:
                if record["state"] == state:
                    return record
                if record["state"] not in ("connecting", "handshaking"):
                    raise LabError(f"the callback dial ended {record['state']}, not {state}: {record}")
        return None

    return wait_until(
        dialled,
        DELIVERY_TIMEOUT,
        f"the server's callback dial to be {state}",
        0.01,
        lambda: server.describe(),
    )


# --- the rows ------------------------------------------------------------------------------

_CONTROL = "fault injected → server's record of the control connection closed"
_DIAL = "delivery posted (port already refused) → server's record of the callback dial failed"
_QUEUED = (
    " Meanwhile every delivery is accepted and waits; once the client is back, each arrives once, in order."
)


def _cb(
    key: str,
    transport: str,
    title: str,
    reason: str,
    initiator: str,
    errno: str | None,
    window: Window,
    bound: str,
    scenario: Scenario,
    wire: str,
    measures: str = _CONTROL,
) -> Fault:
    return row(
        key,
        title,
        TOPOLOGY,
        reason,
        initiator,
        errno,
        window,
        bound,
        scenario,
        2,
        wire,
        transport,
        "server",
        measures,
    )


def _cluster(transport: str, queued: int = 1) -> Callable[[Lab], Cluster]:
    return lambda lab: CallbackCluster(lab, transport, queued)


CALLBACK_FAULTS: list[Fault] = [
    _cb(
        "cb-sigkill-idle",
        "tcp",
        f"client SIGKILL, idle; {QUEUED} messages delivered while it is down, then restarted",
        "clean",
        "remote",
        None,
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        restart_after(kill, _cluster("tcp", QUEUED)),
        "The dead client's kernel closes its sockets with a FIN; the server marks it offline at once."
        + _QUEUED,
    ),
    _cb(
        "cb-refused",
        "tcp",
        "client's callback port refused (REJECT tcp-reset), then healed",
        "refused",
        "remote",
        "ECONNREFUSED",
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        callback_refused("tcp"),
        "The server's SYN to the callback port draws an RST: the dial fails with ECONNREFUSED and the "
        "message goes on the control connection (fallback). Healed, the server dials again only "
        f"{RETRY:g} s after the failure, and delivers by callback.",
        measures=_DIAL,
    ),
    _cb(
        "cb-blackhole-both",
        "tcp",
        "client blackholed both ways, idle; a message delivered during the blackhole",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("both"), heal, cluster=_cluster("tcp")),
        "Only the server's unanswered probes tell; the message waits in the outbox and goes out "
        "when the client reconnects and registers.",
    ),
    _cb(
        "cb-udp-sigkill-idle",
        "udp",
        f"client SIGKILL, idle; {QUEUED} messages delivered while it is down, then restarted",
        "refused",
        "remote",
        "ECONNREFUSED",
        Window(0.0, IDLE + IMMEDIATE),
        f"≤ {IDLE + IMMEDIATE:g}",
        restart_after(kill, _cluster("udp", QUEUED)),
        "No FIN over UDP, but the server's next probe draws an ICMP port unreachable from the "
        "client's host, which the session's own connected socket reports (a listener gives each "
        "session a socket of its own)." + _QUEUED,
    ),
    _cb(
        "cb-udp-refused",
        "udp",
        "client's callback port refused (REJECT icmp-port-unreachable), then healed",
        "refused",
        "remote",
        "ECONNREFUSED",
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        callback_refused("udp"),
        "The server dials from a connected socket of its own: the ICMP port unreachable its first "
        "handshake datagram draws fails the dial with ECONNREFUSED, and the message goes on the "
        f"control connection. Healed, the server dials again {RETRY:g} s after the failure.",
        measures=_DIAL,
    ),
    _cb(
        "cb-udp-blackhole-both",
        "udp",
        "client blackholed both ways, idle; a message delivered during the blackhole",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("both"), heal, cluster=_cluster("udp")),
        "Silence both ways: the heartbeat times out; the message waits in the outbox and goes out "
        "when the client's redial opens a new session and it registers.",
    ),
]
