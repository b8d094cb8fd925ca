"""
Helpers for the integration tests: real nodes on loopback, raw wire clients and
servers, manager-event waiters and twistd subprocesses.

Nothing here sleeps: every wait is a Deferred fired by an event (a manager
event, ``connectionLost``, a line in a child's log, the child's exit). Every
helper that opens something registers its own cleanup on the test case, so a
failing test still leaves the reactor clean.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from netmodels.core.connection import ConnectionRecord, ConnectionState
from netmodels.core.frames import FrameDecoder, Hello, MessageType, encode_frame, encode_hello
from netmodels.core.keepalive import KeepaliveSettings
from netmodels.daemon.tap import build_node
from netmodels.runtime.application import Application
from netmodels.runtime.manager import ConnectionManager, ManagedConnection
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.registry import applications, topologies
from netmodels.runtime.session import Session
from netmodels.topologies.callback.options import CallbackSettings
from netmodels.topologies.many_to_one.options import ManyToOneSettings
from netmodels.topologies.p2p.options import P2PSettings

#: Per-test timeout in seconds (trial's ``timeout`` attribute).
TIMEOUT = 20

LOOPBACK = "127.0.0.1"
LISTEN_ANY_PORT = f"tcp:0:interface={LOOPBACK}"

#: Settings for raw HELLOs: slow enough that a raw peer is never probed.
QUIET_KEEPALIVE = KeepaliveSettings(60, 60, 3)

_ids = itertools.count(1)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


# --- manager events ------------------------------------------------------------------


@define
class Event:
    """One manager event: its name, subject, record and ``time.monotonic()`` at delivery."""

    name: str
    subject: Any
    record: ConnectionRecord
    at: float

    @property
    def connection(self) -> ManagedConnection:
        assert isinstance(self.subject, ManagedConnection), self.subject
        return self.subject

    @property
    def session(self) -> Session:
        protocol = self.connection.wrappedProtocol
        assert isinstance(protocol, Session), protocol
        return protocol


@define
class _Waiter:
    name: str
    predicate: Callable[[ConnectionRecord], bool]
    deferred: defer.Deferred[Event]


@define
class Events:
    """
    Every event of one :class:`ConnectionManager`, recorded from its creation.

    :meth:`wait` matches past events too, so a test never races the event it
    waits for. Waiters fire on the next reactor turn, once the code that
    emitted the event (and its other observers) has finished.
    """

    log: list[Event] = field(factory=list)
    _waiters: list[_Waiter] = field(factory=list)

    @classmethod
    def watch(cls, manager: ConnectionManager) -> Events:
        events = cls()
        manager.subscribe(events._observe)
        return events

    def _observe(self, name: str, subject: Any) -> None:
        record = subject.record if isinstance(subject, ManagedConnection) else subject
        event = Event(name, subject, record, time.monotonic())
        self.log.append(event)
        for waiter in list(self._waiters):
            if waiter.name == name and waiter.predicate(record):
                self._waiters.remove(waiter)
                reactor.callLater(0, waiter.deferred.callback, event)

    def wait(
        self, name: str, predicate: Callable[[ConnectionRecord], bool] = lambda record: True
    ) -> defer.Deferred[Event]:
        for event in self.log:
            if event.name == name and predicate(event.record):
                return defer.succeed(event)
        deferred: defer.Deferred[Event] = defer.Deferred()
        self._waiters.append(_Waiter(name, predicate, deferred))
        return deferred

    def named(self, name: str) -> list[Event]:
        return [event for event in self.log if event.name == name]


def record_id(connection_id: int) -> Callable[[ConnectionRecord], bool]:
    return lambda record: record.id == connection_id


def with_peer_id(peer_id: str) -> Callable[[ConnectionRecord], bool]:
    return lambda record: record.peer_id == peer_id


# --- nodes ---------------------------------------------------------------------------


@define
class RunningNode:
    node: Node
    events: Events

    @property
    def manager(self) -> ConnectionManager:
        return self.node.manager

    @property
    def port(self) -> int:
        port = self.node.listeners[0].port
        assert port is not None
        return int(port.getHost().port)

    @property
    def address(self) -> str:
        return f"tcp:{LOOPBACK}:{self.port}"

    @property
    def client(self) -> Any:
        return self.node.clients[0]


def make_config(role: str, **overrides: Any) -> NodeConfig:
    settings: dict[str, Any] = {
        "topology": "client-server",
        "role": role,
        "app": "echo",
        "node_id": unique_id(role),
        # The echo client would otherwise send a request every second on its own.
        "interval": 0.0,
    }
    settings.update(overrides)
    for name in ("listen", "connect"):
        settings[name] = tuple(settings.get(name, ()))
    # The topology's own settings, given here as keywords for brevity.
    own = {name: settings.pop(name) for name in _TOPOLOGY_SETTINGS if name in settings}
    if own:
        settings["settings"] = _SETTINGS_CLASSES[settings["topology"]](**own)
    return NodeConfig(**settings)


_SETTINGS_CLASSES: dict[str, Any] = {
    "p2p": P2PSettings,
    "many-to-one": ManyToOneSettings,
    "callback": CallbackSettings,
}
_TOPOLOGY_SETTINGS = {field.name for cls in _SETTINGS_CLASSES.values() for field in attrs.fields(cls)}


def start_node(testcase: TestCase, config: NodeConfig, application: Application | None = None) -> RunningNode:
    """Build ``config``'s node (with ``application`` if given), start it, stop it in cleanup."""
    if application is None:
        node = build_node(config, reactor)
    else:
        topology = topologies()[config.topology]
        node = Node(config, topology, application, reactor)
        node.build()
    events = Events.watch(node.manager)
    running = RunningNode(node, events)
    # Registered before starting, so a node that fails half-way is still stopped.
    testcase.addCleanup(stop_node, running)
    node.startService()
    return running


