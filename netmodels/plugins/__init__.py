"""
Plugin package for netmodels topologies and applications.

Built-in topologies and applications live here and are found with
``getPlugins(ITopology, netmodels.plugins)``, exactly as a third party's are: a
package may ship ``netmodels/plugins/<name>.py`` (without ``__init__.py``), or a
folder named ``netmodels/plugins`` may sit on ``PYTHONPATH``.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
