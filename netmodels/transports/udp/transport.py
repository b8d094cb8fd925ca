"""
One session on UDP, as an ``ITransport``: the protocol above it (the
connection manager's wrapper, then a Session) sees a stream of whole frames,
FIN and RST as on TCP.

``write`` is the reliable channel, a byte stream; ``write_unreliable`` sends
whole frames a datagram at a time (see :class:`~netmodels.transports.
interfaces.IDatagramTransport`). Which frames take which channel is the
caller's decision: this module never reads a message type.
"""

from __future__ import annotations

import errno as _errno
import struct
from operator import itemgetter
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core import datagram
from netmodels.core.datagram import DATA_HEADER, SEGMENT_HEADER, Kind, Packet, SequenceWindow
from netmodels.core.frames import BAD_LENGTH, walk_frames
from netmodels.core.reasons import CloseReason
from netmodels.core.reliable import ReliableReceiver, ReliableSender
from netmodels.transports.interfaces import IConnectionObserver, IDatagramTransport
from netmodels.transports.udp.options import DatagramOptions, udp_address

__all__ = ["DATA_KIND", "SESSION_ID", "DatagramTransport", "SessionSocket", "data_route", "new_session"]

DATA_KIND = int(Kind.DATA)
SESSION_ID = struct.Struct("!Q")
_SEQUENCE = struct.Struct("!I")
#: After a DATA header's kind and session id: its sequence number, and the length of its first frame.
_SEQUENCE_AND_LENGTH = struct.Struct("!II")
#: A DATA datagram carrying one frame is this long plus the frame's length field.
_ONE_FRAME = DATA_HEADER + 4


#: A DATA datagram's frames: all of it after the header.
_FRAMES = itemgetter(slice(DATA_HEADER, None))


#: The bytes that begin every DATA datagram of a session: its key in a socket's routes.
ROUTE_PREFIX = 9


def data_route(session_id: int) -> bytes:
    """The first :data:`ROUTE_PREFIX` bytes of the session's DATA datagrams."""
    return bytes((DATA_KIND,)) + SESSION_ID.pack(session_id)


#: Frames written during a burst that share one datagram, at most: a datagram
#: leaves as soon as it holds this many, so the peer works on those while we
#: handle the rest of the burst. Grouping a whole burst's replies would leave
#: one datagram in flight each way, the two sides taking turns. With 16
#: requests in flight, 4 keeps both sides busy (4 trains of 4); 8 left them
#: waiting on each other half the time once the client got faster.
GROUPED_FRAMES = 4

#: Bytes waiting for the reliable window past which the writer is paused
#: (Twisted pauses a TCP producer at the same size).
_HIGH_WATER = 65536
_LOW_WATER = 16384


class SessionSocket:
    """What a session sends through: a listening socket, or a dialled one."""

    counters: dict[str, int]

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        raise NotImplementedError

    def forget(self, session: DatagramTransport) -> None:
        raise NotImplementedError


