"""
The kernel's keepalive settings: system-wide defaults, and per socket.

Reads Linux's system-wide defaults (net.ipv4.tcp_keepalive_*), then opens a
loopback connection with Twisted and applies per-socket settings with
netmodels.tcp.apply_kernel_keepalive, the way every netmodels session does,
and reads them back from the socket: SO_KEEPALIVE, TCP_KEEPIDLE,
TCP_KEEPINTVL, TCP_KEEPCNT (whole seconds: fractions round up) and
TCP_USER_TIMEOUT (milliseconds; netmodels' default is the keepalive bound).

Linux only. Run: python docs/examples/kernel_keepalive.py   (under 1 s)
"""

import socket

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from netmodels.core.keepalive import KeepaliveSettings
from netmodels.transports.tcp import apply_kernel_keepalive

print("system-wide defaults (apply to sockets that turn SO_KEEPALIVE on and set nothing else):")
for name in ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes"):
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            print(f"  net.ipv4.{name:20} = {f.read().strip()}")
    except OSError:
        print(f"  net.ipv4.{name:20} (not readable here)")

settings = KeepaliveSettings.parse("2.5,1,4")


class Show(Protocol):
    def connectionMade(self):
        apply_kernel_keepalive(self.transport, settings, user_timeout=settings.worst_case)
        sock = self.transport.getHandle()
        user_timeout = f"user_timeout={settings.worst_case:g}"
        print(f"per-socket, after apply_kernel_keepalive(--keepalive 2.5,1,4, {user_timeout}):")
        for level, option in (
            (socket.SOL_SOCKET, "SO_KEEPALIVE"),
            (socket.IPPROTO_TCP, "TCP_KEEPIDLE"),
            (socket.IPPROTO_TCP, "TCP_KEEPINTVL"),
            (socket.IPPROTO_TCP, "TCP_KEEPCNT"),
            (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT"),
        ):
            print(f"  {option:16} = {sock.getsockopt(level, getattr(socket, option))}")
        print("  (idle 2.5 s became 3 s: the kernel counts whole seconds; the application's")
        print("   PING/PONG keepalive keeps the exact 2.5 s, and TCP_USER_TIMEOUT is in ms)")
        self.transport.loseConnection()
        reactor.callLater(0.05, reactor.stop)


ports = []
TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol)).addCallback(
    ports.append
)
TCP4ClientEndpoint(reactor, "127.0.0.1", ports[0].getHost().port).connect(Factory.forProtocol(Show))
reactor.callLater(5, reactor.stop)
reactor.run()