def start_server(testcase: TestCase, application: Application | None = None, **config: Any) -> RunningNode:
    config.setdefault("listen", (LISTEN_ANY_PORT,))
    return start_node(testcase, make_config("server", **config), application)


def start_client(testcase: TestCase, address: str, **config: Any) -> RunningNode:
    return start_node(testcase, make_config("client", connect=(address,), **config))


def echo_application(role: str = "server") -> Application:
    application: Application = applications()["echo"](make_config(role))
    return application


@defer.inlineCallbacks
def stop_node(running: RunningNode) -> Any:
    """
    Stop the node, then make sure every connection it had is closed and
    recorded (RST for any that stopService left open), so no socket or
    DelayedCall outlives the test.
    """
    node = running.node
    if node.running:
        yield defer.maybeDeferred(node.stopService)
    yield close_all_connections(node.manager)


def close_all_connections(manager: ConnectionManager) -> defer.Deferred[Any]:
    waits = []
    for connection in list(manager.live.values()):
        if connection.record.closed:
            continue
        closed: defer.Deferred[ConnectionRecord] = defer.Deferred()
        connection.on_close(closed.callback)
        waits.append(closed)
        if connection.record.state is not ConnectionState.CLOSING:
            # Already closing (FIN sent) finishes on its own; anything else gets RST.
            connection.reset("test cleanup")
    return defer.gatherResults(waits, consumeErrors=True)


def ready_pair(server: RunningNode, client: RunningNode) -> defer.Deferred[tuple[Event, Event]]:
    """Wait until ``client``'s connection is ready on both sides: (server event, client event)."""
    client_id = client.node.config.node_id
    server_id = server.node.config.node_id

    @defer.inlineCallbacks
    def both() -> Any:
        on_server = yield server.events.wait("ready", with_peer_id(client_id))
        on_client = yield client.events.wait("ready", with_peer_id(server_id))
        return on_server, on_client

    return both()


# --- raw peers -----------------------------------------------------------------------


