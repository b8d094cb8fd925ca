"""
``--app pubsub-log``: the pubsub topology's default application.

A client hands every publication it receives to an application that provides
:class:`IPublicationReceiver`; this one logs it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import Interface, implementer

from netmodels.runtime.application import Application

__all__ = ["IPublicationReceiver", "PubSubLog"]


class IPublicationReceiver(Interface):
    """An application that wants the publications its client node receives."""

    def publication_received(peer: Any, publisher: str, topic: str, payload: bytes) -> None:
        """``publisher`` published ``payload`` on ``topic``; ``peer`` is the broker that forwarded it."""


@implementer(IPublicationReceiver)
class PubSubLog(Application):
    log = Logger()

    def __init__(self, config: Any) -> None:
        self.node_id = config.node_id

    def peer_ready(self, peer: Any) -> None:
        self.log.info("{peer} ({role}) is ready", peer=peer.node_id, role=peer.role)

    def peer_lost(self, peer: Any, record: Any) -> None:
        self.log.info("lost {peer}: {reason}", peer=peer.node_id, reason=record.reason)

    def publication_received(self, peer: Any, publisher: str, topic: str, payload: bytes) -> None:
        self.log.info(
            "[{node}] {topic}: {text!r} from {publisher}",
            node=self.node_id,
            topic=topic,
            text=payload.decode("utf-8", "replace"),
            publisher=publisher,
        )
