"""
A network lab in network namespaces, for fault tests.

A :class:`Lab` is a few *hosts* (network namespaces ``nmlab-<pid>-<lab>-<n>``),
each with one interface ``eth0`` (``10.77.0.<n>/24``), plugged into a bridge in
a *switch* namespace of its own. The addresses exist only inside the lab: no
host namespace has a default route, nothing is routed out, and the machine's
own namespace, routes and iptables rules are never touched (veth pairs are
created inside the switch namespace and one end is moved into the host).

Faults are injected inside the hosts: iptables rules (:meth:`Host.blackhole`,
:meth:`Host.reject_tcp_reset`, :meth:`Host.loss`), the link
(:meth:`Host.link_down`) and signals to the processes
(:meth:`LabProcess.sigstop`, :meth:`~LabProcess.sigkill`, ...).

Nothing here sleeps for an outcome: :func:`wait_until` polls a condition
with a deadline. :meth:`Lab.close` kills every process the lab started and
deletes its namespaces; it runs from ``addCleanup``, ``with`` and ``atexit``,
and each new lab first removes namespaces left behind by a lab process that
no longer exists.

Needs root, ``ip`` (iproute2), ``iptables`` and ``ss``: :func:`lab_available`
says whether this machine can run the lab, and :func:`require_lab` turns a
"no" into a skip, or into a failure when ``NETMODELS_LAB_REQUIRED=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from unittest import SkipTest

__all__ = [
    "PREFIX",
    "REQUIRED_ENV",
    "Host",
    "Lab",
    "LabError",
    "LabProcess",
    "LabTimeout",
    "StatusUnavailable",
    "cleanup_stale",
    "lab_available",
    "require_lab",
    "wait_until",
]

#: Every namespace the lab creates starts with this (then the creating pid).
PREFIX = "nmlab-"
#: The lab's private subnet; it exists only inside the lab's namespaces.
SUBNET = "10.77.0"
#: Set to ``1`` (CI does) to make a machine that cannot run the lab a failure.
REQUIRED_ENV = "NETMODELS_LAB_REQUIRED"
#: Set to ``1`` to keep each lab's process logs (their directory is printed).
KEEP_ENV = "NETMODELS_LAB_KEEP"

#: Upper bound on any single administrative command (ip, iptables, ss).
COMMAND_TIMEOUT = 15.0

_T = TypeVar("_T")


class LabError(Exception):
    """Building, driving or tearing down the lab failed."""


class LabTimeout(AssertionError):
    """A condition the lab waited for did not come true before its deadline (a test failure)."""


class StatusUnavailable(LabError):
    """A node's status endpoint did not answer (not up yet, or gone)."""


# --- running commands ----------------------------------------------------------------


