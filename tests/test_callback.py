"""
The callback topology on the memory network: the outbox, registration,
delivery by callback and by fallback, de-duplication, the token, the status
section, ``POST /deliver`` and the command line. Deterministic: a Clock
drives everything.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from netmodels.core.connection import ConnectionState, Direction
from netmodels.core.frames import FrameDecoder, MalformedMessage, encode_frame
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.daemon.status import StatusPage
from netmodels.daemon.tap import Options
from netmodels.runtime.dialer import Dialer, DialerState
from netmodels.runtime.node import Node, NodeConfig, endpoint_label
from netmodels.runtime.session import MessageTooLarge
from netmodels.testing import MemoryLink, MemoryNetwork
from netmodels.topologies.callback.client import CallbackClient
from netmodels.topologies.callback.common import CALLBACK, FALLBACK, callback_endpoint
from netmodels.topologies.callback.inbox import InboxApplication
from netmodels.topologies.callback.messages import (
    ACK,
    DELIVER,
    REGISTER,
    decode_ack,
    decode_deliver,
    decode_register,
    encode_ack,
    encode_deliver,
    encode_register,
)
from netmodels.topologies.callback.options import CallbackSettings
from netmodels.topologies.callback.outbox import DeliveredLog, Outbox, OutboxFull, UnknownClient
from netmodels.topologies.callback.server import CallbackServer
from netmodels.topologies.callback.topology import Callback, callback_of
from tests.test_testing import EPSILON, KEEPALIVE, KEEPALIVE_BOUND, advance_by

ADDRESS = "server:1"
TOKEN = "s3cret"
#: The request timeout of the harness nodes, which bounds an acknowledgement.
ACK_TIMEOUT = 30.0
#: CallbackServer's default pause before it dials a failed callback again.
RETRY = 5.0
CLOSE_DEADLINE = 5.0


def frames(data: bytes) -> list[tuple[int, bytes]]:
    return FrameDecoder().feed(data)


def drop_acks(link: MemoryLink, side: int) -> list[int]:
    """
    Lose every ACK frame ``side`` of ``link`` sends, and nothing else (keepalive
    and the rest go through). The ids of the lost ACKs are returned, as they are lost.
    """
    decoder = FrameDecoder()
    lost: list[int] = []
    send = link._send

    def filtered(from_side: int, data: bytes) -> None:
        if from_side != side:
            send(from_side, data)
            return
        kept = b""
        for kind, body in decoder.feed(data):
            if kind == ACK:
                lost.append(decode_ack(body))
            else:
                kept += encode_frame(kind, body)
        if kept:
            send(from_side, kept)

    link._send = filtered  # type: ignore[method-assign]
    return lost


class Star:
    """A callback server on :data:`ADDRESS` and clients, wired as ``Callback.build`` does."""

    def __init__(self, token: str | None = TOKEN, outbox: Outbox | None = None, **config: Any) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.token = token
        server_config = NodeConfig(
            topology="callback",
            role="server",
            node_id="server",
            app="inbox",
            keepalive=KEEPALIVE,
            settings=CallbackSettings(token=token),
            **config,
        )
        self.server = Node(server_config, Callback(), InboxApplication(server_config), self.clock)
        self.outbox = outbox or Outbox(max_per_client=5, max_total=8)
        self.callback = CallbackServer(
            self.server,
            self.outbox,
            token,
            dial=lambda description: self.network.client_endpoint(endpoint_label(description), "server"),
        )
        self.server.topology_state = self.callback
        factory = self.server.manager.wrap_factory(self.server.session_factory())
        self.network.server_endpoint(ADDRESS).listen(factory)
        self.server.startService()
        self.clients: dict[str, Node] = {}
        self.logs: dict[str, DeliveredLog] = {}

    def add(
        self,
        node_id: str,
        host: str = "10.0.0.1",
        callback_port: int | None = 7000,
        token: str | None = TOKEN,
        log: DeliveredLog | None = None,
    ) -> Node:
        config = NodeConfig(
            topology="callback",
            role="client",
            node_id=node_id,
            app="inbox",
            keepalive=KEEPALIVE,
            connect=(ADDRESS,),
            settings=CallbackSettings(token=token),
        )
        node = Node(config, Callback(), InboxApplication(config), self.clock)
        self.logs[node_id] = log = log or self.logs.get(node_id) or DeliveredLog()
        client = CallbackClient(node, log, token)
        node.topology_state = client
        if callback_port is not None:
            address = f"{host}:{callback_port}"
            self.network.refuse(address, False)
            listening: list[Any] = []
            factory = node.manager.wrap_factory(client.callback_factory)
            self.network.server_endpoint(address).listen(factory).addCallback(listening.append)
            client.listener = SimpleNamespace(port=listening[0], address=f"tcp:{address}")
        dialer = Dialer(
            node.manager,
            self.network.client_endpoint(ADDRESS, host),
            client.control_factory,
            ADDRESS,
            self.clock,
            draw=lambda: 0.0,
        )
        dialer.setServiceParent(node)
        node.clients.append(dialer)
        node.startService()
        self.clock.advance(0)
        self.clients[node_id] = node
        return node

    def kill(self, node_id: str) -> None:
        """The client's process dies: its connections are reset, its port closes."""
        node = self.clients.pop(node_id)
        live = list(node.manager.live.values())
        for link in list(self.network.links):
            for side, end in enumerate(link.ends):
                if end.protocol is not None and end.protocol in live:
                    link.reset(side)
        for dialer in node.clients:
            dialer.stopService()
        for address, port in list(self.network._listeners.items()):
            if address != ADDRESS and port.factory.manager is node.manager:  # type: ignore[attr-defined]
                port.stopListening()
        node.stop_hooks.clear()
        node.running = False
        self.clock.advance(0)

    def received(self, node_id: str) -> list[bytes]:
        application = self.clients[node_id].application
        assert isinstance(application, InboxApplication)
        return list(application.recent)

    def deliver(self, client_id: str, payload: bytes) -> int:
        results: list[Any] = []
        self.callback.deliver(client_id, payload).addBoth(results.append)
        [result] = results
        if not isinstance(result, int):
            result.raiseException()
        return int(result)

    def failure(self, client_id: str, payload: bytes) -> Any:
        results: list[Any] = []
        self.callback.deliver(client_id, payload).addBoth(results.append)
        [result] = results
        return result.value

    def client_status(self, client_id: str) -> dict[str, Any]:
        return dict(self.callback.status()["clients"][client_id])

    def stop(self) -> None:
        for node in [*self.clients.values(), self.server]:
            if node.running:
                node.stopService()
        for _ in range(4):
            advance_by(self.clock, CLOSE_DEADLINE)


