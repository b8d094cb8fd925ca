"""
Test support for netmodels users and plugin authors: an in-memory stream
network on a :class:`~twisted.internet.task.Clock` that can inject the faults
real networks produce.

::

    clock = Clock()
    network = MemoryNetwork(clock)
    server_node.listen(...)          # or network.server_endpoint("server:1")
    link = network.links[0]
    link.reset(from_side=0)          # the peer sees ECONNRESET
    link.blackhole()                 # nothing crosses until heal()
    network.refuse("server:1")       # connects get ECONNREFUSED

Everything is deterministic: data crosses when the clock advances (by the
network's ``latency``, 0 by default, so ``clock.advance(0)`` delivers).

Faults and what each side sees, as on a real network:

=================  ===========================================  ==========================
fault              the other side                                recorded reason
=================  ===========================================  ==========================
``close``          EOF after the data written before it          ``clean``
``reset``          ``ECONNRESET``; unsent data dropped           ``reset``
``blackhole``      nothing; data held until ``heal`` (TCP         ``timeout`` by keepalive
                   retransmits)
``kill(errno)``    the errno from the next read (ETIMEDOUT,      by errno
                   EHOSTUNREACH...)
``refuse``         connects fail with ``ECONNREFUSED``           ``refused``
``stop_reading``   the sender is paused past :data:`WINDOW`       ``rejected`` (slow consumer)
=================  ===========================================  ==========================

:class:`DatagramNetwork` is the same for UDP: a fake ``listenUDP`` whose
datagrams are dropped, duplicated, reordered or blackholed on request, with
ICMP port unreachable for connected sockets; put it in a node's
``datagram_reactor`` (or pass it to :mod:`netmodels.transports.udp`'s endpoints)::

    network = DatagramNetwork(clock, latency=0.001, seed=1)
    network.loss = 0.2              # every datagram: 20 % dropped
    network.duplicate = 0.1         # ... 10 % delivered twice
    network.reorder = 0.1           # ... 10 % held back behind later ones
    network.blackhole_host("10.0.0.2")
"""

from __future__ import annotations

import collections
import errno as _errno
import os
import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.transports.interfaces import IErrnoSource

__all__ = ["DatagramNetwork", "MemoryLink", "MemoryNetwork", "MemoryTransport"]

#: Marks an orderly close (FIN) in a link's queue.
_FIN = None

#: Bytes that may wait for a receiver before its sender is paused (Twisted's
#: transport buffer size).
WINDOW = 65536


