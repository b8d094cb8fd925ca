"""
The package's folders are its architecture: these tests hold the code to it.

- ``netmodels.core`` is sans-IO: it imports nothing from Twisted, nor from
  any other layer, so it can be fed bytes and time anywhere.
- ``netmodels.transports`` builds on the core only.
- ``netmodels.runtime`` builds on the core and the transports, and knows no
  topology by name.
- A topology is a plugin: it builds on the core, the runtime and the
  transports, never on another topology; the daemon imports none.
- ``netmodels.cli`` talks to a node over HTTP: it imports only the core.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import netmodels

PACKAGE = Path(netmodels.__file__).parent

#: Which layers each layer may import from (besides itself).
ALLOWED = {
    "core": {"core"},
    "transports": {"core", "transports"},
    "runtime": {"core", "transports", "runtime", "plugins"},
    "topologies": {"core", "transports", "runtime"},
    "daemon": {"core", "transports", "runtime", "daemon", "plugins"},
    # The operator CLI is a client of the status endpoint: HTTP, not the runtime.
    "cli": {"core", "cli"},
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at any depth (functions, TYPE_CHECKING), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "netmodels":
                # ``from netmodels import core`` names a layer; ``__version__`` does not.
                found.extend(
                    (node.lineno, f"netmodels.{alias.name}")
                    for alias in node.names
                    if not alias.name.startswith("__")
                )
    return found


def violations(layer: str, package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted((package / layer).rglob("*.py")):
        relative = path.relative_to(package.parent)
        own_topology = relative.parts[2] if layer == "topologies" and len(relative.parts) > 3 else None
        for line, module in imports_of(path):
            parts = module.split(".")
            if parts[0] == "twisted" and layer == "core":
                problems.append(f"{relative}:{line} imports {module}")
            if parts[0] != "netmodels" or len(parts) < 2:
                continue
            target = parts[1]
            if target == layer and layer == "topologies" and len(parts) > 2:
                if own_topology is None or parts[2] != own_topology:
                    problems.append(f"{relative}:{line} imports another topology, {module}")
                continue
            if target != layer and target not in ALLOWED[layer]:
                problems.append(f"{relative}:{line} imports {module}")
    return problems


class LayerTests(SynchronousTestCase):
    def test_core_imports_no_twisted(self) -> None:
        """Importing every core module loads no Twisted module at all."""
        modules = sorted(f"netmodels.core.{path.stem}" for path in (PACKAGE / "core").glob("[!_]*.py"))
        self.assertIn("netmodels.core.frames", modules)
        script = (
            f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] == 'twisted'))"
        )
        output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        self.assertEqual(output.stdout.strip(), "[]")

    def test_core(self) -> None:
        self.assertEqual(violations("core"), [])

    def test_transports(self) -> None:
        self.assertEqual(violations("transports"), [])

    def test_runtime(self) -> None:
        self.assertEqual(violations("runtime"), [])

    def test_topologies(self) -> None:
        self.assertEqual(violations("topologies"), [])

    def test_daemon(self) -> None:
        self.assertEqual(violations("daemon"), [])

    def test_cli(self) -> None:
        self.assertEqual(violations("cli"), [])

    def test_checker_sees_violations(self) -> None:
        """The checker itself, on a made-up package: each kind of violation is found."""
        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root)
        package = root / "netmodels"
        sources = {
            "core/bad.py": "def f():\n    from twisted.internet import reactor\n",
            "core/upward.py": "from netmodels.runtime.node import Node\n",
            "topologies/a/x.py": "from netmodels.topologies.b import y\n"
            "from netmodels.topologies.a import z\n",
        }
        for name, source in sources.items():
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            (package / name).write_text(source)
        self.assertEqual(
            violations("core", package),
            [
                "netmodels/core/bad.py:2 imports twisted.internet",
                "netmodels/core/upward.py:1 imports netmodels.runtime.node",
            ],
        )
        self.assertEqual(
            violations("topologies", package),
            ["netmodels/topologies/a/x.py:1 imports another topology, netmodels.topologies.b"],
        )
