"""
The fault lab, p2p over TCP and UDP: three peers, one faulted, membership checked.

``peer-1`` .. ``peer-3`` run in lab hosts 1 to 3 (``twistd netmodels
--topology p2p``, keepalive ``1,0.5,3``, over TCP and over UDP), meshed
from ``peer-1``. ``peer-2``
is faulted. Each test requires ``peer-1`` to record the close as the matrix
row says, inside its window, to mark ``peer-2`` ``dead`` (or ``left``, when
it stopped and said BYE) while its link to ``peer-3`` stays up, and
``peer-2`` to rejoin (alive again) after healing or a restart.

Each fault runs ``NETMODELS_LAB_REPEAT`` times (default 1 per runner; see
:attr:`~tests.lab.rows.MatrixRows.repeat`). See ``docs/fault-lab.rst``.
Needs root, iproute2 and iptables: skipped with a loud reason without them,
failed instead when ``NETMODELS_LAB_REQUIRED=1``.
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


class P2PTCPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per row of the matrix for p2p over TCP."""

    rows = rows_of("p2p", "tcp")
    prefix = "p2p-"

    def test_sigterm(self) -> None:
        """A peer that stops says BYE: ``clean`` (remote), marked ``left``; restarted, it rejoins."""
        self.check("p2p-sigterm")

    def test_sigkill_idle(self) -> None:
        """A peer SIGKILLed: ``clean`` (remote, FIN without BYE), marked ``dead``; restarted, it rejoins."""
        self.check("p2p-sigkill-idle")

    def test_blackhole_both(self) -> None:
        """A partitioned peer: ``timeout`` inside the keepalive window, ``dead``; healed, it rejoins."""
        self.check("p2p-blackhole-both")

    def test_reject_reset(self) -> None:
        """``REJECT --reject-with tcp-reset`` at a peer: ``reset`` / ECONNRESET, ``dead``; it rejoins."""
        self.check("p2p-reject-reset")

    def test_sigstop(self) -> None:
        """A frozen peer: ``timeout`` by the heartbeat, ``dead``; after SIGCONT it rejoins."""
        self.check("p2p-sigstop")

    def test_blackhole_out(self) -> None:
        """peer-2's outbound blackholed: peer-1 records ``timeout``; peer-2 dead, then rejoins."""
        self.check("p2p-blackhole-out")

    def test_blackhole_in(self) -> None:
        """peer-2's inbound blackholed: its RST after its own timeout, ``reset`` at peer-1."""
        self.check("p2p-blackhole-in")

    def test_link_down(self) -> None:
        """peer-2's link down: ``timeout`` at peer-1 in the keepalive window; rejoins once up."""
        self.check("p2p-link-down")

    def test_loss_10(self) -> None:
        """10 % loss at a broadcasting peer: no false death; every broadcast delivered once."""
        self.check("p2p-loss-10")

    def test_restart_storm(self) -> None:
        """4 of 5 peers killed at once: each ``clean`` at peer-1; restarted at once, the mesh is back."""
        self.check("p2p-restart-storm")


class P2PUDPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per row of the matrix for p2p over UDP."""

    rows = rows_of("p2p", "udp")
    prefix = "p2p-udp-"

    def test_sigterm(self) -> None:
        """peer-2 stops: its BYE makes ``clean`` (remote) at once; ``left``, then rejoins on restart."""
        self.check("p2p-udp-sigterm")

    def test_sigkill_idle(self) -> None:
        """peer-2 SIGKILLed: ``timeout`` by heartbeat, or ``refused`` by ICMP where peer-1 dialled."""
        self.check("p2p-udp-sigkill-idle")

    def test_blackhole_both(self) -> None:
        """peer-2 partitioned: ``timeout`` in the keepalive window; dead, then rejoins."""
        self.check("p2p-udp-blackhole-both")

    def test_sigstop(self) -> None:
        """peer-2 frozen: ``timeout`` in the keepalive window; dead, then rejoins on SIGCONT."""
        self.check("p2p-udp-sigstop")
