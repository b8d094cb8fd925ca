"""
The reliable channel of a UDP session, without I/O: an ordered, reliable
byte stream over the SEGMENT and ACK datagrams of :mod:`netmodels.core.datagram`
(cumulative + selective acknowledgements, retransmission on an RTT-based
timeout as in RFC 6298, fast retransmit, a bounded window). It carries every
control frame, and application data on request.
"""

from __future__ import annotations

from typing import Final

from netmodels.core.datagram import ACK_BITS, FIN, unwrap

__all__ = ["ReliableReceiver", "ReliableSender", "RttEstimator"]


class RttEstimator:
    """Retransmission timeout from RTT samples (RFC 6298), with Karn's rule left to the caller."""

    __slots__ = ("rto", "rttvar", "srtt")

    #: Far below TCP's 200 ms: datagram sessions run on LANs and loopback too,
    #: and the sender backs off exponentially anyway.
    MIN_RTO: Final = 0.05
    MAX_RTO: Final = 10.0
    INITIAL_RTO: Final = 0.5

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = self.INITIAL_RTO

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._settle()

    def _settle(self) -> None:
        if self.srtt is not None:
            self.rto = min(self.MAX_RTO, max(self.MIN_RTO, self.srtt + 4 * self.rttvar))

    def back_off(self) -> None:
        self.rto = min(self.MAX_RTO, self.rto * 2)

    def progress(self) -> None:
        """New data was acknowledged: the path works, so the back-off ends (as in TCP)."""
        self._settle()


class _InFlight:
    __slots__ = ("due", "first_sent", "flags", "payload", "sent", "transmission", "tries")

    def __init__(self, payload: bytes, flags: int, now: float, rto: float, transmission: int) -> None:
        self.payload = payload
        self.flags = flags
        self.first_sent = now
        self.sent = now
        #: When it is resent: each segment keeps the timeout it was sent
        #: with, so backing off for one never postpones another's retry.
        self.due = now + rto
        self.tries = 1
        #: Counts every (re)transmission of the stream: orders them in time.
        self.transmission = transmission


