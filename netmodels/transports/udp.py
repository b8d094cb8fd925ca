"""
Sessions over UDP, as endpoints: what :mod:`netmodels.core.datagram` computes,
wired to Twisted's ``DatagramProtocol``.

Twisted has no datagram endpoints (twisted#4471); these give UDP the shape of
a stream endpoint, so a topology, the connection manager and a
:class:`~netmodels.runtime.session.Session` run on it unchanged:

* :class:`DatagramServerEndpoint` (``udp:PORT[:interface=ADDR]``) listens on
  one socket and demultiplexes sessions by id, after a stateless-cookie
  handshake;
* :class:`DatagramClientEndpoint` (``udp:HOST:PORT``) dials from a socket of
  its own, connected to the peer, so that ICMP port unreachable is seen
  (``refused``);
* each session is a :class:`DatagramTransport`: an ``ITransport`` whose
  ``write`` takes whole frames and sends control frames (and, on request,
  application data) over the reliable channel, and the rest one datagram
  each; ``loseConnection`` is a reliable FIN, ``abortConnection`` a RESET.

Use :func:`parse_endpoint` (or :class:`netmodels.runtime.node.Node`, which calls it for
``udp:`` descriptions).
"""

from __future__ import annotations

import errno as _errno
import re
import secrets
import socket
import struct
from typing import Any

import attrs
from attrs import frozen
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core import datagram
from netmodels.core.datagram import (
    DATA_HEADER,
    DEFAULT_MAX_DATAGRAM,
    MAX_DATAGRAM,
    MIN_DATAGRAM,
    SEGMENT_HEADER,
    CookieJar,
    Kind,
    MalformedDatagram,
    Packet,
    ReliableReceiver,
    ReliableSender,
    SequenceWindow,
)
from netmodels.core.frames import DEFAULT_MAX_FRAME, MessageType

__all__ = [
    "DatagramClientEndpoint",
    "DatagramListeningPort",
    "DatagramOptions",
    "DatagramServerEndpoint",
    "DatagramTransport",
    "is_datagram",
    "parse_endpoint",
]

_log = Logger(namespace="netmodels.udp")

#: Frame types that always take the unreliable channel: a keepalive probe
#: that is retransmitted would measure our retransmissions, not the path.
_ALWAYS_UNRELIABLE = frozenset({MessageType.PING, MessageType.PONG})
#: Application traffic: unreliable unless the reliable channel is requested.
_DATA_PLANE = frozenset(
    {
        MessageType.DATA,
        MessageType.REQUEST,
        MessageType.RESPONSE,
        MessageType.ERROR,
        MessageType.BROADCAST,
    }
)
_DATA_KIND = int(Kind.DATA)
_SESSION_ID = struct.Struct("!Q")
_SEQUENCE = struct.Struct("!I")

#: Bytes waiting for the reliable window past which the writer is paused
#: (Twisted pauses a TCP producer at the same size).
_HIGH_WATER = 65536
_LOW_WATER = 16384
#: Handshake retransmissions: first after this long, doubling, at most _HANDSHAKE_MAX.
_HANDSHAKE_RTO = 0.25
_HANDSHAKE_MAX = 2.0
#: A closed session's id is remembered this long, to acknowledge a resent FIN
#: instead of answering it with RESET (TCP's TIME_WAIT).
_TIME_WAIT = 10.0
#: RESETs a listening socket sends per second to unknown session ids, at most.
_RESET_RATE = 100.0
#: Seconds a stopping listener waits for its sessions to close before aborting them.
_STOP_DEADLINE = 10.0