class _StarTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.star = Star()
        self.addCleanup(self.no_timers_left)
        self.addCleanup(self.star.stop)
        self.clock = self.star.clock

    def no_timers_left(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])


# --- The stores ---------------------------------------------------------------------------


class OutboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="netmodels-outbox-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "outbox.sqlite")

    def test_order_ack_and_depth(self) -> None:
        outbox = Outbox()
        outbox.remember("alice", None)
        outbox.remember("bob", None)
        ids = [outbox.enqueue("alice", f"m{n}".encode()) for n in range(3)]
        outbox.enqueue("bob", b"b0")
        self.assertEqual(ids, sorted(ids))
        self.assertEqual([payload for _, payload in outbox.peek("alice")], [b"m0", b"m1", b"m2"])
        self.assertEqual(outbox.peek("alice", after=ids[0], limit=1), [(ids[1], b"m1")])
        self.assertEqual((outbox.depth("alice"), outbox.depth("bob"), outbox.depth()), (3, 1, 4))
        self.assertEqual(outbox.ack("alice", ids[1]), 2)
        self.assertEqual((outbox.depth("alice"), outbox.depth()), (1, 2))
        self.assertEqual(outbox.ack("alice", ids[1]), 0)
        self.assertEqual(outbox.peek("carol"), [])

    def test_bounds_and_unknown_clients(self) -> None:
        outbox = Outbox(max_per_client=2, max_total=3)
        self.assertRaises(UnknownClient, outbox.enqueue, "nobody", b"x")
        outbox.remember("alice", None)
        outbox.remember("bob", None)
        outbox.enqueue("alice", b"1")
        outbox.enqueue("alice", b"2")
        full = self.assertRaises(OutboxFull, outbox.enqueue, "alice", b"3")
        self.assertIn("'alice' is full: 2 undelivered messages", str(full))
        outbox.enqueue("bob", b"1")
        full = self.assertRaises(OutboxFull, outbox.enqueue, "bob", b"2")
        self.assertIn("outbox is full: 3", str(full))
        self.assertIn("never registered", str(UnknownClient("nobody")))
        self.assertRaises(ValueError, Outbox, None, 0)

    def test_a_file_survives_reopening(self) -> None:
        """Messages, clients and the store id survive a restart; ids are never reused."""
        outbox = Outbox(self.path)
        outbox.remember("alice", "tcp:host=10.0.0.1:port=7000:timeout=5")
        first = outbox.enqueue("alice", b"one")
        second = outbox.enqueue("alice", b"two")
        outbox.ack("alice", second)
        store = outbox.store_id
        outbox.close()
        again = Outbox(self.path)
        self.addCleanup(again.close)
        self.assertEqual(again.store_id, store)
        self.assertTrue(again.known("alice"))
        self.assertEqual(again.clients(), ["alice"])
        self.assertEqual(again.depth("alice"), 0)
        third = again.enqueue("alice", b"three")
        self.assertGreater(third, second)
        self.assertGreater(second, first)
        self.assertEqual(again.peek("alice"), [(third, b"three")])
        mode = again._db.execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")

    def test_delivered_log_persists(self) -> None:
        log = DeliveredLog(self.path)
        self.assertEqual(log.last("s1"), 0)
        log.advance("s1", 7)
        log.close()
        log.close()
        again = DeliveredLog(self.path)
        self.addCleanup(again.close)
        self.assertEqual(again.last("s1"), 7)
        self.assertEqual(DeliveredLog().last("s1"), 0)


