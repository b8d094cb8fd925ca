"""
``netmodels-pubsub``: an example topology plugin for netmodels, shipped as its own package.

Topology ``pubsub``: a broker, and clients that subscribe to topics and publish
on them; the broker forwards each publication to that topic's subscribers.

- :mod:`netmodels_pubsub.wire`: the messages, sans-IO.
- :mod:`netmodels_pubsub.state`: what a broker and a client remember, sans-IO.
- :mod:`netmodels_pubsub.options`: ``--subscribe``, ``--publish`` and their settings.
- :mod:`netmodels_pubsub.topology`: the Twisted glue, the topology plugin's class.
- :mod:`netmodels_pubsub.app`: ``--app pubsub-log``, which logs what a client receives.

The plugins themselves are in ``netmodels/plugins/pubsub.py``, installed next to
netmodels' own.
"""

__version__ = "0.1.0"
