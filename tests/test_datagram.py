"""The sans-IO datagram layer: format, cookies, sequence accounting, the reliable stream."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core import datagram
from netmodels.core.datagram import (
    FIN,
    INIT_SIZE,
    CookieJar,
    Kind,
    MalformedDatagram,
    SequenceWindow,
    parse,
    unwrap,
    whole_frames,
)
from netmodels.core.frames import MessageType, encode_frame
from netmodels.core.reliable import ReliableReceiver, ReliableSender, RttEstimator
from netmodels.transports.udp import (
    DatagramClientEndpoint,
    DatagramOptions,
    DatagramServerEndpoint,
    parse_endpoint,
)


class FormatTests(SynchronousTestCase):
    def test_every_kind_round_trips(self) -> None:
        mac = bytes(range(16))
        samples = {
            Kind.INIT: (datagram.encode_init(7), {"nonce": 7, "version": 1}),
            Kind.COOKIE: (datagram.encode_cookie(7, 99, mac), {"nonce": 7, "issued": 99, "mac": mac}),
            Kind.OPEN: (datagram.encode_open(7, 99, mac), {"nonce": 7, "issued": 99, "mac": mac}),
            Kind.ACCEPT: (datagram.encode_accept(7, 2**63), {"nonce": 7, "session": 2**63}),
            Kind.DATA: (datagram.encode_data_header(5, 2**32 + 3) + b"xy", {"session": 5, "sequence": 3}),
            Kind.SEGMENT: (datagram.encode_segment(5, 9, FIN, b"abc"), {"sequence": 9, "flags": FIN}),
            Kind.ACK: (datagram.encode_ack(5, 10, 0b101), {"sequence": 10, "ack_bits": 0b101}),
            Kind.RESET: (datagram.encode_reset(5), {"session": 5}),
        }
        self.assertEqual(set(samples), set(Kind))
        for kind, (data, fields) in samples.items():
            packet = parse(data)
            self.assertIs(packet.kind, kind)
            for name, value in fields.items():
                self.assertEqual(getattr(packet, name), value, f"{kind.name}.{name}")
        self.assertEqual(parse(samples[Kind.DATA][0]).payload, b"xy")
        self.assertEqual(parse(samples[Kind.SEGMENT][0]).payload, b"abc")

    def test_init_is_padded_so_its_answer_is_smaller(self) -> None:
        self.assertEqual(len(datagram.encode_init(1)), INIT_SIZE)
        cookie = CookieJar(lambda: 0.0).mint("10.0.0.1:1", 1)
        self.assertLess(len(cookie), INIT_SIZE)

    def test_malformed(self) -> None:
        cases = {
            b"": "empty",
            b"\x00abc": "unknown datagram kind",
            datagram.encode_init(1)[:-1]: "INIT of 63 bytes",
            datagram.encode_reset(1) + b"x": "RESET of 10 bytes",
            datagram.encode_data_header(1, 1)[:-1]: "truncated DATA",
            datagram.encode_segment(1, 1, 0x80, b""): "unknown segment flags",
            datagram.encode_ack(1, 1, 1)[:5]: "ACK of 5 bytes",
        }
        for data, message in cases.items():
            with self.assertRaises(MalformedDatagram) as raised:
                parse(data)
            self.assertIn(message, str(raised.exception))

    @given(st.binary(max_size=200))
    @settings(max_examples=500, deadline=None)
    def test_arbitrary_bytes_parse_or_raise_malformed(self, data: bytes) -> None:
        try:
            packet = parse(data)
        except MalformedDatagram:
            return
        self.assertIsInstance(packet.kind, Kind)

    @given(st.sampled_from(list(Kind)), st.binary(max_size=80))
    @settings(max_examples=300, deadline=None)
    def test_each_kind_with_arbitrary_tail(self, kind: Kind, tail: bytes) -> None:
        try:
            packet = parse(bytes([kind]) + tail)
        except MalformedDatagram:
            return
        self.assertIs(packet.kind, kind)

    @given(st.binary(max_size=64))
    def test_whole_frames_never_raises(self, data: bytes) -> None:
        self.assertIsInstance(whole_frames(data), bool)

    def test_whole_frames(self) -> None:
        frames = encode_frame(MessageType.DATA, b"a") + encode_frame(MessageType.PING, b"\0" * 4)
        self.assertTrue(whole_frames(frames))
        self.assertFalse(whole_frames(frames[:-1]))
        self.assertFalse(whole_frames(frames + b"\0\0"))

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(
        first=st.one_of(
            st.integers(0, 2**32 - 1),
            st.sampled_from([0, 250, 2**8 - 3, 2**16 - 5, 2**24 - 7, 2**32 - 300]),
        ),
        count=st.integers(1, 1200),
        body=st.integers(1, 9),
        change=st.one_of(st.none(), st.tuples(st.integers(0, 1199), st.integers(9, 16), st.integers(0, 7))),
    )
    def test_single_frames_in_order(
        self, first: int, count: int, body: int, change: tuple[int, int, int] | None
    ) -> None:
        """Checked a header byte at a time, as checking each datagram's fields would."""
        count = min(count, 2**32 - first)
        datagrams = [
            datagram.encode_data_header(7, first + i) + encode_frame(MessageType.DATA, b"x" * (body - 1))
            for i in range(count)
        ]
        if change is not None:
            index, offset, bit = change
            changed = bytearray(datagrams[index % count])
            changed[offset] ^= 1 << bit
            datagrams[index % count] = bytes(changed)
        size = len(datagrams[0])

        def expected() -> bool:
            for i, data in enumerate(datagrams):
                sequence = int.from_bytes(data[9:13], "big")
                length = int.from_bytes(data[13:17], "big")
                if sequence != first + i or length != size - 17:
                    return False
            return True

        self.assertEqual(datagram.single_frames_in_order(b"".join(datagrams), size, first, count), expected())

    def test_unwrap(self) -> None:
        self.assertEqual(unwrap(5, 2**32 - 3), 2**32 + 5)
        self.assertEqual(unwrap(2**32 - 3, 2**32 + 5), 2**32 - 3)
        self.assertEqual(unwrap(7, 7), 7)


class CookieTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.jar = CookieJar(self.clock.seconds, secret=b"k" * 32)

    def _open(self, address: str, nonce: int = 42) -> datagram.Packet:
        cookie = parse(self.jar.mint(address, nonce))
        return parse(datagram.encode_open(cookie.nonce, cookie.issued, cookie.mac))

    def test_accepts_its_own_cookie(self) -> None:
        self.assertIsNone(self.jar.check("10.0.0.1:5000", self._open("10.0.0.1:5000")))

    def test_refuses_another_address(self) -> None:
        self.assertEqual(self.jar.check("10.0.0.9:5000", self._open("10.0.0.1:5000")), "bad cookie")

    def test_refuses_a_tampered_cookie(self) -> None:
        packet = self._open("10.0.0.1:5000")
        self.assertEqual(self.jar.check("10.0.0.1:5000", packet._replace(nonce=43)), "bad cookie")
        self.assertEqual(self.jar.check("10.0.0.1:5000", packet._replace(issued=1001)), "bad cookie")

    def test_expires(self) -> None:
        packet = self._open("10.0.0.1:5000")
        self.clock.advance(datagram.COOKIE_LIFETIME)
        self.assertIsNone(self.jar.check("10.0.0.1:5000", packet))
        self.clock.advance(1)
        self.assertEqual(self.jar.check("10.0.0.1:5000", packet), "expired cookie")

    def test_another_secret_refuses(self) -> None:
        other = CookieJar(self.clock.seconds, secret=b"j" * 32)
        self.assertEqual(other.check("10.0.0.1:5000", self._open("10.0.0.1:5000")), "bad cookie")


