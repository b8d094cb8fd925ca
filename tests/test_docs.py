"""
The docs stay true: every example in docs/examples runs and exits 0, and the
Sphinx build (with autodoc of the public API) has no warnings.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
class DocsTests(SynchronousTestCase):
    def test_examples_run(self) -> None:
        """Each example exits 0 within its time limit, and the example plugins are found."""
        with tempfile.TemporaryDirectory() as output:
            result = subprocess.run(
                [sys.executable, str(ROOT / "docs" / "examples" / "run_all.py"), "--output", output],
                capture_output=True,
                text=True,
                timeout=300,
            )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_sphinx_builds_without_warnings(self) -> None:
        if importlib.util.find_spec("sphinx") is None:
            raise SkipTest("sphinx is not installed (pip install '.[docs]')")
        with tempfile.TemporaryDirectory() as output:
            result = subprocess.run(
                [sys.executable, "-m", "sphinx", "-q", "-W", "-b", "html", str(ROOT / "docs"), output],
                capture_output=True,
                text=True,
                timeout=300,
            )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
