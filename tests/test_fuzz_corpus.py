"""
The fuzz corpus, replayed as ordinary tests (no atheris needed).

Every file under ``fuzz/corpus/<target>/`` -- the seeds, and any input the
fuzzer once found a bug with -- runs through the same ``test_one_input`` the
fuzzer calls (``fuzz/fuzz_<target>.py``), one test per file, so a fixed bug
stays fixed. See "Fuzzing" in ``docs/fault-lab.rst``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from fuzz import fuzz_frames, fuzz_handshake, fuzz_secure

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"

#: Each fuzz target by the name of its corpus directory.
TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": fuzz_frames.test_one_input,
    "handshake": fuzz_handshake.test_one_input,
    "secure": fuzz_secure.test_one_input,
}


def corpus(target: str) -> list[Path]:
    directory = CORPUS / target
    return sorted(path for path in directory.iterdir() if path.is_file()) if directory.is_dir() else []


class CorpusTests(SynchronousTestCase):
    """Sanity of the corpus itself; the replays are added below, one method per file."""

    def test_every_target_has_a_corpus(self) -> None:
        for target in TARGETS:
            self.assertTrue(corpus(target), f"no corpus in fuzz/corpus/{target}")

    def test_every_corpus_has_a_target(self) -> None:
        directories = {path.name for path in CORPUS.iterdir() if path.is_dir()}
        self.assertEqual(directories, set(TARGETS))


def _replay(target: Callable[[bytes], None], path: Path) -> Callable[[SynchronousTestCase], None]:
    def test(self: SynchronousTestCase) -> None:
        target(path.read_bytes())

    test.__doc__ = f"fuzz/corpus/{path.parent.name}/{path.name} passes the target's checks."
    return test


def _add_replays() -> None:
    for target_name, target in TARGETS.items():
        for path in corpus(target_name):
            name = "test_" + re.sub(r"\W+", "_", f"{target_name}_{path.name}")
            setattr(CorpusTests, name, _replay(target, path))


_add_replays()