@frozen
class DatagramOptions:
    """How sessions on one UDP endpoint behave."""

    #: Largest datagram sent or accepted, headers included.
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    #: Send application data over the reliable channel too.
    reliable: bool = False
    #: Give up on data unacknowledged this long (``timeout``); ``None``: never.
    user_timeout: float | None = None
    #: A dial that has no answer within this long fails with ``timeout``.
    connect_timeout: float = 10.0
    #: Reliable segments in flight at most.
    window: int = 64
    #: Largest frame the reliable stream may carry (the node's frame limit).
    max_frame: int = DEFAULT_MAX_FRAME

    def __attrs_post_init__(self) -> None:
        if not MIN_DATAGRAM <= self.max_datagram <= MAX_DATAGRAM:
            raise ValueError(
                f"max datagram must be {MIN_DATAGRAM} to {MAX_DATAGRAM} bytes, not {self.max_datagram}"
            )

    @property
    def max_unreliable_body(self) -> int:
        """The largest frame body one DATA datagram carries (after the 5-byte frame header)."""
        return self.max_datagram - DATA_HEADER - 5


# Endpoint strings

_ESCAPED_SPLIT = re.compile(r"(?<!\\):")


def is_datagram(description: str) -> bool:
    """Whether ``description`` is one of ours (``udp:...``)."""
    return description.startswith(("udp:", "udp6:"))


def _split(description: str) -> tuple[list[str], dict[str, str]]:
    body = description.split(":", 1)[1] if ":" in description else ""
    # "[::1]:9000" -> host "::1"; backslash escapes as in Twisted's endpoint strings.
    bracketed = re.match(r"^\[([^\]]*)\](.*)$", body)
    parts: list[str] = []
    if bracketed:
        parts.append(bracketed[1])
        body = bracketed[2].lstrip(":")
    parts += [part.replace("\\:", ":") for part in _ESCAPED_SPLIT.split(body)] if body else []
    positional: list[str] = []
    options: dict[str, str] = {}
    for part in parts:
        key, equals, value = part.partition("=")
        if equals and key.isidentifier():
            if key in options:
                raise ValueError(f"{key!r} given twice")
            options[key] = value
        else:
            positional.append(part)
    return positional, options


def _port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def parse_endpoint(
    reactor: Any,
    description: str,
    server: bool,
    options: DatagramOptions = DatagramOptions(),
    clock: IReactorTime | None = None,
) -> DatagramServerEndpoint | DatagramClientEndpoint:
    """
    ``udp:PORT[:interface=ADDR]`` (``server=True``) or
    ``udp:HOST:PORT[:timeout=SECONDS]`` (also ``host=`` and ``port=``; IPv6
    hosts in brackets or with escaped colons). Raises ``ValueError`` with
    what is wrong. ``reactor`` provides ``listenUDP``; ``clock`` (default:
    the reactor) the time.
    """
    if not is_datagram(description):
        raise ValueError(f"not a udp endpoint: {description!r}")
    positional, keywords = _split(description)
    clock = clock or reactor
    if server:
        allowed = {"port", "interface"}
        unknown = set(keywords) - allowed
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (udp servers take port, interface)")
        if "port" in keywords:
            positional.insert(0, keywords["port"])
        if len(positional) != 1:
            raise ValueError("expected udp:PORT[:interface=ADDR]")
        interface = keywords.get("interface", "")
        if interface and not _is_ip(interface):
            raise ValueError(f"interface must be an IP address, not {interface!r}")
        return DatagramServerEndpoint(reactor, _port_number(positional[0]), interface, options, clock)
    allowed = {"host", "port", "timeout"}
    unknown = set(keywords) - allowed
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (udp clients take host, port, timeout)")
    if "host" in keywords:
        positional.insert(0, keywords["host"])
    if "port" in keywords:
        positional.append(keywords["port"])
    if len(positional) != 2 or not positional[0]:
        raise ValueError("expected udp:HOST:PORT")
    if "timeout" in keywords:
        try:
            timeout = float(keywords["timeout"])
        except ValueError:
            raise ValueError(f"bad timeout {keywords['timeout']!r}") from None
        options = attrs.evolve(options, connect_timeout=timeout)
    return DatagramClientEndpoint(reactor, positional[0], _port_number(positional[1]), options, clock)


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def _address(host: str, port: int) -> IAddress:
    if ":" in host:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


