"""
Topologies: who listens, who dials, and which peers may talk to each other.

:class:`Topology` is a convenient base for
:class:`~netmodels.runtime.interfaces.ITopology` plugins: subclass it, set the
names, and override :meth:`~Topology.build`; add :attr:`~Topology.options`,
:meth:`~Topology.settings` and :attr:`~Topology.message_types` when the
topology has options and messages of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from netmodels.runtime.interfaces import ITopology

if TYPE_CHECKING:
    from netmodels.runtime.node import Node, NodeConfig

__all__ = ["ServerAndClients", "Topology", "default_settings"]


@implementer(ITopology, IPlugin)
class Topology:
    """Defaults for a topology plugin: subclass, set the names, override :meth:`build`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...]] = ()
    transports: ClassVar[tuple[str, ...]] = ("tcp", "udp")
    default_app: ClassVar[str] = "echo"
    #: The topology's own command-line options (none by default).
    options: ClassVar[type[usage.Options] | None] = None
    #: The topology's own message types, by name (none by default).
    message_types: ClassVar[Mapping[str, int]] = {}
    #: Which of them carry application messages (sized and sent like DATA).
    data_message_types: ClassVar[frozenset[str]] = frozenset()

    def settings(self, options: Mapping[str, Any]) -> object:
        """No options, no settings."""
        return None

    def hello_extra(self, settings: object) -> Mapping[str, Any]:
        return {}

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

    def build(self, node: Node) -> object:
        raise NotImplementedError

    def more_nodes(self, first: Node, make_node: Callable[[NodeConfig], Node]) -> list[Node]:
        return []

    def __repr__(self) -> str:
        return f"<topology {self.name!r}>"


class ServerAndClients(Topology):
    """
    A base for topologies of servers and the clients that dial them: a
    server talks only to clients, a client only to servers.
    """

    roles: ClassVar[tuple[str, ...]] = ("server", "client")
    #: How the refusal names the roles: "callback " makes "a callback server talks to ...".
    role_prefix: ClassVar[str] = ""

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        expected = "client" if our_role == "server" else "server"
        if peer_role != expected:
            return f"a {self.role_prefix}{our_role} talks to a {expected}, and the peer is a {peer_role}"
        return None


def default_settings(topology: ITopology) -> object:
    """``topology``'s settings when no command line gave any: those of its options' defaults."""
    options = topology.options() if topology.options is not None else {}
    return topology.settings(dict(options))
