"""
Sessions over UDP, deterministically: two nodes on a :class:`DatagramNetwork`
and a :class:`Clock`. Handshake, keepalive, the reliable channel, every close
reason, limits, and what forged or malformed datagrams may (not) do.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netmodels.core import datagram
from netmodels.core.datagram import parse
from netmodels.core.frames import MessageType, encode_frame
from netmodels.runtime.node import Node
from netmodels.runtime.session import MessageTooLarge, Session
from netmodels.testing import DatagramNetwork
from netmodels.topologies.client_server import ClientServer
from netmodels.transports.udp.transport import GROUPED_FRAMES
from tests.test_testing import (
    CLIENT_ID,
    EPSILON,
    KEEPALIVE_BOUND,
    SERVER_ID,
    RecordingApplication,
    _result,
    advance_by,
    advance_to,
    make_node,
)

SERVER = ("10.0.0.2", 7000)
CLIENT_HOST = "10.0.0.1"
LATENCY = 0.001


class UdpPair:
    """A client-server pair over UDP on a fake datagram network."""

    def __init__(
        self,
        *,
        server_config: dict[str, Any] | None = None,
        client_config: dict[str, Any] | None = None,
        clients: int = 1,
        seed: int = 1,
    ) -> None:
        self.clock = Clock()
        self.network = DatagramNetwork(self.clock, LATENCY, seed=seed, source=CLIENT_HOST)
        self.server_app = RecordingApplication()
        self.server = self._node(
            "server",
            SERVER_ID,
            self.server_app,
            listen=(f"udp:{SERVER[1]}:interface={SERVER[0]}",),
            **(server_config or {}),
        )
        self.client_apps = [RecordingApplication() for _ in range(clients)]
        self.clients = [
            self._node(
                "client",
                f"{CLIENT_ID}{index or ''}",
                app,
                connect=(f"udp:{SERVER[0]}:{SERVER[1]}",),
                **(client_config or {}),
            )
            for index, app in enumerate(self.client_apps)
        ]

    @property
    def client(self) -> Node:
        return self.clients[0]

    @property
    def client_app(self) -> RecordingApplication:
        return self.client_apps[0]

    def _node(self, role: str, node_id: str, app: RecordingApplication, **config: Any) -> Node:
        node = make_node(self.clock, role, node_id, app, transport="udp", **config)
        node.datagram_reactor = self.network
        ClientServer().build(node)
        for client in node.clients:
            client._draw = lambda: 0.0
        return node

    def start(self) -> None:
        self.server.startService()
        for client in self.clients:
            client.startService()
        advance_by(self.clock, 0.1)

    def session(self, node: Node) -> Session:
        [peer] = node.peers()
        assert isinstance(peer, Session)
        return peer

    def records(self, node: Node) -> list[dict[str, Any]]:
        return node.status()["connections"]

    def closed(self, node: Node) -> dict[str, Any]:
        """The one closed session of ``node`` (a client may be dialling again)."""
        [record] = [r for r in self.records(node) if r["state"] == "closed"]
        return record

    def listener_counters(self) -> dict[str, int]:
        [counters] = self.server.status()["datagram"]["listeners"].values()
        return counters


class HandshakeTests(SynchronousTestCase):
    def test_request_response(self) -> None:
        pair = UdpPair()
        pair.start()
        session = pair.session(pair.client)
        self.assertEqual(session.node_id, SERVER_ID)
        response = session.request(b"ping?")
        advance_by(pair.clock, 0.01)
        self.assertEqual(_result(response), b"ping?")
        [record] = pair.records(pair.server)
        self.assertEqual((record["transport"], record["state"]), ("udp", "open"))
        self.assertEqual(record["peer"], f"{CLIENT_HOST}:40000")
        self.assertEqual(pair.listener_counters()["sessions_opened"], 1)

    def test_handshake_survives_loss(self) -> None:
        pair = UdpPair(seed=3)
        pair.network.loss = 0.4
        pair.start()
        advance_by(pair.clock, 10)
        self.assertEqual(len(pair.client.peers()), 1)
        self.assertEqual(len(pair.server.peers()), 1)

    def test_resent_open_gets_the_same_session(self) -> None:
        pair = UdpPair()
        pair.server.startService()
        nonce = 99
        client = ("10.0.0.7", 5555)
        pair.network.inject(datagram.encode_init(nonce), client, SERVER)
        advance_by(pair.clock, 0.01)
        [cookie_size] = [size for source, dest, size in pair.network.log if dest == client]
        # The cookie the listener minted (its jar is stateless: minting again gives the same).
        listener = pair.server.listeners[0].port.listener  # type: ignore[union-attr]
        minted = parse(listener.cookies.mint(f"{client[0]}:{client[1]}", nonce))
        opening = datagram.encode_open(nonce, minted.issued, minted.mac)
        pair.network.inject(opening, client, SERVER)
        pair.network.inject(opening, client, SERVER)
        advance_by(pair.clock, 0.01)
        self.assertEqual(listener.counters["sessions_opened"], 1)
        self.assertEqual(cookie_size, 29)

    def test_connect_refused(self) -> None:
        pair = UdpPair()
        pair.client.startService()
        advance_by(pair.clock, 0.1)
        [record] = pair.records(pair.client)
        self.assertEqual(
            (record["state"], record["reason"], record["errno"]), ("failed", "refused", "ECONNREFUSED")
        )

    def test_connect_timeout(self) -> None:
        pair = UdpPair(client_config={"handshake_timeout": 3.0})
        pair.server.startService()
        pair.network.blackhole_host(SERVER[0])
        pair.client.startService()
        advance_to(pair.clock, 3.0 + EPSILON)
        [record] = pair.records(pair.client)
        self.assertEqual((record["state"], record["reason"]), ("failed", "timeout"))
        # INIT went out again and again meanwhile (0.25 s, doubling to 2 s).
        sent = [entry for entry in pair.network.log if entry[1] == SERVER]
        self.assertEqual(len(sent), 4)


class CloseReasonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = UdpPair()
        self.pair.start()

    def test_close_is_clean_on_both_sides(self) -> None:
        pair = self.pair
        pair.session(pair.client).close()
        advance_by(pair.clock, 0.1)
        client, server = pair.closed(pair.client), pair.closed(pair.server)
        self.assertEqual((client["reason"], client["initiator"]), ("clean", "local"))
        self.assertEqual((server["reason"], server["initiator"]), ("clean", "remote"))
        listener = pair.server.listeners[0].port.listener  # type: ignore[union-attr]
        self.assertEqual(listener.sessions, {})
        self.assertEqual(len(listener.time_wait), 1)

    def test_reset_is_aborted_here_and_reset_there(self) -> None:
        pair = self.pair
        pair.session(pair.client).reset()
        advance_by(pair.clock, 0.1)
        client, server = pair.closed(pair.client), pair.closed(pair.server)
        self.assertEqual((client["reason"], client["initiator"]), ("aborted", "local"))
        self.assertEqual(
            (server["reason"], server["initiator"], server["errno"]), ("reset", "remote", "ECONNRESET")
        )

    def test_icmp_port_unreachable_is_refused(self) -> None:
        pair = self.pair
        # The server's process dies: its socket is gone, nothing says BYE.
        port = pair.network.port_at(SERVER)
        assert port is not None
        del pair.network._ports[SERVER]
        pair.session(pair.client).send(b"anyone?")
        advance_by(pair.clock, 0.1)
        record = pair.closed(pair.client)
        self.assertEqual((record["reason"], record["errno"]), ("refused", "ECONNREFUSED"))

    def test_socket_closed_by_the_reactor_is_refused(self) -> None:
        # Twisted's epoll reactor takes the EPOLLERR of an ICMP port
        # unreachable for a disconnection and closes the port itself.
        pair = self.pair
        port = pair.network.port_at((CLIENT_HOST, 40000))
        assert port is not None
        port.stopListening()
        record = pair.closed(pair.client)
        self.assertEqual((record["reason"], record["errno"]), ("refused", "ECONNREFUSED"))
        # Nothing breaks on the other side: the server's shared socket hears
        # no ICMP error, so its session stays open (keepalive will judge it)
        # and its listening port stays bound.
        pair.session(pair.server).send(b"hello?")
        advance_by(pair.clock, 0.1)
        [server] = pair.records(pair.server)
        self.assertEqual((server["state"], server["reason"]), ("open", None))
        self.assertIsNotNone(pair.network.port_at(SERVER))

    def test_restarted_server_answers_reset(self) -> None:
        pair = self.pair
        pair.network.icmp = False
        del pair.network._ports[SERVER]
        restarted = UdpPair().server
        restarted.datagram_reactor = pair.network
        restarted.listeners.clear()
        restarted.listen(f"udp:{SERVER[1]}:interface={SERVER[0]}")
        restarted.startService()
        pair.session(pair.client).send(b"still there?")
        advance_by(pair.clock, 0.1)
        record = pair.closed(pair.client)
        self.assertEqual((record["reason"], record["errno"]), ("reset", "ECONNRESET"))

    def test_keepalive_timeout_within_the_bound(self) -> None:
        pair = self.pair
        sessions = [pair.session(pair.client), pair.session(pair.server)]
        heard = [session.machine.keepalive.last_received for session in sessions]
        pair.network.blackhole_host(SERVER[0])
        # The node's timer wheel runs deadlines on its 1/64 s slots.
        late = pair.server.session_settings.timers.granularity  # type: ignore[union-attr]
        advance_to(pair.clock, max(heard) + KEEPALIVE_BOUND + late)
        for node, last in zip((pair.client, pair.server), heard, strict=True):
            record = pair.closed(node)
            self.assertEqual(record["reason"], "timeout")
            self.assertIn("no answer to 3 keepalive probes", record["detail"])
            detected = record["closed_at"]
            self.assertGreaterEqual(detected, last + KEEPALIVE_BOUND)
            self.assertLessEqual(detected, last + KEEPALIVE_BOUND + late)

    def test_server_stop_says_bye(self) -> None:
        pair = self.pair
        stopped = pair.server.stopService()
        advance_by(pair.clock, 0.1)
        _result(stopped)
        record = pair.closed(pair.client)
        self.assertEqual((record["reason"], record["initiator"]), ("clean", "remote"))
        self.assertIsNone(pair.network.port_at(SERVER))


class ReliableChannelTests(SynchronousTestCase):
    def test_nothing_lost_duplicated_or_reordered(self) -> None:
        pair = UdpPair(server_config={"reliable": True}, client_config={"reliable": True}, seed=7)
        pair.start()
        pair.network.loss = 0.2
        pair.network.duplicate = 0.1
        pair.network.reorder = 0.2
        session = pair.session(pair.client)
        sent = [f"line {n}".encode() * (1 + n % 300) for n in range(300)]
        for message in sent:
            session.send(message)
        advance_by(pair.clock, 10)
        self.assertEqual(pair.server_app.messages, sent)
        stats = pair.records(pair.client)[0]["datagram"]
        self.assertGreater(stats["retransmissions"], 0)

    def test_gives_up_with_timeout(self) -> None:
        pair = UdpPair(client_config={"reliable": True, "user_timeout": 3.0})
        pair.start()
        pair.network.blackhole_host(SERVER[0])
        sent_at = pair.clock.seconds()
        pair.session(pair.client).send(b"into the void")
        advance_to(pair.clock, sent_at + 3.0 + 5)
        record = pair.closed(pair.client)
        self.assertEqual((record["reason"], record["initiator"]), ("timeout", "local"))
        self.assertIn("reliable channel", record["detail"])
        self.assertLess(record["closed_at"], sent_at + KEEPALIVE_BOUND)

    def test_acks_keep_a_sending_side_alive(self) -> None:
        """
        A client that only sends, on the reliable channel, hears nothing from
        the server but ACKs: with every PING and PONG lost, those ACKs are
        what keeps its keepalive from declaring the server dead (the lab's
        10 % loss soak found a false timeout here).
        """
        pair = UdpPair(server_config={"reliable": True}, client_config={"reliable": True})
        pair.start()
        # Unreliable DATA datagrams carry the PINGs and PONGs; segments and ACKs pass.
        pair.network.drop_if = lambda data: data[0] == datagram.Kind.DATA
        session = pair.session(pair.client)
        sends = int(2 * KEEPALIVE_BOUND / 0.5)
        for n in range(sends):
            session.send(b"reading %d" % n)
            advance_by(pair.clock, 0.5)
        self.assertEqual(len(pair.server_app.messages), sends)
        self.assertEqual([r["state"] for r in pair.records(pair.client)], ["open"])
        # Silence both ways, ACKs included, still ends it within the bound.
        session.send(b"last")
        pair.network.blackhole_host(SERVER[0])
        advance_by(pair.clock, KEEPALIVE_BOUND + 0.1)
        self.assertEqual(pair.closed(pair.client)["reason"], "timeout")

    def test_either_side_asking_makes_it_reliable_both_ways(self) -> None:
        pair = UdpPair(client_config={"reliable": True})
        pair.start()
        big = b"z" * 3000
        pair.session(pair.server).send(big)
        advance_by(pair.clock, 0.1)
        self.assertEqual(pair.client_app.messages, [big])
        [record] = pair.records(pair.server)
        self.assertTrue(record["datagram"]["reliable"])

    def test_large_messages_over_the_reliable_channel(self) -> None:
        pair = UdpPair(server_config={"reliable": True}, client_config={"reliable": True})
        pair.start()
        big = bytes(range(256)) * 40
        pair.session(pair.client).send(big)
        advance_by(pair.clock, 1)
        self.assertEqual(pair.server_app.messages, [big])


class UnreliableChannelTests(SynchronousTestCase):
    def test_loss_and_duplicates_are_counted(self) -> None:
        pair = UdpPair(seed=11)
        pair.start()
        pair.network.loss = 0.2
        pair.network.duplicate = 0.2
        pair.network.reorder = 0.2
        session = pair.session(pair.client)
        for n in range(500):
            # One a millisecond: a datagram held back lands among later ones.
            session.send(str(n).encode())
            advance_by(pair.clock, 0.001)
        advance_by(pair.clock, 1)
        [record] = pair.records(pair.server)
        stats = record["datagram"]["unreliable"]
        received = pair.server_app.messages
        self.assertEqual(len(received), len(set(received)))  # duplicates dropped
        self.assertEqual(stats["received"], len(received))
        self.assertGreater(stats["lost"], 50)
        self.assertGreater(stats["duplicates"], 30)
        self.assertGreater(stats["reordered"], 10)
        self.assertLess(len(received), 500)

    def test_a_message_over_the_datagram_limit_is_refused(self) -> None:
        pair = UdpPair()
        pair.start()
        session = pair.session(pair.client)
        limit = 1200 - 13 - 5
        session.send(b"x" * limit)
        with self.assertRaises(MessageTooLarge) as raised:
            session.send(b"x" * (limit + 1))
        self.assertIn("datagram limit", str(raised.exception))
        advance_by(pair.clock, 0.1)
        self.assertEqual(pair.server_app.messages, [b"x" * limit])

    def test_a_larger_datagram_limit(self) -> None:
        pair = UdpPair(server_config={"max_datagram": 9000}, client_config={"max_datagram": 9000})
        pair.start()
        pair.session(pair.client).send(b"y" * 8000)
        advance_by(pair.clock, 0.1)
        self.assertEqual(pair.server_app.messages, [b"y" * 8000])


class HostileTrafficTests(SynchronousTestCase):
    def test_bytes_to_unproven_addresses_stay_under_three_times(self) -> None:
        pair = UdpPair()
        pair.server.startService()
        for n in range(200):
            spoofed = (f"192.0.2.{n % 250}", 1000 + n)
            pair.network.inject(datagram.encode_init(n), spoofed, SERVER)
            # A forged OPEN (no cookie of ours) gets no answer at all.
            pair.network.inject(datagram.encode_open(n, 0, b"\0" * 16), spoofed, SERVER)
        advance_by(pair.clock, 0.1)
        received = sum(size for _, dest, size in pair.network.log if dest == SERVER)
        sent = sum(size for source, _, size in pair.network.log if source == SERVER)
        self.assertLessEqual(sent, 3 * received)
        counters = pair.listener_counters()
        self.assertEqual((counters["cookies_sent"], counters["bad_cookie"]), (200, 200))
        self.assertEqual(counters["sessions_opened"], 0)
        self.assertEqual(pair.server.manager.live, {})

    def test_garbage_and_forgeries_disturb_nobody(self) -> None:
        pair = UdpPair()
        pair.start()
        client_session = pair.session(pair.client)
        server_session_id = pair.server.listeners[0].port.listener.sessions  # type: ignore[union-attr]
        [session_id] = server_session_id
        client_address = (CLIENT_HOST, 40000)
        attacker = ("10.6.6.6", 6666)
        for payload in (b"", b"\xff" * 50, datagram.encode_ack(1, 2, 3)[:-1]):
            pair.network.inject(payload, client_address, SERVER)
        # The right session id from another address: forged.
        forged = datagram.encode_data_header(session_id, 0) + encode_frame(MessageType.DATA, b"evil")
        pair.network.inject(forged, attacker, SERVER)
        pair.network.inject(datagram.encode_reset(session_id), attacker, SERVER)
        # From the right address, DATA that is not whole frames.
        pair.network.inject(
            datagram.encode_data_header(session_id, 99) + b"\0\0\0\x09\x02", client_address, SERVER
        )
        advance_by(pair.clock, 0.1)
        counters = pair.listener_counters()
        self.assertEqual(counters["malformed"], 4)
        self.assertEqual(counters["forged"], 2)
        self.assertEqual(pair.server_app.messages, [])
        response = client_session.request(b"still fine")
        advance_by(pair.clock, 0.1)
        self.assertEqual(_result(response), b"still fine")

    def test_unknown_sessions_get_rate_limited_resets(self) -> None:
        pair = UdpPair()
        pair.server.startService()
        for n in range(500):
            pair.network.inject(
                datagram.encode_data_header(n, 0) + encode_frame(MessageType.DATA, b"?"),
                (CLIENT_HOST, 1),
                SERVER,
            )
        advance_by(pair.clock, 0.01)
        counters = pair.listener_counters()
        self.assertEqual(counters["unknown_session"], 500)
        self.assertEqual(counters["resets_sent"], 100)
        resets = [size for source, _, size in pair.network.log if source == SERVER]
        self.assertTrue(all(size == 9 for size in resets))

    def test_oversized_datagrams_are_dropped(self) -> None:
        pair = UdpPair()
        pair.start()
        [session_id] = pair.server.listeners[0].port.listener.sessions  # type: ignore[union-attr]
        big = datagram.encode_data_header(session_id, 5) + encode_frame(MessageType.DATA, b"z" * 1300)
        pair.network.inject(big, (CLIENT_HOST, 40000), SERVER)
        advance_by(pair.clock, 0.1)
        self.assertEqual(pair.listener_counters()["oversized"], 1)
        self.assertEqual(pair.server_app.messages, [])


class LimitTests(SynchronousTestCase):
    def test_session_limit_rejects(self) -> None:
        pair = UdpPair(server_config={"max_connections": 1}, clients=2)
        pair.start()
        records = sorted(pair.records(pair.server), key=lambda r: r["id"])
        self.assertEqual(records[0]["state"], "open")
        self.assertEqual((records[1]["reason"], records[1]["initiator"]), ("rejected", "local"))
        refused = [r for node in pair.clients for r in pair.records(node) if r["reason"] == "rejected"]
        self.assertEqual(len(refused), 1)
        self.assertIn("connection limit of 1", refused[0]["detail"])

    def test_per_address_limit_rejects(self) -> None:
        pair = UdpPair(server_config={"max_per_address": 1}, clients=2)
        pair.start()
        states = sorted(r["reason"] or r["state"] for r in pair.records(pair.server))
        self.assertEqual(states, ["open", "rejected"])


class BurstTests(SynchronousTestCase):
    """The DATA datagrams of one read burst, handed to their session at once."""

    def _server_transport(self, pair: UdpPair) -> Any:
        [transport] = pair.server.listeners[0].port.listener.sessions.values()
        return transport

    def test_a_burst_goes_up_in_one_piece_and_is_counted_one_by_one(self) -> None:
        pair = UdpPair()
        pair.start()
        transport = self._server_transport(pair)
        pieces: list[bytes] = []
        wrapper = transport.protocol
        deliver = wrapper.dataReceived
        wrapper.dataReceived = lambda data: (pieces.append(data), deliver(data))
        frame = encode_frame(MessageType.DATA, b"m")
        base = transport._window.highest + 1

        def data(offset: int, frames: bytes = frame) -> bytes:
            return datagram.encode_data_header(transport.session_id, base + offset) + frames

        malformed = data(7, b"\0\0\0\x09\x02")  # claims more than it carries
        two_frames = data(4, frame + frame)
        burst = [data(0), data(1), data(1), data(3), data(2), malformed, two_frames, data(5), data(6)]
        expected_window = datagram.SequenceWindow()
        for sequence in range(base):
            expected_window.accept(sequence)
        for offset in (0, 1, 1, 3, 2, 4, 5, 6):
            expected_window.accept(base + offset)
        malformed_before = pair.listener_counters()["malformed"]

        transport.data_burst(burst)

        self.assertEqual(len(pieces), 1)
        self.assertEqual(pair.server_app.messages, [b"m"] * 8)  # the duplicate dropped, both frames of 4
        self.assertEqual(transport._window.as_dict(), expected_window.as_dict())
        self.assertEqual(pair.listener_counters()["malformed"], malformed_before + 1)

    def test_a_malformed_datagram_in_order_is_dropped_and_moves_nothing(self) -> None:
        """
        The next datagram in order, carrying what is not whole frames, is
        counted malformed and dropped; the same sequence number, whole,
        is delivered after it, as are several frames in one datagram.
        """
        pair = UdpPair()
        pair.start()
        transport = self._server_transport(pair)
        frame = encode_frame(MessageType.DATA, b"m")
        base = transport._window.highest + 1

        def data(offset: int, frames: bytes = frame) -> bytes:
            return datagram.encode_data_header(transport.session_id, base + offset) + frames

        malformed_before = pair.listener_counters()["malformed"]
        transport.data_burst([data(0), data(1, frame + b"\0\0\0\x09\x02"), data(1), data(2, frame * 3)])
        self.assertEqual(pair.server_app.messages, [b"m"] * 5)
        self.assertEqual(pair.listener_counters()["malformed"], malformed_before + 1)
        self.assertEqual((transport._window.highest, transport._window.lost), (base + 2, 0))
        self.assertEqual([r["state"] for r in pair.records(pair.server)], ["open"])

    def test_a_same_size_burst_after_a_gap_is_counted_one_by_one(self) -> None:
        pair = UdpPair()
        pair.start()
        transport = self._server_transport(pair)
        frame = encode_frame(MessageType.DATA, b"m")
        base = transport._window.highest + 1
        expected_window = datagram.SequenceWindow()
        for sequence in range(base):
            expected_window.accept(sequence)
        for offsets in ([0, 1, 2], [5, 6, 7, 8], [8, 9], [12, 11, 13]):
            transport.data_burst(
                [datagram.encode_data_header(transport.session_id, base + n) + frame for n in offsets]
            )
            for n in offsets:
                expected_window.accept(base + n)
        self.assertEqual(transport._window.as_dict(), expected_window.as_dict())
        self.assertEqual(expected_window.lost, 3)  # 3, 4 and 10
        self.assertEqual(len(pair.server_app.messages), 11)

    def test_replies_to_a_burst_leave_grouped_and_part_way(self) -> None:
        pair = UdpPair()
        pair.start()
        transport = self._server_transport(pair)
        base = transport._window.highest + 1
        # When each request is handled: how many datagrams had left by then.
        out_at_request: list[int] = []

        def answer(payload: bytes) -> bytes:
            out_at_request.append(transport.datagrams_out)
            return payload

        pair.server_app.answer = answer
        sent_before = transport.datagrams_out
        burst = [
            datagram.encode_data_header(transport.session_id, base + n)
            + encode_frame(MessageType.REQUEST, (n + 1).to_bytes(4, "big") + b"question")
            for n in range(2 * GROUPED_FRAMES + 3)
        ]
        transport.data_burst(burst)
        # GROUPED_FRAMES replies to a datagram, the rest at the end of the burst...
        self.assertEqual(transport.datagrams_out, sent_before + 3)
        # ... and a full datagram leaves at once, while the burst is still handled:
        # the peer need not wait for all of them.
        self.assertEqual(
            out_at_request,
            [sent_before] * GROUPED_FRAMES + [sent_before + 1] * GROUPED_FRAMES + [sent_before + 2] * 3,
        )
        reply = len(encode_frame(MessageType.RESPONSE, b"0000question"))
        sizes = [size for source, _, size in pair.network.log if source == SERVER][-3:]
        header = datagram.DATA_HEADER
        self.assertEqual(sizes, [header + GROUPED_FRAMES * reply] * 2 + [header + 3 * reply])
        # Writes outside a burst go at once, a datagram each.
        transport.write_unreliable(encode_frame(MessageType.DATA, b"a"))
        transport.write_unreliable(encode_frame(MessageType.DATA, b"b"))
        self.assertEqual(transport.datagrams_out, sent_before + 5)

    def test_a_reliable_write_sends_what_is_held_first(self) -> None:
        """Order across the channels is kept: frames held for a group leave before a reliable write."""
        pair = UdpPair()
        pair.start()
        transport = self._server_transport(pair)
        unreliable = encode_frame(MessageType.DATA, b"u" * 10)
        reliable = encode_frame(MessageType.DATA, b"r" * 30)

        def answer(payload: bytes) -> bytes:
            transport.write_unreliable(unreliable)
            transport.write(reliable)
            return payload

        pair.server_app.answer = answer
        request = encode_frame(MessageType.REQUEST, (1).to_bytes(4, "big") + b"question")
        transport.data_burst(
            [datagram.encode_data_header(transport.session_id, transport._window.highest + 1) + request]
        )
        sizes = [size for source, _, size in pair.network.log if source == SERVER][-3:]
        response = len(encode_frame(MessageType.RESPONSE, b"0000question"))
        self.assertEqual(
            sizes,
            [
                datagram.DATA_HEADER + len(unreliable),
                datagram.SEGMENT_HEADER + len(reliable),
                datagram.DATA_HEADER + response,
            ],
        )

    def test_grouped_replies_never_exceed_a_datagram(self) -> None:
        pair = UdpPair()
        pair.start()
        transport = self._server_transport(pair)
        base = transport._window.highest + 1
        body = b"q" * 400  # two replies fit a datagram of 1200 bytes, three do not
        out_at_request: list[int] = []

        def answer(payload: bytes) -> bytes:
            out_at_request.append(transport.datagrams_out)
            return payload

        pair.server_app.answer = answer
        sent_before = transport.datagrams_out
        burst = [
            datagram.encode_data_header(transport.session_id, base + n)
            + encode_frame(MessageType.REQUEST, (n + 1).to_bytes(4, "big") + body)
            for n in range(5)
        ]
        transport.data_burst(burst)
        reply = len(encode_frame(MessageType.RESPONSE, (1).to_bytes(4, "big") + body))
        sizes = [size for source, _, size in pair.network.log if source == SERVER][-3:]
        header = datagram.DATA_HEADER
        self.assertEqual(sizes, [header + 2 * reply, header + 2 * reply, header + reply])
        # A full datagram leaves before the next request is handled.
        self.assertEqual(out_at_request, [sent_before + n for n in (0, 0, 0, 1, 1)])


class DiallerSocketTests(TestCase):
    """The dialler on a real connected socket: its sends skip Twisted's ``write``."""

    def test_refused_on_send_fails_the_dial(self) -> Deferred[None]:
        from twisted.internet import reactor
        from twisted.internet.error import ConnectionRefusedError
        from twisted.internet.protocol import Factory
        from twisted.python.failure import Failure

        from netmodels.transports.udp.dialler import Dialler
        from netmodels.transports.udp.options import DatagramOptions

        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        peer = closed.getsockname()
        closed.close()  # nobody listens there now
        result: Deferred[Any] = Deferred()
        dialler = Dialler(Factory(), peer, DatagramOptions(), Clock(), result)
        # The reactor closes the port on a later turn: the test waits for it,
        # so that nothing of it runs in another test.
        stopped: Deferred[None] = Deferred()
        stop_protocol = dialler.stopProtocol

        def stop() -> None:
            stop_protocol()
            stopped.callback(None)

        dialler.stopProtocol = stop  # type: ignore[method-assign]
        port: Any = reactor.listenUDP(0, dialler, interface="127.0.0.1")  # type: ignore[attr-defined]
        port.connect(*peer)
        dialler.begin()  # INIT; on loopback its ICMP port unreachable is queued at once
        self.assertIsNotNone(dialler._raw_send)  # the socket's own send, not Twisted's write
        outcomes: list[Failure] = []
        result.addErrback(outcomes.append)
        dialler.send(b"again", peer)  # the kernel reports it on this send
        [failure] = outcomes
        self.assertIsInstance(failure.value, ConnectionRefusedError)
        self.assertEqual(dialler.counters["send_dropped"], 0)
        self.assertIsNone(dialler.transport)  # the dialler closed its socket
        return stopped


