"""
Tests for :mod:`netmodels.topologies.p2p.dialling`: a p2p node's dials go
through one on-demand :class:`~netmodels.runtime.dialer.Dialer` per member and
per bootstrap target, each holding off by its own close reason.

They run on :class:`tests.test_p2p.MemoryMesh` (memory network, Clock, jitter
drawn as 0, ticks at whole seconds) and assert on recorded events: every dial
(``MemoryMesh.dials``) and every hold-off a dialer schedules (its
``holding off dialling ...`` log event: time, peer, delay, reason).
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.backoff import DEFAULT_RECONNECT_POLICY, Backoff
from netmodels.core.connection import ConnectionLimits, ConnectionRecord, Direction
from netmodels.core.reasons import CloseReason
from netmodels.runtime.manager import ConnectFailed, ConnectionManager
from netmodels.runtime.session import SessionFactory
from netmodels.topologies.p2p.dialling import FATAL_HOLD_OFF, Dialling
from netmodels.topologies.p2p.mesh import PeerState
from tests.test_p2p import (
    SETTLE,
    TICK,
    MemoryMesh,
    address,
    connect_raw,
    peers_frame,
    side_of,
)


def backoff(reason: CloseReason) -> Backoff:
    found = DEFAULT_RECONNECT_POLICY.by_reason[reason]
    assert found is not None
    return found


REFUSED = backoff(CloseReason.REFUSED)
RESET = backoff(CloseReason.RESET)
UNREACHABLE = backoff(CloseReason.UNREACHABLE)
REJECTED = backoff(CloseReason.REJECTED)


class HoldOffs:
    """Every hold-off an on-demand dialer schedules: ``(time, peer, delay, reason)``."""

    def __init__(self, testcase: SynchronousTestCase, mesh: MemoryMesh) -> None:
        self.mesh = mesh
        self.events: list[tuple[float, str, float, str]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def of(self, peer: str) -> list[tuple[float, float, str]]:
        return [(time, delay, reason) for time, who, delay, reason in self.events if who == peer]

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "netmodels.reconnect" and "holding off" in event.get(
            "log_format", ""
        ):
            self.events.append((self.mesh.clock.seconds(), event["peer"], event["delay"], event["reason"]))


def to_half_tick(mesh: MemoryMesh) -> float:
    """Advance to half a tick past the next tick (ticks fall on whole seconds); that time."""
    now = mesh.clock.seconds()
    mesh.advance(math.floor(now) + 1.5 - now)
    return mesh.clock.seconds()


def dial_times(mesh: MemoryMesh, source: str, target: str) -> list[float]:
    return [time for time, src, dst in mesh.dials if (src, dst) == (source, target)]


class BootstrapTests(SynchronousTestCase):
    def test_refused_target_backs_off_by_policy(self) -> None:
        """
        A bootstrap target refused three times holds off 0.5, 1 and 2 s
        (``refused``, draw 0); each dial waits for the tick after its hold-off.
        """
        mesh = MemoryMesh(self)
        holds = HoldOffs(self, mesh)
        mesh.add_node(1, [0])  # n00 does not exist: nobody listens at n00:1
        mesh.start()
        mesh.advance(4.5)
        target = address("n00")
        self.assertEqual(
            holds.of(target),
            [
                (0.0, REFUSED.initial, "refused"),
                (1.0, REFUSED.initial * 2, "refused"),
                (2.0, REFUSED.initial * 4, "refused"),
                (4.0, REFUSED.initial * 8, "refused"),
            ],
        )
        self.assertEqual(dial_times(mesh, "n01", target), [0.0, 1.0, 2.0, 4.0])
        mesh.stop_all()

    def test_targets_back_off_each_on_its_own(self) -> None:
        """
        Two bootstrap targets, one refused and one unreachable: each holds off
        by its own reason and its own count of failures, not a shared one.
        """
        mesh = MemoryMesh(self)
        holds = HoldOffs(self, mesh)
        mesh.network.unreachable(address("n09"))
        mesh.add_node(1, [0, 9])
        mesh.start()
        mesh.advance(6.5)
        self.assertEqual(
            [delay for _, delay, _ in holds.of(address("n09"))],
            [UNREACHABLE.initial, UNREACHABLE.initial * 2, UNREACHABLE.initial * 4],
        )
        self.assertEqual(dial_times(mesh, "n01", address("n09")), [0.0, 2.0, 6.0])
        self.assertEqual(dial_times(mesh, "n01", address("n00")), [0.0, 1.0, 2.0, 4.0])
        mesh.stop_all()

    def test_rejected_before_handshake_holds_off(self) -> None:
        """
        A bootstrap peer that is full answers with BYE ``rejected`` before any
        handshake: the target holds off by ``rejected`` (5 s, then 10 s),
        instead of being dialled again at every tick.
        """
        mesh = MemoryMesh(self)
        holds = HoldOffs(self, mesh)
        mesh.add_node(0, max_connections=1)
        mesh.add_node(1, [0])
        mesh.start("n00", "n01")
        mesh.advance(1)
        mesh.add_node(2, [0])
        mesh.start("n02")
        mesh.advance(16)
        self.assertEqual(
            holds.of(address("n00")),
            [
                (1.0, REJECTED.initial, "rejected"),
                (6.0, REJECTED.initial * 2, "rejected"),
                (16.0, REJECTED.initial * 4, "rejected"),
            ],
        )
        self.assertEqual(dial_times(mesh, "n02", address("n00")), [1.0, 6.0, 16.0])
        self.assertEqual(mesh.mesh("n02").members, {})
        mesh.stop_all()

    def test_connected_target_is_not_dialled_again(self) -> None:
        """Once a bootstrap target answered, the node has a peer and dials no bootstrap target."""
        mesh = MemoryMesh(self)
        mesh.build(2)
        mesh.start()
        mesh.advance(SETTLE)
        self.assertEqual(dial_times(mesh, "n01", address("n00")), [0.0])
        mesh.stop_all()


class MemberTests(SynchronousTestCase):
    def kill(self, mesh: MemoryMesh, node_id: str) -> None:
        """``node_id``'s process dies: its loop stops, its port closes, its connections are reset."""
        mesh.running.discard(node_id)
        mesh.mesh(node_id).stop()
        for listener in list(mesh.nodes[node_id]):
            self.successResultOf(defer.maybeDeferred(listener.stopService))
        for link in mesh.network.links_of(node_id):
            if all(end.connected for end in link.ends):
                link.reset(side_of(link, node_id))
        mesh.clock.advance(0)

    def test_redial_delays_follow_the_policy_by_close_reason(self) -> None:
        """
        n01 is killed (its connection reset, its port closed): n00 holds off
        0.1 s (``reset``), then 1, 2, 4 s (``refused``, the count of failures
        growing across reasons), dialling at the tick after each.
        """
        mesh = MemoryMesh(self)
        holds = HoldOffs(self, mesh)
        mesh.build(2)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        killed = to_half_tick(mesh)
        mark = mesh.mark()
        self.kill(mesh, "n01")
        mesh.advance(8)
        self.assertEqual(
            holds.of("n01"),
            [
                (killed, RESET.initial, "reset"),
                (killed + 0.5, REFUSED.initial * 2, "refused"),
                (killed + 1.5, REFUSED.initial * 4, "refused"),
                (killed + 3.5, REFUSED.initial * 8, "refused"),
                (killed + 7.5, REFUSED.initial * 16, "refused"),
            ],
        )
        self.assertEqual(
            [time for time, src, _ in mesh.dials_to("n01", mark) if src == "n00"],
            [killed + 0.5, killed + 1.5, killed + 3.5, killed + 7.5],
        )
        member = mesh.mesh("n00").members["n01"]
        self.assertEqual((member.state, member.last_reason), (PeerState.DEAD, "refused"))
        mesh.stop_all(others=[mesh.nodes["n01"]])

    def test_inbound_session_ends_a_hold_off(self) -> None:
        """
        n02's redial of n01 is refused, and its dialer holds off; n01 dials
        n02 meanwhile (the session is inbound at n02), which counts as
        connected: the failure is forgotten, the hold-off ended, and the next
        loss waits the first delay again.
        """
        mesh = MemoryMesh(self)
        holds = HoldOffs(self, mesh)
        mesh.build(3)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        to_half_tick(mesh)
        mesh.network.refuse(address("n01"))
        (link,) = mesh.links_between("n01", "n02")
        link.reset(side_of(link, "n01"))
        mesh.advance_until(mesh.full_mesh, 3 * TICK, "n01 and n02 again")
        mesh.network.refuse(address("n01"), False)
        self.assertEqual(holds.of("n01")[-1][2], "refused")
        dialling = mesh.mesh("n02").dialling
        self.assertEqual((dialling.failures("n01"), dialling.busy("n01")), (0, False))
        (link,) = mesh.links_between("n01", "n02")
        self.assertEqual(link.client.getHost().host, "n01", "n01 dialled it: inbound at n02")
        before = len(holds.of("n01"))
        link.reset(side_of(link, "n01"))
        mesh.clock.advance(0)
        self.assertEqual([delay for _, delay, _ in holds.of("n01")[before:]], [RESET.initial])
        mesh.stop_all()

    def test_restarted_member_dialled_at_once(self) -> None:
        """
        Gossip of a newer incarnation of a dead member ends its dialer's hold-off:
        n01 dials the restarted n02 at the next tick, not when a hold-off
        grown over 20 s of refusals ends. (n02 dials nobody but its bootstrap
        peer n00: ``--max-peers 1``.)
        """
        mesh = MemoryMesh(self)
        holds = HoldOffs(self, mesh)
        mesh.build(3)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        old = mesh.nodes["n02"]
        self.kill(mesh, "n02")
        mesh.advance(20)
        self.assertGreaterEqual(holds.of("n02")[-1][1], 8.0)
        mesh.add_node(2, [0], max_peers=1)
        mesh.start("n02")
        restarted = mesh.clock.seconds()
        back = mesh.advance_until(mesh.full_mesh, 2 * TICK, "n02 back, directly connected to n01")
        self.assertLessEqual(back, restarted + 2 * TICK)
        (link,) = mesh.links_between("n01", "n02")
        self.assertEqual(link.client.getHost().host, "n01")
        mesh.stop_all(others=[old])

    def test_left_member_not_redialled(self) -> None:
        """A member that said BYE is not dialled, however long we wait, until it comes back."""
        mesh = MemoryMesh(self)
        mesh.build(3)
        mesh.start()
        mesh.advance_until(mesh.full_mesh, SETTLE, "full mesh")
        mesh.stop("n02")
        mark = mesh.mark()
        mesh.advance(60)
        self.assertEqual(mesh.dials_to("n02", mark), [])
        mesh.stop_all()

    def test_unparseable_endpoint_backs_off_as_unreachable(self) -> None:
        """
        A gossiped endpoint that does not parse fails each dial as
        ``unreachable`` and holds off by that backoff (2, 4, 8 s); the
        maintenance loop goes on, and the member is dead after two failures.
        """
        mesh = MemoryMesh(self)
        holds = HoldOffs(self, mesh)
        mesh.add_node(0)  # alone with the raw peer: the only node to hear of zz
        mesh.start()
        raw = connect_raw(mesh, "n00")
        raw.transport.write(peers_frame({"id": "zz", "endpoints": ["nonsense"], "incarnation": 1}))
        mesh.clock.advance(0)
        mesh.advance(16)
        first = holds.of("zz")[0][0]
        self.assertEqual(
            [(time - first, delay, reason) for time, delay, reason in holds.of("zz")],
            [
                (0.0, UNREACHABLE.initial, "unreachable"),
                (2.0, UNREACHABLE.initial * 2, "unreachable"),
                (6.0, UNREACHABLE.initial * 4, "unreachable"),
                (14.0, UNREACHABLE.initial * 8, "unreachable"),
            ],
        )
        failed = [r for r in mesh.nodes["n00"].manager.records() if r.peer == "zz"]
        self.assertEqual({r.reason for r in failed}, {CloseReason.UNREACHABLE})
        self.assertEqual(len(failed), 4)
        member = mesh.mesh("n00").members["zz"]
        self.assertEqual((member.state, member.last_reason), (PeerState.DEAD, "unreachable"))
        mesh.stop_all()


