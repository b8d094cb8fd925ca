"""
FIN is the orderly close, RST the abortive one, and they look different.

First with plain sockets: what the peer sees after a normal ``close()`` (FIN),
after ``close()`` with ``SO_LINGER {1, 0}`` (RST), after closing with unread
data (the kernel sends RST), when writing to a socket that no longer exists
(RST back), and when connecting to a port nobody listens on (RST to the SYN).

Then the same two closes through netmodels: a client node closes its
connection with ``close()`` (BYE, then FIN), reconnects, and ends the next one
with ``reset()`` (RST). Both nodes record why each connection ended.

Run: python docs/examples/fin_vs_rst.py
"""

import errno
import socket
import struct
import time

from twisted.internet import reactor

from netmodels.runtime.application import Application
from netmodels.runtime.node import Node, NodeConfig
from netmodels.topologies.client_server import ClientServer


def pair():
    """A connected (client, server) pair of TCP sockets on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def peer_reads(sock):
    try:
        data = sock.recv(100)
    except OSError as e:
        return f"error {errno.errorcode[e.errno]}"
    return "EOF (b'')" if data == b"" else f"{data!r}"


print("1. close(): the kernel sends FIN after any data still queued")
a, b = pair()
a.sendall(b"last words")
a.close()
print("   peer reads:", peer_reads(b), "then", peer_reads(b))
b.close()

print("2. FIN closes one direction only: shutdown(SHUT_WR), and the other way still works")
a, b = pair()
a.shutdown(socket.SHUT_WR)
print("   peer reads:", peer_reads(b))
b.sendall(b"reply after your FIN")
print("   we still read:", peer_reads(a))
a.close()
b.close()

print("3. close() with SO_LINGER {on, 0}: the kernel sends RST at once (abortive close)")
a, b = pair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
a.close()
print("   peer reads:", peer_reads(b))
b.close()

print("4. close() with unread data in the receive queue: the kernel sends RST, not FIN")
a, b = pair()
b.sendall(b"never read")
time.sleep(0.05)
a.close()
print("   peer reads:", peer_reads(b))
b.close()

print("5. data for a socket that no longer exists: the peer's kernel answers with RST")
a, b = pair()
a.close()
print("   peer reads:", peer_reads(b), "(the FIN), writes anyway, and the answer is RST")
b.sendall(b"anyone there?")
time.sleep(0.05)
try:
    b.sendall(b"hello?")
    print("   second write: accepted?")
except OSError as e:
    print("   second write: error", errno.errorcode[e.errno])
b.close()

print("6. SYN to a port with no listener: answered by RST, connect() fails")
with socket.create_server(("127.0.0.1", 0)) as closed:
    port = closed.getsockname()[1]
try:
    socket.create_connection(("127.0.0.1", port), timeout=2)
except OSError as e:
    print("   connect():", errno.errorcode[e.errno])

# --- the same through netmodels ---------------------------------------------

topology = ClientServer()
server = Node(
    NodeConfig(role="server", listen=("tcp:0:interface=127.0.0.1",), node_id="server"),
    topology,
    Application(),
    reactor,
)
server.build()
server.startService()
port = server.listeners[0].port.getHost().port
client_config = NodeConfig(role="client", connect=(f"tcp:127.0.0.1:{port}",), node_id="client")


class CloseThenReset(Application):
    """Ends its first connection with close() (FIN), its second with reset() (RST)."""

    def __init__(self):
        self.ready = 0

    def peer_ready(self, peer):
        self.ready += 1
        action = {1: "close", 2: "reset"}.get(self.ready)
        if action:
            reactor.callLater(0.1, getattr(peer, action))


client = Node(client_config, topology, CloseThenReset(), reactor)
client.build()


def closed(event, connection):
    if event == "closed" and server.manager.counters["reset"]:
        reactor.callLater(0.1, finish)


def finish():
    print()
    print("through netmodels: the client called close(), reconnected, then called reset()")
    for node in (client, server):
        for record in sorted(node.manager.history, key=lambda r: r.id):
            errno_text = f", {record.errno}" if record.errno else ""
            print(
                f"   {node.config.node_id:6} connection {record.id}: "
                f"{record.reason} ({record.initiator}{errno_text})"
            )
    client.stopService()
    server.stopService()
    reactor.stop()


server.manager.subscribe(closed)
client.startService()
reactor.callLater(8, reactor.stop)
reactor.run()
