"""
Integration: sessions over UDP (``--transport udp``) on real loopback sockets.

- client-server: request/response; ``session.close()`` is ``clean`` on both
  sides, ``session.reset()`` is ``aborted`` here and ``reset`` there; a
  stopping server node says BYE (``clean`` at the client); a ``twistd``
  server SIGKILLed while a ``twistd`` client sends leaves the client's
  connected socket an ICMP port unreachable: ``refused``, read from its
  ``GET /status``.
- a listener bound to one address gives each session a socket of its own,
  connected to the peer: a client whose socket closes without a word is
  ``refused`` at the server's next datagram; past the descriptor budget, and
  on a wildcard listener, sessions share the listening socket.
- many-to-one chat (the reliable channel, the chat's default): a line from
  one of three clients reaches the two others exactly once.
- p2p: four in-process nodes mesh through a bootstrap peer over ``udp:``
  endpoints; every broadcast is delivered exactly once to each other node.
- ``twistd netmodels --transport udp`` serves ``/status`` with transport
  ``udp``; ``--listen udp:...`` without ``--transport udp`` is a usage error.

The deterministic behaviour (loss, duplicates, retransmission, hostile
datagrams) is tested on a fake network in ``test_udp.py``; this module checks
that the same holds on the kernel's sockets. Nothing sleeps for an outcome:
every wait is an event or a poll under a deadline.
"""

from __future__ import annotations

import collections
import signal
import socket
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.node import NodeConfig
from netmodels.topologies.p2p.options import P2PSettings
from netmodels.topologies.p2p.topology import mesh_of
from netmodels.transports.udp.connected import open_connected, share_address

from ._support import (
    LISTEN_ANY_PORT,
    LOOPBACK,
    TIMEOUT,
    ChildProcess,
    RunningNode,
    make_config,
    ready_pair,
    record_id,
    spawn_twistd,
    start_node,
    status_port,
    unique_id,
)
from .test_integration_many_to_one import NotifyingChat
from .test_integration_p2p import get_json, poll

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]

#: Where an in-process node listens for UDP sessions.
UDP_LISTEN = f"udp:0:interface={LOOPBACK}"
#: Keepalive of the twistd processes: a silent peer is declared dead within 2 s.
FAST_KEEPALIVE = "1,0.25,4"
#: How long a few nodes on loopback may take to handshake and mesh.
CONVERGE = 10.0


def udp_address(running: RunningNode) -> str:
    return f"udp:{LOOPBACK}:{running.port}"


def start_udp_server(testcase: TestCase, **config: Any) -> RunningNode:
    config.setdefault("listen", (UDP_LISTEN,))
    return start_node(testcase, make_config("server", transport="udp", **config))


def start_udp_client(testcase: TestCase, server: RunningNode, **config: Any) -> RunningNode:
    config.setdefault("connect", (udp_address(server),))
    return start_node(testcase, make_config("client", transport="udp", **config))


def udp_listening_port(child: ChildProcess) -> defer.Deferred[int]:
    """The port a twistd netmodels node logged ``listening on udp:127.0.0.1:PORT`` for."""
    return child.wait_for(rb"listening on udp:127\.0\.0\.1:(\d+)").addCallback(
        lambda match: int(match.group(1))
    )


def reason_of(record: Any) -> tuple[Any, Any, Any]:
    return (record.reason, record.initiator, record.errno)


