"""
Coverage-guided fuzz targets (atheris) for the wire parsers and the handshake.

Each module defines ``test_one_input(data: bytes)``, which raises only when
it finds a bug, and runs under atheris when executed as a script; the seed
corpus lives in ``fuzz/corpus/<target>/`` and ``tests/test_fuzz_corpus.py``
replays it as ordinary tests, without atheris. See ``docs/fault-lab.rst``.
"""
