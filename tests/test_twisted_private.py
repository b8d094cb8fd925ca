"""
What netmodels reads of Twisted's internals (``_twisted_private``): each
feature check holds on the installed Twisted, and each use degrades to
doing without when its check fails.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from twisted.internet import defer, reactor, task, tcp
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netmodels.transports import _twisted_private as private
from netmodels.transports import tcp as nm_tcp


class Errnos:
    def __init__(self) -> None:
        self.numbers: list[int] = []

    def record_errno(self, number: int) -> None:
        self.numbers.append(number)


def connection_pair(case: SynchronousTestCase) -> tuple[tcp.Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    case.addCleanup(ours.close)
    case.addCleanup(theirs.close)
    ours.setblocking(False)
    connection = tcp.Connection(ours, Protocol(), reactor)
    connection.connected = 1
    return connection, theirs


class FeatureCheckTests(SynchronousTestCase):
    def test_installed_twisted_does_io_through_socket(self) -> None:
        self.assertTrue(private.io_goes_through_socket())

    def test_a_connection_that_does_not_is_detected(self) -> None:
        class Reads:
            def doRead(self) -> bytes:
                return b""

            def writeSomeData(self, data: bytes) -> int:
                return 0

        class Missing:
            pass

        self.assertFalse(private.io_goes_through_socket(Reads))
        self.assertFalse(private.io_goes_through_socket(Missing))

    def test_swap_socket(self) -> None:
        connection, _ = connection_pair(self)
        self.assertTrue(nm_tcp.capture_errno(connection, Errnos()))
        self.assertIsInstance(connection.socket, nm_tcp._ErrnoRecordingSocket)

    def test_swap_socket_degrades(self) -> None:
        connection, _ = connection_pair(self)
        original = connection.socket
        self.patch(private, "_SOCKET_IO", False)
        self.assertFalse(nm_tcp.capture_errno(connection, Errnos()))
        self.assertIs(connection.socket, original)


class BufferTests(SynchronousTestCase):
    def test_unsent_bytes(self) -> None:
        connection, _ = connection_pair(self)
        self.assertEqual(nm_tcp.unsent_bytes(connection), 0)
        connection.dataBuffer = b"abc"
        self.assertEqual(nm_tcp.unsent_bytes(connection), 3)

    def test_unsent_bytes_degrades(self) -> None:
        connection, _ = connection_pair(self)
        del connection._tempDataLen
        self.assertIsNone(nm_tcp.unsent_bytes(connection))
        self.assertIsNone(nm_tcp.unsent_bytes(StringTransport()))

    def test_direct_writer_sends_while_the_buffer_is_empty(self) -> None:
        connection, theirs = connection_pair(self)
        write = nm_tcp.direct_writer(connection, Errnos())
        assert write is not None
        self.assertEqual(write(b"now"), b"")
        self.assertEqual(theirs.recv(16), b"now")
        connection.dataBuffer = b"queued"
        self.assertEqual(write(b"later"), b"later")

    def test_direct_writer_degrades(self) -> None:
        connection, _ = connection_pair(self)
        del connection._tempDataLen
        self.assertIsNone(nm_tcp.direct_writer(connection, Errnos()))
        self.assertIsNone(nm_tcp.direct_writer(StringTransport(), Errnos()))


class AcceptAheadTests(TestCase):
    """A listening port that takes every connection the kernel holds, and sets them up in order."""

    def listen(self) -> tuple[Any, list[int]]:
        built: list[int] = []

        class Recorded(Protocol):
            def connectionMade(self) -> None:
                built.append(self.transport.getPeer().port)  # type: ignore[union-attr]

        port: Any = reactor.listenTCP(0, Factory.forProtocol(Recorded), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port, built

    def connect(self, port: Any, count: int) -> list[socket.socket]:
        clients = []
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
            self.addCleanup(client.close)
            clients.append(client)
        return clients

    @defer.inlineCallbacks
    def test_takes_all_the_kernel_holds_and_sets_them_up_in_order(self) -> Any:
        port, built = self.listen()
        self.assertTrue(nm_tcp.accept_ahead(port))
        clients = self.connect(port, 5)
        port.numberAccepts = 2
        port.doRead()
        self.assertEqual(len(built), 2)
        # The kernel holds none of them any more: three wait in the process.
        with self.assertRaises(BlockingIOError):
            port.socket._socket.accept()
        self.assertEqual(len(port.socket._held), 3)
        # Set up on the next passes, though the listening socket is not readable.
        for _ in range(50):
            if len(built) == 5:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(built, [client.getsockname()[1] for client in clients])

    @defer.inlineCallbacks
    def test_closing_the_port_closes_those_held(self) -> Any:
        port, built = self.listen()
        self.assertTrue(nm_tcp.accept_ahead(port))
        clients = self.connect(port, 3)
        port.numberAccepts = 1
        port.doRead()
        yield port.stopListening()
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(built), 1)
        for client in clients[1:]:
            # Closed: an orderly end of stream or a reset, never data or a hang.
            with contextlib.suppress(ConnectionResetError):
                self.assertEqual(client.recv(1), b"")

    def test_looks_at_the_kernels_queue_every_few_connections(self) -> None:
        """
        Emptying the kernel's queue ends with an accept that fails (EAGAIN):
        while connections are held, it is done once every _DRAIN_EVERY
        connections handed out, and always when none is held.
        """

        class Listening:
            def __init__(self) -> None:
                self.queued = list(range(40))
                self.calls = 0

            def accept(self) -> tuple[Any, Any]:
                self.calls += 1
                if not self.queued:
                    raise BlockingIOError(11, "EAGAIN")
                return self.queued.pop(0), ("127.0.0.1", 1)

        kernel = Listening()
        listener = private._AcceptAhead(kernel, 1000)  # type: ignore[arg-type]
        handed = [listener.accept()[0]]
        self.assertEqual(kernel.calls, 41)
        kernel.queued = [100, 101]
        handed += [listener.accept()[0] for _ in range(private._DRAIN_EVERY - 1)]
        self.assertEqual(kernel.calls, 41)
        handed.append(listener.accept()[0])
        self.assertEqual(kernel.calls, 44)
        handed += [listener.accept()[0] for _ in range(40 - len(handed))]
        handed += [listener.accept()[0] for _ in range(2)]
        self.assertEqual(handed, [*range(40), 100, 101])
        with self.assertRaises(BlockingIOError):
            listener.accept()

    def test_degrades(self) -> None:
        self.assertTrue(private._PORT_ACCEPTS)
        self.assertFalse(nm_tcp.accept_ahead(object()))
        port, _ = self.listen()
        sock = port.socket
        self.patch(private, "_PORT_ACCEPTS", False)
        self.assertFalse(nm_tcp.accept_ahead(port))
        self.assertIs(port.socket, sock)


class UdpSocketTests(SynchronousTestCase):
    def test_raw_sendto_of_a_real_port(self) -> None:
        port: Any = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(("127.0.0.1", 0))
        sendto = private.raw_sendto(port)
        assert sendto is not None
        sendto(b"hi", receiver.getsockname())
        self.assertEqual(receiver.recv(16), b"hi")

    def test_raw_send_of_a_connected_port(self) -> None:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(("127.0.0.1", 0))
        port: Any = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        # Not connected: Twisted's write needs the address, so no raw send.
        self.assertIsNone(private.raw_send(port))
        port.connect(*receiver.getsockname())
        send = private.raw_send(port)
        assert send is not None
        send(b"hi")
        self.assertEqual(receiver.recv(16), b"hi")

    def test_raw_send_degrades(self) -> None:
        self.assertIsNone(private.raw_send(object()))
        port: Any = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        port.connect("127.0.0.1", 9)
        sock = port.socket
        del port.socket
        try:
            self.assertIsNone(private.raw_send(port))
        finally:
            port.socket = sock

    def test_raw_sendto_degrades(self) -> None:
        self.assertIsNone(private.raw_sendto(object()))
        port: Any = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sock = port.socket
        del port.socket
        try:
            self.assertIsNone(private.raw_sendto(port))
        finally:
            port.socket = sock


class ListeningSocketTests(TestCase):
    def test_listening_socket_of_a_tcp_port(self) -> None:
        """``tcp.Port`` keeps its listening socket in ``socket``; without it, ``None``."""
        port: Any = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sock = private.listening_socket(port)
        assert sock is not None
        self.assertEqual(sock.getsockname()[1], port.getHost().port)
        del port.socket
        try:
            self.assertIsNone(private.listening_socket(port))
        finally:
            port.socket = sock
        self.assertIsNone(private.listening_socket(object()))


class _Target:
    def __init__(self, peer: tuple[str, int], log: list[Any]) -> None:
        self.peer_address = peer
        self.log = log

    def data_burst(self, batch: list[bytes]) -> None:
        self.log.append(("burst", list(batch)))


class _Recording(DatagramProtocol):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.log.append(("one", datagram))


class ReadInBurstsTests(SynchronousTestCase):
    def test_routed_datagrams_go_together_in_order(self) -> None:
        log: list[Any] = []
        port: Any = reactor.listenUDP(0, _Recording(log), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.bind(("127.0.0.1", 0))
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(stranger.close)
        stranger.bind(("127.0.0.1", 0))
        routes: dict[bytes, Any] = {b"AA": _Target(sender.getsockname(), log)}
        self.assertTrue(private.read_in_bursts(port, routes, 2))
        address = port.getHost()
        for data, sock in [
            (b"AA1", sender),
            (b"AA2", sender),
            (b"BB3", sender),
            (b"AA4", stranger),  # a route's prefix from another address
            (b"AA5", sender),
            (b"AA6", sender),
        ]:
            sock.sendto(data, (address.host, address.port))
        port.doRead()
        self.assertEqual(
            log,
            [("burst", [b"AA1", b"AA2"]), ("one", b"BB3"), ("one", b"AA4"), ("burst", [b"AA5", b"AA6"])],
        )

    def test_connected_port_reads_without_addresses(self) -> None:
        """With ``peer``, every datagram is the peer's: no address is read or checked."""
        log: list[Any] = []

        class Addresses(_Recording):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                self.log.append(("one", datagram, addr))

            def connectionRefused(self) -> None:
                self.log.append("refused")

        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.bind(("127.0.0.1", 0))
        peer = sender.getsockname()
        port: Any = reactor.listenUDP(0, Addresses(log), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        port.connect(*peer)
        # The target's own address does not matter: the kernel checked the source.
        routes: dict[bytes, Any] = {b"AA": _Target(("192.0.2.1", 9), log)}
        self.assertTrue(private.read_in_bursts(port, routes, 2, peer=peer))
        address = port.getHost()
        for data in (b"AA1", b"AA2", b"BB3", b"AA4"):
            sender.sendto(data, (address.host, address.port))
        port.doRead()
        self.assertEqual(log, [("burst", [b"AA1", b"AA2"]), ("one", b"BB3", peer), ("burst", [b"AA4"])])
        # The peer's port closes: our next datagram draws an ICMP port unreachable.
        sender.close()
        port.write(b"AA5")
        port.doRead()
        self.assertEqual(log[-1], "refused")

    def test_a_failing_target_is_logged_and_reading_goes_on(self) -> None:
        log: list[Any] = []
        port: Any = reactor.listenUDP(0, _Recording(log), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.bind(("127.0.0.1", 0))

        class Failing(_Target):
            def data_burst(self, batch: list[bytes]) -> None:
                super().data_burst(batch)
                raise RuntimeError("a bug in the session")

        routes: dict[bytes, Any] = {b"AA": Failing(sender.getsockname(), log)}
        self.assertTrue(private.read_in_bursts(port, routes, 2))
        address = port.getHost()
        for data in (b"AA1", b"BB2", b"AA3"):
            sender.sendto(data, (address.host, address.port))
        port.doRead()  # raises nothing: both bursts (the last one at the end of the read) are logged
        self.assertEqual(log, [("burst", [b"AA1"]), ("one", b"BB2"), ("burst", [b"AA3"])])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_read_in_bursts_degrades(self) -> None:
        self.assertFalse(private.read_in_bursts(object(), {}, 2))
        port: Any = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sock = port.socket
        del port.socket
        try:
            self.assertFalse(private.read_in_bursts(port, {}, 2))
        finally:
            port.socket = sock