class CodecTests(SynchronousTestCase):
    def test_round_trips(self) -> None:
        [(kind, body)] = frames(encode_register(7000, "tcp"))
        self.assertEqual((kind, decode_register(body)), (REGISTER, (7000, "tcp")))
        [(kind, body)] = frames(encode_register(None))
        self.assertEqual(decode_register(body), (None, "tcp"))
        [(kind, body)] = frames(encode_deliver(2**40, b"mail"))
        self.assertEqual((kind, decode_deliver(body)), (DELIVER, (2**40, b"mail")))
        [(kind, body)] = frames(encode_ack(9))
        self.assertEqual((kind, decode_ack(body)), (ACK, 9))

    def test_malformed(self) -> None:
        for body in (b"{", b"[]", b'{"port": 0}', b'{"port": true}', b'{"port": 1, "kind": "smtp"}'):
            self.assertRaises(MalformedMessage, decode_register, body)
        self.assertRaises(MalformedMessage, decode_deliver, b"1234567")
        self.assertRaises(MalformedMessage, decode_ack, b"123")

    def test_callback_endpoint(self) -> None:
        self.assertEqual(callback_endpoint("tcp", "10.0.0.1", 25, 5), "tcp:host=10.0.0.1:port=25:timeout=5")
        self.assertEqual(callback_endpoint("tcp", "::1", 25, 5), "tcp:host=\\:\\:1:port=25:timeout=5")
        self.assertEqual(callback_endpoint("tls", "example.com", 25, 2.5), "tls:example.com:25:timeout=2.5")
        self.assertEqual(endpoint_label(callback_endpoint("tcp", "10.0.0.1", 25)), "10.0.0.1:25")


# --- Delivery -------------------------------------------------------------------------------