class DiallerTests(SynchronousTestCase):
    """The dialler on a fake network."""

    def test_a_dial_cancelled_while_its_session_is_set_up(self) -> None:
        """Cancelled from the protocol's own set-up: the dial fails once, the session is reset."""
        from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
        from twisted.python.failure import Failure

        from netmodels.transports.udp.dialler import Dialler
        from netmodels.transports.udp.options import DatagramOptions

        clock = Clock()
        network = DatagramNetwork(clock, LATENCY, source=CLIENT_HOST)
        outcomes: list[Failure] = []
        result: Deferred[Any] = Deferred(lambda _: dialler.cancel())
        result.addErrback(outcomes.append)

        class Cancelling(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                result.cancel()  # say, the node stops while the session starts
                return Protocol()

        heard: list[bytes] = []
        server = DatagramProtocol()
        server.datagramReceived = lambda data, addr: heard.append(data)  # type: ignore[method-assign]
        network.listenUDP(SERVER[1], server, interface=SERVER[0])
        dialler = Dialler(Cancelling(), SERVER, DatagramOptions(), clock, result)
        port = network.listenUDP(0, dialler)
        port.connected_to = SERVER
        dialler.begin()
        dialler.datagramReceived(datagram.encode_accept(dialler.nonce, 42), SERVER)
        [failure] = outcomes
        self.assertIsInstance(failure.value, CancelledError)
        self.assertIsNone(dialler.session)
        self.assertIsNone(network.port_at(port.address))  # the socket is closed
        # The server is told (RESET) rather than left with a session nobody uses.
        clock.advance(LATENCY)
        kinds = [parse(data).kind for data in heard]
        self.assertEqual(
            kinds, [datagram.Kind.INIT, datagram.Kind.RESET, datagram.Kind.RESET]
        )  # RESET goes twice
