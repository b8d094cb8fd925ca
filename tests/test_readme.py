"""
The README's commands, run as a user types them.

Every line starting with ``$ `` in a ```` ```console ```` block of README.md
is either run here or listed in :data:`SKIPPED` with the reason; a command
that is neither fails :meth:`CoverageTests.test_every_command_is_run_or_skipped`,
so a new command is never skipped silently. The quick start of
``docs/callback.rst`` is run the same way.

Each console block runs in a fresh temporary directory, with the ``PATH`` a
user has after the quick start (the virtual environment's ``bin`` first),
through ``bash -c`` exactly as written: ``twistd -n ...`` in the background
(each waited for until its ports answer, or, for a client, until it has
connected), ``nc`` in the background with its input piped, everything else
in the foreground. Then the test checks what the text around the block says
the commands show. Every process started is killed, by process group, even
when a check fails.

The ports are the README's: a user types them. When one is already in use on
this machine (another node on loopback), the block is skipped, saying which.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CALLBACK_DOC = ROOT / "docs" / "callback.rst"
SECURITY_DOC = ROOT / "docs" / "security.rst"

#: The commands of the README that are not run here, and why. Each must still
#: be in the README (a stale entry fails the coverage test).
SKIPPED = {
    "make run": "sets up .venv and runs the demo until Ctrl-C; tests/test_demo.py runs the demo",
    "make test": "runs this suite",
    ". .venv/bin/activate": "its effect, the venv's bin first on PATH, is the PATH every command runs with",
    "pip install .": "would reinstall the package under test",
    "python -m twisted.trial tests": "runs this suite",
    "pytest": "runs this suite",
    "python docs/examples/run_all.py": "tests/test_docs.py runs the examples",
}

#: The console blocks a test here runs, by (section heading, index of the
#: block within the section), with the test that runs it.
RUN = {
    ("Peer-to-peer", 0): "test_peer_to_peer_in_one_process",
    ("Peer-to-peer", 1): "test_peer_to_peer_across_processes",
    ("Many-to-one chat", 0): "test_many_to_one_chat",
    ('Callback ("port 25")', 0): "test_callback",
    ('Callback ("port 25")', 1): "test_callback",
    ("Over UDP", 0): "test_over_udp",
    ("Everyday commands", 1): "test_server_and_client",
    ("Everyday commands", 2): "test_keepalive_option",
    ("Everyday commands", 3): "test_listing_commands",
}

#: Seconds any one thing may take: a node to start, a line to be logged.
DEADLINE = 15.0
#: Seconds between polls while waiting.
POLL = 0.05

#: What ``nc HOST PORT`` does, for machines without nc: stdin to the socket,
#: the socket to stdout.
NC = """
import socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def pump():
    for line in sys.stdin.buffer:
        s.sendall(line)
threading.Thread(target=pump, daemon=True).start()
while data := s.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""

_LISTEN = re.compile(r"--(?:listen|status|raw-listen) (tcp|udp):(\d+)")


def console_blocks(text: str) -> list[tuple[str, list[str]]]:
    """The ``$ `` commands of each ```console block of Markdown ``text``, with its section heading."""
    blocks: list[tuple[str, list[str]]] = []
    heading = ""
    commands: list[str] | None = None
    for line in text.splitlines():
        if commands is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```console":
                commands = []
        elif line.startswith("```"):
            blocks.append((heading, commands))
            commands = None
        elif line.startswith("$ "):
            commands.append(line[2:])
    return blocks


def section_blocks(heading: str) -> list[list[str]]:
    return [commands for title, commands in console_blocks(README.read_text()) if title == heading]