def _run(
    argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{shlex.join(argv)}: no result within {timeout:g} s") from e
    except OSError as e:
        raise LabError(f"{shlex.join(argv)}: {e}") from e
    if check and result.returncode != 0:
        raise LabError(f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def list_namespaces() -> list[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _namespace_pids(name: str) -> list[int]:
    result = _run(["ip", "netns", "pids", name], check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _delete_namespace(name: str) -> None:
    """Kill what still runs in ``name`` (processes a lab started), then delete it."""
    for _ in range(3):
        pids = _namespace_pids(name)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _namespace_pids(name), 5.0, f"processes in {name} to exit", interval=0.02)
    _run(["ip", "netns", "delete", name], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_open_labs: set[Lab] = set()


def cleanup_stale() -> list[str]:
    """
    Delete lab namespaces whose creating process is gone (a lab killed before
    it could clean up), killing what still runs in them, and this process's
    namespaces that no open lab owns; and the log directories of labs whose
    process is gone. Returns the namespaces deleted.
    """
    mine = {name for lab in _open_labs for name in lab.namespaces}
    deleted = []
    for name in list_namespaces():
        match = re.match(rf"^{re.escape(PREFIX)}(\d+)-", name)
        if match is None or name in mine:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or not _pid_alive(pid):
            _delete_namespace(name)
            deleted.append(name)
    # And the log directories of labs whose process is gone.
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        match = re.match(rf"^{re.escape(PREFIX)}(\d+)-", path.name)
        if match is not None and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
    return deleted


# --- can this machine run the lab? ---------------------------------------------------

_availability: list[str | None] = []


def lab_available() -> str | None:
    """
    ``None`` if this machine can run the lab, else why not (one line).

    Tries the real thing once per process: create a namespace, a bridge and a
    veth pair inside it, list its iptables rules, then delete it.
    """
    if _availability:
        return _availability[0]
    reason: str | None = None
    if sys.platform != "linux":
        reason = f"the network lab needs Linux network namespaces (this is {sys.platform})"
    elif os.geteuid() != 0:
        reason = "the network lab needs root (it creates network namespaces); run the tests as root"
    else:
        missing = [
            tool for tool in ("ip", "iptables", "iptables-restore", "ss") if shutil.which(tool) is None
        ]
        if missing:
            reason = f"the network lab needs {', '.join(missing)} (apt-get install iproute2 iptables)"
    if reason is None:
        probe = f"{PREFIX}{os.getpid()}-probe"
        try:
            with contextlib.suppress(LabError):
                cleanup_stale()
            _ip("netns", "add", probe)
            try:
                _ip("-n", probe, "link", "set", "lo", "up")
                _ip("-n", probe, "link", "add", "br0", "type", "bridge")
                _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
                _run(["ip", "netns", "exec", probe, "iptables", "-w", "-S"])
            finally:
                _run(["ip", "netns", "delete", probe], check=False)
        except LabError as e:
            reason = f"cannot build the network lab here: {e}"
    _availability.append(reason)
    return reason


def require_lab() -> None:
    """
    Call from ``setUp``: skip the test with a loud reason when the lab cannot
    run here, or fail it with that reason when ``NETMODELS_LAB_REQUIRED=1``.
    """
    reason = lab_available()
    if reason is None:
        return
    if os.environ.get(REQUIRED_ENV) == "1":
        raise AssertionError(f"NETWORK LAB REQUIRED ({REQUIRED_ENV}=1) BUT UNAVAILABLE: {reason}")
    raise SkipTest(f"NETWORK LAB UNAVAILABLE: {reason} (set {REQUIRED_ENV}=1 to make this a failure)")


# --- waiting -------------------------------------------------------------------------


def wait_until(
    check: Callable[[], _T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> _T:
    """
    Poll ``check()`` every ``interval`` seconds until it returns something
    truthy, and return that; raise :class:`LabTimeout` (saying ``what`` and,
    if given, ``describe()``) once ``timeout`` seconds have passed.
    :class:`StatusUnavailable` from ``check`` counts as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except StatusUnavailable as e:
            result, last_error = None, e
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"; last error: {last_error}" if last_error is not None else ""
            if describe is not None:
                with contextlib.suppress(Exception):
                    extra += f"; {describe()}"
            raise LabTimeout(f"waited {timeout:g} s for {what}{extra}")
        time.sleep(interval)


# --- processes -----------------------------------------------------------------------


class LabProcess:
    """A process started inside a lab host, with its output in a log file."""

    def __init__(self, host: Host, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.host = host
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "ab") as log:
            # `ip netns exec` execs the command in place: the pid is the command's.
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=host.lab.workdir,
                env=env,
                start_new_session=True,
            )

    def __repr__(self) -> str:
        return f"<LabProcess {self.name} pid {self.pid} in {self.host.netns}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the log, without the status endpoint's access log."""
        kept = [line for line in self.log.splitlines() if '"GET /status' not in line]
        return "\n".join(kept[-lines:])

    def signal(self, number: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def sigstop(self) -> None:
        self.signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        self.signal(signal.SIGCONT)

    def sigkill(self) -> None:
        """SIGKILL, then reap it (bounded)."""
        self.signal(signal.SIGKILL)
        self.wait(5.0)

    def terminate(self, grace: float = 3.0) -> None:
        """SIGCONT (in case it is stopped), SIGTERM, SIGKILL after ``grace`` seconds."""
        if not self.running:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.sigkill()

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise LabTimeout(f"{self} did not exit within {timeout:g} s") from e

    def wait_for_log(self, pattern: str, timeout: float, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log from offset ``after``, polled until ``timeout``."""
        compiled = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = compiled.search(self.log, after)
            if match is None and not self.running:
                raise LabError(f"{self} exited ({self.popen.returncode}) before logging {pattern!r}")
            return match

        return wait_until(found, timeout, f"{self.name} to log {pattern!r}", 0.01, self.log_tail)


# --- the status reader ---------------------------------------------------------------

#: Runs inside a host namespace: reads one JSON request a line ({"port", "path"}, and for a
#: POST "method", "body" as latin-1 text and "token"), answers one JSON line each.
_STATUS_AGENT = r"""
import http.client, json, sys
for line in sys.stdin:
    ask = json.loads(line)
    method = ask.get("method", "GET")
    try:
        headers = {"Authorization": "Bearer " + ask["token"]} if ask.get("token") else {}
        body = None if ask.get("body") is None else ask["body"].encode("latin-1")
        connection = http.client.HTTPConnection("127.0.0.1", ask["port"], timeout=2)
        connection.request(method, ask["path"], body, headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        if method == "GET" and response.status != 200:
            answer = {"error": "HTTP %d" % response.status}
        else:
            answer = {"status": response.status, "document": json.loads(data)}
    except Exception as e:
        answer = {"error": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
"""


class _StatusAgent:
    """A tiny HTTP client living inside one namespace, driven over a pipe."""

    def __init__(self, netns: str) -> None:
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-u", "-c", _STATUS_AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._buffer = b""

    def ask(self, timeout: float, **request: Any) -> dict[str, Any]:
        """One request (see :data:`_STATUS_AGENT`); the answer's ``status`` and ``document``."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(json.dumps(request).encode() + b"\n")
        self.popen.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise StatusUnavailable(f"no answer from the status reader within {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise StatusUnavailable("the status reader exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            where = f"{request.get('method', 'GET')} 127.0.0.1:{request['port']}{request['path']}"
            raise StatusUnavailable(f"{where}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


# --- hosts ---------------------------------------------------------------------------


class Host:
    """One lab host: a network namespace with ``eth0`` at :attr:`address`."""

    interface = "eth0"

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.index = index
        self.netns = f"{lab.id}-{index}"
        self.address = f"{SUBNET}.{index}"
        self._agent: _StatusAgent | None = None

    def __repr__(self) -> str:
        return f"<Host {self.netns} {self.address}>"

    # Commands

    def run(
        self,
        argv: Sequence[str],
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host's namespace and wait for it (bounded)."""
        result: subprocess.CompletedProcess[str] = _run(
            ["ip", "netns", "exec", self.netns, *argv], timeout, check, input
        )
        return result

    def spawn(self, argv: Sequence[str], name: str) -> LabProcess:
        """Start ``argv`` inside this host; its output goes to ``<workdir>/<name>.log``."""
        return self.lab._track(LabProcess(self, name, argv, self.lab.log_path(name)))

    def spawn_twistd(self, args: Iterable[str], name: str) -> LabProcess:
        """``twistd -n --pidfile= --logfile=- <args>`` inside this host (the venv's twistd)."""
        twistd = Path(sys.executable).parent / "twistd"
        command = [sys.executable, str(twistd)] if twistd.exists() else [sys.executable, "-m", "twisted"]
        return self.spawn([*command, "-n", "--pidfile=", "--logfile=-", *args], name)

    # Faults: iptables (rules live in this namespace only; except_loopback keeps
    # the node's status endpoint on 127.0.0.1 readable while the host is cut off)

    def iptables(self, rule: str | Sequence[str]) -> None:
        """Run one ``iptables`` command here, e.g. ``"-A INPUT -j DROP"``."""
        argv = shlex.split(rule) if isinstance(rule, str) else list(rule)
        self.run(["iptables", "-w", *argv])

    def iptables_batch(self, rules: Iterable[str]) -> None:
        """Append ``rules`` (``"-A CHAIN ..."`` lines) to the filter table atomically."""
        text = "*filter\n" + "".join(f"{rule}\n" for rule in rules) + "COMMIT\n"
        self.run(["iptables-restore", "-w", "--noflush"], input=text)

    def blackhole(self, direction: str = "both") -> None:
        """Drop every packet into (``in``), out of (``out``) or both ways through ``eth0``."""
        rules = {
            "in": [f"-A INPUT -i {self.interface} -j DROP"],
            "out": [f"-A OUTPUT -o {self.interface} -j DROP"],
        }
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction must be in, out or both, not {direction!r}")
        self.iptables_batch(rules["in"] * (direction != "out") + rules["out"] * (direction != "in"))

    def reject_tcp_reset(self, port: int) -> None:
        """Answer every TCP segment arriving from or for ``port`` with an RST (``REJECT tcp-reset``)."""
        self.iptables(
            f"-A INPUT -i {self.interface} -p tcp -m multiport --ports {port} "
            "-j REJECT --reject-with tcp-reset"
        )

    def loss(self, percent: float, direction: str = "both") -> None:
        """Drop ``percent`` % of the packets in, out or both ways (``-m statistic --mode random``)."""
        probability = f"{percent / 100:.4f}"
        rule = "-m statistic --mode random --probability " + probability + " -j DROP"
        rules = []
        if direction in ("in", "both"):
            rules.append(f"-A INPUT -i {self.interface} {rule}")
        if direction in ("out", "both"):
            rules.append(f"-A OUTPUT -o {self.interface} {rule}")
        if not rules:
            raise ValueError(f"direction must be in, out or both, not {direction!r}")
        self.iptables_batch(rules)

    def heal(self) -> None:
        """Remove every iptables rule of this host (its namespace's filter table)."""
        self.iptables("-F")

    # Faults: the link

    def link_down(self) -> None:
        _ip("-n", self.netns, "link", "set", self.interface, "down")

    def link_up(self) -> None:
        _ip("-n", self.netns, "link", "set", self.interface, "up")

    # Observation

    def status(self, port: int, path: str = "/status", timeout: float = 3.0) -> Any:
        """``GET http://127.0.0.1:<port><path>`` from inside this host, as JSON."""
        return self._ask(timeout, port=port, path=path)["document"]

    def post(
        self, port: int, path: str, body: bytes, token: str | None = None, timeout: float = 3.0
    ) -> tuple[int, Any]:
        """
        ``POST http://127.0.0.1:<port><path>`` with ``body`` (and ``Authorization:
        Bearer <token>``) from inside this host: the HTTP status and the JSON answer.
        Not retried: a POST may have taken effect even when no answer came back.
        """
        request = {"port": port, "path": path, "method": "POST", "body": body.decode("latin-1")}
        answer = self._ask(timeout, **request, token=token)
        return int(answer["status"]), answer["document"]

    def _ask(self, timeout: float, **request: Any) -> dict[str, Any]:
        if self._agent is None or self._agent.popen.poll() is not None:
            self._agent = _StatusAgent(self.netns)
        try:
            return self._agent.ask(timeout, **request)
        except StatusUnavailable as e:
            if "status reader" in str(e):
                # It hung or died: a fresh one next time.
                self._close_agent()
            raise

    def tcp_sockets(self, port: int) -> list[dict[str, Any]]:
        """This host's TCP sockets on local or remote ``port`` (``ss -tan``): state and queues."""
        result = self.run(["ss", "-tanH"])
        sockets = []
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) < 5:
                continue
            state, recv_q, send_q, local, peer = fields[:5]
            if local.endswith(f":{port}") or peer.endswith(f":{port}"):
                sockets.append(
                    {
                        "state": state,
                        "recv_q": int(recv_q),
                        "send_q": int(send_q),
                        "local": local,
                        "peer": peer,
                    }
                )
        return sockets

    def reaches(self, other: Host, port: int = 9) -> bool:
        """Whether a TCP connect from here to ``other`` (a closed port) is refused, i.e. answered."""
        probe = (
            "import socket, sys; s = socket.socket(); s.settimeout(1); "
            f"sys.exit(0 if s.connect_ex(({other.address!r}, {port})) == 111 else 1)"
        )
        return self.run([sys.executable, "-c", probe], check=False).returncode == 0

    def _close_agent(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.close()


# --- the lab -------------------------------------------------------------------------


class Lab:
    """
    ``hosts`` namespaces on one bridge. Use as a context manager, or call
    :meth:`close` (``testcase.addCleanup(lab.close)``).
    """

    _serial = itertools.count(1)

    def __init__(self, hosts: int = 2) -> None:
        if not 1 <= hosts <= 8:
            raise ValueError("a lab has 1 to 8 hosts")
        cleanup_stale()
        self.id = f"{PREFIX}{os.getpid()}-{next(self._serial)}"
        self.switch = f"{self.id}-sw"
        self.workdir = tempfile.mkdtemp(prefix=f"{self.id}-")
        self.hosts: list[Host] = []
        self.processes: list[LabProcess] = []
        self.namespaces: list[str] = []
        self.closed = False
        _open_labs.add(self)
        try:
            self._build(hosts)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.id}: {', '.join(host.address for host in self.hosts)}>"

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        # IPv4 only: no IPv6 router solicitations or DAD on the lab wire.
        _run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
        _run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            check=False,
        )

    def _build(self, count: int) -> None:
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for index in range(1, count + 1):
            host = Host(self, index)
            self._add_namespace(host.netns)
            # Both ends are born in the switch namespace; one moves into the host.
            veth = ["link", "add", f"p{index}", "type", "veth", "peer", "name", host.interface]
            _ip("-n", self.switch, *veth, "netns", host.netns)
            _ip("-n", self.switch, "link", "set", f"p{index}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p{index}", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.interface)
            _ip("-n", host.netns, "link", "set", host.interface, "up")
            self.hosts.append(host)
        # Each host reaches the next one: a connect to a closed port comes back refused (an RST).
        for host, other in zip(self.hosts, self.hosts[1:] + self.hosts[:1], strict=True):
            if other is not host:
                reaches = functools.partial(host.reaches, other)
                wait_until(reaches, 10.0, f"{host.address} to reach {other.address}")

    def log_path(self, name: str) -> Path:
        return Path(self.workdir) / f"{name}.log"

    def _track(self, process: LabProcess) -> LabProcess:
        if self.closed:
            process.sigkill()
            raise LabError("the lab is closed")
        self.processes.append(process)
        return process

    def logs(self, lines: int = 25) -> str:
        """The tail of every process's log, for a failure message."""
        parts = []
        for process in self.processes:
            parts.append(f"--- {process.name} ({process.host.address}, pid {process.pid}) ---")
            parts.append(process.log_tail(lines))
        return "\n".join(parts)

    def close(self) -> None:
        """Kill the lab's processes, delete its namespaces (and their rules, links) and logs."""
        if self.closed:
            return
        self.closed = True
        try:
            for process in reversed(self.processes):
                with contextlib.suppress(Exception):
                    process.sigkill()
            for host in self.hosts:
                with contextlib.suppress(Exception):
                    host._close_agent()
            for name in reversed(self.namespaces):
                with contextlib.suppress(Exception):
                    _delete_namespace(name)
        finally:
            _open_labs.discard(self)
            if os.environ.get(KEEP_ENV) == "1":
                print(f"lab {self.id}: logs kept in {self.workdir}", file=sys.stderr)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_open_labs):
        with contextlib.suppress(Exception):
            lab.close()