class ClientServerUDPTests(TestCase):
    """One server and one client node in this process, over UDP on loopback."""

    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_request_response(self) -> Any:
        """
        Requests on the unreliable channel (the echo application's default)
        are answered with their own payload; a second pair on the reliable
        channel carries a 200 kB request and its response whole. Both records
        say ``transport: udp`` and count datagrams both ways.
        """
        server = start_udp_server(self)
        client = start_udp_client(self, server)
        _, on_client = yield ready_pair(server, client)
        self.assertFalse(server.node.datagram_options.reliable)

        payloads = [f"request {n:03d}".encode() * (n % 5 + 1) for n in range(50)]
        replies = yield defer.gatherResults(
            [on_client.session.request(payload) for payload in payloads], consumeErrors=True
        )
        self.assertEqual(replies, payloads)

        big = bytes(range(256)) * 800
        reliable_server = start_udp_server(self, reliable=True)
        reliable_client = start_udp_client(self, reliable_server, reliable=True)
        _, on_reliable = yield ready_pair(reliable_server, reliable_client)
        reply = yield on_reliable.session.request(big)
        self.assertEqual(reply, big)

        datagrams = {}  # by role
        for running in (server, client):
            document = running.node.status()
            self.assertEqual(document["node"]["transport"], "udp")
            (connection,) = document["connections"]
            self.assertEqual(connection["transport"], "udp")
            self.assertEqual(connection["state"], "open")
            stats = connection["datagram"]
            datagrams[running.node.config.role] = stats
            self.assertEqual(stats["unreliable"]["duplicates"], 0)
            self.assertIn("datagram", document)
        # A request a datagram; the replies to the requests of one read burst
        # leave together, in as few datagrams as hold them.
        self.assertGreater(datagrams["client"]["datagrams_out"], 50)
        self.assertGreater(datagrams["server"]["datagrams_in"], 50)
        self.assertLess(datagrams["server"]["datagrams_out"], 50)
        self.assertGreater(datagrams["client"]["datagrams_in"], 0)
        listeners = server.node.status()["datagram"]["listeners"]
        (counters,) = listeners.values()
        self.assertEqual(counters["sessions_opened"], 1)
        self.assertEqual(counters["malformed"], 0)
        self.assertEqual(counters["bad_cookie"], 0)
        self.assertEqual(reliable_client.node.status()["connections"][0]["datagram"]["reliable"], True)

    @defer.inlineCallbacks
    def test_session_close_is_clean_on_both_sides(self) -> Any:
        """``session.close()`` (BYE, then a reliable FIN): ``clean``, local here and remote there."""
        server = start_udp_server(self)
        client = start_udp_client(self, server)
        on_server, on_client = yield ready_pair(server, client)

        on_client.session.close()

        client_closed = yield client.events.wait("closed", record_id(on_client.record.id))
        server_closed = yield server.events.wait("closed", record_id(on_server.record.id))
        self.assertEqual(reason_of(client_closed.record), (CloseReason.CLEAN, Initiator.LOCAL, None))
        self.assertEqual(reason_of(server_closed.record), (CloseReason.CLEAN, Initiator.REMOTE, None))

    @defer.inlineCallbacks
    def test_session_reset_is_aborted_here_and_reset_there(self) -> Any:
        """``session.reset()`` sends RESET: ``aborted`` (local) here, ``reset`` (remote, ECONNRESET) there."""
        server = start_udp_server(self)
        client = start_udp_client(self, server)
        on_server, on_client = yield ready_pair(server, client)

        on_client.session.reset()

        client_closed = yield client.events.wait("closed", record_id(on_client.record.id))
        server_closed = yield server.events.wait("closed", record_id(on_server.record.id))
        self.assertEqual(reason_of(client_closed.record), (CloseReason.ABORTED, Initiator.LOCAL, None))
        self.assertEqual(reason_of(server_closed.record), (CloseReason.RESET, Initiator.REMOTE, "ECONNRESET"))

    @defer.inlineCallbacks
    def test_stopping_the_server_says_bye(self) -> Any:
        """A server node that stops says BYE to its UDP sessions: the client records ``clean`` (remote)."""
        server = start_udp_server(self)
        client = start_udp_client(self, server)
        on_server, on_client = yield ready_pair(server, client)

        started = time.monotonic()
        yield server.node.stopService()
        client_closed = yield client.events.wait("closed", record_id(on_client.record.id))
        server_closed = yield server.events.wait("closed", record_id(on_server.record.id))
        self.assertEqual(reason_of(client_closed.record), (CloseReason.CLEAN, Initiator.REMOTE, None))
        self.assertEqual(reason_of(server_closed.record), (CloseReason.CLEAN, Initiator.LOCAL, None))
        # The listening socket waited for its session to close, not for its deadline.
        self.assertLess(time.monotonic() - started, 2.0)