class DeliveryTests(_StarTestCase):
    def callback_link(self) -> MemoryLink:
        """The open callback connection: the server (side 0) dialled the client's listener."""
        [link] = [
            link
            for link in self.star.network.links
            if link.server.getHost().port == 7000 and link.server.connected
        ]
        return link

    def test_registered_client_gets_messages_by_callback(self) -> None:
        """The server dials the registered port and delivers there; the status says so."""
        self.star.add("alice")
        self.assertTrue(self.star.callback.alive("alice"))
        for n in range(3):
            self.star.deliver("alice", f"mail {n}".encode())
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"mail 0", b"mail 1", b"mail 2"])
        status = self.star.client_status("alice")
        self.assertEqual(status["callback"], "tcp:host=10.0.0.1:port=7000:timeout=5")
        self.assertEqual(status["last_callback"], {"result": "ok", "errno": None, "detail": ""})
        self.assertEqual((status["alive"], status["outbox_depth"], status["in_flight"]), (True, 0, 0))
        self.assertEqual(status["delivered"], {CALLBACK: 3, FALLBACK: 0})
        client = callback_of(self.star.clients["alice"])
        assert isinstance(client, CallbackClient)
        self.assertEqual(client.status()["received"], {CALLBACK: 3, FALLBACK: 0})
        # The callback connection is an outbound connection of the server to the client's port.
        [dialled] = [
            c.record
            for c in self.star.server.manager.live.values()
            if c.record.direction is Direction.OUTBOUND
        ]
        self.assertEqual((dialled.peer, dialled.peer_id), ("10.0.0.1:7000", "alice"))

    def test_refused_callback_falls_back_and_loses_nothing(self) -> None:
        """The client closed its port: the dial is refused, recorded, and the control connection used."""
        self.star.add("alice")
        self.star.network.refuse("10.0.0.1:7000")
        self.star.deliver("alice", b"urgent")
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"urgent"])
        status = self.star.client_status("alice")
        self.assertEqual(
            (status["last_callback"]["result"], status["last_callback"]["errno"]), ("refused", "ECONNREFUSED")
        )
        self.assertEqual(status["delivered"], {CALLBACK: 0, FALLBACK: 1})
        self.assertEqual(status["outbox_depth"], 0)
        [failed] = [r for r in self.star.server.manager.history if r.state is ConnectionState.FAILED]
        self.assertEqual((failed.reason, failed.peer), (CloseReason.REFUSED, "10.0.0.1:7000"))
        # Within the retry pause the server does not dial again; after it, it does.
        self.star.network.refuse("10.0.0.1:7000", False)
        self.star.deliver("alice", b"second")
        self.clock.advance(0)
        self.assertEqual(self.star.client_status("alice")["delivered"], {CALLBACK: 0, FALLBACK: 2})
        advance_by(self.clock, RETRY)
        self.star.deliver("alice", b"third")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"urgent", b"second", b"third"])
        self.assertEqual(self.star.client_status("alice")["delivered"], {CALLBACK: 1, FALLBACK: 2})

    def test_unreachable_callback_records_why(self) -> None:
        self.star.add("alice")
        self.star.network.unreachable("10.0.0.1:7000")
        self.star.deliver("alice", b"x")
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"x"])
        self.assertEqual(self.star.client_status("alice")["last_callback"]["result"], "unreachable")

    def test_callback_dial_timeout_then_fallback(self) -> None:
        """A callback host that drops SYNs: the dial times out, then the message goes by fallback."""
        self.star.network.connect_timeout = 5.0
        self.star.add("alice", callback_port=None)
        # As if the client had registered a callback on a host whose packets vanish.
        self.star.callback._clients["alice"].callback = "tcp:host=10.9.9.9:port=25:timeout=5"
        self.star.network.blackhole_host("10.9.9.9")
        self.star.deliver("alice", b"slow")
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [])
        advance_by(self.clock, 5.0)
        self.assertEqual(self.star.received("alice"), [b"slow"])
        self.assertEqual(self.star.client_status("alice")["last_callback"]["result"], "timeout")

    def test_client_without_callback_uses_the_control_connection(self) -> None:
        self.star.add("bob", callback_port=None)
        self.star.deliver("bob", b"hi")
        self.clock.advance(0)
        self.assertEqual(self.star.received("bob"), [b"hi"])
        status = self.star.client_status("bob")
        self.assertEqual((status["callback"], status["last_callback"]), (None, None))
        self.assertEqual(status["delivered"][FALLBACK], 1)

    def test_dead_client_messages_wait_and_arrive_in_order_once(self) -> None:
        """A client that died: messages queue; when it registers again they arrive in order, once."""
        self.star.add("alice")
        self.star.deliver("alice", b"before")
        self.clock.advance(0)
        self.clock.advance(0)
        self.star.kill("alice")
        self.assertFalse(self.star.callback.alive("alice"))
        for n in range(3):
            self.star.deliver("alice", f"queued {n}".encode())
        advance_by(self.clock, 1.0)
        status = self.star.client_status("alice")
        self.assertEqual((status["alive"], status["connected"], status["outbox_depth"]), (False, False, 3))
        self.star.add("alice")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"queued 0", b"queued 1", b"queued 2"])
        self.assertEqual(self.star.client_status("alice")["outbox_depth"], 0)

    def test_lost_acknowledgement_resends_and_client_drops_the_duplicate(self) -> None:
        """
        The server stops reading, so it never hears the ACK: keepalive (its
        bound is shorter than the ack timeout) ends the callback connection
        and the server resends; the app sees the message once. The ack
        timeout on its own: test_ack_timeout_ends_a_callback_path_that_swallows_acks.
        """
        self.star.add("alice")
        self.star.deliver("alice", b"warmup")
        self.clock.advance(0)
        self.clock.advance(0)
        self.callback_link().stop_reading(0)  # the server stops reading: ACKs pile up unread
        self.star.deliver("alice", b"once")
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"warmup", b"once"])
        self.assertEqual(self.star.client_status("alice")["outbox_depth"], 1)
        advance_by(self.clock, ACK_TIMEOUT)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"warmup", b"once"])
        client = callback_of(self.star.clients["alice"])
        assert isinstance(client, CallbackClient)
        self.assertEqual(client.duplicates, 1)
        status = self.star.client_status("alice")
        self.assertEqual(status["outbox_depth"], 0)
        self.assertEqual(status["last_callback"]["result"], "timeout")
        self.assertEqual(status["delivered"], {CALLBACK: 1, FALLBACK: 1})

    def test_ack_timeout_ends_a_callback_path_that_swallows_acks(self) -> None:
        """
        Only the ACKs are lost (keepalive still answers, so it never
        interferes): at the ack timeout, and not before, the server ends the
        callback connection with ``timeout``, says why, and resends on the
        control connection; the application sees the message once.
        """
        self.assertGreater(ACK_TIMEOUT, KEEPALIVE_BOUND)  # keepalive would fire first if it could
        self.star.add("alice")
        self.star.deliver("alice", b"warmup")
        self.clock.advance(0)
        self.clock.advance(0)
        link = self.callback_link()
        lost = drop_acks(link, side=1)  # the client is side 1: the server dialled it
        message_id = self.star.deliver("alice", b"once")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"warmup", b"once"])
        self.assertEqual(lost, [message_id])
        advance_by(self.clock, ACK_TIMEOUT - EPSILON)
        status = self.star.client_status("alice")
        self.assertEqual((status["outbox_depth"], status["in_flight"]), (1, 1))
        self.assertEqual(status["last_callback"]["result"], "ok")
        self.assertTrue(link.server.connected, "keepalive ended the callback connection")
        advance_by(self.clock, EPSILON)
        self.clock.advance(0)
        self.clock.advance(0)
        status = self.star.client_status("alice")
        detail = f"no acknowledgement of message {message_id} within {ACK_TIMEOUT:g} s"
        self.assertEqual(status["last_callback"], {"result": "timeout", "errno": None, "detail": detail})
        self.assertEqual((status["outbox_depth"], status["in_flight"]), (0, 0))
        self.assertEqual(status["delivered"], {CALLBACK: 1, FALLBACK: 1})
        self.assertFalse(link.server.connected)
        [ended] = [
            r for r in self.star.server.manager.history if r.peer == "10.0.0.1:7000" and r.reason is not None
        ]
        self.assertEqual(
            (ended.reason, ended.initiator, ended.detail), (CloseReason.TIMEOUT, Initiator.LOCAL, detail)
        )
        self.assertEqual(self.star.received("alice"), [b"warmup", b"once"])
        client = callback_of(self.star.clients["alice"])
        assert isinstance(client, CallbackClient)
        self.assertEqual(client.duplicates, 1)

    def test_log_lines_count_messages_in_english(self) -> None:
        """The server's log says "1 message waiting", "2 messages wait" (not "1 messages")."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.star.add("alice", callback_port=None)
        self.star.kill("alice")
        self.star.deliver("alice", b"one")
        self.star.add("alice", callback_port=None)
        self.clock.advance(0)
        self.star.kill("alice")
        self.star.deliver("alice", b"two")
        self.star.deliver("alice", b"three")
        self.star.add("alice", callback_port=None)
        self.clock.advance(0)
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "netmodels.callback"]
        self.assertIn(
            "client alice registered: callback none (control connection only); 1 message waiting", lines
        )
        self.assertIn(
            "client alice registered: callback none (control connection only); 2 messages waiting", lines
        )
        self.assertIn("client alice is offline (reset); 0 messages wait for it", lines)

    def test_restarted_client_with_its_log_sees_no_repeat(self) -> None:
        """With its delivered log kept (a file in real life), a client never shows a message twice."""
        self.star.add("alice")
        log = self.star.logs["alice"]
        self.star.deliver("alice", b"warmup")
        self.clock.advance(0)
        # The client shows the next message, then dies before its ACK is read.
        self.callback_link().stop_reading(0)
        self.star.deliver("alice", b"seen")
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"warmup", b"seen"])
        self.star.kill("alice")
        self.assertEqual(self.star.client_status("alice")["outbox_depth"], 1)
        self.star.add("alice", log=log)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [])
        self.assertEqual(self.star.client_status("alice")["outbox_depth"], 0)

    def test_window_limits_what_is_in_flight(self) -> None:
        star = Star(outbox=Outbox(max_per_client=1000))
        self.addCleanup(star.stop)
        star.callback.window = 4
        star.add("alice", callback_port=None)
        star.network.links[0].stop_reading(0)  # the client stops reading
        for n in range(10):
            star.deliver("alice", str(n).encode())
        self.assertEqual(star.client_status("alice")["in_flight"], 4)
        star.network.links[0].resume_reading(0)
        for _ in range(6):
            star.clock.advance(0)
        self.assertEqual(star.received("alice"), [str(n).encode() for n in range(10)])

    def test_deliver_refusals(self) -> None:
        self.assertIsInstance(self.star.failure("nobody", b"x"), UnknownClient)
        self.star.add("alice", callback_port=None)
        self.star.network.links[0].stop_reading(0)
        for n in range(5):
            self.star.deliver("alice", str(n).encode())
        full = self.star.failure("alice", b"too many")
        self.assertIsInstance(full, OutboxFull)
        too_large = self.star.failure("alice", b"x" * self.star.server.config.max_frame)
        self.assertIsInstance(too_large, MessageTooLarge)
        self.assertEqual(self.star.callback.counters["refused_full"], 1)
        self.assertEqual(self.star.callback.counters["refused_unknown"], 1)

    def test_deliver_after_stop_fails_cleanly(self) -> None:
        self.star.add("alice", callback_port=None)
        self.star.server.stopService()
        self.assertIsInstance(self.star.failure("alice", b"late"), RuntimeError)

    def test_suspect_client_is_not_alive(self) -> None:
        self.star.add("alice", callback_port=None)
        [link] = self.star.network.links
        link.blackhole()
        advance_by(self.clock, KEEPALIVE.idle + KEEPALIVE.interval * 1.5)
        self.assertFalse(self.star.callback.alive("alice"))
        self.star.deliver("alice", b"later")
        self.assertEqual(self.star.client_status("alice")["in_flight"], 0)
        link.heal()
        advance_by(self.clock, KEEPALIVE.interval)
        self.assertTrue(self.star.callback.alive("alice"))
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"later"])

    def test_registering_again_replaces_the_older_connection(self) -> None:
        self.star.add("alice", callback_port=None)
        first = self.star.clients["alice"]
        self.star.clients.pop("alice")
        self.star.add("alice", host="10.0.0.2", callback_port=None)
        self.clock.advance(0)
        closed = [r for r in self.star.server.manager.history if r.peer_id == "alice"]
        self.assertEqual([r.reason for r in closed], [CloseReason.CLEAN])
        self.star.clients["first"] = first  # stopped in cleanup
        first.clients[0].stopService()
        self.star.deliver("alice", b"to the newest")
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"to the newest"])


# --- The token ------------------------------------------------------------------------------


class TokenTests(_StarTestCase):
    def test_wrong_token_is_rejected_before_the_application(self) -> None:
        """A wrong token: closed with reason rejected (fatal), the application never told."""
        seen: list[Any] = []
        application = self.star.server.application
        application.peer_ready = seen.append  # type: ignore[method-assign]
        node = self.star.add("mallory", token="guess")
        record = next(r for r in self.star.server.manager.history if r.direction is Direction.INBOUND)
        self.assertEqual(
            (record.reason, record.initiator, record.fatal, record.detail),
            (CloseReason.REJECTED, Initiator.LOCAL, True, "wrong token"),
        )
        [client_record] = [r for r in node.manager.history if r.direction is Direction.OUTBOUND]
        self.assertEqual(
            (client_record.reason, client_record.initiator, client_record.fatal),
            (CloseReason.REJECTED, Initiator.REMOTE, True),
        )
        self.assertEqual(seen, [])
        self.assertEqual(node.clients[0].state, DialerState.GAVE_UP)
        self.assertEqual(self.star.callback.status()["clients"], {})

    def test_missing_token_is_rejected(self) -> None:
        self.star.add("anon", token=None)
        record = next(r for r in self.star.server.manager.history if r.direction is Direction.INBOUND)
        self.assertEqual((record.reason, record.detail), (CloseReason.REJECTED, "no token in HELLO"))

    def test_the_server_proves_the_token_when_it_dials_back(self) -> None:
        """The client's callback listener turns away a dialler without the token."""
        self.star.add("alice")
        self.star.callback.dial_factory.settings = self.star.server.session_settings  # no token
        self.star.deliver("alice", b"x")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"x"])
        status = self.star.client_status("alice")
        self.assertEqual(status["last_callback"]["result"], "rejected")
        self.assertEqual(status["delivered"], {CALLBACK: 0, FALLBACK: 1})

    def test_the_token_never_leaves_in_the_servers_hello(self) -> None:
        hello = self.star.server.session_settings.hello
        self.assertNotIn("token", hello.extra)
        self.assertEqual(hello.extra["store"], self.star.outbox.store_id)
        node = self.star.add("alice")
        client = callback_of(node)
        assert isinstance(client, CallbackClient)
        self.assertNotIn("token", client.callback_factory.settings.hello.extra)
        self.assertEqual(client.control_factory.settings.hello.extra["token"], TOKEN)


