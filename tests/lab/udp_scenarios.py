"""
The fault lab's rows for sessions over UDP (``--transport udp``).

Each row is a :class:`~tests.lab.scenarios.Fault` with ``transport="udp"``,
run by the same machinery as the TCP rows (:func:`~tests.lab.scenarios.run_fault`,
:func:`~tests.lab.scenarios.heal_after`, :func:`~tests.lab.scenarios.restart_after`)
on the clusters defined here: a ``twistd netmodels --transport udp`` server in
lab host 1 and a client in host 2, with the lab's keepalive (``1,0.5,3``: a
silent peer is declared dead within 2.5 s).

What UDP changes (see ``docs/fault-lab.rst``): no kernel tells a peer that a
process died or a path went silent, except the ICMP port unreachable a dead
*server*'s host sends back, which the client's connected socket reports
(``refused``). Everything else -- a dead client, a blackhole -- is found by
the application heartbeat alone, inside the keepalive window.

:data:`UDP_FAULTS` is the list to add to the matrix.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .netlab import Lab
from .scenarios import (
    BOUND,
    FROM_FAULT,
    IMMEDIATE,
    INTERVAL,
    LOWER_EPSILON,
    PROBES,
    SERVICE_PORT,
    UPPER_EPSILON,
    ClientServerPair,
    Cluster,
    Fault,
    LabNode,
    Observation,
    Run,
    Scenario,
    Window,
    heal_after,
    restart_after,
    soak_seconds,
    spawn_node,
)

__all__ = [
    "UDP_FAULTS",
    "UdpClientServer",
    "UdpServerFaulty",
    "udp_blackhole",
    "udp_heal",
]

TRANSPORT = "udp"
#: Seconds a short blackhole lasts: with traffic at least once a second (keepalive idle
#: 1 s) and a probe every 0.5 s after healing, the silence stays under the 2.5 s bound.
SHORT_BLACKHOLE = 0.6
#: Requests per second of the clients that send.
REQUEST_INTERVAL = 0.1


class UdpClientServer(ClientServerPair):
    """
    client-server over UDP: the server in host 1 (``udp:8750``), the client in
    host 2, which is faulted; the server observes. ``delivery`` is passed as
    ``--delivery`` to both (``None``: the application's default, unreliable
    for echo).
    """

    def __init__(self, lab: Lab, delivery: str | None = None, client_interval: float = 0.0) -> None:
        super().__init__(lab)
        self.delivery = delivery
        self.client_interval = client_interval

    def _common(self) -> list[str]:
        args = ["--transport", TRANSPORT]
        if self.delivery is not None:
            args += ["--delivery", self.delivery]
        return args

    def start(self, interval: float = 0.0) -> tuple[LabNode, LabNode]:
        return self.start_server(), self.start_client("client", interval or self.client_interval)

    def start_server(self) -> LabNode:
        listen = f"udp:{SERVICE_PORT}:interface={self.server_host.address}"
        self.server = spawn_node(
            self.server_host, self.server_id, ["--role", "server", "--listen", listen, *self._common()]
        )
        return self.server

    def start_client(self, node_id: str = "client", interval: float = 0.0) -> LabNode:
        connect = f"udp:{self.server_host.address}:{SERVICE_PORT}"
        client = spawn_node(
            self.client_host,
            node_id,
            ["--role", "client", "--connect", connect, "--interval", f"{interval:g}", *self._common()],
        )
        self.clients.append(client)
        return client

    def restart_faulty(self) -> LabNode:
        return self.start_client("client", self.client_interval)


class UdpServerFaulty(UdpClientServer):
    """
    The same pair with the roles of observer and faulty node swapped: the
    server (host 1) is faulted, the client -- sending a request every 0.1 s --
    observes.
    """

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab, client_interval=REQUEST_INTERVAL)
        self.faulty_host = self.server_host

    def start(self, interval: float = 0.0) -> tuple[LabNode, LabNode]:
        server = self.start_server()
        client = self.start_client("client", self.client_interval)
        return client, server

    def link(
        self, exclude: tuple[set[int], set[int]] = (set(), set())
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        on_server, on_client = self.wait_pair(self.clients[-1], (exclude[1], exclude[0]))
        return on_client, on_server

    def restart_faulty(self) -> LabNode:
        return self.start_server()


def udp_blackhole(nodes: Cluster, faulty: LabNode) -> None:
    """Drop every UDP datagram into and out of the faulty host (``-p udp -j DROP``)."""
    interface = nodes.faulty_host.interface
    nodes.faulty_host.iptables_batch(
        [f"-A INPUT -i {interface} -p udp -j DROP", f"-A OUTPUT -o {interface} -p udp -j DROP"]
    )


def udp_heal(nodes: Cluster, faulty: LabNode) -> None:
    nodes.faulty_host.heal()


def _kill(nodes: Cluster, faulty: LabNode) -> None:
    faulty.process.sigkill()


# --- scenarios of their own --------------------------------------------------------------


def _answered(log: str) -> list[int]:
    """The numbers of the echo client's requests that were answered, in the order logged."""
    return [int(n) for n in re.findall(r"answered 'hello (\d+)'", log)]


