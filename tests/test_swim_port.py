"""
SWIM over real UDP sockets on loopback (netmodels.topologies.p2p.swim_port).

Short protocol periods (0.1 s) keep each test to a second or two; every wait
polls with deferLater, nothing sleeps for an outcome.
"""

from __future__ import annotations

import os
import random
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netmodels.topologies.p2p.addresses import swim_seed_of
from netmodels.topologies.p2p.swim import Swim, SwimConfig
from netmodels.topologies.p2p.swim_port import (
    PacketSeal,
    SwimPort,
    format_address,
    parse_address,
    routed_source,
)
from tests.test_integration_p2p import poll

FAST = SwimConfig(
    protocol_period=0.1,
    probe_timeout=0.04,
    gossip_interval=0.02,
    push_pull_interval=2.0,
    rejoin_interval=1.0,
    join_retry=0.1,
)
#: Long enough for a few nodes on loopback at 0.1 s periods, on a busy CI machine.
DEADLINE = 10.0


class Sniffer(DatagramProtocol):
    """A UDP socket that keeps every datagram it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


def free_udp_port() -> int:
    """A UDP port number nobody listens on now (closed again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SwimPortTests(TestCase):
    def start(
        self, name: str, seeds: tuple[str, ...] = (), keyring: tuple[bytes, ...] = (), number: int = 0
    ) -> Swim:
        port = SwimPort(reactor, name, 1, FAST, keyring, random.Random(name))
        listening = reactor.listenUDP(number, port, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        self.addCleanup(port.halt)
        self.ports[name] = port
        return port.begin(seeds)

    def setUp(self) -> None:
        self.ports: dict[str, SwimPort] = {}

    def cluster(self, size: int, keyring: tuple[bytes, ...] = ()) -> list[Swim]:
        first = self.start("node-0", keyring=keyring)
        return [first] + [self.start(f"node-{i}", (first.address,), keyring) for i in range(1, size)]

    @staticmethod
    def sees(observers: list[Swim], node_id: str, state: str) -> bool:
        for observer in observers:
            member = observer.members.get(node_id)
            if member is None or member.as_dict()["state"] != state:
                return False
        return True

    @staticmethod
    def meshed(nodes: list[Swim]) -> bool:
        return all(sorted(n.alive()) == sorted(o.node_id for o in nodes if o is not n) for n in nodes)

    @defer.inlineCallbacks
    def test_a_cluster_forms_and_sees_a_crash_and_a_leave(self) -> Any:
        nodes = self.cluster(5)
        yield poll(lambda: self.meshed(nodes), DEADLINE, "five ports see each other alive")
        self.ports["node-3"].halt()
        yield poll(lambda: self.sees(nodes[:3] + nodes[4:], "node-3", "dead"), DEADLINE, "node-3 dead")
        self.ports["node-4"].leave()
        yield poll(lambda: self.sees(nodes[:3], "node-4", "left"), DEADLINE, "node-4 left")

    @defer.inlineCallbacks
    def test_a_seed_that_starts_last_still_gathers_everyone(self) -> Any:
        number = free_udp_port()
        early = [self.start(f"early-{i}", (f"127.0.0.1:{number}",)) for i in range(4)]
        # Each has tried the seed, and tried again: nobody was there.
        yield poll(lambda: all(n.counts["syncs"] >= 2 for n in early), DEADLINE, "join attempts")
        seed = self.start("seed", number=number)
        yield poll(lambda: self.meshed([seed, *early]), DEADLINE, "one cluster")

    @defer.inlineCallbacks
    def test_a_dns_name_seed_is_resolved(self) -> Any:
        first = self.start("named-0")
        _, number = parse_address(first.address)
        second = self.start("named-1", (f"localhost:{number}",))
        yield poll(lambda: self.meshed([first, second]), DEADLINE, "joined through localhost")

    def test_bound_to_every_interface_it_advertises_the_source_routed_to_its_seed(self) -> None:
        seed = self.start("a")
        port = SwimPort(reactor, "b", 1, FAST, (), random.Random(0))
        listening = reactor.listenUDP(0, port, interface="0.0.0.0")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        self.addCleanup(port.halt)
        swim = port.begin([seed.address])
        self.assertEqual(swim.address, format_address("127.0.0.1", listening.getHost().port))
        self.assertEqual(routed_source(["127.0.0.1:1", "10.9.9.9:1"]), "127.0.0.1")
        self.assertEqual(routed_source(["[::1]:1"], socket.AF_INET6), "::1")

    @defer.inlineCallbacks
    def test_sealed_packets_hide_everything_and_cleartext_does_not(self) -> Any:
        for keyring, visible in (((os.urandom(32),), False), ((), True)):
            sniffer = Sniffer()
            listening = reactor.listenUDP(0, sniffer, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(listening.stopListening)
            secret = f"node-secret-{len(keyring)}"
            self.start(secret, (f"127.0.0.1:{listening.getHost().port}",), keyring)
            received = sniffer.received
            yield poll(lambda: received, DEADLINE, "a join packet at the sniffer")  # noqa: B023
            self.assertEqual(any(secret.encode() in data for data in received), visible)

    @defer.inlineCallbacks
    def test_a_wrong_key_never_joins_and_its_packets_are_counted(self) -> Any:
        nodes = self.cluster(3, (os.urandom(32),))
        yield poll(lambda: self.meshed(nodes), DEADLINE, "the keyed cluster")
        outsider = self.start("outsider", (nodes[0].address,), (os.urandom(32),))
        counts = self.ports["node-0"].counts
        yield poll(lambda: counts["unsealed_dropped"] >= 3, DEADLINE, "the outsider's packets dropped")
        self.assertNotIn("outsider", nodes[0].members)
        self.assertEqual(outsider.alive(), [])

    @defer.inlineCallbacks
    def test_rotation_steps_interoperate(self) -> Any:
        # The procedure of docs/security.rst: install the new key second on
        # every node, then put it first on every node, then drop the old one.
        old, new = os.urandom(32), os.urandom(32)
        first = self.cluster(2, (old,))
        first.append(self.start("installed", (first[0].address,), (old, new)))
        yield poll(lambda: self.meshed(first), DEADLINE, "old-only and new-installed nodes")
        second = [self.start("second-0", keyring=(old, new))]
        second.append(self.start("second-1", (second[0].address,), (new, old)))
        yield poll(lambda: self.meshed(second), DEADLINE, "old-first and new-first nodes")


class PacketSealTests(SynchronousTestCase):
    def test_round_trip_and_rotation(self) -> None:
        old, new = os.urandom(32), os.urandom(32)
        sealed = PacketSeal([old]).seal(b"membership")
        self.assertEqual(PacketSeal([new, old]).open(sealed), b"membership")
        self.assertIsNone(PacketSeal([new]).open(sealed))

    def test_tampered_or_short_packets_do_not_open(self) -> None:
        seal = PacketSeal([os.urandom(32)])
        sealed = seal.seal(b"membership")
        for data in (sealed[:-1] + bytes((sealed[-1] ^ 1,)), sealed[:20], b"", b"\x02" + sealed[1:]):
            self.assertIsNone(seal.open(data))

    def test_seeds_from_bootstrap_peers(self) -> None:
        self.assertEqual(swim_seed_of("tcp:127.0.0.1:8760", "tcp", None), "127.0.0.1:8760")
        # A name stays a name (resolved on each contact); over UDP sessions SWIM is one port up.
        self.assertEqual(swim_seed_of("tcp:host=nm.svc:port=8750", "tcp", None), "nm.svc:8750")
        self.assertEqual(swim_seed_of("udp:10.0.0.1:9000", "udp", None), "10.0.0.1:9001")
        # --swim udp:PORT: the peers are taken to run SWIM on the same port as we do.
        self.assertEqual(swim_seed_of("tcp:10.0.0.1:8760", "tcp", 7946), "10.0.0.1:7946")
        self.assertIsNone(swim_seed_of("unix:path=/run/nm.sock", "tcp", None))

    def test_addresses(self) -> None:
        self.assertEqual(parse_address("10.0.0.1:7946"), ("10.0.0.1", 7946))
        self.assertEqual(parse_address("[::1]:7946"), ("::1", 7946))
        self.assertEqual(parse_address("seeds.example:7946"), ("seeds.example", 7946))
        self.assertEqual(format_address("::1", 7946), "[::1]:7946")
        for bad in ("7946", "host:", "host:0", "host:70000", "::1:7946", ":7946"):
            with self.subTest(bad):
                self.assertRaises(ValueError, parse_address, bad)
