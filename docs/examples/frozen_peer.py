"""
Kernel keepalive proves only that the peer's kernel is alive.

Starts a netmodels server in a child process and opens three connections to
it, then freezes the child with SIGSTOP (as a deadlock or a debugger would):

- a plain socket with kernel keepalive only (TCP_KEEPIDLE 1, TCP_KEEPINTVL 1,
  TCP_KEEPCNT 1: "dead within 2 s"): the frozen peer's kernel answers every
  probe, so nothing is ever detected;
- a netmodels client node, whose application heartbeat (PING/PONG,
  --keepalive 0.3,0.2,2: dead within 0.7 s) needs the peer *process* to
  answer: it declares the peer dead, reason ``timeout``;
- a plain socket that keeps writing, with TCP_USER_TIMEOUT 1.5 s: the frozen
  peer stops reading, its window fills, our data stays unacknowledged, and the
  kernel gives up with ETIMEDOUT.

Linux only. Run: python docs/examples/frozen_peer.py   (about 5 s)
"""

import atexit
import errno
import os
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from netmodels.core.keepalive import KeepaliveSettings
from netmodels.runtime.application import Application
from netmodels.runtime.node import Node, NodeConfig
from netmodels.topologies.client_server import ClientServer

WATCH = 3.0  # seconds to watch after the freeze

with socket.create_server(("127.0.0.1", 0)) as probe:
    port = probe.getsockname()[1]
twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
child = subprocess.Popen(
    [
        *twistd,
        "netmodels",
        "--role",
        "server",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--node-id",
        "frozen",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
atexit.register(child.kill)  # never leave a stopped process behind
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except ConnectionRefusedError:
        time.sleep(0.05)

kernel_only = socket.create_connection(("127.0.0.1", port))
kernel_only.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
kernel_only.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
kernel_only.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
kernel_only.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1)
kernel_only.setblocking(False)

writer = socket.create_connection(("127.0.0.1", port))
writer.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1500)
writer.setblocking(False)

results = {}
frozen_at = None


def check_sockets():
    """Poll the two plain sockets without blocking."""
    now = time.monotonic() - frozen_at
    if "kernel keepalive only" not in results:
        try:
            kernel_only.recv(65536)  # drain the server's HELLO; EAGAIN means "alive, nothing to read"
        except BlockingIOError:
            pass
        except OSError as e:
            results["kernel keepalive only"] = f"{errno.errorcode[e.errno]} after {now:.2f} s"
    if "TCP_USER_TIMEOUT 1.5 s" not in results:
        try:
            while True:
                writer.send(b"x" * 65536)
        except BlockingIOError:
            pass  # send buffer full: the frozen peer is not reading
        except OSError as e:
            results["TCP_USER_TIMEOUT 1.5 s"] = f"{errno.errorcode[e.errno]} after {now:.2f} s"


class Watch(Application):
    def peer_ready(self, peer):
        global frozen_at
        os.kill(child.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        print(f"server process {child.pid} frozen with SIGSTOP; watching for {WATCH:g} s")
        LoopingCall(check_sockets).start(0.05)
        reactor.callLater(WATCH, finish)

    def peer_lost(self, peer, record):
        if frozen_at is not None:
            elapsed = time.monotonic() - frozen_at
            results["application heartbeat"] = f"{record.reason} after {elapsed:.2f} s: {record.detail}"


config = NodeConfig(
    role="client",
    connect=(f"tcp:127.0.0.1:{port}",),
    node_id="watcher",
    keepalive=KeepaliveSettings.parse("0.3,0.2,2"),
    user_timeout=0,
)
topology = ClientServer()
node = Node(config, topology, Watch(), reactor)
node.build()


def finish():
    for name in ("kernel keepalive only", "application heartbeat", "TCP_USER_TIMEOUT 1.5 s"):
        print(f"  {name:22} {results.get(name, f'nothing detected in {WATCH:g} s: the peer kernel answers')}")
    child.kill()
    child.wait()
    node.stopService()
    reactor.stop()


node.startService()
reactor.callLater(9, reactor.stop)
reactor.run()