def _contiguous(numbers: list[int]) -> str | None:
    """``None`` if ``numbers`` runs 1, 2, 3, ... without a gap or a repeat; else what is wrong."""
    for index, number in enumerate(numbers, start=1):
        if number != index:
            nearby = numbers[max(0, index - 5) : index + 3]
            return f"answer #{index} was for request {number} (answers around it: {nearby})"
    return None


def short_blackhole(lab: Lab, repeat: int) -> Run:
    """
    Requests every 0.1 s on the reliable channel; blackhole the client's UDP
    for :data:`SHORT_BLACKHOLE` seconds (less than the keepalive bound), then
    heal: the session must survive on both sides, and every request sent
    during the blackhole must be answered once the retransmissions get
    through (no request fails, answers stay in order).
    """
    pair = UdpClientServer(lab, delivery="reliable", client_interval=REQUEST_INTERVAL)
    server, client = pair.start()
    run = Run()
    for rep in range(1, repeat + 1):
        on_server, on_client = pair.wait_pair(client)
        mark = len(client.process.log)
        before = (client.record(on_client["id"]) or on_client).get("datagram", {}).get("retransmissions", 0)
        injected = time.time()
        udp_blackhole(pair, client)
        time.sleep(SHORT_BLACKHOLE)  # the fault's duration, not a wait for an outcome
        udp_heal(pair, client)
        healed = time.time()
        # A false timeout would be declared within the bound of the last traffic: before this.
        deadline = healed + BOUND + UPPER_EPSILON
        closed: dict[str, Any] | None = None
        while closed is None and time.time() < deadline:
            for node, record in ((server, on_server), (client, on_client)):
                now = node.record(record["id"])
                if now is not None and now["state"] != "open":
                    closed = now
            time.sleep(0.1)
        if closed is None:
            observation = Observation(rep, None)
        else:
            observation = Observation.of_record(rep, closed, injected)
        log = client.process.log[mark:]
        failed = len(re.findall(r"request to \S+ failed", log))
        if failed:
            observation.problems.append(f"{failed} requests failed")
        after = client.record(on_client["id"]) or on_client
        retransmissions = after.get("datagram", {}).get("retransmissions", 0) - before
        observation.notes.append(f"{retransmissions} retransmissions")
        answered = _answered(client.process.log)
        wrong = _contiguous(answered)
        if wrong:
            observation.problems.append(wrong)
        run.observations.append(observation)
    return run


def reliable_loss_soak(percent: float) -> Scenario:
    """
    ``percent`` % loss both ways at the client for a soak of several keepalive
    bounds, requests every 0.1 s on the reliable channel: no false peer death
    on either side, no request fails, and the answers the client logs are for
    requests 1, 2, 3, ... -- each exactly once, in order, none missing.
    """

    def scenario(lab: Lab, repeat: int) -> Run:
        pair = UdpClientServer(lab, delivery="reliable", client_interval=REQUEST_INTERVAL)
        server, client = pair.start()
        soak = soak_seconds()
        run = Run()
        counts: list[str] = []
        for rep in range(1, repeat + 1):
            on_server, on_client = pair.wait_pair(client)
            mark = len(client.process.log)
            pair.client_host.loss(percent)
            started = time.monotonic()
            closed: dict[str, Any] | None = None
            try:
                while closed is None and time.monotonic() - started < soak:
                    time.sleep(0.5)
                    for node, record in ((server, on_server), (client, on_client)):
                        now = node.record(record["id"])
                        if now is not None and now["state"] != "open":
                            closed = now
            finally:
                pair.client_host.heal()
            answered_before = len(_answered(client.process.log))
            # Once healed, what was retransmitting gets through: wait for a few more answers.
            deadline = time.monotonic() + BOUND
            while len(_answered(client.process.log)) < answered_before + 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            observation = (
                Observation(rep, None) if closed is None else Observation.of_record(rep, closed, 0.0)
            )
            observation.seconds = None
            log = client.process.log[mark:]
            failed = len(re.findall(r"request to \S+ failed", log))
            if failed:
                observation.problems.append(f"{failed} requests failed")
            answered = _answered(client.process.log)
            wrong = _contiguous(answered)
            if wrong:
                observation.problems.append(wrong)
            during = len(_answered(log))
            expected = soak / REQUEST_INTERVAL
            if during < expected * 0.5:
                observation.problems.append(
                    f"only {during} answers in {soak:g} s (about {expected:.0f} sent)"
                )
            stats = (client.record(on_client["id"]) or on_client).get("datagram", {})
            counts.append(f"{during} answered, {stats.get('retransmissions', 0)} retransmissions")
            run.observations.append(observation)
        run.notes.append(
            f"per {soak:g} s soak at {percent:g} % loss (a request every {REQUEST_INTERVAL:g} s): "
            + "; ".join(counts)
        )
        return run

    return scenario


