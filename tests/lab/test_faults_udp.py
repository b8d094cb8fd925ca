"""
The fault lab, client-server over UDP: real faults between two network namespaces.

The server runs in lab host 1, the client in host 2, both ``twistd netmodels
--transport udp`` with keepalive ``1,0.5,3`` (a silent peer is declared dead
within 2.5 s). The rows are the client-server ones of
:data:`tests.lab.udp_scenarios.UDP_FAULTS`: a killed server, and a connect
with no server, are ``refused`` at once (ICMP on the client's connected
socket); a killed, frozen, cut-off or blackholed client is ``timeout``
inside the keepalive window (``reset`` when only its inbound is cut: its
own timeout sends RESET); a blackhole shorter than the bound and a loss
soak end nothing and lose no request on the reliable channel.

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


class ClientServerUDPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per UDP row of the matrix."""

    rows = rows_of("client-server", "udp")
    prefix = "udp-"

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
        self.check("udp-loss-10")

    def test_blackhole_out(self) -> None:
        """The client's outbound blackholed: ``timeout`` at the server; its RESET reaches the client."""
        self.check("udp-blackhole-out")

    def test_blackhole_in(self) -> None:
        """The client's inbound blackholed: the client times out and its RESET gives ``reset``."""
        self.check("udp-blackhole-in")

    def test_sigstop(self) -> None:
        """The client frozen: datagrams queue unread, no ICMP; ``timeout`` in the keepalive window."""
        self.check("udp-sigstop")

    def test_link_down(self) -> None:
        """The client's link down: ``timeout`` in the keepalive window; reconnects once up."""
        self.check("udp-link-down")

    def test_refused(self) -> None:
        """No server: INITs draw ICMP, ``refused`` / ECONNREFUSED, backing off; back once it listens."""
        self.check("udp-refused")