def _label(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# One session


class _Socket:
    """What a session sends through: a listening socket, or a dialled one."""

    counters: dict[str, int]

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        raise NotImplementedError

    def forget(self, session: DatagramTransport) -> None:
        raise NotImplementedError


class DatagramTransport:
    """
    One session on UDP, as an ``ITransport``: the protocol above it (the
    connection manager's wrapper, then a Session) sees a stream of whole
    frames, FIN and RST as on TCP.

    ``write`` must be given whole frames (as sessions write them).
    """

    def __init__(
        self,
        sock: _Socket,
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
        self._socket = sock
        self._host = host
        self._peer = _address(*peer)
        self._options = options
        self._clock = clock
        self._sender = ReliableSender(options.max_datagram - SEGMENT_HEADER, options.window)
        self._receiver = ReliableReceiver(window=4 * options.window)
        self._window = SequenceWindow()
        self._next_data = 0
        self._stream = bytearray()
        self._retransmit_call: IDelayedCall | None = None
        self._ack_call: IDelayedCall | None = None
        self._producer: Any = None
        self._paused = False
        self._fin_received = False
        self._reliable = options.reliable
        self.datagrams_in = 0
        self.datagrams_out = 0

    # ITransport

    def write(self, data: bytes) -> None:
        if not self.connected or self.disconnecting:
            return
        size = len(data)
        if (
            size > 4
            and int.from_bytes(data[:4], "big") + 4 == size
            and size <= self._options.max_datagram - DATA_HEADER
            and (data[4] in _ALWAYS_UNRELIABLE or (not self._reliable and data[4] in _DATA_PLANE))
        ):
            # One unreliable frame (a message, a request, a probe): one datagram.
            self._send_data([data])
            return
        reliable_data = self._reliable
        limit = self._options.max_datagram - DATA_HEADER
        batch: list[bytes] = []
        batch_size = 0
        queued = False
        position = 0
        size = len(data)
        while position < size:
            end = position + 4 + int.from_bytes(data[position : position + 4], "big")
            kind = data[position + 4] if end > position + 4 else -1
            if kind in _ALWAYS_UNRELIABLE or (not reliable_data and kind in _DATA_PLANE):
                frame = data[position:end] if position or end != size else data
                if len(frame) > limit:
                    raise ValueError(f"a frame of {len(frame)} bytes does not fit one datagram of {limit}")
                if batch_size + len(frame) > limit:
                    self._send_data(batch)
                    batch, batch_size = [], 0
                batch.append(frame)
                batch_size += len(frame)
            else:
                self._sender.queue(data[position:end])
                queued = True
            position = end
        if batch:
            self._send_data(batch)
        if queued:
            self._pump()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Send what is queued, then FIN; the session ends when the peer acknowledges it."""
        if not self.connected or self.disconnecting:
            return
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
            "reliable": self._reliable,
            "unreliable": self._window.as_dict(),
        }

    def use_reliable_channel(self) -> None:
        """Send application data on the reliable channel from now on (the peer asked for it)."""
        self._reliable = True

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
        reset = getattr(self.protocol, "resetKeepalive", None)
        if reset is not None:
            reset()

    def data_received(self, data: bytes) -> None:
        """A whole DATA datagram of this session (header included)."""
        self.datagrams_in += 1
        payload = data[DATA_HEADER:]
        # Checked first: a malformed datagram must not move the window.
        size = len(payload)
        if not (size >= 5 and int.from_bytes(payload[:4], "big") + 4 == size) and not datagram.whole_frames(
            payload
        ):
            self._socket.counters["malformed"] += 1
            return
        if self._window.accept(_SEQUENCE.unpack_from(data, 9)[0]):
            self.protocol.dataReceived(payload)

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
        position = 0
        size = len(stream)
        max_frame = self._options.max_frame
        while size - position >= 4:
            length = int.from_bytes(stream[position : position + 4], "big")
            if length > max_frame:
                # Let the session's decoder see it and end with protocol-error.
                position = size
                break
            if position + 4 + length > size:
                break
            position += 4 + length
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
        end = getattr(self.protocol, "end", None)
        if end is not None:
            from netmodels.core.reasons import CloseReason

            end(CloseReason.TIMEOUT, detail)
        if self.connected:
            self.abortConnection()

    def _peer_gone(self, number: int, reason: Exception) -> None:
        if not self.connected:
            return
        record_errno = getattr(self.protocol, "record_errno", None)
        if record_errno is not None:
            record_errno(number)
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

    def _send_data(self, frames: list[bytes]) -> None:
        header = datagram.encode_data_header(self.session_id, self._next_data)
        self._next_data += 1
        self._send(header + b"".join(frames) if len(frames) > 1 else header + frames[0])

    def _send_segment(self, sequence: int, flags: int, payload: bytes) -> None:
        self._send(datagram.encode_segment(self.session_id, sequence, flags, payload))

    def _send(self, data: bytes) -> None:
        self.datagrams_out += 1
        self._socket.send(data, self.peer_address)

    def _lost(self, reason: Exception) -> None:
        if not self.connected:
            return
        self.connected = 0
        for call in (self._retransmit_call, self._ack_call):
            if call is not None and call.active():
                call.cancel()
        self._retransmit_call = self._ack_call = None
        self._socket.forget(self)
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(Failure(reason))


def _new_session(
    factory: Factory[Any],
    sock: _Socket,
    session_id: int,
    peer: tuple[str, int],
    host: IAddress,
    options: DatagramOptions,
    clock: IReactorTime,
) -> DatagramTransport | None:
    protocol = factory.buildProtocol(_address(*peer))
    if protocol is None:
        return None
    transport = DatagramTransport(sock, session_id, peer, host, options, clock)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return transport


# Listening


class _Listener(DatagramProtocol, _Socket):
    """The listening socket: handshakes without state, then sessions by id."""

    noisy = False

    def __init__(self, factory: Factory[Any], options: DatagramOptions, clock: IReactorTime) -> None:
        self.factory = factory
        self.options = options
        self.clock = clock
        self.cookies = CookieJar(clock.seconds)
        self.sessions: dict[int, DatagramTransport] = {}
        #: (address, nonce) -> session: a resent OPEN gets the same ACCEPT.
        self.opened: dict[tuple[tuple[str, int], int], DatagramTransport] = {}
        self.time_wait: dict[int, float] = {}
        self.accepting = True
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "datagrams_in",
                "malformed",
                "oversized",
                "bad_version",
                "bad_cookie",
                "forged",
                "unknown_session",
                "resets_sent",
                "cookies_sent",
                "sessions_opened",
                "handshake_bytes_in",
                "handshake_bytes_out",
                "send_dropped",
            ),
            0,
        )
        self._reset_tokens = _RESET_RATE
        self._reset_refilled = clock.seconds()
        self._max_datagram = options.max_datagram
        self.host: IAddress | None = None
        self._idle: defer.Deferred[None] | None = None

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            # A real port's socket directly: Twisted's write validates the
            # address on every call, and ours came from recvfrom.
            sock = getattr(self.transport, "socket", None)
            if sock is not None:
                sock.sendto(data, address)
            else:
                self.transport.write(data, address)  # type: ignore[union-attr]
        except OSError:
            # A full socket buffer drops a datagram, as the network may:
            # the reliable channel resends it; the unreliable one loses it.
            self.counters["send_dropped"] += 1

    def forget(self, session: DatagramTransport) -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            self.time_wait[session.session_id] = self.clock.seconds() + _TIME_WAIT
            if session.opened_by is not None:
                self.opened.pop(session.opened_by, None)
        if not self.sessions and self._idle is not None:
            idle, self._idle = self._idle, None
            idle.callback(None)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        counters = self.counters
        counters["datagrams_in"] += 1
        if len(data) > self._max_datagram:
            counters["oversized"] += 1
            return
        if len(data) >= DATA_HEADER and data[0] == _DATA_KIND:
            # The common case, without building a Packet.
            session = self.sessions.get(_SESSION_ID.unpack_from(data, 1)[0])
            if session is not None and session.peer_address == addr:
                session.data_received(data)
                return
        try:
            packet = datagram.parse(data)
        except MalformedDatagram:
            counters["malformed"] += 1
            return
        kind = packet.kind
        if kind is Kind.DATA or kind is Kind.SEGMENT or kind is Kind.ACK or kind is Kind.RESET:
            session = self.sessions.get(packet.session)
            if session is None:
                self._unknown_session(packet, addr)
            elif session.peer_address != addr:
                # A valid id from another address: forged, or a NAT rebinding
                # we do not follow. Either way it must not touch the session.
                counters["forged"] += 1
            else:
                session.datagram_received(packet)
        elif kind is Kind.INIT:
            self._init(packet, data, addr)
        elif kind is Kind.OPEN:
            self._open(packet, data, addr)
        else:
            counters["malformed"] += 1

    def _init(self, packet: Packet, data: bytes, addr: tuple[str, int]) -> None:
        if packet.version != datagram.DATAGRAM_VERSION:
            self.counters["bad_version"] += 1
            return
        if not self.accepting:
            return
        cookie = self.cookies.mint(_label(addr), packet.nonce)
        # Never more than 3x what an unproven address sent (it is 29 vs 64).
        assert len(cookie) <= 3 * len(data)
        self.counters["cookies_sent"] += 1
        self.counters["handshake_bytes_in"] += len(data)
        self.counters["handshake_bytes_out"] += len(cookie)
        self.send(cookie, addr)

    def _open(self, packet: Packet, data: bytes, addr: tuple[str, int]) -> None:
        existing = self.opened.get((addr, packet.nonce))
        if existing is not None:
            # Our ACCEPT was lost: the same answer again.
            self.send(datagram.encode_accept(packet.nonce, existing.session_id), addr)
            return
        if packet.version != datagram.DATAGRAM_VERSION:
            self.counters["bad_version"] += 1
            return
        self.counters["handshake_bytes_in"] += len(data)
        refusal = self.cookies.check(_label(addr), packet)
        if refusal is not None:
            self.counters["bad_cookie"] += 1
            return
        if not self.accepting:
            return
        session_id = secrets.randbits(64)
        while session_id in self.sessions or session_id in self.time_wait:
            session_id = secrets.randbits(64)
        accept = datagram.encode_accept(packet.nonce, session_id)
        self.counters["handshake_bytes_out"] += len(accept)
        # ACCEPT first: the session's HELLO must not overtake it.
        self.send(accept, addr)
        assert self.host is not None
        session = _new_session(self.factory, self, session_id, addr, self.host, self.options, self.clock)
        if session is None:
            self.send(datagram.encode_reset(session_id), addr)
            return
        self.counters["sessions_opened"] += 1
        if session.connected:
            self.sessions[session_id] = session
            session.opened_by = (addr, packet.nonce)
            self.opened[session.opened_by] = session
        self._expire_time_wait()

    def _unknown_session(self, packet: Packet, addr: tuple[str, int]) -> None:
        self.counters["unknown_session"] += 1
        if packet.kind is Kind.RESET:
            return
        expires = self.time_wait.get(packet.session)
        if expires is not None and expires > self.clock.seconds():
            if packet.kind is Kind.SEGMENT and packet.flags & datagram.FIN:
                # The peer missed our ACK of its FIN.
                self.send(datagram.encode_ack(packet.session, packet.sequence + 1, 0), addr)
            return
        # Like a TCP RST for a segment of no connection: the peer learns at
        # once that we restarted or forgot it. RESET is smaller than what
        # it answers, and rate-limited, so it amplifies nothing.
        now = self.clock.seconds()
        self._reset_tokens = min(_RESET_RATE, self._reset_tokens + (now - self._reset_refilled) * _RESET_RATE)
        self._reset_refilled = now
        if self._reset_tokens < 1:
            return
        self._reset_tokens -= 1
        self.counters["resets_sent"] += 1
        self.send(datagram.encode_reset(packet.session), addr)

    def _expire_time_wait(self) -> None:
        if len(self.time_wait) < 1024:
            return
        now = self.clock.seconds()
        self.time_wait = {sid: due for sid, due in self.time_wait.items() if due > now}

    def wait_idle(self) -> defer.Deferred[None]:
        if not self.sessions:
            return defer.succeed(None)
        if self._idle is None:
            self._idle = defer.Deferred()
        return self._idle


@implementer(IListeningPort)
class DatagramListeningPort:
    """The ``IListeningPort`` of a UDP server endpoint."""

    def __init__(self, port: Any, listener: _Listener, clock: IReactorTime) -> None:
        self._port = port
        self.listener = listener
        self._clock = clock

    @property
    def counters(self) -> dict[str, int]:
        """Datagrams dropped by kind of fault, handshakes, RESETs sent."""
        return self.listener.counters

    def startListening(self) -> None:
        pass

    def stopListening(self) -> defer.Deferred[None]:
        """
        Stop accepting sessions; close the socket once the sessions on it have
        ended (they share it), aborting those still open after a deadline.
        """
        listener = self.listener
        listener.accepting = False
        idle = listener.wait_idle()
        deadline = self._clock.callLater(_STOP_DEADLINE, self._abort_all)

        def close(_: object) -> defer.Deferred[None] | None:
            if deadline.active():
                deadline.cancel()
            result: defer.Deferred[None] | None = self._port.stopListening()
            return result

        return idle.addCallback(close)

    def _abort_all(self) -> None:
        for session in list(self.listener.sessions.values()):
            session.abortConnection()

    def getHost(self) -> IAddress:
        host: IAddress = self._port.getHost()
        return host


class DatagramServerEndpoint:
    """Listen for sessions on a UDP port (``IStreamServerEndpoint``-shaped)."""

    def __init__(
        self, reactor: Any, port: int, interface: str, options: DatagramOptions, clock: IReactorTime
    ) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.options = options
        self._clock = clock

    def listen(self, factory: Factory[Any]) -> defer.Deferred[DatagramListeningPort]:
        listener = _Listener(factory, self.options, self._clock)
        try:
            port = self._reactor.listenUDP(
                self.port, listener, interface=self.interface, maxPacketSize=self.options.max_datagram + 1
            )
        except Exception:
            return defer.fail()
        host = port.getHost()
        listener.host = _address(host.host, host.port)
        return defer.succeed(DatagramListeningPort(port, listener, self._clock))


# Dialling


class _Dialler(DatagramProtocol, _Socket):
    """The socket of one outbound session: handshake, then the session's datagrams."""

    noisy = False

    def __init__(
        self,
        factory: Factory[Any],
        peer: tuple[str, int],
        options: DatagramOptions,
        clock: IReactorTime,
        result: defer.Deferred[Any],
    ) -> None:
        self.factory = factory
        self.peer = peer
        self.options = options
        self.clock = clock
        self.result = result
        self.nonce = secrets.randbits(64)
        self.session: DatagramTransport | None = None
        self.counters: dict[str, int] = {"malformed": 0, "forged": 0, "send_dropped": 0}
        self._message = datagram.encode_init(self.nonce)
        self._resend_delay = _HANDSHAKE_RTO
        self._resend_call: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._done = False

    def begin(self) -> None:
        self._deadline = self.clock.callLater(self.options.connect_timeout, self._timed_out)
        self._transmit()

    def _transmit(self) -> None:
        self._resend_call = None
        self.send(self._message, self.peer)
        self._resend_call = self.clock.callLater(self._resend_delay, self._transmit)
        self._resend_delay = min(_HANDSHAKE_MAX, self._resend_delay * 2)

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            # The socket is gone (see stopProtocol): nothing can be sent.
            self.counters["send_dropped"] += 1
            return
        try:
            transport.write(data)  # type: ignore[call-arg]
        except OSError:
            self.counters["send_dropped"] += 1  # as the network may drop it; retransmission covers it

    def stopProtocol(self) -> None:
        """
        The socket closed. When we closed it, the session is already gone;
        otherwise the reactor closed it: Twisted's epoll reactor takes the
        EPOLLERR that an ICMP port unreachable raises on a connected socket
        (without EPOLLIN) for a disconnection, and closes the port instead of
        reading the ECONNREFUSED (``connectionRefused`` is then never called).
        Either way nothing can be sent on it any more: the peer refused us.
        """
        if self.session is not None:
            self.session.refused()
        elif not self._done:
            self._fail(error.ConnectionRefusedError("ICMP port unreachable (socket error)"))

    def forget(self, session: DatagramTransport) -> None:
        self.session = None
        self._close_socket()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        session = self.session
        if (
            session is not None
            and len(data) >= DATA_HEADER
            and data[0] == _DATA_KIND
            and _SESSION_ID.unpack_from(data, 1)[0] == session.session_id
        ):
            session.data_received(data)
            return
        try:
            packet = datagram.parse(data)
        except MalformedDatagram:
            self.counters["malformed"] += 1
            return
        if session is not None:
            if packet.session == session.session_id and packet.kind not in (Kind.ACCEPT, Kind.COOKIE):
                session.datagram_received(packet)
            elif packet.kind is not Kind.ACCEPT:
                self.counters["forged"] += 1
            return
        if self._done or packet.nonce != self.nonce:
            self.counters["forged"] += 1
            return
        if packet.kind is Kind.COOKIE:
            self._message = datagram.encode_open(packet.nonce, packet.issued, packet.mac)
            self._resend_delay = _HANDSHAKE_RTO
            self._cancel_resend()
            self._transmit()
        elif packet.kind is Kind.ACCEPT:
            self._established(packet.session)

    def _established(self, session_id: int) -> None:
        self._finish()
        host = self.transport.getHost()  # type: ignore[union-attr]
        session = _new_session(
            self.factory,
            self,
            session_id,
            self.peer,
            _address(host.host, host.port),
            self.options,
            self.clock,
        )
        if session is None:
            self.send(datagram.encode_reset(session_id), self.peer)
            self._close_socket()
            self.result.errback(error.ConnectError("factory refused the connection"))
            return
        if session.connected:
            self.session = session
        self.result.callback(session.protocol if session.connected else None)

    def connectionRefused(self) -> None:
        if self.session is not None:
            self.session.refused()
        elif not self._done:
            self._fail(error.ConnectionRefusedError("ICMP port unreachable"))

    def _timed_out(self) -> None:
        self._deadline = None
        self._fail(error.TimeoutError(f"no answer within {self.options.connect_timeout:g} s"))

    def cancel(self) -> None:
        self._fail(defer.CancelledError())

    def _fail(self, reason: Exception) -> None:
        if self._done:
            return
        self._finish()
        self._close_socket()
        self.result.errback(Failure(reason))

    def _finish(self) -> None:
        self._done = True
        self._cancel_resend()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _cancel_resend(self) -> None:
        if self._resend_call is not None and self._resend_call.active():
            self._resend_call.cancel()
        self._resend_call = None

    def _close_socket(self) -> None:
        transport = self.transport
        if transport is not None:
            self.transport = None
            transport.stopListening()


class DatagramClientEndpoint:
    """Dial one session over UDP (``IStreamClientEndpoint``-shaped)."""

    def __init__(self, reactor: Any, host: str, port: int, options: DatagramOptions, clock: IReactorTime):
        self._reactor = reactor
        self.host = host
        self.port = port
        self.options = options
        self._clock = clock

    def connect(self, factory: Factory[Any]) -> defer.Deferred[Any]:
        if _is_ip(self.host):
            return self._dial(self.host, factory)
        resolving: defer.Deferred[str] = self._reactor.resolve(self.host)
        return resolving.addCallback(self._dial, factory)

    def _dial(self, address: str, factory: Factory[Any]) -> defer.Deferred[Any]:
        dialler: _Dialler
        result: defer.Deferred[Any] = defer.Deferred(lambda _: dialler.cancel())
        dialler = _Dialler(factory, (address, self.port), self.options, self._clock, result)
        interface = "::" if ":" in address else ""
        try:
            port = self._reactor.listenUDP(
                0, dialler, interface=interface, maxPacketSize=self.options.max_datagram + 1
            )
            port.connect(address, self.port)
        except Exception as e:
            return defer.fail(error.ConnectError(str(e)))
        dialler.begin()
        return result
