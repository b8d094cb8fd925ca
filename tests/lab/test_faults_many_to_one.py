"""
The fault lab, many-to-one over TCP: one client of four faulted, the others served.

The server runs in lab host 1, the faulted client in host 2 and two
bystander clients in hosts 3 and 4, all ``twistd netmodels --topology
many-to-one`` with keepalive ``1,0.5,3``. Each test requires the server to
record the faulted client's close as the matrix row says, inside its window,
while the bystanders' connections stay the same, open and exchanging
messages; after healing (or a restart) the client reconnects.

Each fault runs ``NETMODELS_LAB_REPEAT`` times (default 2 here, to keep
the lab's time; ``python -m tests.lab.matrix`` runs more). See
``docs/fault-lab.rst``. Needs root, iproute2 and iptables: skipped with a
loud reason without them, failed instead when ``NETMODELS_LAB_REQUIRED=1``.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .rows import MatrixRows
from .scenarios import faults

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow, pytest.mark.lab]

#: Repetitions per test unless NETMODELS_LAB_REPEAT says otherwise.
REPEAT = 2


class ManyToOneTCPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per row of the matrix for many-to-one over TCP."""

    rows = faults("many-to-one", "tcp")
    prefix = "m2o-"
    repeat = REPEAT

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
