"""
Packaging: the built wheel ships the twistd dropin, and an installed copy finds it.

The suite itself imports the repo's ``netmodels/`` and the dropin from the dev venv, so
neither proves that the wheel is right. These tests build the wheel from the repo root,
check its file list, install it into a brand-new venv and run that venv's ``twistd
--help`` from a directory outside the repo, without PYTHONPATH: ``netmodels`` is listed
only if the dropin landed in that venv's ``site-packages/twisted/plugins/``.

Paths are absolute because trial runs tests from ``_trial_temp/``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DROPIN = "twisted/plugins/netmodels_plugin.py"

# Generous: a fresh machine may have to download twisted and its dependencies.
BUILD_TIMEOUT = 600
INSTALL_TIMEOUT = 900
RUN_TIMEOUT = 120

_HAVE_BUILD = importlib.util.find_spec("build") is not None


def _cleanEnv(**extra: str) -> dict[str, str]:
    """
    The environment minus anything that could put the repo or the dev venv on sys.path.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV"}
    }
    env["PIP_NO_INPUT"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def _run(
    testCase: SynchronousTestCase, args: list[str], timeout: int, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    if result.returncode != 0:
        testCase.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-6000:]}")
    return result


class _Built:
    """
    One wheel build per process, shared by the tests below (they are read-only on it).
    """

    tmp: tempfile.TemporaryDirectory[str] | None = None
    wheel: Path | None = None

    @classmethod
    def wheelFor(cls, testCase: SynchronousTestCase) -> Path:
        if cls.wheel is None:
            # Removed at interpreter exit by TemporaryDirectory's finalizer.
            cls.tmp = tempfile.TemporaryDirectory(prefix="netmodels-wheel-")
            tmp = Path(cls.tmp.name)
            outdir = tmp / "dist"
            # Keep setuptools' build/ and *.egg-info out of the repo: a stale build/lib
            # would leak deleted files into the wheel, and others may be building too.
            extraConfig = tmp / "setuptools-extra.cfg"
            extraConfig.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n[egg_info]\negg_base = {tmp}\n")
            # Isolated build: pyproject.toml pins setuptools>=68 and wheel, which the
            # dev venv need not have; the build backend comes from the package index.
            _run(
                testCase,
                [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(REPO)],
                BUILD_TIMEOUT,
                cwd=REPO,
                env=_cleanEnv(DIST_EXTRA_CONFIG=str(extraConfig)),
            )
            wheels = sorted(outdir.glob("netmodels-*.whl"))
            testCase.assertEqual(len(wheels), 1, f"expected one wheel, got {wheels}")
            cls.wheel = wheels[0]
        return cls.wheel


class WheelTests(SynchronousTestCase):
    if not _HAVE_BUILD:
        skip = "the 'build' package is not importable: pip install -e '.[test]'"

    def test_wheelContents(self) -> None:
        """
        The wheel holds the dropin, the topology plugin package and py.typed, and nothing
        of Twisted's own: above all no twisted/plugins/__init__.py, which would overwrite
        Twisted's (and be deleted with it on uninstall).
        """
        with zipfile.ZipFile(_Built.wheelFor(self)) as wheel:
            names = set(wheel.namelist())
        for required in (DROPIN, "netmodels/plugins/__init__.py", "netmodels/py.typed"):
            self.assertIn(required, names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        ours = sorted(n for n in names if n.startswith("twisted/"))
        self.assertEqual(
            [n for n in ours if not n.startswith("twisted/plugins/")],
            [],
            "the wheel ships files into Twisted's package",
        )

    def test_dropinFoundFromFreshVenv(self) -> None:
        """
        Installed into a new venv (dependencies from the index, no access to the repo or
        the dev venv), the dropin is imported from that venv's site-packages and
        ``twistd --help`` lists ``netmodels``.

        Listing needs only the dropin (it imports ServiceMaker); ``netmodels.daemon.tap`` is
        imported only when the subcommand is used.
        """
        wheel = _Built.wheelFor(self)
        with tempfile.TemporaryDirectory(prefix="netmodels-venv-") as tmpName:
            tmp = Path(tmpName)
            venv = tmp / "venv"
            elsewhere = tmp / "elsewhere"
            elsewhere.mkdir()
            env = _cleanEnv()

            # No ensurepip: the dev venv's pip installs into the new one (pip >= 22.3).
            _run(self, [sys.executable, "-m", "venv", "--without-pip", str(venv)], RUN_TIMEOUT)
            python = venv / "bin" / "python"
            _run(
                self,
                [sys.executable, "-m", "pip", "--python", str(python), "install", str(wheel)],
                INSTALL_TIMEOUT,
                cwd=elsewhere,
                env=env,
            )

            where = _run(
                self,
                [
                    str(python),
                    "-c",
                    "import sys, twisted.plugins.netmodels_plugin as m; print(m.__file__); print(sys.prefix)",
                ],
                RUN_TIMEOUT,
                cwd=elsewhere,
                env=env,
            )
            dropinFile, prefix = where.stdout.strip().splitlines()[-2:]
            self.assertEqual(Path(prefix).resolve(), venv.resolve())
            self.assertTrue(
                Path(dropinFile).resolve().is_relative_to(venv.resolve()),
                f"dropin imported from {dropinFile}, not from the new venv",
            )

            helped = _run(self, [str(venv / "bin" / "twistd"), "--help"], RUN_TIMEOUT, cwd=elsewhere, env=env)
            self.assertIn("netmodels", helped.stdout)

            # The operator CLI is a console script of the package.
            cli = _run(self, [str(venv / "bin" / "netmodels"), "--help"], RUN_TIMEOUT, cwd=elsewhere, env=env)
            self.assertIn("monitor", cli.stdout)
