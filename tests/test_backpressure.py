"""
Fan-out and the slow-consumer policy, on the memory network: a peer that stops
reading is dropped with ``rejected`` while the others keep receiving, and what
waits for it stays bounded.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.connection import ConnectionState
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.dialer import Dialer
from netmodels.runtime.session import MessageTooLarge, Session
from netmodels.testing import WINDOW, MemoryNetwork
from tests.test_testing import RecordingApplication, make_node

ADDRESS = "server:1"
MESSAGE = b"m" * 1000
#: Small limits so the policy acts within a few hundred messages.
MAX_BACKLOG = 200_000
DEADLINE = 5.0


class FanOutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.server = make_node(self.clock, "server", "server")
        self.server.session_settings = _with_policy(self.server.session_settings)
        factory = self.server.manager.wrap_factory(self.server.session_factory())
        self.network.server_endpoint(ADDRESS).listen(factory)
        self.clients = []
        for name in ("fast", "slow"):
            node = make_node(self.clock, "client", name, RecordingApplication())
            Dialer(
                node.manager,
                self.network.client_endpoint(ADDRESS),
                node.session_factory(),
                ADDRESS,
                self.clock,
            ).setServiceParent(node)
            node.startService()
            self.clients.append(node)
        self.server.startService()
        self.clock.advance(0)
        self.fast_link, self.slow_link = self.network.links

    def tearDown(self) -> None:
        for node in [*self.clients, self.server]:
            node.stopService()
        for _ in range(10):
            self.clock.advance(DEADLINE)

    def test_broadcast_is_framed_once_and_reaches_everyone(self) -> None:
        self.assertEqual(self.server.broadcast(b"hello all"), 2)
        self.clock.advance(0)
        for node in self.clients:
            self.assertEqual(node.application.messages, [b"hello all"])

    def test_broadcast_excludes_the_sender(self) -> None:
        [first, _] = self.server.peers()
        self.assertEqual(self.server.broadcast(b"x", exclude=first), 1)

    def test_slow_reader_dropped_when_backlog_exceeded(self) -> None:
        """Past the backlog cap the slow peer is reset with reason rejected; the fast one keeps up."""
        self.slow_link.stop_reading(0)
        sent = 0
        while len(self.server.peers()) == 2 and sent < 10_000:
            self.server.broadcast(MESSAGE)
            sent += 1
            self.clock.advance(0)
        [slow_record] = [
            r
            for r in self.server.manager.records()
            if r.peer_id == "slow" and r.state is ConnectionState.CLOSED
        ]
        self.assertEqual((slow_record.reason, slow_record.initiator), (CloseReason.REJECTED, Initiator.LOCAL))
        self.assertIn("slow consumer", slow_record.detail)
        # Bounded: dropped once the window plus the backlog cap was used, not later.
        self.assertLessEqual(sent * len(MESSAGE), WINDOW + MAX_BACKLOG + 2 * len(MESSAGE) + 1000)
        fast = self.clients[0].application.messages
        self.assertEqual(len(fast), sent)
        # The slow client learns it was reset.
        self.assertEqual(self.clients[1].manager.history[-1].reason, CloseReason.RESET)

    def test_slow_reader_dropped_after_deadline(self) -> None:
        """Paused for longer than the deadline, even with little waiting: rejected."""
        self.slow_link.stop_reading(0)
        for _ in range(80):
            self.server.broadcast(MESSAGE)
        self.clock.advance(0)
        [slow] = [s for s in self.server.peers() if s.node_id == "slow"]
        self.assertFalse(slow.writable)
        self.clock.advance(DEADLINE - 0.001)
        self.assertEqual(slow.record.state, ConnectionState.OPEN)
        self.clock.advance(0.001)
        self.assertEqual(slow.record.reason, CloseReason.REJECTED)

    def test_reader_that_catches_up_is_kept(self) -> None:
        self.slow_link.stop_reading(0)
        for _ in range(80):
            self.server.broadcast(MESSAGE)
        self.clock.advance(0)
        [slow] = [s for s in self.server.peers() if s.node_id == "slow"]
        self.assertFalse(slow.writable)
        self.clock.advance(DEADLINE / 2)
        self.slow_link.resume_reading(0)
        self.clock.advance(0)
        self.assertTrue(slow.writable)
        self.clock.advance(DEADLINE)
        self.assertEqual(slow.record.state, ConnectionState.OPEN)
        self.assertEqual(len(self.clients[1].application.messages), 80)

    def test_write_frame_respects_the_peer_limit(self) -> None:
        [peer, _] = self.server.peers()
        assert isinstance(peer, Session)
        self.assertRaises(MessageTooLarge, self.server.broadcast, b"x" * (peer.machine.max_body + 1))


def _with_policy(settings):  # type: ignore[no-untyped-def]
    import attrs

    return attrs.evolve(settings, max_backlog=MAX_BACKLOG, slow_consumer_deadline=DEADLINE)