class SequenceWindowTests(SynchronousTestCase):
    def feed(self, sequences: list[int]) -> tuple[SequenceWindow, list[bool]]:
        window = SequenceWindow()
        return window, [window.accept(sequence) for sequence in sequences]

    def test_in_order(self) -> None:
        window, accepted = self.feed(list(range(10)))
        self.assertTrue(all(accepted))
        self.assertEqual(
            window.as_dict(), {"received": 10, "lost": 0, "duplicates": 0, "reordered": 0, "late": 0}
        )

    def test_loss_duplicates_and_reordering(self) -> None:
        window, accepted = self.feed([0, 1, 3, 2, 3, 6, 6, 7])
        self.assertEqual(accepted, [True, True, True, True, False, True, False, True])
        self.assertEqual(window.received, 6)
        self.assertEqual(window.lost, 2)  # 4 and 5
        self.assertEqual(window.duplicates, 2)
        self.assertEqual(window.reordered, 1)

    def test_older_than_the_window_is_late(self) -> None:
        window, accepted = self.feed([0, 100, 1])
        self.assertEqual(accepted, [True, True, False])
        self.assertEqual(window.late, 1)

    def test_wraps_at_32_bits(self) -> None:
        window, accepted = self.feed([2**32 - 2, 2**32 - 1, 0, 1])
        self.assertTrue(all(accepted))
        self.assertEqual(window.lost, 0)
        self.assertEqual(window.reordered, 0)

    def test_take_next_counts_as_accept_does(self) -> None:
        """take_next takes only the next in order (as accept would); the rest is left to accept."""
        sequences = [2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 2, 1, 1, 3, 70, 4, 71]
        by_accept, _ = self.feed(sequences)
        window = SequenceWindow()
        taken = []
        for sequence in sequences:
            if window.take_next(sequence):
                taken.append(sequence)
            else:
                window.accept(sequence)
        # Not the first (nothing is next before it), nor 2 after 0, 1 after 2, or 4 after 70.
        self.assertEqual(taken, [2**32 - 2, 2**32 - 1, 0, 3, 71])
        self.assertEqual(window.as_dict(), by_accept.as_dict())
        self.assertEqual((window.highest, window._bits), (by_accept.highest, by_accept._bits))


class RttTests(SynchronousTestCase):
    def test_rfc6298(self) -> None:
        rtt = RttEstimator()
        self.assertEqual(rtt.rto, RttEstimator.INITIAL_RTO)
        rtt.sample(0.1)
        self.assertAlmostEqual(rtt.srtt or 0, 0.1)
        self.assertAlmostEqual(rtt.rto, 0.1 + 4 * 0.05)
        rtt.sample(0.2)
        self.assertAlmostEqual(rtt.rttvar, 0.75 * 0.05 + 0.25 * 0.1)
        self.assertAlmostEqual(rtt.srtt or 0, 0.875 * 0.1 + 0.125 * 0.2)

    def test_bounds_and_back_off(self) -> None:
        rtt = RttEstimator()
        rtt.sample(0.0001)
        self.assertEqual(rtt.rto, RttEstimator.MIN_RTO)
        for _ in range(20):
            rtt.back_off()
        self.assertEqual(rtt.rto, RttEstimator.MAX_RTO)


def transfer(
    data: bytes, loss: float, duplicate: float, reorder: float, seed: int, window: int = 8
) -> tuple[bytes, ReliableSender, float]:
    """Move ``data`` through a sender and receiver over a lossy simulated path."""
    rng = random.Random(seed)
    sender = ReliableSender(segment_size=10, window=window)
    receiver = ReliableReceiver(window=4 * window)
    sender.queue(data)
    sender.close()
    now = 0.0
    received = bytearray()
    in_transit: list[tuple[float, str, tuple[int, ...], bytes]] = []

    def ship(when: float, kind: str, fields: tuple[int, ...], payload: bytes = b"") -> None:
        if rng.random() < loss:
            return
        for _ in range(2 if rng.random() < duplicate else 1):
            delay = 0.01 * (1 + (5 * rng.random() if rng.random() < reorder else 0))
            in_transit.append((when + delay, kind, fields, payload))

    for sequence, flags, payload in sender.take(now):
        ship(now, "segment", (sequence, flags), payload)
    for _ in range(100_000):
        if sender.finished and receiver.fin:
            break
        due = sender.next_timeout()
        arrivals = [item[0] for item in in_transit]
        now = min([*arrivals, *([due] if due is not None else [])])
        ready = [item for item in in_transit if item[0] <= now]
        in_transit = [item for item in in_transit if item[0] > now]
        for _, kind, fields, payload in sorted(ready, key=lambda item: item[0]):
            if kind == "segment":
                received += b"".join(receiver.accept(fields[0] & 0xFFFFFFFF, fields[1], payload))
                ship(now, "ack", receiver.ack_fields())
            else:
                for sequence, flags, chunk in sender.acknowledge(fields[0], fields[1], now):
                    ship(now, "segment", (sequence, flags), chunk)
        for sequence, flags, payload in sender.expired(now) + sender.take(now):
            ship(now, "segment", (sequence, flags), payload)
    return bytes(received), sender, now