class RecordedLink:
    """A linked peer's session as a topology sees it: the frames written to it, the errors it was given."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.frames: list[bytes] = []
        self.errors: list[str] = []

    def write_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def protocol_error(self, detail: str) -> None:
        self.errors.append(detail)


def raw_hello(
    role: str = "client", version: int = 1, topology: str = "client-server", node_id: str = ""
) -> bytes:
    return encode_hello(
        Hello(
            node_id=node_id or unique_id("raw"),
            topology=topology,
            role=role,
            keepalive=QUIET_KEEPALIVE,
            version=version,
        )
    )


def decode_frames(data: bytes, max_frame: int = 1 << 20) -> list[tuple[int, bytes]]:
    return FrameDecoder(max_frame).feed(data)


def bye_bodies(data: bytes) -> list[bytes]:
    return [body for kind, body in decode_frames(data) if kind == MessageType.BYE]


class RawPeer(Protocol):
    """
    A wire-level peer under the test's control: keeps what it receives, runs
    ``on_connect``/``on_data`` hooks, and fires :attr:`lost` on ``connectionLost``.
    """

    def __init__(
        self,
        on_connect: Callable[[RawPeer], None] | None = None,
        on_data: Callable[[RawPeer, bytes], None] | None = None,
    ) -> None:
        self.received = bytearray()
        #: Fires with ``None`` on ``connectionLost``; the reason is :attr:`reason`.
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self._on_connect = on_connect
        self._on_data = on_data

    def connectionMade(self) -> None:
        if self._on_connect is not None:
            self._on_connect(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._on_data is not None:
            self._on_data(self, data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.lost.callback(None)

    @property
    def disconnected(self) -> bool:
        return self.reason is not None


def _abort_and_wait(peer: RawPeer) -> defer.Deferred[Any]:
    if peer.disconnected:
        return defer.succeed(None)
    if peer.transport is not None:
        peer.transport.abortConnection()
    return peer.lost


@defer.inlineCallbacks
def connect_raw(testcase: TestCase, port: int, peer: RawPeer | None = None) -> Any:
    """A :class:`RawPeer` connected to ``127.0.0.1:port``, aborted in cleanup if still open."""
    peer = peer or RawPeer()
    endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5)
    yield connectProtocol(endpoint, peer)
    testcase.addCleanup(_abort_and_wait, peer)
    return peer


@define
class RawServer:
    port: int
    peers: list[RawPeer]
    connected: defer.Deferred[RawPeer]


@defer.inlineCallbacks
def listen_raw(testcase: TestCase, make_peer: Callable[[], RawPeer]) -> Any:
    """A server of :class:`RawPeer`s on loopback; port and peers closed in cleanup."""
    peers: list[RawPeer] = []
    connected: defer.Deferred[RawPeer] = defer.Deferred()

    def build(addr: Any) -> RawPeer:
        peer = make_peer()
        peers.append(peer)
        if not connected.called:
            reactor.callLater(0, connected.callback, peer)
        return peer

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]
    port = yield TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK).listen(factory)

    def cleanup() -> defer.Deferred[Any]:
        stopped = defer.maybeDeferred(port.stopListening)
        return defer.gatherResults([stopped, *(_abort_and_wait(peer) for peer in peers)])

    testcase.addCleanup(cleanup)
    return RawServer(port.getHost().port, peers, connected)


def closed_port() -> int:
    """A loopback port with no listener (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def first_tick() -> defer.Deferred[None]:
    """The next reactor turn (not a sleep: lets callbacks queued by the current turn run)."""
    deferred: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, deferred.callback, None)
    return deferred


# --- twistd subprocesses -------------------------------------------------------------


