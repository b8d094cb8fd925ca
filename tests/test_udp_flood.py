"""
A UDP flood on real loopback sockets: datagrams from 200 source ports (as
spoofed sources look to a listener) -- INITs that want a cookie, OPENs with
forged cookies, garbage, and DATA for session ids that do not exist -- while a
good client keeps doing request/response on the same listener.

The listener must keep no state for any of it (no session opened), answer
unproven sources with at most 3x the bytes they sent, limit its RESETs, and
serve the good client throughout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from netmodels.core import datagram
from netmodels.core.frames import MessageType, encode_frame

from ._support import make_config, start_node

SOURCES = 200
#: Datagrams of each kind from each source.
ROUNDS = 5


def _flood(port: int) -> int:
    """Send the flood from SOURCES sockets; returns the bytes sent."""
    sent = 0
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SOURCES)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        target = ("127.0.0.1", port)
        for round_ in range(ROUNDS):
            for index, sock in enumerate(sockets):
                nonce = index * ROUNDS + round_
                for data in (
                    datagram.encode_init(nonce),
                    datagram.encode_open(nonce, int(time.time()), os.urandom(16)),
                    os.urandom(48),
                    datagram.encode_data_header(int.from_bytes(os.urandom(8), "big"), 0)
                    + encode_frame(MessageType.DATA, b"flood"),
                ):
                    # A full send buffer drops the datagram, as a flood would lose it.
                    with contextlib.suppress(BlockingIOError):
                        sent += sock.sendto(data, target)
    finally:
        for sock in sockets:
            sock.close()
    return sent


class UdpFloodTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_flood_keeps_no_state_and_the_good_client_is_served(self) -> Any:
        server = start_node(
            self, make_config("server", transport="udp", listen=("udp:0:interface=127.0.0.1",))
        )
        port = server.port
        # On the reliable channel: a flood fills the listener's socket buffer,
        # and a request that the kernel dropped there is sent again.
        address = f"udp:127.0.0.1:{port}"
        client = start_node(self, make_config("client", transport="udp", connect=(address,), reliable=True))
        deadline = time.monotonic() + 10
        while not client.node.peers():
            self.assertLess(time.monotonic(), deadline, "the good client never connected")
            yield task.deferLater(reactor, 0.01, lambda: None)
        [session] = client.node.peers()
        answered = 0
        for _ in range(5):
            # The flood and the good client's requests interleave in the reactor.
            flooded = _flood(port)
            answer = yield session.request(b"still served?", timeout=5)
            self.assertEqual(answer, b"still served?")
            answered += 1
        self.assertGreater(flooded, 0)
        [counters] = server.node.status()["datagram"]["listeners"].values()
        # Only the good client got a session; the flood none.
        self.assertEqual(counters["sessions_opened"], 1)
        self.assertEqual(len(server.node.peers()), 1)
        self.assertGreater(counters["cookies_sent"], 0)
        self.assertGreater(counters["bad_cookie"], 0)
        self.assertGreater(counters["malformed"], 0)
        self.assertGreater(counters["unknown_session"], 0)
        # Unproven sources never got more than 3x what they sent.
        self.assertLessEqual(counters["handshake_bytes_out"], 3 * counters["handshake_bytes_in"])
        # RESETs to unknown sessions are limited to 100 a second (plus the first burst).
        elapsed = max(1.0, time.monotonic() - (deadline - 10))
        self.assertLessEqual(counters["resets_sent"], 100 * (elapsed + 1))
        self.assertEqual(answered, 5)
