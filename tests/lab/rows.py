"""
The shape of a lab test module: one test method per row of the matrix.

A test class mixes in :class:`MatrixRows`, says which rows it covers and adds
one ``test_<key without prefix>`` method per row, each calling
:meth:`~MatrixRows.check`; ``test_every_row_has_a_test`` fails when a row is
added to the matrix without a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from .netlab import Lab, require_lab
from .scenarios import Fault, repeat_count, run_fault


class MatrixRows:
    """Mixed into a ``SynchronousTestCase`` (before it)."""

    #: The rows this class runs.
    rows: ClassVar[Sequence[Fault]] = ()
    #: Dropped from a row's key to name its test method.
    prefix: ClassVar[str] = ""
    #: Repetitions unless ``NETMODELS_LAB_REPEAT`` says otherwise: one per run of the
    #: suite keeps the lab within its time, and ``make test`` runs the suite under
    #: trial and under pytest, so each fault is injected twice per CI run; the
    #: matrix (``python -m tests.lab.matrix``) is where repetitions are counted.
    repeat: ClassVar[int] = 1

    def setUp(self) -> None:
        require_lab()

    def check(self, key: str) -> None:
        """Run row ``key`` in a fresh lab; fail with its report unless every repetition passed."""
        (row,) = [row for row in self.rows if row.key == key]
        lab = Lab(row.hosts)
        self.addCleanup(lab.close)  # type: ignore[attr-defined]
        result = run_fault(row, repeat_count(self.repeat), lab=lab)
        if not result.ok:
            self.fail(result.report())  # type: ignore[attr-defined]

    def test_every_row_has_a_test(self) -> None:
        """Each row of :attr:`rows` is run by a test of this class."""
        for row in self.rows:
            name = "test_" + row.key.removeprefix(self.prefix).replace("-", "_")
            self.assertTrue(  # type: ignore[attr-defined]
                callable(getattr(self, name, None)), f"no {type(self).__name__}.{name}"
            )
