"""
Tests for :mod:`netmodels.topologies.client_server.demo`, ``twistd netmodels --demo``: its flaky
client closes on purpose without a warning, and its server is ``[server]`` as
the README's quoted log shows. On the memory network, driven by a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.reasons import CloseReason, Initiator
from netmodels.daemon.tap import Options
from netmodels.runtime.node import NodeConfig
from netmodels.topologies.client_server.demo import FLAKY_PERIOD, FlakyClient
from netmodels.topologies.client_server.topology import DEMO_SERVER_ID, EchoApplication
from tests.test_testing import Pair, advance_by

#: Seconds between the echo requests of the demo clients (the --interval default).
INTERVAL = 1.0
#: One-way delay on the memory network, so a close can catch a request in flight.
LATENCY = 0.001


class _LoggedTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def echo_warnings(self) -> list[str]:
        return [
            str(event.get("error"))
            for event in self.events
            if event.get("log_namespace") == "netmodels.app.echo" and event["log_level"] >= LogLevel.warn
        ]


class FlakyClientTests(_LoggedTestCase):
    def pair(self, client_app: EchoApplication) -> Pair:
        server_app = EchoApplication(NodeConfig(role="server"))
        pair = Pair(latency=LATENCY, server_app=server_app, client_app=client_app)
        pair.start()
        self.addCleanup(lambda: advance_by(pair.clock, 10.0))
        self.addCleanup(pair.client.stopService)
        self.addCleanup(pair.server.stopService)
        return pair

    def test_deliberate_closes_log_no_warning(self) -> None:
        """FIN, then RST, each with a request in flight: closed and reconnected, and no warning."""
        client = FlakyClient(NodeConfig(role="client", interval=INTERVAL))
        pair = self.pair(client)
        advance_by(pair.clock, 2 * FLAKY_PERIOD + 1.0)
        closed = [(r.reason, r.initiator) for r in pair.client.manager.history if r.reason is not None]
        self.assertEqual(
            closed[:2], [(CloseReason.CLEAN, Initiator.LOCAL), (CloseReason.ABORTED, Initiator.LOCAL)]
        )
        # Each close caught a request in flight: sent, never answered.
        self.assertEqual(client.sent - client.answered, 2)
        self.assertEqual(self.echo_warnings(), [])

    def test_a_close_by_the_peer_still_warns(self) -> None:
        """A request lost because the server reset the connection is worth a warning."""
        client = EchoApplication(NodeConfig(role="client", interval=INTERVAL))
        pair = self.pair(client)
        advance_by(pair.clock, INTERVAL)  # a request is in flight now
        [session] = pair.server.peers()
        session.reset()
        advance_by(pair.clock, LATENCY)
        [warning] = self.echo_warnings()
        self.assertIn("ended: reset", warning)


class DemoServerTests(SynchronousTestCase):
    def test_named_server(self) -> None:
        """Without --node-id the demo server is "server", as the README's log shows."""
        options = Options()
        options.parseOptions(["--demo"])
        self.assertEqual(options["config"].node_id, DEMO_SERVER_ID)
        self.assertEqual(DEMO_SERVER_ID, "server")

    def test_node_id_given(self) -> None:
        """--node-id names the demo server."""
        options = Options()
        options.parseOptions(["--demo", "--node-id", "mine"])
        self.assertEqual(options["config"].node_id, "mine")
