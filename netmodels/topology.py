"""
Topologies: who listens, who dials, and which peers may talk to each other.

:class:`Topology` is a convenient base for :class:`~netmodels.interfaces.ITopology`
plugins; :class:`ClientServer` is the built-in client-server topology.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from twisted.plugin import IPlugin
from zope.interface import implementer

from netmodels.interfaces import ITopology

if TYPE_CHECKING:
    from netmodels.node import Node, NodeConfig

__all__ = ["ClientServer", "Topology"]


@implementer(ITopology, IPlugin)
class Topology:
    """Defaults for a topology plugin: subclass, set the names, override :meth:`build`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...]] = ()
    transports: ClassVar[tuple[str, ...]] = ("tcp", "udp")
    default_app: ClassVar[str] = "echo"

    def validate(self, config: NodeConfig) -> None:
        if config.role not in self.roles:
            raise ValueError(
                f"--role: topology {self.name} has roles {', '.join(self.roles)}, not {config.role!r}"
            )
        if config.transport not in self.transports:
            raise ValueError(
                f"--transport: topology {self.name} runs on {', '.join(self.transports)}, "
                f"not {config.transport!r}"
            )

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        return None

    def build(self, node: Node) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<topology {self.name!r}>"


class ClientServer(Topology):
    """
    One server, clients that dial it. Clients send requests (with correlation
    ids, many in flight) and messages; the server answers.
    """

    name = "client-server"
    description = "servers listen, clients dial and send requests (request/response, echo)"
    roles = ("server", "client")

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        if config.role == "server" and not config.listen:
            raise ValueError("--listen: the server role needs at least one endpoint to listen on")
        if config.role == "client" and not config.connect:
            raise ValueError("--connect: the client role needs at least one endpoint to dial")

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        expected = "client" if our_role == "server" else "server"
        if peer_role != expected:
            return f"a {our_role} talks to a {expected}, and the peer is a {peer_role}"
        return None

    def build(self, node: Node) -> None:
        for description in node.config.listen:
            node.listen(description)
        if node.config.role == "client":
            for description in node.config.connect:
                node.connect(description)
