"""
The fault lab, p2p with SWIM membership: 20 ``twistd`` processes in 4 network namespaces.

Five processes per lab host, each ``twistd netmodels --topology p2p`` with
the default membership (SWIM on UDP beside its TCP port) and its own status
port, all given as ``--peer`` one process of host 1 that starts last. One run, in phases, each with its bound:

1. any start order: one cluster (every process sees the 19 others alive);
2. 4 processes SIGSTOPped for 2 s, less than the shortest suspicion: nobody dead;
3. 5 % loss each way at every host (about 10 % per packet): nobody dead in 20 s;
4. 2 processes (10 %) SIGKILLed: every survivor sees both dead;
5. hosts 1-2 cut from hosts 3-4: each side sees the other side dead;
6. healed: one cluster again.

Needs root, iproute2 and iptables (see ``docs/fault-lab.rst``): skipped with
a loud reason without them, failed instead when ``NETMODELS_LAB_REQUIRED=1``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from .netlab import Host, Lab, LabProcess, StatusUnavailable, require_lab, wait_until

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow, pytest.mark.lab]

HOSTS = 4
PER_HOST = 5
STREAM_PORT = 8760
STATUS_PORT = 9460
#: Seconds the whole cluster may take to agree after its last process started.
CONVERGE = 30.0
#: A crash: the first probe (about 2 s), the shortest suspicion (2.5 x log10(20) = 3.3 s), the spread.
DETECT = 20.0
#: A partition is seen (no confirmations across it: up to the longest suspicion, 19.5 s).
PARTITION = 40.0
#: After healing: the rejoin interval (30 s, jittered to 36 s) and the spread.
HEAL = 60.0


class SwimNode:
    def __init__(self, host: Host, slot: int) -> None:
        self.host = host
        self.slot = slot
        self.name = f"swim-{host.index}-{slot}"
        #: Its TCP listener; SWIM runs on UDP at the same port number.
        self.endpoint = f"tcp:{host.address}:{STREAM_PORT + slot}"
        self.status_port = STATUS_PORT + slot
        self.process: LabProcess | None = None

    def start(self, seed: str | None) -> None:
        args = [
            "netmodels",
            "--topology",
            "p2p",
            "--node-id",
            self.name,
            "--listen",
            f"tcp:{STREAM_PORT + self.slot}:interface={self.host.address}",
            "--status",
            f"tcp:{self.status_port}:interface=127.0.0.1",
            "--interval",
            "0",
        ]
        if seed is not None:
            args += ["--peer", seed]
        self.process = self.host.spawn_twistd(args, self.name)

    def states(self) -> dict[str, str] | None:
        """This node's view: each peer's state; ``None`` while its status is not there."""
        try:
            document = self.host.status(self.status_port)
        except StatusUnavailable:
            return None
        return {peer["id"]: peer["state"] for peer in document["peers"]}


class SwimClusterTests(SynchronousTestCase):
    def setUp(self) -> None:
        require_lab()
        self.lab = Lab(HOSTS)
        self.addCleanup(self.lab.close)
        self.nodes = [SwimNode(host, slot) for host in self.lab.hosts for slot in range(PER_HOST)]

    def wait_views(
        self, observers: Iterable[SwimNode], expected: dict[str, str], timeout: float, what: str
    ) -> None:
        """Until every observer's view holds ``expected`` (peer -> state) for each peer in it."""
        observers = list(observers)

        def holds() -> bool:
            for observer in observers:
                states = observer.states()
                if states is None:
                    return False
                if any(
                    states.get(peer) != state for peer, state in expected.items() if peer != observer.name
                ):
                    return False
            return True

        def describe() -> str:
            views = {o.name: o.states() for o in observers[:3]}
            return f"views of the first observers: {views}\n{self.lab.logs(5)}"

        started = time.monotonic()
        wait_until(holds, timeout, what, interval=0.5, describe=describe)
        # In the test log, so a run says how long each phase took against its bound.
        Logger(namespace="tests.lab.swim").info(
            "{what}: {seconds:.1f} s (bound {bound:g} s)",
            what=what,
            seconds=time.monotonic() - started,
            bound=timeout,
        )

    def test_a_cluster_of_20_through_faults(self) -> None:
        nodes = self.nodes
        seed = nodes[0]
        for node in nodes[1:]:
            node.start(seed.endpoint)
        # The seed starts last: everyone has tried it and found nobody.
        time.sleep(3.0)
        seed.start(None)
        alive = {node.name: "alive" for node in nodes}
        self.wait_views(nodes, alive, CONVERGE, "20 processes started in any order in one cluster")

        # Stalls shorter than the shortest suspicion: refuted, nobody dead.
        stalled = [nodes[3], nodes[8], nodes[13], nodes[18]]
        for node in stalled:
            assert node.process is not None
            node.process.sigstop()
        time.sleep(2.0)
        for node in stalled:
            assert node.process is not None
            node.process.sigcont()
        # Loss on every host; the cluster must stay whole.
        for host in self.lab.hosts:
            host.loss(5.0)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            self.no_false_death(nodes, set())
            time.sleep(1.0)
        for host in self.lab.hosts:
            host.heal()
        self.wait_views(nodes, alive, CONVERGE, "the cluster whole after stalls and loss")
        self.no_false_death(nodes, set())

        # Kill 10 %: both dead everywhere, within the bound.
        victims = [nodes[7], nodes[16]]
        for node in victims:
            assert node.process is not None
            node.process.sigkill()
        survivors = [node for node in nodes if node not in victims]
        self.wait_views(survivors, {v.name: "dead" for v in victims}, DETECT, "the killed processes dead")
        self.no_false_death(survivors, {v.name for v in victims})

        # A partition into two halves: each side sees the other dead.
        left = [node for node in survivors if node.host.index <= 2]
        right = [node for node in survivors if node.host.index > 2]
        for host in self.lab.hosts:
            others = [h for h in self.lab.hosts if (h.index <= 2) != (host.index <= 2)]
            host.iptables_batch(
                rule
                for other in others
                for rule in (f"-A INPUT -s {other.address} -j DROP", f"-A OUTPUT -d {other.address} -j DROP")
            )
        self.wait_views(left, {n.name: "dead" for n in right}, PARTITION, "the right side dead on the left")
        self.wait_views(right, {n.name: "dead" for n in left}, PARTITION, "the left side dead on the right")

        for host in self.lab.hosts:
            host.heal()
        self.wait_views(
            survivors, {n.name: "alive" for n in survivors}, HEAL, "one cluster again after the heal"
        )

    def no_false_death(self, observers: list[SwimNode], dead: set[str]) -> None:
        for observer in observers:
            states = observer.states() or {}
            wrongly = {peer for peer, state in states.items() if state == "dead" and peer not in dead}
            self.assertEqual(wrongly, set(), f"{observer.name} holds healthy members dead")
