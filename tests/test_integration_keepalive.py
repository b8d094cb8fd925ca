"""
Integration: application keepalive finds a frozen peer.

The peer is a real ``twistd netmodels`` server process frozen with SIGSTOP: its
kernel still answers TCP keepalive probes and ACKs data (see the concepts
page of the docs), so only netmodels' own PING/PONG can notice. The client
must record ``timeout`` / ``local`` inside the two-sided window
``interval * probes - eps <= t <= idle + interval * probes + eps``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from netmodels.core.connection import Direction
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.core.reasons import CloseReason, Initiator

from ._support import (
    TIMEOUT,
    listening_port,
    spawn_twistd,
    start_client,
    unique_id,
    with_peer_id,
)

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]

IDLE, INTERVAL, PROBES = 0.3, 0.2, 2
KEEPALIVE = KeepaliveSettings(IDLE, INTERVAL, PROBES)
#: Slack on both sides of the detection window.
LOWER_EPSILON = 0.05
UPPER_EPSILON = 0.5


class FrozenPeerTests(TestCase):
    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_sigstopped_server_is_detected_by_keepalive_within_bound(self) -> Any:
        server_id = unique_id("frozen-server")
        server = spawn_twistd(
            self,
            [
                "netmodels",
                "--topology",
                "client-server",
                "--role",
                "server",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--keepalive",
                f"{IDLE},{INTERVAL},{PROBES}",
                "--node-id",
                server_id,
            ],
        )
        port = yield listening_port(server)
        client = start_client(self, f"tcp:127.0.0.1:{port}", keepalive=KEEPALIVE)
        ready = yield client.events.wait("ready", with_peer_id(server_id))
        self.assertEqual(ready.record.peer_keepalive.worst_case, KEEPALIVE.worst_case)
        # The server is alive and answering: a round trip works before the freeze.
        reply = yield ready.session.request(b"before the freeze")
        self.assertEqual(reply, b"before the freeze")

        frozen_at = time.monotonic()
        os.kill(server.pid, signal.SIGSTOP)
        closed = yield client.events.wait("closed", lambda r: r.id == ready.record.id)
        detected_after = closed.at - frozen_at

        record = closed.record
        self.assertEqual(
            (record.reason, record.initiator, record.direction),
            (CloseReason.TIMEOUT, Initiator.LOCAL, Direction.OUTBOUND),
        )
        self.assertIn("keepalive", record.detail)
        lower = INTERVAL * PROBES - LOWER_EPSILON
        upper = IDLE + INTERVAL * PROBES + UPPER_EPSILON
        self.assertTrue(
            lower <= detected_after <= upper,
            f"frozen peer detected after {detected_after:.3f} s; window [{lower:.2f}, {upper:.2f}]",
        )

        # Thawed, the server finds the RST the client's timeout close sent.
        mark = len(server.output)
        os.kill(server.pid, signal.SIGCONT)
        yield server.wait_for(rb"closed: reset \(remote, ECONNRESET\)", after=mark)