class ReliableStreamTests(SynchronousTestCase):
    DATA = bytes(range(256)) * 4

    def test_lossless_path(self) -> None:
        received, sender, _ = transfer(self.DATA, 0, 0, 0, seed=1)
        self.assertEqual(received, self.DATA)
        self.assertEqual(sender.retransmissions, 0)
        self.assertTrue(sender.finished)

    def test_loss_duplication_and_reordering(self) -> None:
        for seed in range(20):
            received, sender, _ = transfer(self.DATA, 0.2, 0.1, 0.2, seed=seed)
            self.assertEqual(received, self.DATA, f"seed {seed}")
            self.assertGreater(sender.retransmissions, 0)

    @given(st.binary(min_size=1, max_size=300), st.integers(0, 2**16), st.floats(0, 0.4))
    @settings(max_examples=60, deadline=None)
    def test_any_stream_arrives_whole(self, data: bytes, seed: int, loss: float) -> None:
        received, _, _ = transfer(data, loss, 0.05, 0.1, seed=seed)
        self.assertEqual(received, data)

    def test_resends_stay_near_the_loss_with_the_default_window(self) -> None:
        """5 % loss both ways, 64 segments in flight: at most twice as many resends as losses."""
        data = bytes(range(256)) * 80
        for seed in range(3):
            received, sender, _ = transfer(data, 0.05, 0, 0, seed=seed, window=64)
            self.assertEqual(received, data)
            self.assertLessEqual(sender.retransmissions, 2 * 0.05 * sender.acknowledged, f"seed {seed}")

    def test_window_bounds_what_is_in_flight(self) -> None:
        sender = ReliableSender(segment_size=10, window=4)
        sender.queue(b"x" * 100)
        self.assertEqual(len(sender.take(0.0)), 4)
        self.assertEqual(sender.take(0.0), [])
        self.assertEqual(sender.buffered, 60)
        sender.acknowledge(2, 0, 0.01)
        self.assertEqual([s for s, _, _ in sender.take(0.01)], [4, 5])

    def test_fast_retransmit_after_three_later_segments(self) -> None:
        sender = ReliableSender(segment_size=1, window=10)
        sender.queue(b"abcdef")
        sender.take(0.0)
        # Segment 0 lost; 1, 2 arrive: not yet.
        self.assertEqual(sender.acknowledge(0, 0b011, 0.01), [])
        # 3 arrives too: three later segments acknowledged, 0 goes again.
        self.assertEqual(sender.acknowledge(0, 0b0111, 0.01), [(0, 0, b"a")])
        # Once only.
        self.assertEqual(sender.acknowledge(0, 0b1111, 0.01), [])

    def test_no_time_order_verdict_past_what_the_ack_reports(self) -> None:
        """
        Behind a hole, acknowledged segments leave the window and the sender
        goes on past the 64 segments an ACK's bitmap reports: the receiver
        may hold those, so an ACK that shows a later transmission arrived
        must not count them lost (they were most of the resends at 5 % loss).
        """
        every = (1 << 64) - 1
        sender = ReliableSender(segment_size=1, window=64)
        sender.queue(bytes(200))
        self.assertEqual([s for s, _, _ in sender.take(0.0)], list(range(64)))
        # 0 and 5 lost: both resent by time order, and the window moves on.
        resent = sender.acknowledge(0, every >> 1 & ~(1 << 4), 0.01)
        self.assertEqual([s for s, _, _ in resent], [0, 5])
        self.assertEqual([s for s, _, _ in sender.take(0.01)], list(range(64, 126)))
        # Both resends lost too; 64-125 arrive, only 64 is within the bitmap.
        self.assertEqual(sender.acknowledge(0, every & ~(1 << 4), 0.02), [])
        self.assertEqual([s for s, _, _ in sender.take(0.02)], [126])
        # The timeout resends 0, which arrives: the ACK reports 6-69, and
        # only 5 of what it reports is missing. 70-126 are not judged.
        due = sender.next_timeout()
        assert due is not None
        self.assertEqual([s for s, _, _ in sender.expired(due)], [0])
        self.assertEqual(sender.acknowledge(5, every, due + 0.01), [(5, 0, b"\0")])
        self.assertEqual(sender.retransmissions, 4)

    def test_timeout_retransmits_and_backs_off(self) -> None:
        sender = ReliableSender(segment_size=10, window=4)
        sender.queue(b"hello")
        sender.take(0.0)
        rto = sender.rtt.rto
        self.assertEqual(sender.next_timeout(), rto)
        self.assertEqual(sender.expired(rto - 0.001), [])
        self.assertEqual(sender.expired(rto), [(0, 0, b"hello")])
        self.assertEqual(sender.rtt.rto, 2 * rto)
        self.assertEqual(sender.oldest_unacknowledged(), 0.0)

    def test_karn_no_sample_from_a_retransmitted_segment(self) -> None:
        sender = ReliableSender(segment_size=10)
        sender.queue(b"x")
        sender.take(0.0)
        sender.expired(1.0)
        sender.acknowledge(1, 0, 1.2)
        self.assertIsNone(sender.rtt.srtt)

    def test_ack_beyond_what_was_sent_is_ignored(self) -> None:
        sender = ReliableSender(segment_size=10)
        sender.queue(b"x")
        sender.take(0.0)
        sender.acknowledge(50, 0, 0.1)
        self.assertEqual(sender.in_flight, 1)

    def test_receiver_holds_out_of_order_and_drops_duplicates(self) -> None:
        receiver = ReliableReceiver(window=4)
        self.assertEqual(receiver.accept(1, 0, b"b"), [])
        self.assertEqual(receiver.ack_fields(), (0, 0b1))
        self.assertEqual(receiver.accept(0, 0, b"a"), [b"a", b"b"])
        self.assertEqual(receiver.accept(0, 0, b"a"), [])
        self.assertEqual(receiver.duplicates, 1)
        self.assertEqual(receiver.accept(9, 0, b"far"), [])  # beyond the window
        self.assertEqual(receiver.ack_fields(), (2, 0))
        self.assertEqual(receiver.accept(2, FIN, b""), [])
        self.assertTrue(receiver.fin)


