"""
Connection models: many clients to one server, and peers connected directly.

Runs, in one process on loopback, a netmodels client-server group (one server,
three clients: many-to-one) next to a peer-to-peer mesh of three nodes that
each listen *and* dial (a small topology defined below), and prints who is
connected to whom.

Run: python docs/examples/connection_models.py   (under 1 s)
"""

import socket

from twisted.internet import reactor

from netmodels.runtime.application import Application
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.topology import Topology
from netmodels.topologies.client_server import ClientServer


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


class Mesh(Topology):
    """Every node is a peer: it listens, and dials the peers given with --connect."""

    name = "mesh"
    roles = ("peer",)

    def check_peer(self, our_role, peer_role):
        return None if peer_role == "peer" else f"a mesh peer talks to peers, not to a {peer_role}"

    def build(self, node):
        for description in node.config.listen:
            node.listen(description)
        for description in node.config.connect:
            node.connect(description)


# Many-to-one: the built-in client-server topology.
client_server = ClientServer()
port = free_port()
server_config = NodeConfig(role="server", listen=(f"tcp:{port}:interface=127.0.0.1",), node_id="server")
many_to_one = [Node(server_config, client_server, Application(), reactor)]
for name in ("client-1", "client-2", "client-3"):
    config = NodeConfig(role="client", connect=(f"tcp:127.0.0.1:{port}",), node_id=name)
    many_to_one.append(Node(config, client_server, Application(), reactor))
for node in many_to_one:
    client_server.build(node)

# Peer-to-peer: each node listens, and dials the ones before it, so each pair has one connection.
mesh = Mesh()
ports = [free_port() for _ in range(3)]
peer_to_peer = []
for index, name in enumerate(("peer-a", "peer-b", "peer-c")):
    config = NodeConfig(
        topology="mesh",
        role="peer",
        listen=(f"tcp:{ports[index]}:interface=127.0.0.1",),
        connect=tuple(f"tcp:127.0.0.1:{p}" for p in ports[:index]),
        node_id=name,
    )
    peer_to_peer.append(Node(config, mesh, Application(), reactor))
for node in peer_to_peer:
    mesh.build(node)

everyone = many_to_one + peer_to_peer
handshakes = []


def show():
    for title, nodes in (("many-to-one (client-server)", many_to_one), ("peer-to-peer mesh", peer_to_peer)):
        print(title)
        for node in nodes:
            links = [
                f"{record.direction} {'to' if record.direction == 'outbound' else 'from'} {record.peer_id}"
                for record in sorted(node.manager.records(), key=lambda r: r.id)
                if record.state == "open"
            ]
            print(f"  {node.config.node_id:8} ({node.config.role}): {', '.join(links)}")
    for node in everyone:
        node.stopService()
    reactor.callLater(0.1, reactor.stop)


def ready(event, connection):
    # Each handshake completes at both ends: 3 connections x 2 ends in each group.
    if event == "ready":
        handshakes.append(connection)
        if len(handshakes) == 12:
            reactor.callLater(0.05, show)


for node in everyone:
    node.manager.subscribe(ready)
    node.startService()
reactor.callLater(5, reactor.stop)
reactor.run()
