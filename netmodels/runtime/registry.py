"""Finding topology and application plugins by name."""

from __future__ import annotations

from twisted.plugin import getPlugins

import netmodels.plugins
from netmodels.core.frames import register_message_types
from netmodels.runtime.interfaces import IApplicationFactory, ITopology

__all__ = ["applications", "topologies"]


def topologies() -> dict[str, ITopology]:
    """
    Installed topologies by name, built-in and third-party alike, with their
    message types registered; raises ``MessageTypeConflict`` if two claim one.
    """
    found = {plugin.name: plugin for plugin in getPlugins(ITopology, netmodels.plugins)}
    for name, topology in sorted(found.items()):
        register_message_types(f"topology {name}", topology.message_types)
    return found


def applications() -> dict[str, IApplicationFactory]:
    """Installed applications by name."""
    return {plugin.name: plugin for plugin in getPlugins(IApplicationFactory, netmodels.plugins)}
