"""
The fault lab, client-server over UDP: real faults between two network namespaces.

The server runs in lab host 1, the client in host 2, both ``twistd netmodels
--transport udp`` with keepalive ``1,0.5,3`` (a silent peer is declared dead
within 2.5 s). The rows are :data:`tests.lab.udp_scenarios.UDP_FAULTS`: a
killed server is ``refused`` at once (ICMP on the client's connected
socket), a killed client and a blackhole are ``timeout`` inside the keepalive
window, a blackhole shorter than the bound and a loss soak end nothing and
lose no request on the reliable channel.

Each fault runs ``NETMODELS_LAB_REPEAT`` times (default 2 here, 1 for the
soak, to keep the lab's time). Needs root, iproute2 and iptables: skipped
with a loud reason without them, failed instead when
``NETMODELS_LAB_REQUIRED=1``.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .rows import MatrixRows
from .udp_scenarios import UDP_FAULTS

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow, pytest.mark.lab]

#: Repetitions per test unless NETMODELS_LAB_REPEAT says otherwise.
REPEAT = 2


class ClientServerUDPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per UDP row of the matrix."""

    rows = UDP_FAULTS
    prefix = "udp-"
    repeat = REPEAT

    def test_sigkill_server(self) -> None:
        """Server SIGKILLed while the client sends: ``refused`` (ECONNREFUSED) by ICMP within 0.5 s."""
        self.check("udp-sigkill-server")

    def test_sigkill_idle(self) -> None:
        """Client SIGKILLed: the server hears nothing, ``timeout`` inside the keepalive window."""
        self.check("udp-sigkill-idle")

    def test_blackhole_both(self) -> None:
        """UDP dropped both ways: ``timeout`` on both sides in the keepalive window; healed, reconnects."""
        self.check("udp-blackhole-both")

    def test_blackhole_short(self) -> None:
        """A blackhole shorter than the bound: the session survives, no request lost."""
        self.check("udp-blackhole-short")

    def test_loss_10(self) -> None:
        """10 % loss: no false timeout; on the reliable channel every request answered once, in order."""
        self.check("udp-loss-10", 1)