class OwnSocketUDPTests(TestCase):
    """A listener bound to one address gives each session a socket of its own, connected to the peer."""

    timeout = TIMEOUT

    def test_the_kernel_routes_by_connection(self) -> None:
        """
        What the design rests on: a socket bound to the listener's address and
        connected to one peer gets that peer's datagrams; anyone else's still
        go to the listening socket; a second listener cannot bind the port.
        """
        listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(listening.close)
        listening.bind((LOOPBACK, 0))
        address = listening.getsockname()
        share_address(listening.fileno(), socket.AF_INET)
        peer, stranger = (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        )
        for sock in (peer, stranger):
            self.addCleanup(sock.close)
            sock.bind((LOOPBACK, 0))
        own, taken = open_connected(address, peer.getsockname(), 2048)
        self.addCleanup(own.close)
        self.assertEqual(taken, [])
        peer.sendto(b"from the peer", address)
        stranger.sendto(b"from a stranger", address)
        listening.settimeout(TIMEOUT)
        own.settimeout(TIMEOUT)
        self.assertEqual(own.recv(2048), b"from the peer")
        self.assertEqual(listening.recvfrom(2048), (b"from a stranger", stranger.getsockname()))
        second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(second.close)
        with self.assertRaises(OSError):
            second.bind(address)

    @defer.inlineCallbacks
    def test_a_session_gets_its_own_socket(self) -> Any:
        """The session's requests are answered; a second listener on the port still fails to bind."""
        server = start_udp_server(self)
        client = start_udp_client(self, server)
        _, on_client = yield ready_pair(server, client)
        listener = server.node.listeners[0].port.listener
        (own,) = listener.own_sockets
        client_host = on_client.session.transport.getHost()
        self.assertEqual(own.peer, (client_host.host, client_host.port))
        reply = yield on_client.session.request(b"over its own socket")
        self.assertEqual(reply, b"over its own socket")
        with self.assertRaises(CannotListenError):
            reactor.listenUDP(server.port, DatagramProtocol(), interface=LOOPBACK)
        self.assertEqual(listener.counters["shared_sessions"], 0)

    @defer.inlineCallbacks
    def test_a_dead_client_is_refused_at_the_server(self) -> Any:
        """
        The client's socket closes without a word (as when its process is
        killed): the server's next datagram draws an ICMP port unreachable,
        which the session's connected socket reports: ``refused``.
        """
        server = start_udp_server(self)
        client = start_udp_client(self, server)
        on_server, on_client = yield ready_pair(server, client)
        # Under the client's session: the manager's wrapper, the UDP session, the dialler, its port.
        dialler = on_client.session.transport.transport._socket
        yield dialler.transport.stopListening()
        on_server.session.send(b"anyone there?")
        closed = yield server.events.wait("closed", record_id(on_server.record.id))
        self.assertEqual(reason_of(closed.record), (CloseReason.REFUSED, Initiator.REMOTE, "ECONNREFUSED"))

    @defer.inlineCallbacks
    def test_sessions_share_the_socket_past_the_budget_and_on_a_wildcard(self) -> Any:
        """Past its descriptor budget, or bound to a wildcard, a listener serves sessions on its socket."""
        server = start_udp_server(self)
        listener = server.node.listeners[0].port.listener
        listener.own_socket_budget = 0
        client = start_udp_client(self, server)
        _, on_client = yield ready_pair(server, client)
        reply = yield on_client.session.request(b"shared")
        self.assertEqual(reply, b"shared")
        self.assertEqual((listener.own_sockets, listener.counters["shared_sessions"]), (set(), 1))

        wildcard = start_udp_server(self, listen=("udp:0",))
        client = start_udp_client(self, wildcard, connect=(f"udp:{LOOPBACK}:{wildcard.port}",))
        _, on_client = yield ready_pair(wildcard, client)
        reply = yield on_client.session.request(b"wildcard")
        self.assertEqual(reply, b"wildcard")
        listener = wildcard.node.listeners[0].port.listener
        self.assertEqual((listener.own_sockets, listener.counters["shared_sessions"]), (set(), 0))


