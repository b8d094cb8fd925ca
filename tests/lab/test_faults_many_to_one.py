"""
The fault lab, many-to-one over TCP and UDP: one client of three faulted, the others served.

The server runs in lab host 1, the faulted client in host 2 and two
bystander clients in hosts 3 and 4, all ``twistd netmodels --topology
many-to-one`` with keepalive ``1,0.5,3``, over TCP and (``--transport
udp``) over UDP. Each test requires the server to
record the faulted client's close as the matrix row says, inside its window,
while the bystanders' connections stay the same, open and exchanging
messages; after healing (or a restart) the client reconnects. Under 10 %
loss at a chatting client, nothing ends and the others get every line once,
in order.

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


class ManyToOneTCPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per row of the matrix for many-to-one over TCP."""

    rows = rows_of("many-to-one", "tcp")
    prefix = "m2o-"

    def test_sigkill_idle(self) -> None:
        """A client SIGKILLed: ``clean`` (remote, its kernel's FIN) within 0.5 s; the others served."""
        self.check("m2o-sigkill-idle")

    def test_blackhole_both(self) -> None:
        """A client blackholed both ways: ``timeout`` inside the keepalive window; the others served."""
        self.check("m2o-blackhole-both")

    def test_reject_reset(self) -> None:
        """``REJECT --reject-with tcp-reset`` at a client: ``reset`` / ECONNRESET; the others served."""
        self.check("m2o-reject-reset")

    def test_sigstop(self) -> None:
        """A client frozen: ``timeout`` by the application heartbeat; the others served; it reconnects."""
        self.check("m2o-sigstop")

    def test_blackhole_out(self) -> None:
        """A client's outbound blackholed: ``timeout`` (local) in the keepalive window; the others served."""
        self.check("m2o-blackhole-out")

    def test_blackhole_in(self) -> None:
        """A client's inbound blackholed: its RST after its own timeout, ``reset``; the others served."""
        self.check("m2o-blackhole-in")

    def test_link_down(self) -> None:
        """A client's link down: ``timeout`` (local) in the keepalive window; the others served."""
        self.check("m2o-link-down")

    def test_refused(self) -> None:
        """No server: every client's connects ``refused``, backing off; all back once it listens."""
        self.check("m2o-refused")

    def test_loss_10(self) -> None:
        """10 % loss at a chatting client: no false timeout; the others get each line once, in order."""
        self.check("m2o-loss-10")


class ManyToOneUDPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per row of the matrix for many-to-one over UDP."""

    rows = rows_of("many-to-one", "udp")
    prefix = "m2o-udp-"

    def test_sigkill_idle(self) -> None:
        """A client SIGKILLed: no FIN over UDP, ``timeout`` in the keepalive window; the others served."""
        self.check("m2o-udp-sigkill-idle")

    def test_blackhole_both(self) -> None:
        """A client blackholed both ways: ``timeout`` in the keepalive window; the others served."""
        self.check("m2o-udp-blackhole-both")

    def test_sigstop(self) -> None:
        """A client frozen: ``timeout`` in the keepalive window; the others served; it reconnects."""
        self.check("m2o-udp-sigstop")

    def test_loss_10(self) -> None:
        """10 % loss at a chatting client: no false timeout; chat's reliable channel loses no line."""
        self.check("m2o-udp-loss-10")