class EndpointStringTests(SynchronousTestCase):
    def test_server_forms(self) -> None:
        for description, port, interface in [
            ("udp:9000", 9000, ""),
            ("udp:9000:interface=127.0.0.1", 9000, "127.0.0.1"),
            (r"udp:port=0:interface=\:\:1", 0, "::1"),
            (r"udp:9000:interface=\:\:", 9000, "::"),
        ]:
            endpoint = parse_endpoint(None, description, server=True)
            assert isinstance(endpoint, DatagramServerEndpoint)
            self.assertEqual((endpoint.port, endpoint.interface), (port, interface), description)

    def test_client_forms(self) -> None:
        for description, host, port in [
            ("udp:127.0.0.1:9000", "127.0.0.1", 9000),
            ("udp:host=example.com:port=9000", "example.com", 9000),
            ("udp:[::1]:9000", "::1", 9000),
            (r"udp:host=\:\:1:port=9000", "::1", 9000),
        ]:
            endpoint = parse_endpoint(None, description, server=False)
            assert isinstance(endpoint, DatagramClientEndpoint)
            self.assertEqual((endpoint.host, endpoint.port), (host, port), description)

    def test_client_timeout_option(self) -> None:
        endpoint = parse_endpoint(None, "udp:127.0.0.1:9000:timeout=2.5", server=False)
        self.assertEqual(endpoint.options.connect_timeout, 2.5)

    def test_errors_say_what_is_wrong(self) -> None:
        for description, server, message in [
            ("tcp:9000", True, "not a udp endpoint"),
            ("udp:", True, "expected udp:PORT"),
            ("udp:70000", True, "bad port"),
            ("udp:9000:interface=eth0", True, "interface must be an IP address"),
            ("udp:9000:backlog=5", True, "unknown option 'backlog'"),
            ("udp:localhost", False, "expected udp:HOST:PORT"),
            ("udp:h:1:timeout=soon", False, "bad timeout"),
            ("udp:h:1:host=x", False, "expected udp:HOST:PORT"),
            ("udp:h:1:port=1:port=2", False, "given twice"),
        ]:
            with self.assertRaises(ValueError) as raised:
                parse_endpoint(None, description, server=server)
            self.assertIn(message, str(raised.exception), description)

    def test_datagram_size_bounds(self) -> None:
        with self.assertRaises(ValueError):
            DatagramOptions(max_datagram=100)
        with self.assertRaises(ValueError):
            DatagramOptions(max_datagram=65508)
        self.assertEqual(DatagramOptions(max_datagram=65507).max_unreliable_body, 65507 - 13 - 5)