class ProcessKillUDPTests(TestCase):
    """A twistd server over UDP, SIGKILLed while a twistd client sends requests."""

    timeout = 30

    @defer.inlineCallbacks
    def test_sigkill_server_client_records_refused(self) -> Any:
        """
        Nothing says BYE or RESET for a killed process, but the kernel answers
        the client's next datagram with ICMP port unreachable, which its
        connected socket reports: ``refused`` (remote, ECONNREFUSED), well
        before the keepalive bound.
        """
        common = ["--transport", "udp", "--keepalive", FAST_KEEPALIVE, "--status", LISTEN_ANY_PORT]
        server = spawn_twistd(
            self,
            ["netmodels", *common, "--role", "server", "--listen", UDP_LISTEN, "--node-id", unique_id("srv")],
        )
        port = yield udp_listening_port(server)
        server_status = yield status_port(server)
        client = spawn_twistd(
            self,
            [
                "netmodels",
                *common,
                "--role",
                "client",
                "--connect",
                f"udp:{LOOPBACK}:{port}",
                "--interval",
                "0.05",
                "--node-id",
                unique_id("cli"),
            ],
        )
        client_status = yield status_port(client)

        @defer.inlineCallbacks
        def answered() -> Any:
            document = yield get_json(client_status)
            open_ = [c for c in document["connections"] if c["state"] == "open"]
            # A few requests answered: the client is sending steadily.
            return open_[0] if len(open_) == 1 and open_[0]["messages_in"] >= 5 else False

        before = yield poll(answered, CONVERGE, "the client's requests answered over UDP")
        self.assertEqual(before["transport"], "udp")
        on_server = yield get_json(server_status)
        self.assertEqual([c["transport"] for c in on_server["connections"]], ["udp"])

        killed = time.time()
        server.kill("KILL")
        yield server.ended
        self.assertEqual(server.signal, signal.SIGKILL)

        @defer.inlineCallbacks
        def closed() -> Any:
            document = yield get_json(client_status)
            (record,) = [c for c in document["connections"] if c["id"] == before["id"]]
            return record if record["state"] in ("closed", "failed") else False

        record = yield poll(closed, CONVERGE, "the client to record its session closed")
        detected = record["closed_at"] - killed
        self.assertEqual(
            (record["reason"], record["initiator"], record["errno"]), ("refused", "remote", "ECONNREFUSED")
        )
        # The next request (every 0.05 s) draws the ICMP: far inside the 2 s keepalive bound.
        self.assertLess(detected, 1.0)
        # Its redials are refused at once too (the INIT draws the ICMP), not timed out.
        document = yield poll(
            lambda: get_json(client_status).addCallback(
                lambda d: d if any(c["state"] == "failed" for c in d["connections"]) else False
            ),
            CONVERGE,
            "a redial to fail",
        )
        failed = [c for c in document["connections"] if c["state"] == "failed"]
        self.assertEqual({(c["reason"], c["errno"]) for c in failed}, {("refused", "ECONNREFUSED")})
        self.assertEqual(document["node"]["connecting"][0]["last_reason"], "refused")
        self.assertTrue(client.running)
        self.assertNotIn("Traceback", client.text)
        self.log_detection(detected)

    def log_detection(self, seconds: float) -> None:
        from twisted.logger import Logger

        Logger(namespace="tests.udp").info("killed UDP server: client refused after {s:.3f} s", s=seconds)


class ManyToOneUDPTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_a_line_reaches_the_other_two_clients_exactly_once(self) -> Any:
        server = start_udp_server(self, topology="many-to-one", app="chat", node_id=unique_id("hub"))
        self.assertTrue(server.node.datagram_options.reliable)
        names = ["alice", "bob", "carol"]
        clients = []
        for name in names:
            config = make_config(
                "client",
                topology="many-to-one",
                app="chat",
                transport="udp",
                connect=(udp_address(server),),
                node_id=unique_id(name),
            )
            clients.append(start_node(self, config, NotifyingChat(config)))
        yield defer.gatherResults([ready_pair(server, client) for client in clients], consumeErrors=True)
        apps = [client.node.application for client in clients]
        assert all(isinstance(app, NotifyingChat) for app in apps)

        # Each client says one line, and one says fifty more at once.
        for app in apps:
            app.say(f"hi from {app.node_id}".encode())
        burst = [f"line {n:02d}".encode() for n in range(50)]
        for line in burst:
            apps[0].say(line)
        waits = []
        for index, app in enumerate(apps):
            for other in apps:
                if other is not app:
                    waits.append(app.heard(f"{other.node_id}: hi from {other.node_id}".encode()))
            if index:
                waits.append(app.heard(f"{apps[0].node_id}: line 49".encode()))
        yield defer.gatherResults(waits, consumeErrors=True)

        for index, app in enumerate(apps):
            received = list(app.recent)
            expected = [
                f"{other.node_id}: hi from {other.node_id}".encode() for other in apps if other is not app
            ]
            if index:
                expected += [f"{apps[0].node_id}: ".encode() + line for line in burst]
            self.assertEqual(sorted(received), sorted(expected))
            self.assertEqual(app.received, len(expected))
            if index:
                # In the order the sender said them.
                from_first = [
                    line for line in received if line.startswith(f"{apps[0].node_id}: line".encode())
                ]
                self.assertEqual(from_first, [f"{apps[0].node_id}: ".encode() + line for line in burst])
        for client in clients:
            (connection,) = client.node.status()["connections"]
            self.assertEqual(connection["transport"], "udp")
            self.assertTrue(connection["datagram"]["reliable"])


