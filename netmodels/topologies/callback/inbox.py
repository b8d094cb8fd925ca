"""
The ``inbox`` application: a callback client logs every message delivered to it.
"""

from __future__ import annotations

import collections

from twisted.logger import Logger

from netmodels.core.connection import Direction
from netmodels.runtime.application import Application
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.node import NodeConfig
from netmodels.topologies.callback.common import CALLBACK, FALLBACK

__all__ = ["RECENT", "InboxApplication"]


_inbox_log = Logger(namespace="netmodels.app.inbox")


#: How many messages an inbox keeps (for tests and the curious).
RECENT = 100


class InboxApplication(Application):
    """
    ``--app inbox``, the default of ``callback``: a client logs each message
    delivered to it (``[alice] via callback: hello``) and keeps the last
    :data:`RECENT`; a server does nothing of its own (inject messages with
    ``POST /deliver/<client>``).
    """

    def __init__(self, config: NodeConfig) -> None:
        self.node_id = config.node_id
        self.received = 0
        self.recent: collections.deque[bytes] = collections.deque(maxlen=RECENT)

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        self.received += 1
        self.recent.append(payload)
        record = peer.record
        path = CALLBACK if record is not None and record.direction is Direction.INBOUND else FALLBACK
        _inbox_log.info(
            "[{node}] via {path}: {text}",
            node=self.node_id,
            path=path,
            text=payload.decode("utf-8", "replace"),
        )