class FatalTests(SynchronousTestCase):
    def test_fatal_close_holds_off_instead_of_giving_up(self) -> None:
        """A member whose session ended fatally (another version) is tried again after 30 s."""
        clock = Clock()
        dials: list[str] = []

        def client_endpoint(description: str) -> Any:
            dials.append(description)
            raise ValueError("not dialled in this test")

        dialling = Dialling(
            "n00",
            ConnectionManager(clock, ConnectionLimits()),
            clock,
            SessionFactory(None, clock),  # type: ignore[arg-type]
            client_endpoint,
            lambda node_id: f"{node_id}:1",
            DEFAULT_RECONNECT_POLICY,
            lambda: 0.0,
        )
        fatal = ConnectionRecord(
            id=1, direction=Direction.OUTBOUND, peer="n01", reason=CloseReason.PROTOCOL_ERROR, fatal=True
        )
        dialling.lost("n01", fatal)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [FATAL_HOLD_OFF])
        clock.advance(FATAL_HOLD_OFF - 0.001)
        self.assertIsNone(dialling.dial_member("n01"))
        clock.advance(0.001)
        attempt = dialling.dial_member("n01")
        assert attempt is not None
        self.failureResultOf(attempt, ConnectFailed)
        self.assertEqual(dials, ["n01:1"])
        dialling.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