# --- Status and POST /deliver -----------------------------------------------------------------


def post(root: StatusPage, path: str, body: bytes, token: str | None) -> tuple[int, Any]:
    request = DummyRequest([segment.encode() for segment in path.strip("/").split("/")])
    request.method = b"POST"
    request.content = io.BytesIO(body)
    if token is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    written = b"".join(request.written) if isinstance(result, int) else result
    return request.responseCode or 200, json.loads(written)


class HttpDeliverTests(_StarTestCase):
    def test_post_deliver(self) -> None:
        self.star.add("alice")
        root = StatusPage([self.star.server])
        code, document = post(root, "/deliver/alice", b"from the shell", TOKEN)
        self.assertEqual((code, document["client"]), (202, "alice"))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.star.received("alice"), [b"from the shell"])

    def test_post_deliver_refusals(self) -> None:
        self.star.add("alice", callback_port=None)
        self.star.network.links[0].stop_reading(0)
        root = StatusPage([self.star.server])
        self.assertEqual(post(root, "/deliver/alice", b"x", "wrong")[0], 401)
        self.assertEqual(post(root, "/deliver/alice", b"x", None)[0], 401)
        self.assertEqual(post(root, "/deliver/nobody", b"x", TOKEN)[0], 404)
        for _ in range(5):
            self.assertEqual(post(root, "/deliver/alice", b"x", TOKEN)[0], 202)
        code, document = post(root, "/deliver/alice", b"x", TOKEN)
        self.assertEqual(code, 503)
        self.assertIn("is full", document["error"])
        self.assertEqual(
            post(StatusPage([self.star.clients["alice"]]), "/deliver/alice", b"x", TOKEN)[0], 404
        )

    def test_post_deliver_is_off_without_a_token(self) -> None:
        star = Star(token=None)
        self.addCleanup(star.stop)
        self.assertEqual(post(StatusPage([star.server]), "/deliver/alice", b"x", "anything")[0], 403)

    def test_status_document_has_the_section(self) -> None:
        self.star.add("alice")
        document = self.star.server.status()
        self.assertEqual(document["callback"]["role"], "server")
        self.assertEqual(document["callback"]["outbox"]["max_per_client"], 5)
        self.assertIn("alice", document["callback"]["clients"])
        self.assertEqual(self.star.clients["alice"].status()["callback"]["registered"], True)


