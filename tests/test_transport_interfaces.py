"""
The declared interfaces between the connection manager, the session and the
transports: who provides what, and the UDP transport's two channels, which
carry bytes without reading a message type.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from netmodels.core import datagram
from netmodels.core.datagram import DATA_HEADER, Kind
from netmodels.core.frames import MessageType, encode_frame, encode_ping
from netmodels.core.reasons import CloseReason
from netmodels.runtime.manager import ConnectionManager, ManagedConnection
from netmodels.runtime.session import _ALWAYS_UNRELIABLE, _UNRELIABLE_DATA, unreliable_types
from netmodels.testing import MemoryTransport
from netmodels.transports.interfaces import (
    IConnectionObserver,
    IDatagramTransport,
    IErrnoSource,
    ILivenessObserver,
)
from netmodels.transports.udp import DatagramOptions, DatagramTransport
from netmodels.transports.udp.transport import SessionSocket

PEER = ("10.0.0.2", 7000)
HOST = IPv4Address("UDP", "10.0.0.1", 40000)


class RecordingSocket(SessionSocket):
    def __init__(self) -> None:
        self.counters = {"malformed": 0}
        self.sent: list[bytes] = []

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append(data)

    def forget(self, session: DatagramTransport) -> None:
        pass


@implementer(IConnectionObserver)
class RecordingObserver(Protocol):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def record_errno(self, number: int) -> None:
        self.events.append(("errno", number))

    def resetKeepalive(self) -> None:
        self.events.append(("alive",))

    def end(self, reason: CloseReason, detail: str) -> None:
        self.events.append(("end", reason))


def datagram_transport(**options: Any) -> tuple[DatagramTransport, RecordingSocket, Clock]:
    sock, clock = RecordingSocket(), Clock()
    transport = DatagramTransport(sock, 7, PEER, HOST, DatagramOptions(**options), clock)
    return transport, sock, clock


def kinds(sent: list[bytes]) -> list[Kind]:
    return [datagram.parse(data).kind for data in sent]


class ProvidedTests(SynchronousTestCase):
    def test_managed_connection_is_a_connection_observer(self) -> None:
        manager = ConnectionManager(Clock())
        managed = manager.wrap_factory(Factory.forProtocol(Protocol)).buildProtocol(HOST)
        assert isinstance(managed, ManagedConnection)
        self.assertTrue(verifyObject(IConnectionObserver, managed))

    def test_datagram_transport(self) -> None:
        transport, _, _ = datagram_transport()
        self.assertTrue(verifyObject(IDatagramTransport, transport))

    def test_session_hears_liveness(self) -> None:
        from netmodels.runtime.session import Session

        self.assertTrue(ILivenessObserver.implementedBy(Session))

    def test_memory_transport_reports_errnos(self) -> None:
        self.assertTrue(IErrnoSource.implementedBy(MemoryTransport))


class ChannelTests(SynchronousTestCase):
    def test_write_is_the_reliable_stream_whatever_the_bytes(self) -> None:
        transport, sock, _ = datagram_transport()
        transport.write(encode_ping(1))
        transport.write(b"not a frame")
        self.assertEqual(kinds(sock.sent), [Kind.SEGMENT, Kind.SEGMENT])

    def test_unreliable_frames_share_datagrams(self) -> None:
        transport, sock, _ = datagram_transport(max_datagram=256)
        frame = encode_frame(MessageType.DATA, b"m" * 100)
        transport.write_unreliable(frame * 5)
        self.assertEqual(kinds(sock.sent), [Kind.DATA] * 3)
        payloads = [data[DATA_HEADER:] for data in sock.sent]
        self.assertEqual(payloads, [frame * 2, frame * 2, frame])

    def test_a_frame_no_datagram_holds_is_refused(self) -> None:
        transport, sock, _ = datagram_transport(max_datagram=256)
        self.assertRaises(ValueError, transport.write_unreliable, encode_frame(MessageType.DATA, b"m" * 300))
        self.assertRaises(
            ValueError, transport.write_unreliable, encode_frame(MessageType.DATA, b"m" * 400)[:300]
        )
        self.assertEqual(sock.sent, [])

    def test_observer_hears_errno_liveness_and_give_up(self) -> None:
        transport, _, clock = datagram_transport(user_timeout=1.0)
        observer = RecordingObserver()
        transport.attach(observer)
        transport.datagram_received(datagram.parse(datagram.encode_ack(7, 0, 0)))
        transport.write(b"x")
        clock.advance(1.5)
        self.assertEqual(observer.events[:2], [("alive",), ("end", CloseReason.TIMEOUT)])

        transport, _, _ = datagram_transport()
        observer = RecordingObserver()
        transport.attach(observer)
        transport.datagram_received(datagram.parse(datagram.encode_reset(7)))
        self.assertEqual(observer.events, [("errno", errno.ECONNRESET)])

    def test_a_plain_protocol_is_not_told(self) -> None:
        transport, _, _ = datagram_transport()
        protocol = Protocol()
        transport.attach(protocol)
        protocol.makeConnection(transport)
        transport.datagram_received(datagram.parse(datagram.encode_reset(7)))
        self.assertFalse(transport.connected)


class SessionChoosesTests(SynchronousTestCase):
    """Which frame types a session sends unreliably, by what the manager says of its transport."""

    def managed(self, transport: Any) -> ManagedConnection:
        managed = ConnectionManager(Clock()).wrap_factory(Factory.forProtocol(Protocol)).buildProtocol(HOST)
        assert isinstance(managed, ManagedConnection)
        managed.makeConnection(transport)
        return managed

    def test_stream_has_no_unreliable_channel(self) -> None:
        self.assertEqual(unreliable_types(self.managed(StringTransport())), frozenset())

    def test_datagram_data_unreliable_unless_asked(self) -> None:
        transport, _, _ = datagram_transport()
        managed = self.managed(transport)
        self.assertEqual(unreliable_types(managed), _UNRELIABLE_DATA)
        managed.use_reliable_channel()
        self.assertEqual(unreliable_types(managed), _ALWAYS_UNRELIABLE)
        self.assertTrue(transport.datagram_status()["reliable"])

    def test_reliable_endpoint(self) -> None:
        transport, _, _ = datagram_transport(reliable=True)
        self.assertEqual(unreliable_types(self.managed(transport)), _ALWAYS_UNRELIABLE)

    def test_corked_unreliable_frames_share_a_datagram(self) -> None:
        transport, sock, clock = datagram_transport()
        managed = ConnectionManager(clock).wrap_factory(Factory.forProtocol(Protocol)).buildProtocol(HOST)
        assert isinstance(managed, ManagedConnection)
        managed.makeConnection(transport)
        frame = encode_frame(MessageType.DATA, b"burst")
        for _ in range(3):
            managed.write_unreliable(frame, corked=True)
        self.assertEqual(sock.sent, [])
        clock.advance(0)
        self.assertEqual([data[DATA_HEADER:] for data in sock.sent], [frame * 3])