def rst_quick_start(text: str) -> list[str]:
    """The ``$ `` commands of the console blocks of the "Quick start" section of reST ``text``."""
    section = text.split("\nQuick start\n-----------\n", 1)[1]
    section = re.split(r"\n\S[^\n]*\n-{3,}\n", section, maxsplit=1)[0]
    commands: list[str] = []
    for block in re.findall(r"\.\. code-block:: console\n\n((?:   .*\n|\n)+)", section):
        block = re.sub(r"\\\n\s*", "", block)
        commands.extend(line.strip()[2:] for line in block.splitlines() if line.strip().startswith("$ "))
    return commands


def readme_json_excerpt() -> dict[str, Any]:
    """The connection the README shows from ``GET /status``."""
    [excerpt] = re.findall(r"```json\n(.*?)```", README.read_text(), re.S)
    return dict(json.loads(excerpt))


def port_free(kind: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    try:
        if kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        sock.close()
    return True


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Command:
    """One command started in the background, with its output in a file."""

    def __init__(self, line: str, process: subprocess.Popen[bytes], output: Path) -> None:
        self.line = line
        self.process = process
        self.output = output

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """End its whole process group: TERM, then KILL if it lingers."""
        if self.process.poll() is None:
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # The leader exited; anything it left in its group goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.stdin is not None:
            self.process.stdin.close()


class _ReadmeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        bin_dir = Path(sys.executable).parent
        if not (bin_dir / "twistd").exists():
            self.skipTest(f"no twistd next to {sys.executable}: run from the environment `make` sets up")
        self.directory = Path(tempfile.mkdtemp(prefix="netmodels-readme-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env.pop("PYTHONPATH", None)
        # A fresh user's default state directory, inside this test's directory:
        # the commands must not write to the real one (the callback ones check they don't).
        self.env.pop("NETMODELS_STATE_DIR", None)
        self.env["XDG_STATE_HOME"] = str(self.directory / ".xdg-state")
        self.commands: list[Command] = []
        self.addCleanup(self.stop_all)
        self._outputs = 0

    def stop_all(self) -> None:
        for command in reversed(self.commands):
            command.stop()

    def check_ports(self, lines: list[str]) -> None:
        for line in lines:
            for kind, port in _LISTEN.findall(line):
                if int(port) and not port_free(kind, int(port)):
                    self.skipTest(f"README port {kind}:{port} is in use on this machine; cannot run {line!r}")

    def _output_file(self) -> Path:
        self._outputs += 1
        return self.directory / f".output-{self._outputs}"

    def start(self, line: str, stdin: bool = False, errors: Path | None = None) -> Command:
        """
        Start ``line`` in the background, in its own process group; its
        standard error goes with its output unless ``errors`` is given.
        """
        output = self._output_file()
        argv = ["bash", "-c", line]
        if line.startswith("nc ") and shutil.which("nc", path=self.env["PATH"]) is None:
            argv = [sys.executable, "-u", "-c", NC, *line.split()[1:3]]
        with output.open("wb") as sink, (errors or output).open("ab") as error_sink:
            process = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT if errors is None else error_sink,
                start_new_session=True,
            )
        command = Command(line, process, output)
        self.commands.append(command)
        return command

    def run_line(self, line: str) -> str:
        """
        Run ``line`` in the foreground; its standard output, after checking
        it exited 0. (Standard error is apart, as on a terminal, where curl
        shows no progress meter.)
        """
        tool = line.split()[0]
        if tool == "curl" and shutil.which(tool, path=self.env["PATH"]) is None:
            self.skipTest(f"{tool} is not installed; cannot run {line!r}")
        errors = self._output_file()
        command = self.start(line, errors=errors)
        try:
            rc = command.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.fail(f"{line!r} did not exit within {DEADLINE} s:\n{command.text()}{errors.read_text()}")
        self.assertEqual(rc, 0, f"{line!r} exited {rc}:\n{command.text()}{errors.read_text()}")
        return command.text()

    def wait_for(self, what: str, condition: Callable[[], Any], watch: list[Command] | None = None) -> Any:
        """Poll ``condition`` until it is true; fail after :data:`DEADLINE` or if a watched command exits."""
        deadline = time.monotonic() + DEADLINE
        while True:
            result = condition()
            if result:
                return result
            for command in watch or self.commands:
                if not command.running() and command.line.startswith("twistd -n"):
                    text = command.text()
                    if "Address already in use" in text:
                        self.skipTest(f"a README port got taken while {command.line!r} started:\n{text}")
                    self.fail(
                        f"{command.line!r} exited ({command.process.returncode}) waiting for {what}:\n{text}"
                    )
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {c.line}\n{c.text()}" for c in self.commands)
                self.fail(f"no {what} within {DEADLINE} s\n{logs}")
            time.sleep(POLL)

    def wait_log(self, command: Command, pattern: str) -> re.Match[str]:
        """Wait until ``command`` has logged a line matching ``pattern``."""
        return self.wait_for(  # type: ignore[no-any-return]
            f"{pattern!r} from {command.line!r}", lambda: re.search(pattern, command.text()), [command]
        )

    def run_block(self, lines: list[str]) -> list[Command | str]:
        """
        Run a block's commands in order: ``twistd -n`` in the background, waited
        for until its listening ports answer (a client: until it has connected);
        ``nc`` in the background; the rest in the foreground (their output).
        """
        self.check_ports(lines)
        results: list[Command | str] = []
        for line in lines:
            if line.startswith("twistd -n"):
                command = self.start(line)
                ports = [int(port) for kind, port in _LISTEN.findall(line) if kind == "tcp" and int(port)]
                if ports:
                    self.wait_for(
                        f"ports {ports} of {line!r}", lambda p=ports: all(map(answers, p)), [command]
                    )  # type: ignore[misc]
                else:
                    self.wait_log(command, r"connection \d+ opened: outbound")
                results.append(command)
            elif line.startswith("nc "):
                results.append(self.start(line, stdin=True))
            else:
                results.append(self.run_line(line))
        return results


class CoverageTests(SynchronousTestCase):
    def test_every_command_is_run_or_skipped(self) -> None:
        """Each README command is in a block a test runs, or explicitly skipped; no skip is stale."""
        counts: dict[str, int] = {}
        unclaimed = []
        commands = []
        for heading, lines in console_blocks(README.read_text()):
            index = counts[heading] = counts.get(heading, -1) + 1
            commands.extend(lines)
            if (heading, index) in RUN:
                self.assertTrue(hasattr(ReadmeTests, RUN[(heading, index)]), RUN[(heading, index)])
                continue
            unclaimed.extend(f"{heading} #{index}: {line}" for line in lines if line not in SKIPPED)
        self.assertEqual(unclaimed, [], "README commands neither run by a test here nor in SKIPPED")
        self.assertEqual(sorted(set(SKIPPED) - set(commands)), [], "SKIPPED lists commands the README lost")
        self.assertEqual(
            [key for key in RUN if key[1] >= counts.get(key[0], -1) + 1],
            [],
            "RUN names blocks the README lost",
        )

    def test_parser(self) -> None:
        """The extraction sees commands only in console blocks, under their heading."""
        text = (
            "# A\n```console\n$ one\nout\n```\n```text\n$ not a command\n```\n"
            "## B\n```console\n$ two\n$ three\n```\n"
        )
        self.assertEqual(console_blocks(text), [("A", ["one"]), ("B", ["two", "three"])])
        rst = (
            "Intro\n\nQuick start\n-----------\n\n"
            ".. code-block:: console\n\n   $ a \\\n         b\n   $ c\n\n"
            "Next\n----\n\n.. code-block:: console\n\n   $ d\n"
        )
        self.assertEqual(rst_quick_start(rst), ["a b", "c"])


class ReadmeTests(_ReadmeTestCase):
    def test_peer_to_peer_in_one_process(self) -> None:
        """Five nodes form a mesh; /status/all shows each one's members and broadcast counters."""
        [lines] = section_blocks("Peer-to-peer")[:1]
        self.run_block(lines)

        def meshed() -> bool:
            documents = get_json("http://127.0.0.1:8080/status/all")
            return len(documents) == 5 and all(
                sum(peer.get("state") == "alive" for peer in _members(document)) == 4
                for document in documents
            )

        self.wait_for("a full mesh of five in /status/all", meshed)
        self.assertTrue(all("mesh" in document for document in get_json("http://127.0.0.1:8080/status/all")))

    def test_peer_to_peer_across_processes(self) -> None:
        """Three processes, the first's port as --peer: a mesh, each node hearing both others."""
        lines = section_blocks("Peer-to-peer")[1]
        nodes = self.run_block(lines)
        for node, me in zip(nodes, "abc", strict=True):
            assert isinstance(node, Command)
            for other in sorted(set("abc") - {me}):
                self.wait_log(node, rf"\[{me}\] from {other}: hello #\d+ from {other}")
            # Connections open less those closed: this test's own check that the port answers closes.
            self.wait_for(f"a connection from {me} to each other node", lambda n=node: live(n.text()) == 2)  # type: ignore[misc]

    def test_many_to_one_chat(self) -> None:
        """nc shows alice's lines; a line typed in nc reaches alice; /status shows her under many_to_one."""
        [_server, alice, nc] = self.run_block(section_blocks("Many-to-one chat")[0])
        assert isinstance(alice, Command) and isinstance(nc, Command) and nc.process.stdin is not None
        self.wait_log(nc, r"alice: hello from alice #1")
        nc.process.stdin.write(b"your line\n")
        nc.process.stdin.flush()
        self.wait_log(alice, r"raw-127\.0\.0\.1:\d+: your line")
        section = get_json("http://127.0.0.1:8080/status")["many_to_one"]
        self.assertIn("ops", json.dumps(section))
        self.assertIn("backlog", json.dumps(section))

    def test_callback(self) -> None:
        """The token step, server, client, curl: curl prints the id, alice logs the message."""
        token_lines, lines = section_blocks('Callback ("port 25")')
        self.check_ports(lines)
        self.run_block(token_lines)
        _server, alice, printed = self.run_block(lines)
        assert isinstance(alice, Command) and isinstance(printed, str)
        self.assertEqual(json.loads(printed), {"client": "alice", "id": 1, "depth": 1})
        self.wait_log(alice, r"\[alice\] via callback: you have mail")
        clients = get_json("http://127.0.0.1:8080/status")["callback"]["clients"]
        self.assertIn("outbox_depth", clients["alice"])
        self.assertEqual(state_files(self.directory), _STATE_FILES)
        self.assertFalse((self.directory / ".xdg-state").exists(), "wrote outside state/")

    def test_over_udp(self) -> None:
        """Many-to-one over UDP: the client's session is in the server's /status, over udp."""
        self.run_block(section_blocks("Over UDP")[0])

        def alice_connected() -> bool:
            connections = get_json("http://127.0.0.1:8080/status")["connections"]
            return any(c["peer_id"] == "alice" and c["state"] == "open" for c in connections)

        self.wait_for("alice's open connection in /status", alice_connected)
        connections = get_json("http://127.0.0.1:8080/status")["connections"]
        self.assertEqual({c["transport"] for c in connections if c["peer_id"] == "alice"}, {"udp"})

    def test_server_and_client(self) -> None:
        """The client logs each echo answer; /status has every field the README's excerpt shows."""
        [_server, client] = self.run_block(section_blocks("Everyday commands")[1])
        assert isinstance(client, Command)
        self.wait_log(client, r"answered 'hello 1' in [\d.]+ ms")
        # (The other, closed, connection is this test's check that the port answers.)
        connections = get_json("http://127.0.0.1:8080/status")["connections"]
        [connection] = [c for c in connections if c["state"] == "open"]
        shown = readme_json_excerpt()
        self.assertEqual(sorted(set(shown) - set(connection)), [])
        self.assertEqual(sorted(set(shown["peer_keepalive"]) - set(connection["peer_keepalive"])), [])

    def test_keepalive_option(self) -> None:
        """--keepalive 10,5,3 finds a dead peer within 25 s, as the text says."""
        [server] = self.run_block(section_blocks("Everyday commands")[2])
        assert isinstance(server, Command)
        self.wait_log(server, r"within 25 s \(idle 10 s \+ 3 probes x 5 s\)")

    def test_listing_commands(self) -> None:
        """The topologies, the applications and the options are listed."""
        topologies, apps, usage = self.run_block(section_blocks("Everyday commands")[3])
        for name in ("client-server", "many-to-one", "p2p", "callback"):
            self.assertIn(name, topologies)
        self.assertIn("echo", apps)
        self.assertIn("--topology", usage)


class CallbackDocTests(_ReadmeTestCase):
    def test_quick_start(self) -> None:
        """docs/callback.rst's quick start: curl answers 202's document, alice logs the message."""
        lines = rst_quick_start(CALLBACK_DOC.read_text())
        self.assertEqual(
            [line.split()[0] for line in lines],
            ["mkdir", "twistd", "twistd", "curl"],
            "the quick start changed",
        )
        *_, printed = self.run_block(lines)
        assert isinstance(printed, str)
        self.assertEqual(json.loads(printed), {"client": "alice", "id": 1, "depth": 1})
        [alice] = [c for c in self.commands if "--role client" in c.line]
        self.wait_log(alice, r"\[alice\] via callback: you have mail")
        self.assertEqual(state_files(self.directory), _STATE_FILES)
        self.assertFalse((self.directory / ".xdg-state").exists(), "wrote outside state/")


class SecurityDocTests(_ReadmeTestCase):
    def test_quick_start(self) -> None:
        """docs/security.rst's quick start: an encrypted connection, the key's node id, a 0600 key file."""
        lines = rst_quick_start(SECURITY_DOC.read_text())
        self.assertEqual(
            [line.split()[0] for line in lines],
            ["mkdir", "twistd", "twistd", "curl"],
            "the quick start changed",
        )
        *_, printed = self.run_block(lines)
        assert isinstance(printed, str)
        document = json.loads(printed)
        self.assertTrue(document["node"]["id"].startswith("nm-"), document["node"])
        self.assertEqual(document["security"]["node_key"], document["node"]["id"])

        def open_connections() -> list[dict[str, Any]]:
            # curl may have run while the client was still handshaking: ask again until it is open.
            with urllib.request.urlopen("http://127.0.0.1:8080/status", timeout=2) as response:
                return [c for c in json.load(response)["connections"] if c["state"] == "open"]

        [connection] = self.wait_for("the client's connection open", open_connections, self.commands)
        self.assertEqual(connection["secure"]["protocol"], "Noise_XXpsk0_25519_AESGCM_BLAKE2s")
        self.assertEqual(state_files(self.directory), ["cluster.key", "server.key"])
        self.assertEqual((self.directory / "state" / "server.key").stat().st_mode & 0o777, 0o600)


#: What the callback quick starts leave in state/ (SQLite may add journal files).
_STATE_FILES = ["alice.sqlite", "outbox.sqlite", "token"]


def live(log: str) -> int:
    """How many connections a node's log shows open."""
    return len(re.findall(r"connection \d+ opened", log)) - len(
        re.findall(r"connection \d+ to \S+ closed", log)
    )


def state_files(directory: Path) -> list[str]:
    """What the commands wrote into ``state/``, less SQLite's transient journal files."""
    return sorted(
        p.name for p in (directory / "state").iterdir() if not re.search(r"-(journal|wal|shm)$", p.name)
    )


def _members(document: dict[str, Any]) -> list[dict[str, Any]]:
    peers = document.get("peers", [])
    return list(peers.values()) if isinstance(peers, dict) else list(peers)