@implementer(ITransport, IErrnoSource)
class MemoryTransport:
    """One end of a :class:`MemoryLink`. Speaks enough of ``ITCPTransport``."""

    disconnecting = False

    def __init__(self, link: MemoryLink, side: int, host: IPv4Address, peer: IPv4Address):
        self.link = link
        self.side = side
        self._host = host
        self._peer = peer
        self.protocol: IProtocol | None = None
        self.connected = True
        self.producer: Any = None
        self._errno_observer: Callable[[int], None] | None = None

    # ITransport

    def write(self, data: bytes) -> None:
        if self.connected and not self.disconnecting:
            self.link._send(self.side, data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self.link._fin(self.side)

    def abortConnection(self) -> None:
        if self.connected:
            self.link._rst(self.side)

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    # netmodels.tcp.capture_errno hook: a memory transport reports the errno
    # of the fault that ended it, as a real socket's recv() would.
    def set_errno_observer(self, observer: Callable[[int], None]) -> None:
        self._errno_observer = observer

    def _lost(self, reason: Failure, os_errno: int | None = None) -> None:
        if not self.connected:
            return
        self.connected = False
        if os_errno is not None and self._errno_observer is not None:
            self._errno_observer(os_errno)
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class MemoryLink:
    """A connection between two :class:`MemoryTransport` ends (0 = client, 1 = server)."""

    def __init__(self, network: MemoryNetwork, client: MemoryTransport, server: MemoryTransport):
        self.network = network
        self.ends = (client, server)
        self.blackholed = False
        # Per direction (index = receiving side): what is in flight, in order,
        # each with the time it is due; ``_FIN`` marks an orderly close.
        self._queued: list[collections.deque[tuple[float, bytes | None]]] = [
            collections.deque(),
            collections.deque(),
        ]
        self._delivery: Any = None
        self._not_reading = [False, False]
        self._producer_paused = [False, False]

    @property
    def client(self) -> MemoryTransport:
        return self.ends[0]

    @property
    def server(self) -> MemoryTransport:
        return self.ends[1]

    # Fault injection

    def close(self, from_side: int) -> None:
        """Orderly close (FIN) from ``from_side``."""
        self.ends[from_side].loseConnection()

    def reset(self, from_side: int) -> None:
        """``from_side`` sends RST: it sees ``ConnectionAborted``, the other ``ECONNRESET``."""
        self.ends[from_side].abortConnection()

    def blackhole(self) -> None:
        """Both directions go silent; data waits for :meth:`heal`, as TCP retransmits."""
        self.blackholed = True

    def heal(self) -> None:
        self.blackholed = False
        self._schedule()

    def stop_reading(self, side: int) -> None:
        """
        ``side``'s application stops reading: what is sent to it waits, and
        once more than :data:`WINDOW` bytes wait the sender's producer is
        paused, as a full TCP window and Twisted's buffer would.
        """
        self._not_reading[side] = True

    def resume_reading(self, side: int) -> None:
        self._not_reading[side] = False
        self._schedule()

    def kill(self, side: int, os_errno: int = _errno.ETIMEDOUT) -> None:
        """``side``'s kernel gives up with ``os_errno`` (ETIMEDOUT, EHOSTUNREACH...)."""
        self.ends[side]._lost(
            Failure(error.ConnectionLost(f"[Errno {os_errno}] {_errno.errorcode[os_errno]}")),
            os_errno,
        )

    # Internals

    def _send(self, side: int, data: bytes) -> None:
        self._enqueue(1 - side, data)

    def _fin(self, side: int) -> None:
        self._enqueue(1 - side, _FIN)

    def _enqueue(self, receiver: int, item: bytes | None) -> None:
        self._queued[receiver].append((self.network.clock.seconds() + self.network.latency, item))
        self._apply_backpressure(receiver)
        self._schedule()

    def _waiting(self, receiver: int) -> int:
        return sum(len(item) for _, item in self._queued[receiver] if item is not None)

    def _apply_backpressure(self, receiver: int) -> None:
        sender = self.ends[1 - receiver]
        producer = sender.producer
        if producer is None:
            return
        waiting = self._waiting(receiver)
        if waiting > WINDOW and not self._producer_paused[receiver]:
            self._producer_paused[receiver] = True
            producer.pauseProducing()
        elif waiting <= WINDOW and self._producer_paused[receiver]:
            self._producer_paused[receiver] = False
            producer.resumeProducing()

    def _rst(self, side: int) -> None:
        self._queued[1 - side].clear()
        self._queued[side].clear()
        self.ends[side]._lost(Failure(error.ConnectionAborted()))
        if not self.blackholed:
            self.ends[1 - side]._lost(
                Failure(error.ConnectionLost("Connection reset by peer")), _errno.ECONNRESET
            )

    def _schedule(self) -> None:
        if self._delivery is not None or self.blackholed:
            return
        due = [
            queue[0][0]
            for receiver, queue in enumerate(self._queued)
            if queue and not self._not_reading[receiver]
        ]
        if due:
            delay = max(0.0, min(due) - self.network.clock.seconds())
            self._delivery = self.network.clock.callLater(delay, self._deliver)

    def _deliver(self) -> None:
        self._delivery = None
        if self.blackholed:
            return
        now = self.network.clock.seconds()
        for receiver in (0, 1):
            if self._not_reading[receiver]:
                continue
            queue = self._queued[receiver]
            end = self.ends[receiver]
            while queue and queue[0][0] <= now:
                _, item = queue.popleft()
                if item is _FIN:
                    # The closing side is done once its FIN is out; the other
                    # end reads EOF. (A netmodels peer closes back on EOF.)
                    self.ends[1 - receiver]._lost(Failure(error.ConnectionDone()))
                    end._lost(Failure(error.ConnectionDone()))
                elif end.connected and end.protocol is not None:
                    end.protocol.dataReceived(item)
            self._apply_backpressure(receiver)
        self._schedule()


@implementer(IListeningPort)
class _MemoryPort:
    def __init__(self, network: MemoryNetwork, address: str, factory: IProtocolFactory):
        self.network = network
        self.address = address
        self.factory = factory

    def startListening(self) -> None:
        pass

    def stopListening(self) -> defer.Deferred[None]:
        self.network._listeners.pop(self.address, None)
        return defer.succeed(None)

    def getHost(self) -> IPv4Address:
        return self.network._ip(self.address)


@implementer(IStreamServerEndpoint)
class _ServerEndpoint:
    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self.network = network
        self.address = address

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        if self.address in self.network._listeners:
            in_use = OSError(_errno.EADDRINUSE, os.strerror(_errno.EADDRINUSE))
            return defer.fail(error.CannotListenError("", self.address, in_use))
        port = _MemoryPort(self.network, self.address, factory)
        self.network._listeners[self.address] = port
        factory.doStart()
        return defer.succeed(port)


@implementer(IStreamClientEndpoint)
class _ClientEndpoint:
    def __init__(self, network: MemoryNetwork, address: str, source: str) -> None:
        self.network = network
        self.address = address
        self.source = source

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        return self.network._connect(self.address, factory, self.source)


class MemoryNetwork:
    """
    Named stream endpoints (any string, e.g. ``"server:1"``) connected in memory.

    :param clock: drives delivery; tests advance it.
    :param latency: seconds each delivery takes.
    """

    def __init__(self, clock: IReactorTime, latency: float = 0.0, connect_timeout: float = 30.0) -> None:
        self.clock = clock
        self.latency = latency
        #: Seconds a connect to a blackholed host takes to fail (its SYNs are dropped).
        self.connect_timeout = connect_timeout
        self._blackholed_hosts: set[str] = set()
        self.links: list[MemoryLink] = []
        self._listeners: dict[str, _MemoryPort] = {}
        self._refused: set[str] = set()
        self._unreachable: set[str] = set()
        self._client_ports = 40000

    def server_endpoint(self, address: str) -> IStreamServerEndpoint:
        return _ServerEndpoint(self, address)

    def client_endpoint(self, address: str, source: str = "10.0.0.1") -> IStreamClientEndpoint:
        """Dial ``address`` from host ``source`` (so links can be told apart by host)."""
        return _ClientEndpoint(self, address, source)

    def blackhole_host(self, host: str) -> None:
        """
        Cut ``host`` off: its links go silent (until :meth:`heal_host`) and
        connects to or from it hang, then fail with a timeout, as when its
        packets are dropped.
        """
        self._blackholed_hosts.add(host)
        for link in self.links_of(host):
            link.blackhole()

    def heal_host(self, host: str) -> None:
        self._blackholed_hosts.discard(host)
        for link in self.links_of(host):
            if not any(end.getHost().host in self._blackholed_hosts for end in link.ends):
                link.heal()

    def links_of(self, host: str) -> list[MemoryLink]:
        """Every link with an end on ``host`` (a listener's name or a client's source)."""
        return [link for link in self.links if any(end.getHost().host == host for end in link.ends)]

    def refuse(self, address: str, refused: bool = True) -> None:
        """Connects to ``address`` fail with ``ECONNREFUSED`` (as with no listener)."""
        (self._refused.add if refused else self._refused.discard)(address)

    def unreachable(self, address: str, unreachable: bool = True) -> None:
        """Connects to ``address`` fail with ``EHOSTUNREACH``."""
        (self._unreachable.add if unreachable else self._unreachable.discard)(address)

    def _ip(self, address: str) -> IPv4Address:
        host, _, port = address.rpartition(":")
        return IPv4Address("TCP", host or address, int(port) if port.isdigit() else 0)

    def _connect(self, address: str, factory: IProtocolFactory, source: str) -> defer.Deferred[Any]:
        if address in self._unreachable:
            return defer.fail(error.NoRouteError(_errno.EHOSTUNREACH, address))
        if source in self._blackholed_hosts or self._ip(address).host in self._blackholed_hosts:
            hanging: defer.Deferred[Any] = defer.Deferred()

            def time_out() -> None:
                if not hanging.called:
                    hanging.errback(error.TCPTimedOutError(_errno.ETIMEDOUT, address))

            self.clock.callLater(self.connect_timeout, time_out)
            return hanging
        port = self._listeners.get(address)
        if port is None or address in self._refused:
            return defer.fail(error.ConnectionRefusedError(string=address))
        self._client_ports += 1
        client_address = IPv4Address("TCP", source, self._client_ports)
        server_address = self._ip(address)
        server_protocol = port.factory.buildProtocol(client_address)
        client_protocol = factory.buildProtocol(server_address)
        if server_protocol is None or client_protocol is None:
            return defer.fail(error.ConnectError(string="factory refused the connection"))
        link = MemoryLink(self, None, None)  # type: ignore[arg-type]
        client = MemoryTransport(link, 0, client_address, server_address)
        server = MemoryTransport(link, 1, server_address, client_address)
        link.ends = (client, server)
        self.links.append(link)
        client.protocol = client_protocol
        server.protocol = server_protocol
        server_protocol.makeConnection(server)
        client_protocol.makeConnection(client)
        return defer.succeed(client_protocol)


class _DatagramPort:
    """A bound UDP socket on a :class:`DatagramNetwork` (what ``listenUDP`` returns)."""

    def __init__(self, network: DatagramNetwork, host: str, port: int, protocol: Any, max_packet: int):
        self.network = network
        self.address = (host, port)
        self.protocol = protocol
        self.max_packet = max_packet
        self.connected_to: tuple[str, int] | None = None

    def write(self, datagram: bytes, addr: tuple[str, int] | None = None) -> None:
        destination = addr or self.connected_to
        assert destination is not None, "write() without an address on an unconnected port"
        self.network._send(self.address, destination, datagram)

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.address)

    def stopListening(self) -> defer.Deferred[None]:
        if self.network._ports.get(self.address) is self:
            del self.network._ports[self.address]
            self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening


class DatagramNetwork:
    """
    An in-memory UDP network on a clock, providing ``listenUDP``.

    Each datagram independently may be lost (:attr:`loss`), duplicated
    (:attr:`duplicate`) or delayed behind later ones (:attr:`reorder`), drawn
    from a seeded generator so that a test is the same on every run.
    A datagram to a port nobody listens on makes a *connected* sender's
    protocol see ``connectionRefused`` (ICMP port unreachable), unless
    :attr:`icmp` is off. :attr:`log` keeps ``(source, destination, size)``
    of every datagram sent.

    :param source: the host an unbound (``interface=""``) port gets.
    """

    def __init__(
        self, clock: IReactorTime, latency: float = 0.001, seed: int = 0, source: str = "10.0.0.1"
    ) -> None:
        self.clock = clock
        self.latency = latency
        self.random = random.Random(seed)
        self.loss = 0.0
        self.duplicate = 0.0
        self.reorder = 0.0
        self.icmp = True
        #: Drops every datagram for which it returns true (before :attr:`loss` is drawn).
        self.drop_if: Callable[[bytes], bool] | None = None
        self.source = source
        self.log: list[tuple[tuple[str, int], tuple[str, int], int]] = []
        self.dropped = 0
        self._ports: dict[tuple[str, int], _DatagramPort] = {}
        self._blackholed: set[str] = set()
        self._next_port = 40000

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> _DatagramPort:
        host = interface if interface not in ("", "0.0.0.0", "::") else self.source
        if port == 0:
            while (host, self._next_port) in self._ports:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        if (host, port) in self._ports:
            raise error.CannotListenError(host, port, OSError(_errno.EADDRINUSE, "address in use"))
        bound = _DatagramPort(self, host, port, protocol, maxPacketSize)
        self._ports[(host, port)] = bound
        protocol.makeConnection(bound)
        return bound

    def resolve(self, name: str) -> defer.Deferred[str]:
        return defer.fail(error.DNSLookupError(name))

    def blackhole_host(self, host: str) -> None:
        """Drop every datagram to or from ``host`` until :meth:`heal_host`."""
        self._blackholed.add(host)

    def heal_host(self, host: str) -> None:
        self._blackholed.discard(host)

    def inject(self, datagram: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        """Deliver ``datagram`` as if ``source`` (perhaps spoofed) sent it."""
        self._send(source, destination, datagram)

    def port_at(self, address: tuple[str, int]) -> _DatagramPort | None:
        return self._ports.get(address)

    def _send(self, source: tuple[str, int], destination: tuple[str, int], datagram: bytes) -> None:
        self.log.append((source, destination, len(datagram)))
        draw = self.random.random
        if (
            source[0] in self._blackholed
            or destination[0] in self._blackholed
            or (self.drop_if is not None and self.drop_if(datagram))
            or draw() < self.loss
        ):
            self.dropped += 1
            return
        copies = 2 if draw() < self.duplicate else 1
        for _ in range(copies):
            delay = self.latency
            if draw() < self.reorder:
                delay += self.latency * (2 + 8 * draw())
            self.clock.callLater(delay, self._deliver, source, destination, datagram)

    def _deliver(self, source: tuple[str, int], destination: tuple[str, int], datagram: bytes) -> None:
        port = self._ports.get(destination)
        if port is None:
            sender = self._ports.get(source)
            if self.icmp and sender is not None and sender.connected_to == destination:
                sender.protocol.connectionRefused()
            return
        if port.connected_to is not None and port.connected_to != source:
            return  # a connected socket hears only its peer
        port.protocol.datagramReceived(datagram[: port.max_packet], source)