# --- The command line -------------------------------------------------------------------------


class CommandLineTests(SynchronousTestCase):
    def parse(self, *args: str) -> NodeConfig:
        options = Options()
        options.parseOptions(list(args))
        config: NodeConfig = options["config"]
        return config

    def test_server_and_client_options(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        token_file = os.path.join(directory, "token")
        with open(token_file, "w") as file:
            file.write("from-a-file\n")
        self.addCleanup(os.remove, token_file)
        server = self.parse(
            "--topology", "callback", "--listen", "tcp:0", "--token-file", token_file,
            "--outbox", "x.sqlite", "--outbox-limit", "50",
        )  # fmt: skip
        self.assertEqual((server.role, server.app), ("server", "inbox"))
        settings = server.settings
        self.assertEqual(
            (settings.token, settings.outbox, settings.outbox_limit), ("from-a-file", "x.sqlite", 50)
        )
        self.assertNotIn("from-a-file", repr(server))
        client = self.parse(
            "--topology", "callback", "--role", "client", "--connect", "tcp:127.0.0.1:1",
            "--callback", "tcp:0:interface=127.0.0.1", "--token", "t",
        )  # fmt: skip
        self.assertEqual(
            (client.settings.callback, client.settings.token), ("tcp:0:interface=127.0.0.1", "t")
        )

    def test_usage_errors(self) -> None:
        cases = [
            (["--token", "t"], "only the callback topology"),
            (["--listen", "tcp:0", "--outbox-limit", "5"], "only the callback topology"),
            (["-t", "callback", "--listen", "tcp:0", "--callback", "tcp:0"], "clients listen for callbacks"),
            (["-t", "callback", "-r", "client"], "exactly one server"),
            (["-t", "callback", "-r", "client", "--connect", "tcp:h:1", "--listen", "tcp:0"], "--listen"),
            (["-t", "callback", "--listen", "tcp:0", "--token", ""], "must not be empty"),
            (["-t", "callback", "--listen", "tcp:0", "--token", "a", "--token-file", "f"], "not both"),
            (["-t", "callback", "--listen", "tcp:0", "--token-file", "/nonexistent/x"], "cannot read"),
            (
                ["-t", "callback", "-r", "client", "--connect", "tcp:h:1", "--callback", "bogus:"],
                "--callback",
            ),
        ]
        for args, message in cases:
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(message, str(error), args)
