"""
Applications: the user's code, as a small class.

Subclass :class:`Application` and override what you need::

    class Shout(Application):
        def request_received(self, peer, payload):
            return payload.upper()

Then make it a plugin (see ``docs/writing-apps.rst``) and run it with
``twistd -n netmodels --app shout``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.plugin import IPlugin
from zope.interface import implementer, provider

from netmodels.runtime.interfaces import IApplication, IApplicationFactory, IPeer

if TYPE_CHECKING:
    from netmodels.core.connection import ConnectionRecord
    from netmodels.runtime.node import Node, NodeConfig

__all__ = ["Application", "application_plugin"]


@implementer(IApplication)
class Application:
    """No-op defaults for every :class:`~netmodels.runtime.interfaces.IApplication` callback."""

    node: Node | None = None
    _repeating: list[LoopingCall] | None = None
    #: Over UDP, send application data on the reliable channel unless
    #: ``--delivery`` says otherwise (games want unreliable, chat reliable).
    reliable: bool = False

    def start(self, node: Node) -> None:
        self.node = node

    def stop(self) -> None:
        """Stops what :meth:`repeat` started; call it from an override."""
        for loop in self._repeating or ():
            if loop.running:
                loop.stop()
        self._repeating = None

    def repeat(self, interval: float, function: Callable[[], object]) -> None:
        """
        Call ``function()`` every ``interval`` seconds on the node's clock
        (the first call after one interval), until :meth:`stop`. Call it from
        :meth:`start`; an interval of 0 or less does nothing.
        """
        if interval <= 0 or self.node is None:
            return
        loop = LoopingCall(function)
        loop.clock = self.node.clock
        loop.start(interval, now=False)
        if self._repeating is None:
            self._repeating = []
        self._repeating.append(loop)

    def peer_ready(self, peer: IPeer) -> None:
        pass

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        pass

    def request_received(self, peer: IPeer, payload: bytes) -> bytes | Deferred[bytes]:
        raise NotImplementedError(f"{type(self).__name__} does not answer requests")

    def peer_lost(self, peer: IPeer, record: ConnectionRecord) -> None:
        pass


class _ApplicationPlugin:
    def __init__(self, name: str, description: str, make: Any, topologies: tuple[str, ...]) -> None:
        self.name = name
        self.description = description
        self.topologies = topologies
        self._make = make

    def __call__(self, config: NodeConfig) -> IApplication:
        application: IApplication = self._make(config)
        return application

    def __repr__(self) -> str:
        return f"<application plugin {self.name!r}>"


def application_plugin(name: str, description: str, make: Any, topologies: tuple[str, ...] = ()) -> Any:
    """
    Declare an application plugin: ``make(config)`` returns the application;
    ``topologies`` names the topologies it runs on (empty: any). Assign the
    result to a module-level name in a ``netmodels/plugins/`` module.
    """
    plugin = _ApplicationPlugin(name, description, make, topologies)
    return provider(IPlugin, IApplicationFactory)(plugin)
