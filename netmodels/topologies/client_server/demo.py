"""
``twistd -n netmodels --demo`` (client-server): a server and three clients in one process.

Two clients send an echo request every second. The third ends its connection
every few seconds, alternately with FIN and with RST, and reconnects by the
close-reason policy, so the status page shows each close and why it happened.
"""

from __future__ import annotations

import itertools
import re

import attrs

from netmodels.runtime.node import Node, NodeConfig
from netmodels.topologies.client_server.topology import EchoApplication

__all__ = ["demo_clients"]

#: Seconds between the flaky client's deliberate closes.
FLAKY_PERIOD = 5.0


def _dial_string(listen: str) -> str:
    match = re.match(r"^tcp6?:(?:port=)?(\d+)(?::interface=(.+))?$", listen)
    if match is None:
        raise ValueError(f"--demo needs a tcp:PORT listen endpoint, not {listen!r}")
    host = match[2] or "127.0.0.1"
    if ":" in host:
        host = host.replace(":", r"\:")
    return f"tcp:{host}:{match[1]}"


class FlakyClient(EchoApplication):
    """An echo client that ends its connection on purpose: FIN, then RST, in turn."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        self._resets = itertools.cycle([False, True])

    def start(self, node: Node) -> None:
        super().start(node)
        self.repeat(FLAKY_PERIOD, self._misbehave)

    def _misbehave(self) -> None:
        assert self.node is not None
        for peer in self.node.peers():
            if next(self._resets):
                peer.reset()
            else:
                peer.close()


def demo_clients(server_node: Node) -> list[Node]:
    """The demo's client nodes, dialling the server node's first listen endpoint."""
    server = server_node.config
    topology = server_node.topology
    dial = _dial_string(server.listen[0])
    nodes = []
    for name, application_class in (
        ("steady-1", EchoApplication),
        ("steady-2", EchoApplication),
        ("flaky", FlakyClient),
    ):
        config = attrs.evolve(server, role="client", listen=(), connect=(dial,), node_id=name, status=None)
        node = Node(config, topology, application_class(config), server_node.reactor)
        node.build()
        nodes.append(node)
    return nodes
