"""
The fault lab's rows for sessions over UDP (``--transport udp``).

Each row is a :class:`~tests.lab.scenarios.Fault` with ``transport="udp"``,
run by the same machinery as the TCP rows (:func:`~tests.lab.scenarios.run_fault`,
:func:`~tests.lab.scenarios.heal_after`, :func:`~tests.lab.scenarios.restart_after`)
on the clusters of :mod:`tests.lab.scenarios` with ``transport="udp"``:
client-server (the server in lab host 1, the client in host 2; and
:class:`UdpServerFaulty`, where the server is faulted), many-to-one and
p2p, all with the lab's keepalive (``1,0.5,3``: a silent peer is declared
dead within 2.5 s).

What UDP changes (see ``docs/fault-lab.rst``): no kernel tells a peer that a
process died or a path went silent, except the ICMP port unreachable a dead
process's host sends back, which only a *connected* socket reports
(``refused``): the dialler's, and the socket of its own a listener bound to
one address gives each session. Everything else -- a blackhole, a frozen
process, a link down -- is found by the application heartbeat alone, inside
the keepalive window.

:data:`UDP_FAULTS` is the list to add to the matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .netlab import Lab
from .scenarios import (
    BOUND,
    IDLE,
    IMMEDIATE,
    KEEPALIVE_BOUND,
    KEEPALIVE_WINDOW,
    UPPER_EPSILON,
    ClientServerPair,
    Cluster,
    Fault,
    LabNode,
    ManyToOneGroup,
    Observation,
    P2PMesh,
    Run,
    Window,
    blackhole,
    freeze,
    gaps,
    heal,
    heal_after,
    kill,
    link_down,
    link_up,
    loss_soak,
    refused_then_restart,
    restart_after,
    row,
    stop,
    thaw,
)

__all__ = [
    "UDP_FAULTS",
    "UdpServerFaulty",
    "udp_blackhole",
    "udp_heal",
    "udp_pair",
]

TRANSPORT = "udp"
#: Seconds a short blackhole lasts: with traffic at least once a second (keepalive idle
#: 1 s) and a probe every 0.5 s after healing, the silence stays under the 2.5 s bound.
SHORT_BLACKHOLE = 0.6
#: Requests per second of the clients that send.
REQUEST_INTERVAL = 0.1


def udp_pair(delivery: str | None = None, client_interval: float = 0.0) -> Callable[[Lab], ClientServerPair]:
    """client-server over UDP, with ``--delivery delivery``: the server in host 1, the client in host 2."""
    return lambda lab: ClientServerPair(lab, TRANSPORT, delivery, client_interval)


class UdpServerFaulty(ClientServerPair):
    """
    client-server over UDP with the roles of observer and faulty node
    swapped: the server (host 1) is faulted, the client -- sending a request
    every 0.1 s -- observes.
    """

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab, TRANSPORT, client_interval=REQUEST_INTERVAL)
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


# --- scenarios of their own --------------------------------------------------------------


def short_blackhole(lab: Lab, repeat: int) -> Run:
    """
    Requests every 0.1 s on the reliable channel; blackhole the client's UDP
    for :data:`SHORT_BLACKHOLE` seconds (less than the keepalive bound), then
    heal: the session must survive on both sides, and every request sent
    during the blackhole must be answered once the retransmissions get
    through (no request fails, answers stay in order).
    """
    pair = ClientServerPair(lab, TRANSPORT, "reliable", REQUEST_INTERVAL)
    server, client = pair.start()
    run = Run()
    for rep in range(1, repeat + 1):
        on_server, on_client = pair.wait_pair(client)
        failed_before = pair.failures()
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
        failed = pair.failures() - failed_before
        if failed:
            observation.problems.append(f"{failed} requests failed")
        after = client.record(on_client["id"]) or on_client
        retransmissions = after.get("datagram", {}).get("retransmissions", 0) - before
        observation.notes.append(f"{retransmissions} retransmissions")
        wrong = gaps(pair.delivered()[client.node_id], ordered=True, first=1)
        if wrong:
            observation.problems.append(wrong)
        run.observations.append(observation)
    return run


# --- the rows ------------------------------------------------------------------------------

_SERVED = " The other two clients keep being served."
_VIEW = " peer-1 marks peer-2 {state} while its link to peer-3 stays up; peer-2 rejoins after {heal}."
_CS, _M2O = "client-server", "many-to-one"
#: What a session's connected socket records when its peer's host answers with ICMP port
#: unreachable: a dialler's socket, and the socket of its own a listener gives each session.
_REFUSED = ("refused", "remote", "ECONNREFUSED", Window(0.0, IDLE + IMMEDIATE))
_REFUSED_BOUND = f"≤ {IDLE + IMMEDIATE:g}"
#: Why a killed idle peer is refused within the bound.
_NEXT_PROBE = (
    f"No FIN, but the next probe (keepalive idle {IDLE:g} s) draws an ICMP port unreachable from the killed "
    "process's host, which the session's connected socket reports: a listener gives each session a "
    "socket of its own, connected to its peer."
)


def _m2o() -> Callable[[Lab], ManyToOneGroup]:
    return lambda lab: ManyToOneGroup(lab, TRANSPORT)


def _p2p(expected_state: str = "dead") -> Callable[[Lab], P2PMesh]:
    return lambda lab: P2PMesh(lab, expected_state, TRANSPORT)


UDP_FAULTS: list[Fault] = [
    row(
        "udp-sigkill-server",
        "server SIGKILL while the client sends",
        _CS,
        "refused",
        "remote",
        "ECONNREFUSED",
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        restart_after(kill, UdpServerFaulty),
        2,
        "The client's next datagram (a request every 0.1 s) draws an ICMP port unreachable from the "
        "server's host, which the client's connected socket reports. Restarted, the server is found "
        "again by the client's refused-backoff redials.",
        TRANSPORT,
        "client",
    ),
    row(
        "udp-sigkill-idle",
        "client SIGKILL, idle",
        _CS,
        *_REFUSED,
        _REFUSED_BOUND,
        restart_after(kill, udp_pair()),
        2,
        _NEXT_PROBE,
        TRANSPORT,
        "server",
    ),
    row(
        "udp-blackhole-both",
        "client's UDP blackholed both ways, idle",
        _CS,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(udp_blackhole, udp_heal, cluster=udp_pair()),
        2,
        "Silence both ways: each side's heartbeat times out on its own (the client too); once "
        "healed, the client's redial opens a new session.",
        TRANSPORT,
        "server",
    ),
    row(
        "udp-blackhole-out",
        "client's outbound blackholed",
        _CS,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("out"), heal, cluster=udp_pair()),
        2,
        "The server hears nothing and times out; the RESET it sends reaches the client, which still "
        "hears the server.",
        TRANSPORT,
        "server",
    ),
    row(
        "udp-blackhole-in",
        "client's inbound blackholed",
        _CS,
        "reset",
        "remote",
        "ECONNRESET",
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("in"), heal, cluster=udp_pair()),
        2,
        "The client hears nothing and times out; the RESET it sends (our RST) reaches the server.",
        TRANSPORT,
        "server",
    ),
    row(
        "udp-sigstop",
        "client frozen (SIGSTOP, then SIGCONT)",
        _CS,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(freeze, thaw, cluster=udp_pair()),
        2,
        "The frozen client's socket still exists: datagrams queue in it unread and no ICMP comes "
        "back. Thawed, it reads the server's RESET.",
        TRANSPORT,
        "server",
    ),
    row(
        "udp-link-down",
        "client's link down",
        _CS,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(link_down, link_up, cluster=udp_pair()),
        2,
        "Datagrams to the client go nowhere; silence is the only signal.",
        TRANSPORT,
        "server",
    ),
    row(
        "udp-refused",
        "connect refused (no server), then server restarted on the same port",
        _CS,
        "refused",
        "remote",
        "ECONNREFUSED",
        None,
        "≤ the pending backoff delay + 0.5; each gap 1 to 4 times the last, jittered",
        refused_then_restart(udp_pair()),
        2,
        "The client's INIT draws an ICMP port unreachable, which its connected socket reports as "
        "ECONNREFUSED: the same backoff as TCP's refused connect.",
        TRANSPORT,
        "client",
        "server listening → client reconnected",
    ),
    row(
        "udp-blackhole-short",
        f"client's UDP blackholed for {SHORT_BLACKHOLE:g} s, reliable requests every 0.1 s",
        _CS,
        None,
        None,
        None,
        None,
        f"no close (blackhole {SHORT_BLACKHOLE:g} s < bound {BOUND:g} s)",
        short_blackhole,
        2,
        "Shorter than the bound: the session survives on both sides and the reliable channel "
        "retransmits what the blackhole swallowed; every request is answered, in order.",
        TRANSPORT,
        "both",
        "— (the session must survive)",
    ),
    row(
        "udp-loss-10",
        "10 % random loss both ways, reliable requests every 0.1 s",
        _CS,
        None,
        None,
        None,
        None,
        "0 false timeouts; every request answered once, in order",
        loss_soak(10.0, udp_pair("reliable")),
        2,
        "The heartbeat rides the unreliable channel and must not mistake loss for death; the "
        "reliable channel retransmits what is lost.",
        TRANSPORT,
        "both",
        "— (soak)",
    ),
    row(
        "m2o-udp-sigkill-idle",
        "client SIGKILL, idle",
        _M2O,
        *_REFUSED,
        _REFUSED_BOUND,
        restart_after(kill, _m2o()),
        4,
        _NEXT_PROBE + _SERVED,
        TRANSPORT,
    ),
    row(
        "m2o-udp-blackhole-both",
        "client blackholed both ways, idle",
        _M2O,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("both"), heal, cluster=_m2o()),
        4,
        "Silence both ways: the server's heartbeat times out." + _SERVED,
        TRANSPORT,
    ),
    row(
        "m2o-udp-sigstop",
        "client frozen (SIGSTOP, then SIGCONT)",
        _M2O,
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(freeze, thaw, cluster=_m2o()),
        4,
        "Datagrams queue unread in the frozen client's socket." + _SERVED,
        TRANSPORT,
    ),
    row(
        "m2o-udp-loss-10",
        "10 % random loss both ways at a chatting client (a line every 0.1 s)",
        _M2O,
        None,
        None,
        None,
        None,
        "0 false timeouts; every line relayed once, in order",
        loss_soak(10.0, _m2o()),
        4,
        "chat asks for the reliable channel: no false death, and both other clients get every line "
        "of the lossy one once, in order.",
        TRANSPORT,
        "both",
        "— (soak)",
    ),
    row(
        "p2p-udp-sigterm",
        "peer stops (SIGTERM: BYE)",
        "p2p",
        "clean",
        "remote",
        None,
        Window(0.0, IMMEDIATE),
        f"≤ {IMMEDIATE:g}",
        restart_after(stop, _p2p("left")),
        3,
        "The stopping node says BYE on every session." + _VIEW.format(state="left", heal="a restart"),
        TRANSPORT,
    ),
    row(
        "p2p-udp-sigkill-idle",
        "peer SIGKILL, idle",
        "p2p",
        *_REFUSED,
        _REFUSED_BOUND,
        restart_after(kill, _p2p()),
        3,
        _NEXT_PROBE.replace("the session's", "peer-1's session's, whichever side dialled,")
        + _VIEW.format(state="dead", heal="a restart"),
        TRANSPORT,
    ),
    row(
        "p2p-udp-blackhole-both",
        "peer blackholed both ways (partition), idle",
        "p2p",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(blackhole("both"), heal, cluster=_p2p()),
        3,
        "Silence on every session of peer-2." + _VIEW.format(state="dead", heal="healing"),
        TRANSPORT,
    ),
    row(
        "p2p-udp-sigstop",
        "peer frozen (SIGSTOP, then SIGCONT)",
        "p2p",
        "timeout",
        "local",
        None,
        KEEPALIVE_WINDOW,
        KEEPALIVE_BOUND,
        heal_after(freeze, thaw, cluster=_p2p()),
        3,
        "Datagrams queue unread in the frozen peer's socket." + _VIEW.format(state="dead", heal="SIGCONT"),
        TRANSPORT,
    ),
]
