"""
The "port 25" callback model: register once, then the server calls you back.

A client logs in over a control connection (the note's IP2:80), registers a
callback endpoint it listens on (the note's IP1:25) and sends nothing more.
When mail arrives, the server checks that the callback endpoint is alive by
dialling it, and delivers at once. When the callback endpoint has gone away,
the dial is refused and the server falls back to the control connection.

netmodels' callback topology (``--topology callback``, docs/callback.rst) is
this model with the wire protocol, keepalive, close reasons and a durable
outbox; this script shows the bare mechanism with plain Twisted line
protocols and netmodels' connection manager for the dial-back.

Run: python docs/examples/callback_model.py   (about 1 s)
"""

import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from netmodels.runtime.manager import ConnectFailed, ConnectionManager

START = time.monotonic()
USERS = {"alice": "secret"}


def log(who, text):
    print(f"  {time.monotonic() - START:5.2f} s  {who:6} {text}")


class Control(LineReceiver):
    """The server side of a control connection: LOGIN, then REGISTER a callback port."""

    delimiter = b"\n"

    def lineReceived(self, line):
        command, *args = line.decode().split()
        if command == "LOGIN":
            user, password = args
            if USERS.get(user) != password:
                self.sendLine(b"DENIED")
                self.transport.loseConnection()
                return
            self.user = user
            self.sendLine(b"OK")
        elif command == "REGISTER":
            host, port = args[0], int(args[1])
            self.factory.callbacks[self.user] = (host, port, self)
            log("server", f"{self.user} registered callback endpoint ({host}, {port})")
            self.sendLine(b"REGISTERED")


class Deliver(LineReceiver):
    """The server's dial-back: write the mail and hang up (FIN)."""

    delimiter = b"\n"

    def connectionMade(self):
        self.sendLine(self.factory.mail)
        self.transport.loseConnection()


class MailServer:
    def __init__(self):
        self.manager = ConnectionManager(reactor, name="server")
        self.control = Factory.forProtocol(Control)
        self.control.callbacks = {}

    def mail_arrived(self, user, text):
        host, port, control = self.control.callbacks[user]
        log("server", f"mail for {user}: is ({host}, {port}) alive? dialling it")
        deliver = Factory.forProtocol(Deliver)
        deliver.mail = f"MAIL {text}".encode()
        attempt = self.manager.connect(TCP4ClientEndpoint(reactor, host, port), deliver, f"{host}:{port}")

        def delivered(connection):
            log("server", f"alive: delivered over the callback connection {connection.record.id}")

        def failed(failure):
            failure.trap(ConnectFailed)
            record = failure.value.record
            log("server", f"callback endpoint not alive: {record.reason} ({record.errno})")
            log("server", "falling back to the control connection")
            control.sendLine(deliver.mail)

        attempt.addCallbacks(delivered, failed)


class Mailbox(LineReceiver):
    """The client's callback endpoint: it only waits."""

    delimiter = b"\n"

    def lineReceived(self, line):
        log("client", f"callback endpoint received {line.decode()!r}")


class Login(LineReceiver):
    """The client's control connection."""

    delimiter = b"\n"

    def connectionMade(self):
        self.sendLine(b"LOGIN alice secret")

    def lineReceived(self, line):
        if line == b"OK":
            log("client", f"logged in; registering ('127.0.0.1', {self.factory.callback_port})")
            self.sendLine(f"REGISTER 127.0.0.1 {self.factory.callback_port}".encode())
        elif line.startswith(b"MAIL"):
            log("client", f"control connection received {line.decode()!r}")


def main():
    server = MailServer()
    control_port = listen_now(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), server.control)
    mailbox = listen_now(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Factory.forProtocol(Mailbox))
    login = Factory.forProtocol(Login)
    login.callback_port = mailbox.getHost().port
    log("client", f"listening on callback endpoint port {login.callback_port}, sending nothing")
    TCP4ClientEndpoint(reactor, "127.0.0.1", control_port.getHost().port).connect(login)

    reactor.callLater(0.3, server.mail_arrived, "alice", "from bob: lunch at noon?")
    reactor.callLater(0.5, lambda: (log("client", "closes its callback endpoint"), mailbox.stopListening()))
    reactor.callLater(0.7, server.mail_arrived, "alice", "from carol: meeting moved")

    def finish():
        print("the server's connection manager recorded the dial-backs:")
        for record in sorted(server.manager.records(), key=lambda r: r.id):
            print(f"  dial-back {record.id} to {record.peer}: {record.state}, reason {record.reason}")
        reactor.stop()

    reactor.callLater(1.0, finish)


def listen_now(endpoint, factory):
    """Listen synchronously (TCP endpoints listen at once) and return the port."""
    ports = []
    endpoint.listen(factory).addCallback(ports.append)
    return ports[0]


print("the port-25 model: register a callback endpoint, then get called back")
main()
reactor.callLater(8, reactor.stop)
reactor.run()
