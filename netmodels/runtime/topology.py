"""
Topologies: who listens, who dials, and which peers may talk to each other.

:class:`Topology` is a convenient base for :class:`~netmodels.runtime.interfaces.ITopology`
plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from twisted.plugin import IPlugin
from zope.interface import implementer

from netmodels.runtime.interfaces import ITopology

if TYPE_CHECKING:
    from netmodels.runtime.node import Node, NodeConfig

__all__ = ["Topology"]


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
