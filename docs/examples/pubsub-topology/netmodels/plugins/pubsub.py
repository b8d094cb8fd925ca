"""
The netmodels plugins of the ``netmodels-pubsub`` package: ``--topology pubsub``
and ``--app pubsub-log``.

This file is installed as ``netmodels/plugins/pubsub.py``, next to netmodels'
own plugins, and there is no ``__init__.py`` beside it: netmodels finds every
``netmodels/plugins`` folder on ``sys.path``. Its imports stay light, because
every ``twistd netmodels`` run imports it.
"""

from __future__ import annotations

from netmodels_pubsub.app import PubSubLog
from netmodels_pubsub.topology import PubSubTopology

from netmodels.runtime.application import application_plugin

# Module-level objects: --topology and --app pick them by name.
pubsub = PubSubTopology()
pubsub_log = application_plugin(
    "pubsub-log",
    "logs the publications a pubsub client receives (example plugin)",
    PubSubLog,
)
