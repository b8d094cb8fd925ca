"""Finding topology and application plugins by name."""

from __future__ import annotations

from twisted.plugin import getPlugins

import netmodels.plugins
from netmodels.runtime.interfaces import IApplicationFactory, ITopology

__all__ = ["applications", "topologies"]


def topologies() -> dict[str, ITopology]:
    """Installed topologies by name, built-in and third-party alike."""
    return {plugin.name: plugin for plugin in getPlugins(ITopology, netmodels.plugins)}


def applications() -> dict[str, IApplicationFactory]:
    """Installed applications by name."""
    return {plugin.name: plugin for plugin in getPlugins(IApplicationFactory, netmodels.plugins)}
