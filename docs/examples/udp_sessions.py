"""
Sessions over UDP: the same application, keepalive and close reasons as TCP.

Runs an echo server and two clients in one process on the loopback interface,
over UDP: one client on the unreliable channel (a datagram per message, as
games want), one on the reliable channel (which it asks for in its HELLO, so
the server's answers take it too). Shows a request/response, the
datagram limit of the unreliable channel, then each way a UDP session ends
and what both sides recorded.

Run: python docs/examples/udp_sessions.py   (about 1 s)
"""

from twisted.internet import defer, task

from netmodels.daemon.tap import build_node
from netmodels.runtime.node import NodeConfig
from netmodels.runtime.session import MessageTooLarge


def config(role, node_id, **settings):
    return NodeConfig(role=role, transport="udp", app="echo", interval=0, node_id=node_id, **settings)


def reasons(node):
    return [(r["reason"], r["initiator"], r["errno"]) for r in node.status()["connections"] if r["reason"]]


@defer.inlineCallbacks
def main(reactor):
    server = build_node(config("server", "server", listen=("udp:0:interface=127.0.0.1",)), reactor)
    server.startService()
    port = server.listeners[0].port.getHost().port
    print(f"server listening on udp:127.0.0.1:{port}")

    address = f"udp:127.0.0.1:{port}"
    games = build_node(config("client", "games", connect=(address,)), reactor)
    chat = build_node(config("client", "chat", connect=(address,), reliable=True), reactor)
    for node in (games, chat):
        node.startService()
    while len(server.peers()) < 2:
        yield task.deferLater(reactor, 0.01, lambda: None)

    [unreliable] = games.peers()
    [reliable] = chat.peers()
    answer = yield unreliable.request(b"hello over udp")
    print(f"request/response on the unreliable channel: {answer!r}")
    try:
        unreliable.send(b"x" * 5000)
    except MessageTooLarge as e:
        print(f"unreliable send of 5000 bytes: MessageTooLarge: {e}")
    answer = yield reliable.request(b"hello, reliably")
    print(f"request/response on the reliable channel: {answer!r}")
    # Asked for by either side, the reliable channel serves both: the echo
    # server sends these 5000 bytes back on it too.
    reliable.send(b"y" * 5000)
    print("reliable send of 5000 bytes: accepted (the stream carries it in 5 segments)")

    unreliable.close()  # BYE, then a reliable FIN
    reliable.reset()  # a RESET datagram
    yield task.deferLater(reactor, 0.1, lambda: None)
    print("recorded by the clients:", reasons(games), reasons(chat))
    print("recorded by the server: ", sorted(reasons(server)))
    stats = server.status()["datagram"]["listeners"]
    [counters] = stats.values()
    print(
        "listener counters:",
        {key: counters[key] for key in ("cookies_sent", "sessions_opened", "malformed", "forged")},
    )
    for node in (games, chat, server):
        yield node.stopService()


task.react(main)
