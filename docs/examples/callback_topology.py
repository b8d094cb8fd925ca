"""
The callback topology end to end, in one process on loopback.

A server and a client ("alice") run as two netmodels nodes. Alice
authenticates with the shared token and registers her callback port. Then:

1. mail arrives while alice is alive: the server dials her callback port and
   delivers there;
2. alice closes her callback port: the dial is refused, the server records
   why and delivers on the control connection instead (the fallback);
3. alice goes away: mail waits in the server's outbox; when she comes back
   it arrives, in order, once;
4. mallory presents a wrong token: rejected before any application sees her.

Run: python docs/examples/callback_topology.py   (about 1 s)
"""

import time

from twisted.internet import defer, reactor, task

from netmodels.runtime.node import Node, NodeConfig
from netmodels.topologies.callback.inbox import InboxApplication
from netmodels.topologies.callback.options import CallbackSettings
from netmodels.topologies.callback.topology import Callback, callback_of

START = time.monotonic()
TOKEN = "correct horse"
LOOPBACK_ANY = "tcp:0:interface=127.0.0.1"


def log(text):
    print(f"  {time.monotonic() - START:5.2f} s  {text}")


class Inbox(InboxApplication):
    def message_received(self, peer, payload):
        super().message_received(peer, payload)
        path = "callback" if peer.record.direction == "inbound" else "fallback"
        log(f"alice's app got {payload.decode()!r} via {path}")


def node(role, node_id, app=None, callback=None, **config):
    settings = CallbackSettings(token=TOKEN, callback=callback)
    config = NodeConfig(topology="callback", role=role, node_id=node_id, settings=settings, **config)
    result = Node(config, Callback(), app or InboxApplication(config), reactor)
    result.build()
    return result


def wait_for(server, wanted):
    done = defer.Deferred()

    def observe(event, client_id):
        if (event, client_id) == wanted and not done.called:
            server.observers.remove(observe)
            reactor.callLater(0, done.callback, None)

    server.observers.append(observe)
    return done


def show(server, client_id):
    entry = server.status()["clients"][client_id]
    last = entry["last_callback"] or {}
    log(
        f"status: alive={entry['alive']} outbox_depth={entry['outbox_depth']} "
        f"last_callback={last.get('result')} ({last.get('errno')}) delivered={entry['delivered']}"
    )


@defer.inlineCallbacks
def main():
    hub = node("server", "mailhub", listen=(LOOPBACK_ANY,))
    hub.startService()
    server = callback_of(hub)
    address = f"tcp:127.0.0.1:{hub.listeners[0].port.getHost().port}"

    def start_alice():
        config = NodeConfig(topology="callback", role="client", node_id="alice")
        alice = node("client", "alice", Inbox(config), connect=(address,), callback=LOOPBACK_ANY)
        alice.startService()
        return alice

    registered = wait_for(server, ("registered", "alice"))
    alice = start_alice()
    yield registered
    log(f"alice registered her callback endpoint: {server.status()['clients']['alice']['callback']}")

    acked = wait_for(server, ("acked", "alice"))
    yield server.deliver("alice", b"mail 1")
    yield acked
    show(server, "alice")

    log("alice closes her callback port")
    yield alice.listeners[0].stopService()
    for connection in list(alice.manager.live.values()):
        if connection.record.direction == "inbound":
            connection.wrappedProtocol.close()
    yield task.deferLater(reactor, 0.05, lambda: None)
    acked = wait_for(server, ("acked", "alice"))
    yield server.deliver("alice", b"mail 2")
    yield acked
    show(server, "alice")

    log("alice stops; two messages arrive for her")
    offline = wait_for(server, ("offline", "alice"))
    yield alice.stopService()
    yield offline
    for text in (b"mail 3", b"mail 4"):
        message_id = yield server.deliver("alice", text)
        log(f"accepted {text.decode()!r} as message {message_id}")
    show(server, "alice")

    log("alice comes back")
    acked = wait_for(server, ("acked", "alice"))
    alice = start_alice()
    yield acked
    yield task.deferLater(reactor, 0.05, lambda: None)
    show(server, "alice")

    log("mallory tries a wrong token")
    mallory = NodeConfig(
        topology="callback",
        role="client",
        node_id="mallory",
        settings=CallbackSettings(token="guess"),
        connect=(address,),
    )
    intruder = Node(mallory, Callback(), InboxApplication(mallory), reactor)
    intruder.build()
    closed = defer.Deferred()
    hub.manager.subscribe(
        lambda event, subject: event == "closed" and not closed.called and closed.callback(subject)
    )
    intruder.startService()
    connection = yield closed
    record = connection.record
    log(f"server closed mallory's connection: reason={record.reason} fatal={record.fatal} ({record.detail})")

    yield intruder.stopService()
    yield alice.stopService()
    yield hub.stopService()


def run():
    main().addErrback(lambda failure: failure.printTraceback()).addBoth(lambda _: reactor.stop())


if __name__ == "__main__":
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)
    reactor.callWhenRunning(run)
    reactor.run()
