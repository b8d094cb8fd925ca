"""
Integration: request/response over real loopback sockets -- many requests in
flight on one session, and a request the server never answers timing out
without closing the connection.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from netmodels.core.connection import ConnectionState
from netmodels.runtime.application import Application
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.session import PeerClosed, RemoteError, RequestTimeout

from ._support import TIMEOUT, ready_pair, start_client, start_server


class Stall(Application):
    """Answers ``ping`` at once; holds every other request until the test releases it."""

    def __init__(self) -> None:
        self.held: list[defer.Deferred[bytes]] = []

    def request_received(self, peer: IPeer, payload: bytes) -> bytes | defer.Deferred[bytes]:
        if payload == b"ping":
            return b"pong"
        if payload == b"fail":
            raise ValueError("no such thing")
        held: defer.Deferred[bytes] = defer.Deferred()
        self.held.append(held)
        return held


class RequestResponseTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_hundred_requests_in_flight_on_one_session(self) -> Any:
        """100 requests sent at once on one session are each answered with their own payload."""
        server = start_server(self)
        client = start_client(self, server.address)
        on_server, on_client = yield ready_pair(server, client)
        session = on_client.session

        payloads = [f"request {n:03d} ".encode() * (n % 7 + 1) for n in range(100)]
        pending = [session.request(payload) for payload in payloads]
        # All 100 were written before any answer could be read.
        self.assertEqual(len(session.machine.pending), 100)
        replies = yield defer.gatherResults(pending, consumeErrors=True)

        self.assertEqual(replies, payloads)
        self.assertEqual(session.machine.pending, {})
        self.assertEqual(on_client.record.state, ConnectionState.OPEN)
        # Every frame counts: the server's HELLO and its 100 responses.
        self.assertEqual(on_server.record.messages_out, 101)
        self.assertGreaterEqual(on_client.record.messages_out, 100)
        self.assertEqual(len(server.manager.live), 1)

    @defer.inlineCallbacks
    def test_unanswered_request_times_out_and_connection_stays_open(self) -> Any:
        """
        A request the server's application never answers fails with
        ``RequestTimeout`` after the request timeout (0.2 s); the connection
        stays open and the next request on it is answered. A late answer to the
        timed-out request is dropped without harm.
        """
        application = Stall()
        server = start_server(self, application)
        client = start_client(self, server.address, request_timeout=0.2)
        on_server, on_client = yield ready_pair(server, client)
        session = on_client.session

        started = time.monotonic()
        failure = yield self.assertFailure(session.request(b"never answered"), RequestTimeout)
        elapsed = time.monotonic() - started
        self.assertTrue(0.2 - 0.02 <= elapsed <= 0.2 + 1.0, f"timed out after {elapsed:.3f} s")
        self.assertIsInstance(failure, RequestTimeout)
        self.assertEqual(len(application.held), 1)
        self.assertEqual(on_client.record.state, ConnectionState.OPEN)
        self.assertEqual(on_server.record.state, ConnectionState.OPEN)

        # The answer arrives after the deadline: ignored, not a protocol error.
        application.held[0].callback(b"too late")
        reply = yield session.request(b"ping")
        self.assertEqual(reply, b"pong")
        # An application error comes back as RemoteError, still on the same connection.
        error = yield self.assertFailure(session.request(b"fail"), RemoteError)
        self.assertIn("no such thing", str(error))
        # A handler's error is the caller's business: a warning here, no traceback.
        self.assertEqual(self.flushLoggedErrors(ValueError), [])
        self.assertEqual(on_client.record.state, ConnectionState.OPEN)
        self.assertEqual(len(client.events.named("closed")), 0)
        self.assertEqual(len(server.events.named("closed")), 0)

    @defer.inlineCallbacks
    def test_short_per_request_timeout_is_honoured_behind_a_longer_one(self) -> Any:
        """
        ``request(payload, timeout=0.2)`` sent while an earlier request with a
        longer timeout (2 s) is pending still fails after about 0.2 s.
        """
        application = Stall()
        server = start_server(self, application)
        client = start_client(self, server.address, request_timeout=2.0)
        _, on_client = yield ready_pair(server, client)
        session = on_client.session

        slow = session.request(b"held, long timeout")
        slow.addErrback(lambda failure: failure.trap(RequestTimeout, PeerClosed))
        started = time.monotonic()
        yield self.assertFailure(session.request(b"held, short timeout", timeout=0.2), RequestTimeout)
        elapsed = time.monotonic() - started
        self.assertTrue(
            0.2 - 0.02 <= elapsed <= 0.2 + 1.0,
            f"the 0.2 s request timed out after {elapsed:.3f} s (the 2 s request was pending)",
        )
        self.assertFalse(slow.called)

    @defer.inlineCallbacks
    def test_request_from_timeout_errback_leaves_no_orphan_timer(self) -> Any:
        """
        A new request issued while a ``RequestTimeout`` is being delivered (the
        natural ``yield``-then-retry pattern) must not leave a request timer
        behind once the connection has closed.
        """
        application = Stall()
        server = start_server(self, application)
        client = start_client(self, server.address, request_timeout=0.2)
        _, on_client = yield ready_pair(server, client)
        session = on_client.session

        retried: list[defer.Deferred[bytes]] = []

        def retry(failure: Any) -> None:
            failure.trap(RequestTimeout)
            retried.append(session.request(b"ping"))

        yield session.request(b"never answered").addErrback(retry)
        reply = yield retried[0]
        self.assertEqual(reply, b"pong")

        session.close()
        yield client.events.wait("closed", lambda r: r.id == on_client.record.id)
        timers = [
            call for call in reactor.getDelayedCalls() if getattr(call.func, "__self__", None) is session
        ]
        names = [call.func.__name__ for call in timers]
        for call in timers:
            call.cancel()  # so the failure below is the only one reported
        self.assertEqual(
            names,
            [],
            "timers of a closed session still scheduled",
        )
