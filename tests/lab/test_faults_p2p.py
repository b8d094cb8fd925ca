"""
The fault lab, p2p over TCP: three peers, one faulted, membership checked.

``peer-1`` .. ``peer-3`` run in lab hosts 1 to 3 (``twistd netmodels
--topology p2p``, keepalive ``1,0.5,3``), meshed from ``peer-1``. ``peer-2``
is faulted. Each test requires ``peer-1`` to record the close as the matrix
row says, inside its window, to mark ``peer-2`` ``dead`` (or ``left``, when
it stopped and said BYE) while its link to ``peer-3`` stays up, and
``peer-2`` to rejoin (alive again) after healing or a restart.

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


class P2PTCPFaultTests(MatrixRows, SynchronousTestCase):
    """One test per row of the matrix for p2p over TCP."""

    rows = faults("p2p", "tcp")
    prefix = "p2p-"
    repeat = REPEAT

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
