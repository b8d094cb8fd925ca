"""
The fault lab, callback topology over TCP and over UDP: real faults between two network namespaces.

The callback server runs in lab host 1, the client in host 2 (its callback
listener on a fixed port, its delivered-ids in a file), both ``twistd
netmodels --topology callback`` with keepalive ``1,0.5,3`` (a silent peer is
declared dead within 2.5 s); messages are injected with ``POST
/deliver/client``. The rows are :data:`tests.lab.callback_scenarios.CALLBACK_FAULTS`:
a killed client is offline at once over TCP (FIN) and within the keepalive
window over UDP, and what was delivered meanwhile reaches it once, in order,
when it is back; a refused callback port fails the server's dial as
``refused`` at once and the message goes by fallback; a blackholed client
times out inside the keepalive window and loses nothing.

Each fault runs ``NETMODELS_LAB_REPEAT`` times (default 1 per runner; see
:attr:`~tests.lab.rows.MatrixRows.repeat`). Needs root, iproute2 and
iptables: skipped with a loud reason without them, failed instead when
``NETMODELS_LAB_REQUIRED=1``.
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


class CallbackFaultTests(MatrixRows, SynchronousTestCase):
    """One test per callback row of the matrix (``cb-``: TCP, ``cb-udp-``: UDP)."""

    rows = [*rows_of("callback", "tcp"), *rows_of("callback", "udp")]
    prefix = "cb-"

    # TCP

    def test_sigkill_idle(self) -> None:
        """Client SIGKILLed: ``clean`` (FIN) within 0.5 s; what was queued arrives once, in order."""
        self.check("cb-sigkill-idle")

    def test_refused(self) -> None:
        """Callback port refused: the dial is ``refused`` at once, fallback delivers; healed, callback."""
        self.check("cb-refused")

    def test_blackhole_both(self) -> None:
        """Client blackholed: ``timeout`` in the keepalive window; the message sent meanwhile arrives once."""
        self.check("cb-blackhole-both")

    # UDP

    def test_udp_sigkill_idle(self) -> None:
        """Client SIGKILLed: ``timeout`` in the keepalive window; what was queued arrives once, in order."""
        self.check("cb-udp-sigkill-idle")

    def test_udp_refused(self) -> None:
        """Callback port refused (ICMP): the dial is ``refused`` at once, by fallback; healed, callback."""
        self.check("cb-udp-refused")

    def test_udp_blackhole_both(self) -> None:
        """Client blackholed: ``timeout`` in the keepalive window; the message sent meanwhile arrives once."""
        self.check("cb-udp-blackhole-both")
