"""
Raw line clients (``nc``, ``socat``, ``telnet``) as peers of a many-to-one
server: a line each way is a message.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netmodels.core.connection import ConnectionRecord, ConnectionState, Direction
from netmodels.core.reasons import CloseReason
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.manager import ManagedConnection
from netmodels.runtime.node import Node
from netmodels.runtime.session import (
    MessageTooLarge,
    PeerClosed,
    SessionSettings,
    SlowConsumerPolicy,
    call_application,
)
from netmodels.transports.tcp import apply_kernel_keepalive, set_no_delay

__all__ = ["RawLineFactory", "RawLineSession", "RawPeerRequest"]


_log = Logger(namespace="netmodels.many_to_one")


_OPEN = ConnectionState.OPEN


class RawPeerRequest(Exception):
    """A request was sent to a raw line client, which cannot answer one."""


@implementer(IPeer, IPushProducer)
class RawLineSession(SlowConsumerPolicy, Protocol):
    """
    A raw line client (``nc``, ``socat``, ``telnet``) as a peer: every line it
    sends (ended by ``\\n`` or ``\\r\\n``) is one message to the application,
    and every message sent to it is written followed by ``\\n``.

    A line longer than the frame limit less one byte (what a DATA message
    carries) is a ``protocol-error``: the client is told why in one line, then
    closed. There is no handshake and no application keepalive: the
    connection is open as soon as it is accepted, and the kernel's keepalive
    and ``TCP_USER_TIMEOUT`` (the node's settings) watch it. Backpressure is
    the slow-consumer policy of :class:`~netmodels.runtime.session.Session`.
    """

    transport: ManagedConnection  # type: ignore[assignment]

    #: Raw clients always take the client role.
    role = "client"
    delimiter = b"\n"

    def __init__(self, settings: SessionSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        self.application = settings.application
        self.record: ConnectionRecord | None = None
        #: ``raw-<address>:<port>`` of the client, once connected.
        self.node_id = "raw-?"
        #: The longest line accepted, delimiter excluded: a DATA message's body limit.
        self.max_line = settings.max_frame - 1
        self._pending = bytearray()
        self._ready = False
        #: False while Twisted holds more than its buffer size unsent for us.
        self.writable = True
        self._backlog = 0
        self._slow_call: IDelayedCall | None = None

    # IPeer

    @property
    def connection_id(self) -> int:
        return -1 if self.record is None else self.record.id

    def send(self, payload: bytes) -> None:
        """Write ``payload`` and a newline. A payload holding newlines arrives as several lines."""
        if len(payload) > self.max_line:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds the line limit of {self.max_line}"
            )
        if not self._ready or self._closing():
            raise PeerClosed(self._record_or_placeholder())
        self.write_encoded(payload + b"\n")

    def request(self, payload: bytes, timeout: float | None = None) -> defer.Deferred[bytes]:
        """Always fails with :class:`RawPeerRequest`: a line client cannot answer."""
        return defer.fail(
            RawPeerRequest(
                f"{self.node_id} is a raw line client: raw peers do not take requests, only messages (send)"
            )
        )

    def close(self) -> None:
        """Close with FIN (RST if it does not drain by the manager's close deadline)."""
        if self.record is not None and not self._closing():
            self.transport.end(CloseReason.CLEAN)

    def reset(self) -> None:
        """RST now: recorded ``aborted`` here."""
        if self.record is not None and not self.record.closed:
            self.transport.reset()

    # Fan-out (see Node.broadcast): a payload is encoded once for every raw peer.

    def encode(self, payload: bytes) -> bytes:
        return payload + b"\n"

    def write_encoded(self, data: bytes, corked: bool = False) -> None:
        """
        Write what :meth:`encode` made; nothing once the connection is closing.
        ``corked``: at the end of the reactor turn, with the rest of a burst
        (see ``ManagedConnection.cork``).
        """
        record = self.record
        if record is None or not self._ready or record.state is not _OPEN:
            return
        record.messages_out += 1
        self._send(data, corked)

    # Twisted

    def connectionMade(self) -> None:
        transport = self.transport
        record = self.record = transport.record
        settings = self.settings
        if record is not None:
            self.node_id = f"raw-{record.peer}"
            record.extra["protocol"] = "lines"
        set_no_delay(transport)
        if settings.kernel_keepalive:
            # A line client cannot answer PING: the kernel's keepalive is all there is.
            apply_kernel_keepalive(transport, settings.keepalive, settings.user_timeout)
        transport.registerProducer(self, True)
        self._ready = True
        transport.mark_open(self.node_id)
        call_application(self.application.peer_ready, self)

    def dataReceived(self, data: bytes) -> None:
        if not self._ready:
            return
        pending = self._pending
        if b"\n" not in data:
            pending += data
            # One byte of slack: a "\r" whose "\n" has not arrived yet.
            if len(pending) > self.max_line + 1:
                self._line_too_long(len(pending))
            return
        if pending:
            pending += data
            data = bytes(pending)
            pending.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        record = self.record
        message_received = self.application.message_received
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if len(line) > self.max_line:
                self._line_too_long(len(line))
                return
            if record is not None:
                record.messages_in += 1
            message_received(self, line)
            # Stop if the application closed the connection.
            if record is not None and record.state is not _OPEN:
                return
        if rest:
            pending += rest
            if len(pending) > self.max_line + 1:
                self._line_too_long(len(pending))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._slow_call is not None and self._slow_call.active():
            self._slow_call.cancel()
        self._slow_call = None
        self._pending.clear()
        if self._ready:
            self._ready = False
            call_application(self.application.peer_lost, self, self._record_or_placeholder())

    @property
    def backlog(self) -> int:
        """Bytes accepted since Twisted paused us (0 while writable)."""
        return self._backlog

    # Internals

    def _line_too_long(self, size: int) -> None:
        self._pending.clear()
        if self._closing():
            return
        detail = f"line of {size} bytes or more exceeds the limit of {self.max_line} bytes"
        _log.warn(
            "connection {id} to {peer}: protocol error: {detail}; closing",
            id=self.connection_id,
            peer=self.node_id,
            detail=detail,
        )
        # Tell the human at the other end why, in their own protocol.
        self.write_encoded(f"error: {detail}\n".encode())
        self.transport.end(CloseReason.PROTOCOL_ERROR, detail)

    def _closing(self) -> bool:
        record = self.record
        return record is None or record.closed or record.state is ConnectionState.CLOSING

    def _record_or_placeholder(self) -> ConnectionRecord:
        return self.record or ConnectionRecord(id=-1, direction=Direction.INBOUND, peer="?")


class RawLineFactory(Factory[RawLineSession]):
    """Builds a :class:`RawLineSession` per connection with ``node``'s current settings."""

    noisy = False

    def __init__(self, node: Node) -> None:
        self.node = node

    def buildProtocol(self, addr: Any) -> RawLineSession:
        return RawLineSession(self.node.session_settings, self.node.clock)


def _raw_rejection(reason: CloseReason, detail: str) -> bytes:
    """What a raw client turned away by the manager's limits reads: one line."""
    return f"error: {reason}: {detail}\n".encode()