def twistd_command() -> list[str]:
    """The venv's twistd next to this interpreter, else ``python -m twisted.scripts.twistd``."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class ProcessExited(Exception):
    """The process ended while a test still waited for a line of its output."""


class ChildProcess(ProcessProtocol):
    """Collects a child's output, fires waiters on log lines, and :attr:`ended` on exit."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[ChildProcess] = defer.Deferred()
        self.exit_code: int | None = None
        self.signal: int | None = None
        self._waiters: list[tuple[re.Pattern[bytes], defer.Deferred[re.Match[bytes]], int]] = []

    @property
    def pid(self) -> int | None:
        return None if self.transport is None else self.transport.pid

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def running(self) -> bool:
        return not self.ended.called

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for waiter in list(self._waiters):
            pattern, deferred, start = waiter
            match = pattern.search(self.output, start)
            if match is not None:
                self._waiters.remove(waiter)
                deferred.callback(match)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        if reason.check(ProcessDone):
            self.exit_code = 0
        waiters, self._waiters = self._waiters, []
        for pattern, deferred, _ in waiters:
            deferred.errback(
                ProcessExited(
                    f"exited ({self.exit_code}, signal {self.signal}) before printing "
                    f"{pattern.pattern!r}:\n{self.text}"
                )
            )
        self.ended.callback(self)

    def wait_for(self, pattern: str | bytes, after: int = 0) -> defer.Deferred[re.Match[bytes]]:
        """The first match of ``pattern`` in the output from offset ``after`` (past or future)."""
        compiled = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        match = compiled.search(self.output, after)
        if match is not None:
            return defer.succeed(match)
        if not self.running:
            return defer.fail(ProcessExited(f"already exited:\n{self.text}"))
        deferred: defer.Deferred[re.Match[bytes]] = defer.Deferred()
        self._waiters.append((compiled, deferred, after))
        return deferred

    def kill(self, name: str) -> None:
        if self.running and self.transport is not None:
            with contextlib.suppress(ProcessExitedAlready):
                self.transport.signalProcess(name)

    def terminate(self, grace: float = 5.0) -> defer.Deferred[Any]:
        """SIGCONT (in case it is stopped), SIGTERM, then SIGKILL after ``grace`` seconds."""
        if not self.running:
            return defer.succeed(self)
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.kill("TERM")
        escalate = reactor.callLater(grace, self.kill, "KILL")

        def cancel(result: Any) -> Any:
            if escalate.active():
                escalate.cancel()
            return result

        return self.ended.addBoth(cancel)


def temp_dir(testcase: TestCase) -> str:
    """A fresh directory removed in cleanup (``mktemp`` would write under pytest's cwd)."""
    path = tempfile.mkdtemp(prefix="netmodels-test-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def spawn_twistd(testcase: TestCase, args: Iterable[str], nodaemon: bool = True) -> ChildProcess:
    """
    Run ``twistd [-n --pidfile= --logfile=-] <args>`` in a temporary directory,
    logging to its stdout; terminated (SIGCONT, SIGTERM, SIGKILL) in cleanup.
    """
    child = ChildProcess()
    cwd = temp_dir(testcase)
    command = twistd_command()
    prefix = ["-n", "--pidfile=", "--logfile=-"] if nodaemon else []
    argv = [*command, *prefix, *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reactor.spawnProcess(child, argv[0], argv, env=env, path=cwd)
    testcase.addCleanup(child.terminate)
    return child


def listening_port(child: ChildProcess) -> defer.Deferred[int]:
    """The port a twistd netmodels node logged ``listening on tcp:127.0.0.1:PORT`` for."""
    return child.wait_for(rb"listening on tcp:127\.0\.0\.1:(\d+)").addCallback(
        lambda match: int(match.group(1))
    )


def status_port(child: ChildProcess) -> defer.Deferred[int]:
    """The port twistd's status Site logged ``Site starting on PORT`` for."""
    return child.wait_for(rb"Site starting on (\d+)").addCallback(lambda match: int(match.group(1)))


__all__ = [
    "LISTEN_ANY_PORT",
    "LOOPBACK",
    "TIMEOUT",
    "ChildProcess",
    "Event",
    "Events",
    "RawPeer",
    "RawServer",
    "RunningNode",
    "bye_bodies",
    "closed_port",
    "connect_raw",
    "decode_frames",
    "echo_application",
    "encode_frame",
    "first_tick",
    "listen_raw",
    "listening_port",
    "make_config",
    "raw_hello",
    "ready_pair",
    "record_id",
    "spawn_twistd",
    "start_client",
    "start_node",
    "start_server",
    "status_port",
    "stop_node",
    "temp_dir",
    "unique_id",
    "with_peer_id",
]