# --- the rows ------------------------------------------------------------------------------

_KEEPALIVE_WINDOW = Window(INTERVAL * PROBES - LOWER_EPSILON, BOUND + UPPER_EPSILON)
_KEEPALIVE_BOUND = (
    f"{INTERVAL * PROBES - LOWER_EPSILON:.1f} to {BOUND + UPPER_EPSILON:.1f} (the keepalive window)"
)


def _udp(
    key: str,
    title: str,
    observer: str,
    reason: str | None,
    initiator: str | None,
    errno: str | None,
    window: Window | None,
    bound: str,
    scenario: Scenario,
    wire: str,
    measures: str = FROM_FAULT,
) -> Fault:
    return Fault(
        key,
        title,
        "client-server",
        TRANSPORT,
        observer,
        reason,
        initiator,
        errno,
        window,
        measures,
        bound,
        scenario,
        wire=wire,
    )


UDP_FAULTS: list[Fault] = [
    _udp(
        "udp-sigkill-server",
        "server SIGKILL while the client sends",
        "client",
        "refused",
        "remote",
        "ECONNREFUSED",
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        restart_after(_kill, UdpServerFaulty),
        "The client's next datagram (a request every 0.1 s) draws an ICMP port unreachable from the "
        "server's host, which the client's connected socket reports. Restarted, the server is found "
        "again by the client's refused-backoff redials.",
    ),
    _udp(
        "udp-sigkill-idle",
        "client SIGKILL, idle",
        "server",
        "timeout",
        "local",
        None,
        _KEEPALIVE_WINDOW,
        _KEEPALIVE_BOUND,
        restart_after(_kill, UdpClientServer),
        "No FIN, and the ICMP answering the server's probes goes to its unconnected listening "
        "socket, which reports nothing: only the unanswered heartbeat tells.",
    ),
    _udp(
        "udp-blackhole-both",
        "client's UDP blackholed both ways, idle",
        "server",
        "timeout",
        "local",
        None,
        _KEEPALIVE_WINDOW,
        _KEEPALIVE_BOUND,
        heal_after(udp_blackhole, udp_heal, cluster=UdpClientServer),
        "Silence both ways: each side's heartbeat times out on its own (the client too); once "
        "healed, the client's redial opens a new session.",
    ),
    _udp(
        "udp-blackhole-short",
        f"client's UDP blackholed for {SHORT_BLACKHOLE:g} s, reliable requests every 0.1 s",
        "both",
        None,
        None,
        None,
        None,
        f"no close (blackhole {SHORT_BLACKHOLE:g} s < bound {BOUND:g} s)",
        short_blackhole,
        "Shorter than the bound: the session survives on both sides and the reliable channel "
        "retransmits what the blackhole swallowed; every request is answered, in order.",
        measures="— (the session must survive)",
    ),
    _udp(
        "udp-loss-10",
        "10 % random loss both ways, reliable requests every 0.1 s",
        "both",
        None,
        None,
        None,
        None,
        "0 false timeouts; every request answered once, in order",
        reliable_loss_soak(10.0),
        "The heartbeat rides the unreliable channel and must not mistake loss for death; the "
        "reliable channel retransmits what is lost.",
        measures="— (soak)",
    ),
]