class P2PUDPTests(TestCase):
    """
    Four in-process p2p nodes over UDP: a mesh from one bootstrap peer (each
    dials the others at the ``udp:`` endpoints they advertise), and a flood
    of broadcasts from each: membership by connections (``--swim off``), so
    every copy is counted (SWIM over UDP: tests/test_integration_swim.py).
    """

    timeout = 30
    COUNT = 4

    def start_peer(self, index: int, bootstrap: RunningNode | None, reliable: bool | None) -> RunningNode:
        config = NodeConfig(
            topology="p2p",
            role="peer",
            app="broadcast",
            transport="udp",
            listen=(UDP_LISTEN,),
            connect=() if bootstrap is None else (udp_address(bootstrap),),
            node_id=unique_id(f"ud{index}"),
            interval=0,
            reliable=reliable,
            settings=P2PSettings(swim=None),
        )
        return start_node(self, config)

    @defer.inlineCallbacks
    def flood(self, messages: int, reliable: bool | None) -> Any:
        """Mesh, then ``messages`` broadcasts from each node; returns (nodes, meshes, first hops)."""
        first = self.start_peer(0, None, reliable)
        nodes = [first] + [self.start_peer(i, first, reliable) for i in range(1, self.COUNT)]
        meshes = [mesh_of(n.node) for n in nodes]

        def full_mesh() -> bool:
            return all(
                len([m for m in mesh.members.values() if m.session is not None]) == self.COUNT - 1
                and len(mesh.alive()) == self.COUNT - 1
                and len(running.manager.live) == self.COUNT - 1
                for mesh, running in zip(meshes, nodes, strict=True)
            )

        yield poll(full_mesh, CONVERGE, "four UDP nodes meshed", interval=0.01)
        first_hops = 0
        for mesh in meshes:
            for i in range(messages):
                first_hops += mesh.broadcast(f"{mesh.node_id} #{i}".encode())
        return nodes, meshes, first_hops

    def check_exactly_once(self, nodes: list[RunningNode], meshes: list[Any], messages: int) -> None:
        expected = messages * (self.COUNT - 1)
        for running, mesh in zip(nodes, meshes, strict=True):
            received = running.node.application.received  # type: ignore[attr-defined]
            counts = collections.Counter(received)
            self.assertEqual(len(received), expected)
            self.assertEqual(set(counts.values()), {1}, "a message delivered twice")
            wanted = {
                (other.node_id, f"{other.node_id} #{i}".encode())
                for other in meshes
                if other is not mesh
                for i in range(messages)
            }
            self.assertEqual(set(counts), wanted)
            document = running.node.status()
            self.assertEqual({c["transport"] for c in document["connections"]}, {"udp"})
            self.assertTrue(all(where.startswith("udp:") for where in document["node"]["listening"]))

    @defer.inlineCallbacks
    def test_reliable_each_broadcast_delivered_once(self) -> Any:
        """
        On the reliable channel every copy sent is read (what a full socket
        buffer drops is retransmitted), and each node delivers each of the
        others' broadcasts exactly once, in the order its origin sent them.
        """
        messages = 50
        nodes, meshes, first_hops = yield self.flood(messages, reliable=True)
        expected = messages * (self.COUNT - 1)

        def settled() -> bool:
            counters = [mesh.counters for mesh in meshes]
            received = sum(c["delivered"] + c["duplicates"] for c in counters)
            sent = first_hops + sum(c["forwarded"] for c in counters)
            return all(c["delivered"] >= expected for c in counters) and received == sent

        yield poll(settled, CONVERGE, "every broadcast delivered and every copy read", interval=0.01)
        self.check_exactly_once(nodes, meshes, messages)
        for running, mesh in zip(nodes, meshes, strict=True):
            received = running.node.application.received  # type: ignore[attr-defined]
            for other in meshes:
                if other is not mesh:
                    from_other = [p for origin, p in received if origin == other.node_id]
                    self.assertEqual(from_other, [f"{other.node_id} #{i}".encode() for i in range(messages)])

    @defer.inlineCallbacks
    def test_unreliable_broadcasts_delivered_once(self) -> Any:
        """
        The broadcast application's default, the unreliable channel: a datagram
        may be lost (a full receive buffer drops it), but the flood's redundant
        paths deliver each of a small burst, and never one twice.
        """
        messages = 10
        nodes, meshes, _ = yield self.flood(messages, reliable=None)
        self.assertFalse(nodes[0].node.datagram_options.reliable)
        expected = messages * (self.COUNT - 1)
        yield poll(
            lambda: all(mesh.counters["delivered"] >= expected for mesh in meshes),
            CONVERGE,
            "every broadcast delivered",
            interval=0.01,
        )
        self.check_exactly_once(nodes, meshes, messages)


class TwistdUDPTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_status_says_udp(self) -> Any:
        """``twistd netmodels --transport udp --listen udp:0:...``: /status has the datagram section."""
        child = spawn_twistd(
            self,
            ["netmodels", "--transport", "udp", "--listen", UDP_LISTEN, "--status", LISTEN_ANY_PORT],
        )
        port = yield udp_listening_port(child)
        status = yield status_port(child)
        document = yield get_json(status)
        self.assertEqual(document["node"]["transport"], "udp")
        self.assertEqual(document["node"]["listening"], [f"udp:{LOOPBACK}:{port}"])
        datagram = document["datagram"]
        self.assertEqual(list(datagram["listeners"]), [f"udp:{LOOPBACK}:{port}"])
        self.assertEqual(datagram["listeners"][f"udp:{LOOPBACK}:{port}"]["sessions_opened"], 0)
        self.assertIn("max_datagram", datagram)
        self.assertNotIn("Traceback", child.text)

    @defer.inlineCallbacks
    def test_udp_endpoint_needs_transport_udp(self) -> Any:
        child = spawn_twistd(self, ["netmodels", "--listen", UDP_LISTEN])
        yield child.ended
        self.assertNotIn(child.exit_code, (0, None), child.text)
        self.assertIn("--transport udp", child.text)
        self.assertNotIn("Traceback", child.text)
