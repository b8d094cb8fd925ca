"""
TCP options of session connections (:class:`netmodels.transports.tcp.SessionSocketOptions`):
set once on a node's listener and inherited by the connections it accepts,
set one by one where they were not inherited. Real loopback sockets.
"""

from __future__ import annotations

import math
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from netmodels.core.keepalive import KeepaliveSettings
from netmodels.runtime.manager import ManagedConnection
from netmodels.transports.tcp import SessionSocketOptions

from ._support import LOOPBACK, TIMEOUT, ready_pair, start_client, start_server

KEEPALIVE = KeepaliveSettings(7.5, 3, 4)
USER_TIMEOUT = 19.5


def options_of(sock: socket.socket) -> dict[str, int]:
    return {
        "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "probes": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


def expected(settings: KeepaliveSettings, user_timeout: float) -> dict[str, int]:
    return {
        "nodelay": 1,
        "keepalive": 1,
        "idle": math.ceil(settings.idle),
        "interval": math.ceil(settings.interval),
        "probes": settings.probes,
        "user_timeout": math.ceil(user_timeout * 1000),
    }


class _Accepted(Protocol):
    def __init__(self, accepted: defer.Deferred[Any]) -> None:
        self.accepted = accepted

    def connectionMade(self) -> None:
        self.accepted.callback(self.transport)


class ListenerInheritanceTests(TestCase):
    """Accepted connections against a plain Twisted port, with and without the listener's options."""

    timeout = TIMEOUT

    def listen(self, options: SessionSocketOptions | None) -> tuple[Any, defer.Deferred[Any]]:
        accepted: defer.Deferred[Any] = defer.Deferred()
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(lambda: _Accepted(accepted)), interface=LOOPBACK
        )
        self.addCleanup(port.stopListening)
        if options is not None:
            self.assertTrue(options.apply_to_listener(port))
        client = socket.create_connection((LOOPBACK, port.getHost().port))
        self.addCleanup(client.close)
        accepted.addCallback(self._abort_later)
        return port, accepted

    def _abort_later(self, transport: Any) -> Any:
        self.addCleanup(transport.abortConnection)
        return transport

    @defer.inlineCallbacks
    def test_accepted_connection_inherits_the_listeners_options(self) -> Any:
        """The kernel copies the listener's options: no call needed on the connection."""
        _, accepted = self.listen(SessionSocketOptions(KEEPALIVE, USER_TIMEOUT))
        transport = yield accepted
        self.assertEqual(options_of(transport.getHandle()), expected(KEEPALIVE, USER_TIMEOUT))

    @defer.inlineCallbacks
    def test_inherited_options_are_not_set_again(self) -> Any:
        """An accepted connection that inherited the options is left as it is."""
        options = SessionSocketOptions(KEEPALIVE, USER_TIMEOUT)
        _, accepted = self.listen(options)
        transport = yield accepted
        sock = transport.getHandle()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 99)
        self.assertTrue(options.apply(transport, accepted=True))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 99)

    @defer.inlineCallbacks
    def test_options_not_inherited_are_set(self) -> Any:
        """A listener without the options (a connection queued before they were set): each is set."""
        options = SessionSocketOptions(KEEPALIVE, USER_TIMEOUT)
        _, accepted = self.listen(None)
        transport = yield accepted
        self.assertEqual(options_of(transport.getHandle())["keepalive"], 0)
        self.assertTrue(options.apply(transport, accepted=True))
        self.assertEqual(options_of(transport.getHandle()), expected(KEEPALIVE, USER_TIMEOUT))

    @defer.inlineCallbacks
    def test_without_kernel_keepalive_only_nodelay(self) -> Any:
        options = SessionSocketOptions(None, USER_TIMEOUT)
        _, accepted = self.listen(options)
        transport = yield accepted
        found = options_of(transport.getHandle())
        self.assertEqual((found["nodelay"], found["keepalive"], found["user_timeout"]), (1, 0, 0))

    def listen_twice(self, options: SessionSocketOptions) -> list[defer.Deferred[Any]]:
        """A listener with ``options``, and two connections to it, accepted in order."""
        accepted: list[defer.Deferred[Any]] = [defer.Deferred(), defer.Deferred()]
        waiting = list(accepted)
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(lambda: _Accepted(waiting.pop(0))), interface=LOOPBACK
        )
        self.addCleanup(port.stopListening)
        self.assertTrue(options.apply_to_listener(port))
        for deferred in accepted:
            client = socket.create_connection((LOOPBACK, port.getHost().port))
            self.addCleanup(client.close)
            deferred.addCallback(self._abort_later)
        return accepted

    @defer.inlineCallbacks
    def test_a_listener_seen_to_pass_its_options_on_is_trusted(self) -> Any:
        """
        Once one connection of a listener has inherited the options, its
        later connections are not even checked (no system call): here the
        second one lost its keepalive after accept, and keeps it off.
        """
        options = SessionSocketOptions(KEEPALIVE, USER_TIMEOUT)
        first, second = self.listen_twice(options)
        transport = yield first
        self.assertTrue(options.apply(transport, accepted=True))
        transport = yield second
        sock = transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        self.assertTrue(options.apply(transport, accepted=True))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    @defer.inlineCallbacks
    def test_a_listener_not_seen_to_pass_its_options_on_is_checked(self) -> Any:
        """
        Until a connection of a listener is seen with the options, each one
        is checked: those without them (accepted before the listener had
        them) get them set, however many there are.
        """
        options = SessionSocketOptions(KEEPALIVE, USER_TIMEOUT)
        for deferred in self.listen_twice(options):
            transport = yield deferred
            sock = transport.getHandle()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
            self.assertTrue(options.apply(transport, accepted=True))
            self.assertEqual(options_of(sock), expected(KEEPALIVE, USER_TIMEOUT))

    def test_not_a_tcp_listener(self) -> None:
        options = SessionSocketOptions(KEEPALIVE, None)
        self.assertFalse(options.apply_to_listener(object()))
        self.assertFalse(options.apply(object(), accepted=True))


class NodeSocketOptionsTests(TestCase):
    """A node's own sessions, both ends: options as configured, on the listener too."""

    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_both_ends_and_the_listener(self) -> Any:
        server = start_server(self, keepalive=KEEPALIVE, user_timeout=USER_TIMEOUT)
        client = start_client(self, server.address, keepalive=KEEPALIVE, user_timeout=USER_TIMEOUT)
        on_server, on_client = yield ready_pair(server, client)
        want = expected(KEEPALIVE, USER_TIMEOUT)
        listener = server.node.listeners[0].port
        self.assertEqual(options_of(listener.socket), want)  # type: ignore[union-attr]
        for event in (on_server, on_client):
            assert isinstance(event.subject, ManagedConnection)
            self.assertEqual(options_of(event.subject.transport.getHandle()), want)
