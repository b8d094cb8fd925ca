"""
The fault lab, client-server over TCP: real faults between two network namespaces.

The server runs in lab host 1, the client in host 2, both ``twistd netmodels``
with keepalive ``1,0.5,3`` (a dead peer is declared within 2.5 s). Each test
injects one fault ``NETMODELS_LAB_REPEAT`` times (default 1) and requires
every repetition to be classified as the matrix row says (close reason,
initiator, errno, read from the observer's ``GET /status``) and detected
inside the row's two-sided window. See ``docs/fault-lab.rst``.

Needs root, iproute2 and iptables: skipped with a loud reason without them,
failed instead when ``NETMODELS_LAB_REQUIRED=1`` (as in CI).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .matrix import rows_of
from .rows import MatrixRows

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow, pytest.mark.lab]


class ClientServerTCPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per row of the matrix for client-server over TCP."""

    rows = rows_of("client-server", "tcp")
    prefix = ""

    def test_sigkill_idle(self) -> None:
        """Peer SIGKILLed with nothing unread: its kernel sends FIN; ``clean`` (remote) within 0.5 s."""
        self.check("sigkill-idle")

    def test_sigkill_unread(self) -> None:
        """Peer SIGKILLed with unread data: its kernel sends RST; ``reset`` / ECONNRESET within 0.5 s."""
        self.check("sigkill-unread")

    def test_blackhole_both(self) -> None:
        """Peer blackholed both ways while idle: ``timeout`` (local) inside the keepalive window."""
        self.check("blackhole-both")

    def test_blackhole_out(self) -> None:
        """Nothing from the peer arrives: the server records ``timeout`` inside the keepalive window."""
        self.check("blackhole-out")

    def test_blackhole_in(self) -> None:
        """Nothing reaches the peer: it times out and its RST makes the server record ``reset``."""
        self.check("blackhole-in")

    def test_reject_reset(self) -> None:
        """``REJECT --reject-with tcp-reset``: ``reset`` / ECONNRESET by the next probe or answer."""
        self.check("reject-reset")

    def test_sigstop(self) -> None:
        """Frozen peer: the application heartbeat records ``timeout``; after SIGCONT it reconnects."""
        self.check("sigstop")

    def test_link_down(self) -> None:
        """The peer's link goes down: ``timeout`` inside the keepalive window; back up, it reconnects."""
        self.check("link-down")

    def test_refused(self) -> None:
        """No server: connects ``refused`` with a growing, jittered backoff; a restart is found in time."""
        self.check("refused")

    def test_loss_10(self) -> None:
        """10 % loss both ways under a steady request flow: no false ``timeout``, requests answered."""
        self.check("loss-10")
