"""
The p2p topology as a plugin: its options, how it builds a node's mesh, ``--nodes N``, the demo application.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from netmodels.runtime.application import Application
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.topology import Topology
from netmodels.topologies.p2p.addresses import dialable_endpoint
from netmodels.topologies.p2p.mesh import Mesh
from netmodels.topologies.p2p.messages import MESSAGE_TYPES
from netmodels.topologies.p2p.options import P2POptions, P2PSettings
from netmodels.topologies.p2p.swim_membership import SwimSetup

__all__ = ["BroadcastApplication", "PeerToPeer", "first_endpoint", "mesh_of"]

_log = Logger(namespace="netmodels.p2p")

#: Listeners with a port number, which ``--swim auto`` can sit beside.
_PORT_SCHEMES = frozenset({"tcp", "tcp6", "udp", "udp6", "ssl", "tls", "mtls"})


def first_endpoint(node: Node) -> str | None:
    """A dialable endpoint of ``node``'s first listener, once it listens."""
    listeners = [listener for listener in node.listeners if listener.port is not None]
    return dialable_endpoint(listeners[0]).replace("host=*", "host=127.0.0.1") if listeners else None


class PeerToPeer(Topology):
    """Every node listens and dials; see the module docstring."""

    name = "p2p"
    description = "every node listens and dials; peer exchange, membership, broadcast"
    roles = ("peer",)
    default_app = "broadcast"
    options = P2POptions
    message_types = MESSAGE_TYPES
    data_message_types = frozenset({"BROADCAST", "OVERLAY"})

    def settings(self, options: Mapping[str, Any]) -> P2PSettings:
        return P2PSettings.from_options(options)

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        if not config.listen:
            raise ValueError("--listen: a p2p node needs an endpoint to listen on (tcp:0 for any port)")
        settings = config.settings if config.settings is not None else P2PSettings()
        if settings.swim == "auto" and config.listen[0].partition(":")[0] not in _PORT_SCHEMES:
            raise ValueError(
                f"--swim: auto puts SWIM beside the first --listen, which has no port "
                f"({config.listen[0]!r}); "
                "give --swim udp:PORT or --swim off"
            )

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        return None if peer_role == "peer" else f"a p2p node talks to peers, and the peer is a {peer_role}"

    def build(self, node: Node) -> Mesh:
        for description in node.config.listen:
            node.listen(description)
        settings = node.settings
        swim = None
        if settings.swim is not None:
            port, interface = (None, "") if settings.swim == "auto" else settings.swim
            swim = SwimSetup(port, interface, list(settings.swim_seeds), settings.swim_advertise)
        mesh = Mesh(node, settings.max_peers, node.config.connect, swim=swim, high_water=settings.high_water)
        node.on_start(mesh.start)
        node.on_stop(mesh.stop)
        return mesh

    def more_nodes(self, first: Node, make_node: Callable[[NodeConfig], Node]) -> list[Node]:
        """``--nodes N``: N - 1 more nodes on ephemeral loopback ports, bootstrapping from ``first``."""
        nodes = []
        for index in range(1, first.settings.nodes):
            config = attrs.evolve(
                first.config,
                node_id=f"{first.config.node_id}-{index}",
                # Each node its own key: --identity is the first node's.
                identity_key=None,
                listen=(f"{first.config.transport}:0:interface=127.0.0.1",),
                connect=(),
                status=None,
            )
            node = make_node(config)
            # The first node's port is known only once it listens: ask then.
            mesh = mesh_of(node)
            mesh.bootstrap.append(lambda: first_endpoint(first))
            if mesh.swim is not None:
                # Its own SWIM port on loopback, joining the first node's.
                mesh.swim.setup = attrs.evolve(
                    mesh.swim.setup,
                    port=0,
                    interface="127.0.0.1",
                    seeds=[lambda: mesh_of(first).swim_address],
                    advertise=None,
                )
            nodes.append(node)
        return nodes


def mesh_of(node: Node) -> Mesh:
    """The p2p engine of ``node``, a node of the p2p topology."""
    mesh = node.topology_state
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{node!r} is not a p2p node")
    return mesh


class BroadcastApplication(Application):
    """
    The p2p demo: every ``--interval`` seconds a node floods a line to the
    mesh, and it logs every line it receives, with its origin.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.interval = config.interval
        self.received: list[tuple[str, bytes]] = []
        self._count = 0

    def start(self, node: Node) -> None:
        super().start(node)
        self.repeat(self.interval, self._say)

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        self.received.append((peer.node_id, payload))
        node_id = self.node.config.node_id if self.node is not None else "?"
        _log.info(
            "[{node}] from {origin}: {text}",
            node=node_id,
            origin=peer.node_id,
            text=payload.decode("utf-8", "replace"),
        )

    def _say(self) -> None:
        mesh = None if self.node is None else self.node.topology_state
        if not isinstance(mesh, Mesh):
            return
        self._count += 1
        mesh.broadcast(f"hello #{self._count} from {mesh.node_id}".encode())
