"""
Application keepalive for any Twisted protocol: netmodels.keepalive.KeepaliveMixin.

A line-based client and server on loopback. The client mixes in
KeepaliveMixin with --keepalive 0.2,0.1,3 (dead within 0.5 s): after 0.2 s of
silence it sends "PING n", and any line from the server counts as an answer.
After a while the server's application stops answering (it stays connected,
as a deadlocked process would): the client declares it dead within the bound
and aborts the connection with RST. The server runs under netmodels'
connection manager, which records how the connection ended.

Run: python docs/examples/keepalive_mixin.py   (about 1.5 s)
"""

import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from netmodels.core.keepalive import KeepaliveSettings
from netmodels.runtime.keepalive import KeepaliveMixin
from netmodels.runtime.manager import ConnectionManager

START = time.monotonic()
SETTINGS = KeepaliveSettings.parse("0.2,0.1,3")


def log(who, text):
    print(f"  {time.monotonic() - START:5.2f} s  {who:6} {text}")


class Client(LineReceiver, KeepaliveMixin):
    delimiter = b"\n"
    clock = reactor  # any IReactorTime; tests pass a twisted.internet.task.Clock

    def connectionMade(self):
        self.sequence = 0
        self.setKeepalive(SETTINGS)  # 1. start keepalive
        log("client", f"connected; {SETTINGS.describe()}")

    def dataReceived(self, data):
        self.resetKeepalive()  # 2. anything received proves the peer alive (cheap: stores the time)
        super().dataReceived(data)

    def lineReceived(self, line):
        log("client", f"got {line.decode()!r}")

    def keepaliveProbe(self):  # 3. send a probe the peer answers
        self.sequence += 1
        log("client", f"idle: PING {self.sequence}")
        self.sendLine(b"PING %d" % self.sequence)

    def keepaliveTimeout(self):  # 4. the peer is dead; the default aborts (RST)
        log("client", "no answer to 3 probes: the peer is dead; aborting (RST)")
        super().keepaliveTimeout()

    def connectionLost(self, reason):
        self.setKeepalive(None)  # 5. stop keepalive
        log("client", f"connection lost: {reason.type.__name__}")


class Server(LineReceiver):
    delimiter = b"\n"
    frozen = False

    def lineReceived(self, line):
        if self.frozen:
            log("server", f"(frozen: ignores {line.decode()!r})")
            return
        log("server", f"answers {line.decode()!r}")
        self.sendLine(line.replace(b"PING", b"PONG"))


def freeze():
    log("server", "the application freezes (the connection stays open)")
    for connection in manager.live.values():
        connection.wrappedProtocol.frozen = True


def finish():
    [record] = manager.history
    print(f"the server's manager recorded: {record.reason} ({record.initiator}, {record.errno})")
    reactor.stop()


manager = ConnectionManager(reactor, name="server")
ports = []
TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
    manager.wrap_factory(Factory.forProtocol(Server))
).addCallback(ports.append)
TCP4ClientEndpoint(reactor, "127.0.0.1", ports[0].getHost().port).connect(Factory.forProtocol(Client))
reactor.callLater(0.55, freeze)
manager.subscribe(lambda event, subject: event == "closed" and reactor.callLater(0.05, finish))
reactor.callLater(8, reactor.stop)
reactor.run()