@implementer(ITransport, IDatagramTransport)
class DatagramTransport:
    """
    One session on UDP. The protocol above it is told the errno of a
    RESET, that the peer is alive, and that the reliable channel gave up,
    if it provides :class:`~netmodels.transports.interfaces.IConnectionObserver`.
    """

    def __init__(
        self,
        sock: SessionSocket,
        session_id: int,
        peer: tuple[str, int],
        host: IAddress,
        options: DatagramOptions,
        clock: IReactorTime,
    ) -> None:
        self.protocol: Any = None
        self.connected = 1
        self.disconnecting = False
        self.session_id = session_id
        self.peer_address = peer
        #: The (address, nonce) of the OPEN that made it (a listener's key for resent OPENs).
        self.opened_by: tuple[tuple[str, int], int] | None = None
        self.reliable = options.reliable
        self.datagrams_in = 0
        self.datagrams_out = 0
        self._observer: IConnectionObserver | None = None
        self._socket = sock
        self._host = host
        self._peer = udp_address(*peer)
        self._options = options
        self._max_payload = options.max_datagram - DATA_HEADER
        self._clock = clock
        self._sender = ReliableSender(options.max_datagram - SEGMENT_HEADER, options.window)
        self._receiver = ReliableReceiver(window=4 * options.window)
        self._window = SequenceWindow()
        self._next_data = 0
        self._data_prefix = data_route(session_id)
        self._stream = bytearray()
        #: While a burst of DATA is delivered, the frames written unreliably
        #: meanwhile are held and sent together (a reply to each request of a
        #: burst), GROUPED_FRAMES writes at a time: ``_held`` those writes, joined.
        self._delivering = False
        self._held = b""
        self._held_writes = 0
        self._retransmit_call: IDelayedCall | None = None
        self._ack_call: IDelayedCall | None = None
        self._producer: Any = None
        self._paused = False
        self._fin_received = False

    def attach(self, protocol: Any) -> None:
        """Deliver to ``protocol``; report to it too if it is an ``IConnectionObserver``."""
        self.protocol = protocol
        self._observer = protocol if IConnectionObserver.providedBy(protocol) else None

    # ITransport

    def write(self, data: bytes) -> None:
        """The reliable channel: ``data`` arrives once, in order, as on TCP."""
        if not self.connected or self.disconnecting:
            return
        if self._held:
            self._send_held()  # what was written before goes before
        self._sender.queue(data)
        self._pump()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def write_unreliable(self, frames: bytes) -> None:
        """Whole frames, as few datagrams as hold them; each may be lost."""
        if not self.connected or self.disconnecting:
            return
        limit = self._max_payload
        size = len(frames)
        if size <= limit:
            if self._delivering:
                held = self._held
                if not held:
                    # The usual case, one reply: held until the delivery ends.
                    self._held = frames
                    self._held_writes = 1
                    return
                if len(held) + size > limit:
                    # Not in one datagram with those held: they leave first.
                    self._send_data(held)
                    self._held = frames
                    self._held_writes = 1
                    return
                writes = self._held_writes + 1
                if writes < GROUPED_FRAMES:
                    self._held = held + frames
                    self._held_writes = writes
                else:
                    self._held = b""
                    self._send_data(held + frames)
                return
            # A message, a request, a probe (or a corked burst that fits): one datagram.
            self._send_data(frames)
            return
        if self._held:
            self._send_held()
        self._send_frames(frames)

    def _send_held(self) -> None:
        # Never over one datagram: write_unreliable sends what is held before it would be.
        held = self._held
        self._held = b""
        self._send_data(held)

    def _send_frames(self, frames: bytes) -> None:
        """Whole frames over one datagram's size: as few datagrams as hold them."""
        limit = self._max_payload
        ends, needed = walk_frames(frames, limit - 4)
        if needed == BAD_LENGTH:
            raise ValueError(f"a frame does not fit one datagram of {limit} bytes")
        if needed:
            raise ValueError("write_unreliable takes whole frames")
        start = 0
        last = 0
        for end in ends:
            if end - start > limit:
                self._send_data(frames[start:last])
                start = last
            last = end
        self._send_data(frames[start:])

    def loseConnection(self) -> None:
        """Send what is queued, then FIN; the session ends when the peer acknowledges it."""
        if not self.connected or self.disconnecting:
            return
        if self._held:
            self._send_held()
        self.disconnecting = True
        self._sender.close()
        self._pump()

    def abortConnection(self) -> None:
        """RESET: the peer sees ``reset``; what is unsent is dropped."""
        if not self.connected:
            return
        reset = datagram.encode_reset(self.session_id)
        # Sent twice: nothing acknowledges a RESET, and one lost datagram
        # would leave the peer to find out by keepalive.
        self._send(reset)
        self._send(reset)
        self._lost(error.ConnectionAborted())

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    def datagram_status(self) -> dict[str, Any]:
        """Datagrams each way, retransmissions, the unreliable channel's counts (for ``GET /status``)."""
        return {
            "datagrams_in": self.datagrams_in,
            "datagrams_out": self.datagrams_out,
            "retransmissions": self._sender.retransmissions,
            "reliable": self.reliable,
            "unreliable": self._window.as_dict(),
        }

    def use_reliable_channel(self) -> None:
        """Record that application data takes the reliable channel from now on (the peer asked for it)."""
        self.reliable = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self._paused = False

    def unregisterProducer(self) -> None:
        self._producer = None

    # From the socket

    def datagram_received(self, packet: Packet) -> None:
        """A SEGMENT, ACK or RESET of this session (DATA comes to :meth:`data_received`)."""
        self.datagrams_in += 1
        kind = packet.kind
        if kind is Kind.SEGMENT:
            self._peer_heard()
            self._segment_received(packet)
        elif kind is Kind.ACK:
            self._peer_heard()
            self._ack_received(packet)
        elif kind is Kind.RESET:
            self._peer_gone(_errno.ECONNRESET, error.ConnectionLost("RESET from peer"))

    def refused(self) -> None:
        """ICMP port unreachable on our connected socket: nothing listens there now."""
        self._peer_gone(_errno.ECONNREFUSED, error.ConnectionRefusedError("ICMP port unreachable"))

    # Internals

    def _peer_heard(self) -> None:
        # Keepalive sees only what reaches dataReceived; an ACK, or a segment held back
        # for reordering, proves the peer alive too (as any segment does for TCP's
        # keepalive). Without it a side that only sends would depend on PINGs alone,
        # and under loss three lost PING/PONG pairs in a row are a false death.
        if self._observer is not None:
            self._observer.resetKeepalive()

    def data_received(self, data: bytes) -> None:
        """A whole DATA datagram of this session (header included)."""
        self.data_burst([data])

    def data_burst(self, batch: list[bytes]) -> None:
        """
        DATA datagrams of this session (headers included) from one read
        burst, in arrival order. Their frames go up in one piece, as a TCP
        read's do, and what is written unreliably meanwhile leaves grouped,
        :data:`GROUPED_FRAMES` frames to a datagram (see ``write_unreliable``).
        """
        count = len(batch)
        self.datagrams_in += count
        window = self._window
        if count == 1:
            # A request or its response, alone: the next datagram, carrying one frame?
            data = batch[0]
            size = len(data)
            if size > _ONE_FRAME:
                sequence, length = _SEQUENCE_AND_LENGTH.unpack_from(data, 9)
                if length + _ONE_FRAME == size and window.take_next(sequence):
                    self._deliver_data(data[DATA_HEADER:])
                    return
        highest = window.highest
        if count > 1 and highest >= 0:
            size = len(batch[0])
            if (
                size > _ONE_FRAME
                # The first carries one frame (not several: replies grouped)?
                and _SEQUENCE_AND_LENGTH.unpack_from(batch[0], 9)[1] + _ONE_FRAME == size
                and list(map(len, batch)).count(size) == count
            ):
                # A flood of messages of one size: are they in order (after
                # the highest, perhaps past some lost before the burst), a
                # frame each? Checked in C.
                first = _SEQUENCE.unpack_from(batch[0], 9)[0]
                if (
                    first + count <= 0x100000000
                    and datagram.unwrap(first, highest) > highest
                    and datagram.single_frames_in_order(b"".join(batch), size, first, count)
                ):
                    window.accept(first)  # counts what was lost before it
                    window.advance(count - 1)
                    self._deliver_data(b"".join(map(_FRAMES, batch)))
                    return
        # The sequence number that comes next in order (none before the first).
        expected = (highest + 1) & 0xFFFFFFFF if highest >= 0 else -1
        in_order = 0
        payloads = []
        unpack = _SEQUENCE_AND_LENGTH.unpack_from
        for data in batch:
            size = len(data)
            if size >= _ONE_FRAME:
                sequence, length = unpack(data, 9)
                if sequence == expected and length:
                    # The common cases: the next datagram, carrying one
                    # frame, or several whole ones (replies grouped).
                    payload = data[DATA_HEADER:]
                    if length + _ONE_FRAME != size and not datagram.whole_frames(payload):
                        self._socket.counters["malformed"] += 1
                        continue
                    expected = (sequence + 1) & 0xFFFFFFFF
                    in_order += 1
                    payloads.append(payload)
                    continue
            else:
                sequence = _SEQUENCE.unpack_from(data, 9)[0]
            if in_order:
                window.advance(in_order)
                in_order = 0
            payload = data[DATA_HEADER:]
            # Checked first: a malformed datagram must not move the window.
            if not datagram.whole_frames(payload):
                self._socket.counters["malformed"] += 1
                continue
            if window.accept(sequence):
                payloads.append(payload)
            expected = (window.highest + 1) & 0xFFFFFFFF
        if in_order:
            window.advance(in_order)
        if payloads:
            self._deliver_data(payloads[0] if len(payloads) == 1 else b"".join(payloads))

    def _deliver_data(self, frames: bytes) -> None:
        if not self.connected:
            return
        if self._delivering:
            # Delivered from within a delivery (the protocol read a socket?): the outer one sends.
            self.protocol.dataReceived(frames)
            return
        self._delivering = True
        try:
            self.protocol.dataReceived(frames)
        finally:
            self._delivering = False
            # _send_held(), inline: this runs for every reply.
            held = self._held
            if held:
                self._held = b""
                self._send_data(held)

    def _segment_received(self, packet: Packet) -> None:
        chunks = self._receiver.accept(packet.sequence, packet.flags, packet.payload)
        self._schedule_ack()
        if chunks:
            stream = self._stream
            for chunk in chunks:
                stream += chunk
            self._deliver_stream()
        if self._receiver.fin and not self._fin_received and self.connected:
            self._fin_received = True
            # The FIN's ACK goes now (twice: after it we forget the session).
            self._send_ack()
            self._send_ack()
            self._lost(error.ConnectionDone())

    def _deliver_stream(self) -> None:
        stream = self._stream
        ends, needed = walk_frames(stream, self._options.max_frame)
        # A bad length goes up whole: the session's decoder ends with protocol-error.
        position = len(stream) if needed == BAD_LENGTH else ends[-1] if ends else 0
        if position:
            frames = bytes(stream[:position])
            del stream[:position]
            if self.connected:
                self.protocol.dataReceived(frames)

    def _ack_received(self, packet: Packet) -> None:
        now = self._clock.seconds()
        sender = self._sender
        for sequence, flags, payload in sender.acknowledge(packet.sequence, packet.ack_bits, now):
            self._send_segment(sequence, flags, payload)
        if sender.finished and self.disconnecting:
            self._lost(error.ConnectionDone())
            return
        self._pump()

    def _pump(self) -> None:
        sender = self._sender
        for sequence, flags, payload in sender.take(self._clock.seconds()):
            self._send_segment(sequence, flags, payload)
        self._arm()
        producer = self._producer
        if producer is not None:
            if not self._paused and sender.buffered > _HIGH_WATER:
                self._paused = True
                producer.pauseProducing()
            elif self._paused and sender.buffered < _LOW_WATER:
                self._paused = False
                producer.resumeProducing()

    def _arm(self) -> None:
        due = self._sender.next_timeout()
        call = self._retransmit_call
        if due is None:
            if call is not None and call.active():
                call.cancel()
            self._retransmit_call = None
            return
        delay = max(0.0, due - self._clock.seconds())
        if call is None or not call.active():
            self._retransmit_call = self._clock.callLater(delay, self._retransmit)
        elif call.getTime() > due:
            call.reset(delay)

    def _retransmit(self) -> None:
        self._retransmit_call = None
        if not self.connected:
            return
        now = self._clock.seconds()
        sender = self._sender
        oldest = sender.oldest_unacknowledged()
        user_timeout = self._options.user_timeout
        if oldest is not None and user_timeout and now - oldest >= user_timeout:
            self._give_up(now - oldest)
            return
        for sequence, flags, payload in sender.expired(now):
            self._send_segment(sequence, flags, payload)
        self._arm()

    def _give_up(self, waited: float) -> None:
        detail = (
            f"reliable channel: {self._sender.in_flight} segments unacknowledged for {waited:.3g} s "
            f"after {self._sender.retransmissions} retransmissions (user timeout "
            f"{self._options.user_timeout:g} s)"
        )
        if self._observer is not None:
            self._observer.end(CloseReason.TIMEOUT, detail)
        if self.connected:
            self.abortConnection()

    def _peer_gone(self, number: int, reason: Exception) -> None:
        if not self.connected:
            return
        if self._observer is not None:
            self._observer.record_errno(number)
        self._lost(reason)

    def _schedule_ack(self) -> None:
        # One ACK per reactor turn, however many segments arrived in it.
        if self._ack_call is None:
            self._ack_call = self._clock.callLater(0, self._send_ack)

    def _send_ack(self) -> None:
        call, self._ack_call = self._ack_call, None
        if call is not None and call.active():
            call.cancel()
        expected, bits = self._receiver.ack_fields()
        self._send(datagram.encode_ack(self.session_id, expected, bits))

    def _send_data(self, frames: bytes) -> None:
        # encode_data_header's bytes, from the session's constant prefix.
        sequence = self._next_data
        self._next_data = sequence + 1
        self.datagrams_out += 1
        header = self._data_prefix + _SEQUENCE.pack(sequence & 0xFFFFFFFF)
        self._socket.send(header + frames, self.peer_address)

    def _send_segment(self, sequence: int, flags: int, payload: bytes) -> None:
        self._send(datagram.encode_segment(self.session_id, sequence, flags, payload))

    def _send(self, data: bytes) -> None:
        self.datagrams_out += 1
        self._socket.send(data, self.peer_address)

    def _lost(self, reason: Exception) -> None:
        if not self.connected:
            return
        self.connected = 0
        self._held = b""
        for call in (self._retransmit_call, self._ack_call):
            if call is not None and call.active():
                call.cancel()
        self._retransmit_call = self._ack_call = None
        self._socket.forget(self)
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(Failure(reason))


def new_session(
    factory: Factory[Any],
    sock: SessionSocket,
    session_id: int,
    peer: tuple[str, int],
    host: IAddress,
    options: DatagramOptions,
    clock: IReactorTime,
) -> DatagramTransport | None:
    protocol = factory.buildProtocol(udp_address(*peer))
    if protocol is None:
        return None
    transport = DatagramTransport(sock, session_id, peer, host, options, clock)
    transport.attach(protocol)
    protocol.makeConnection(transport)
    return transport