class ReliableSender:
    """
    The sending half of the reliable stream: bytes in, segments out.

    :param segment_size: stream bytes per segment (the datagram size less headers).
    :param window: most segments in flight, unacknowledged.
    """

    #: Transmissions that arrived after one still in flight before it counts
    #: as lost and is resent without waiting for its timeout (TCP's three
    #: duplicate ACKs).
    REORDER_THRESHOLD: Final = 3

    def __init__(self, segment_size: int, window: int = 64) -> None:
        self.segment_size = segment_size
        self.window = window
        self.rtt = RttEstimator()
        self._next = 0
        self._unsent = bytearray()
        self._in_flight: dict[int, _InFlight] = {}
        self._fin_queued = False
        self._fin_sent = False
        self.retransmissions = 0
        self.acknowledged = 0
        self._transmissions = 0
        self._delivered_transmission = 0

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet sent once."""
        return len(self._unsent)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def finished(self) -> bool:
        """FIN was sent and everything up to it acknowledged."""
        return self._fin_sent and not self._in_flight

    def queue(self, data: bytes) -> None:
        self._unsent += data

    def close(self) -> None:
        """End the stream after what is queued (FIN)."""
        self._fin_queued = True

    def take(self, now: float) -> list[tuple[int, int, bytes]]:
        """New segments the window allows: ``(sequence, flags, payload)``."""
        out = []
        unsent = self._unsent
        while len(self._in_flight) < self.window and (unsent or (self._fin_queued and not self._fin_sent)):
            payload = bytes(unsent[: self.segment_size])
            del unsent[: self.segment_size]
            flags = 0
            if self._fin_queued and not unsent:
                flags = FIN
                self._fin_sent = True
            sequence = self._next
            self._next += 1
            self._transmissions += 1
            self._in_flight[sequence] = _InFlight(payload, flags, now, self.rtt.rto, self._transmissions)
            out.append((sequence, flags, payload))
        return out

    def acknowledge(self, wire_expected: int, bits: int, now: float) -> list[tuple[int, int, bytes]]:
        """
        Apply an ACK: everything below ``expected``, and each sequence
        ``expected + 1 + i`` whose bit ``i`` is set, arrived. Returns the
        segments to resend at once (fast retransmit).
        """
        in_flight = self._in_flight
        if not in_flight:
            return []
        oldest = next(iter(in_flight))
        expected = unwrap(wire_expected, oldest)
        if expected > self._next:
            return []  # acknowledges what we never sent: ignore it
        newly = [sequence for sequence in in_flight if sequence < expected]
        if newly:
            self.rtt.progress()
        index = 0
        while bits:
            if bits & 1:
                sequence = expected + 1 + index
                if sequence in in_flight:
                    newly.append(sequence)
            bits >>= 1
            index += 1
        delivered = self._delivered_transmission
        for sequence in newly:
            segment = in_flight.pop(sequence)
            if segment.tries == 1:
                # Karn: only a segment sent once gives an unambiguous sample.
                self.rtt.sample(now - segment.sent)
            if segment.transmission > delivered:
                delivered = segment.transmission
            self.acknowledged += 1
        self._delivered_transmission = delivered
        # Lost, by time order (as Linux's RACK): a segment whose latest
        # transmission went out before three that have since arrived. This
        # also catches a lost retransmission, without waiting for a timeout.
        # Only of the segments this ACK reports on: past its bitmap (segments
        # in flight can reach further, once acknowledged ones leave the
        # window behind a hole) the receiver may hold them, and resending
        # those was most of the resends at 5 % loss.
        cutoff = delivered - self.REORDER_THRESHOLD
        horizon = expected + ACK_BITS
        lost = []
        for sequence, segment in in_flight.items():
            if sequence > horizon:
                break  # in sequence order: the rest are further still
            if segment.transmission <= cutoff:
                lost.append((sequence, segment))
        return [self._resend(sequence, segment, now) for sequence, segment in lost]

    def _resend(self, sequence: int, segment: _InFlight, now: float) -> tuple[int, int, bytes]:
        segment.tries += 1
        segment.sent = now
        segment.transmission = self._transmissions = self._transmissions + 1
        segment.due = now + self.rtt.rto
        self.retransmissions += 1
        return (sequence, segment.flags, segment.payload)

    def next_timeout(self) -> float | None:
        """When the oldest segment in flight is due for retransmission."""
        if not self._in_flight:
            return None
        return min(segment.due for segment in self._in_flight.values())

    def expired(self, now: float) -> list[tuple[int, int, bytes]]:
        """
        On a retransmission timeout, resend the oldest segment whose timeout
        passed, and back off (as TCP does). The others wait: the ACK that
        answers it shows which are lost (time order, see :meth:`acknowledge`),
        instead of a burst of resends of segments that may have arrived.
        """
        for sequence, segment in self._in_flight.items():
            if segment.due <= now:
                self.rtt.back_off()
                for other in self._in_flight.values():
                    # The rest wait another timeout (or the ACK's verdict).
                    if other is not segment and other.due <= now:
                        other.due = now + self.rtt.rto
                return [self._resend(sequence, segment, now)]
        return []

    def oldest_unacknowledged(self) -> float | None:
        """When the oldest segment still in flight was first sent."""
        for segment in self._in_flight.values():
            return segment.first_sent
        return None


class ReliableReceiver:
    """The receiving half: segments in any order in, the stream in order out."""

    def __init__(self, window: int = 256) -> None:
        self.window = window
        self.expected = 0
        self._held: dict[int, tuple[int, bytes]] = {}
        self.duplicates = 0
        self.fin = False

    def accept(self, wire_sequence: int, flags: int, payload: bytes) -> list[bytes]:
        """Take one segment; returns the stream bytes now in order (maybe none)."""
        sequence = unwrap(wire_sequence, self.expected)
        if sequence < self.expected or sequence in self._held or self.fin:
            self.duplicates += 1
            return []
        if sequence >= self.expected + self.window:
            return []  # beyond the window: the sender will resend it
        self._held[sequence] = (flags, payload)
        out = []
        held = self._held
        while self.expected in held:
            flags, chunk = held.pop(self.expected)
            self.expected += 1
            if chunk:
                out.append(chunk)
            if flags & FIN:
                self.fin = True
                held.clear()
                break
        return out

    def ack_fields(self) -> tuple[int, int]:
        """``(expected, bits)`` for an ACK: bit ``i`` (of 64) is segment ``expected + 1 + i``."""
        bits = 0
        expected = self.expected
        for sequence in self._held:
            offset = sequence - expected - 1
            if 0 <= offset < ACK_BITS:
                bits |= 1 << offset
        return expected, bits
