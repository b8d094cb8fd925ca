"""
The ``pubsub`` topology: thin Twisted glue around :mod:`~netmodels_pubsub.wire`
and :mod:`~netmodels_pubsub.state`.

A broker listens; clients dial it, send a SUBSCRIBE per ``--subscribe`` topic
once their connection is ready, and a PUBLISH per ``--publish`` every
``--interval`` seconds. The broker forwards each PUBLISH, as a FORWARD framed
once, to the topic's subscribers. Bad input from a peer ends that peer's
connection only, with ``protocol-error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from netmodels.core.frames import MalformedMessage
from netmodels.runtime.session import MessageTooLarge
from netmodels.runtime.topology import Topology
from netmodels_pubsub.app import IPublicationReceiver
from netmodels_pubsub.options import PubSubOptions, PubSubSettings, parse_settings
from netmodels_pubsub.state import Inbox, Subscriptions, TooManySubscriptions
from netmodels_pubsub.wire import (
    FORWARD,
    MESSAGE_TYPES,
    PUBLISH,
    SUBSCRIBE,
    decode_forward,
    decode_publish,
    decode_subscribe,
    encode_forward,
    encode_publish,
    encode_subscribe,
)

__all__ = ["Broker", "Client", "PubSubTopology", "refuse"]

_log = Logger(namespace="netmodels_pubsub")


def refuse(peer: Any, detail: str) -> None:
    """End ``peer``'s connection with ``protocol-error``: it sent what does not parse."""
    peer.protocol_error(detail)


class Broker:
    """Keeps who subscribes to what, and forwards publications."""

    def __init__(self, node: Any) -> None:
        self.subscriptions: Subscriptions[int] = Subscriptions()
        #: Subscribed peers by connection id: the keys in ``subscriptions``.
        self._peers: dict[int, Any] = {}
        node.add_handler(SUBSCRIBE, self.subscribe_received)
        node.add_handler(PUBLISH, self.publish_received)
        node.add_status_section("pubsub", self.subscriptions.status)
        node.manager.subscribe(self._connection_event)

    def subscribe_received(self, peer: Any, body: bytes) -> None:
        try:
            topic = decode_subscribe(body)
            added = self.subscriptions.subscribe(peer.connection_id, topic)
        except (MalformedMessage, TooManySubscriptions) as e:
            refuse(peer, str(e))
            return
        self._peers[peer.connection_id] = peer
        if added:
            _log.info("{peer} subscribed to {topic}", peer=peer.node_id, topic=topic)

    def publish_received(self, peer: Any, body: bytes) -> None:
        try:
            publication = decode_publish(body)
        except MalformedMessage as e:
            refuse(peer, str(e))
            return
        subscriptions = self.subscriptions
        subscriptions.published += 1
        subscribers = subscriptions.subscribers(publication.topic)
        if not subscribers:
            return
        # Framed once, however many subscribers get it.
        frame = encode_forward(peer.node_id, publication.topic, publication.payload)
        for key in subscribers:
            subscriber = self._peers.get(key)
            if subscriber is None:
                continue
            try:
                subscriber.write_frame(frame)
            except MessageTooLarge as e:
                # Over that subscriber's frame limit: its loss, not the publisher's fault.
                _log.warn("not forwarded to {peer}: {error}", peer=subscriber.node_id, error=e)
                continue
            subscriptions.forwarded += 1

    def _connection_event(self, event: str, subject: Any) -> None:
        # A subscriber that leaves is forgotten, whatever the reason.
        if event == "closed":
            connection_id = subject.record.id
            if self._peers.pop(connection_id, None) is not None:
                self.subscriptions.forget(connection_id)


class Client:
    """Subscribes on each ready connection, publishes on a timer, counts what arrives."""

    def __init__(self, node: Any, settings: PubSubSettings) -> None:
        self.node = node
        self.settings = settings
        self.inbox = Inbox(settings.subscribe)
        self._subscribe_frames = [encode_subscribe(topic) for topic in settings.subscribe]
        self._publish_frames = [encode_publish(topic, text.encode()) for topic, text in settings.publish]
        self._publishing: LoopingCall | None = None
        node.add_handler(FORWARD, self.forward_received)
        node.add_status_section("pubsub", self.inbox.status)
        node.manager.subscribe(self._connection_event)
        node.on_start(self.start)
        node.on_stop(self.stop)

    def start(self) -> None:
        interval = self.node.config.interval
        if self._publish_frames and interval > 0:
            self._publishing = LoopingCall(self.publish)
            self._publishing.clock = self.node.clock
            self._publishing.start(interval, now=False)

    def stop(self) -> None:
        if self._publishing is not None and self._publishing.running:
            self._publishing.stop()

    def publish(self) -> None:
        for broker in self.node.peers():
            for frame in self._publish_frames:
                broker.write_frame(frame)
                self.inbox.published += 1

    def forward_received(self, peer: Any, body: bytes) -> None:
        try:
            forward = decode_forward(body)
        except MalformedMessage as e:
            refuse(peer, str(e))
            return
        self.inbox.add(forward.publisher, forward.topic, forward.payload)
        application = self.node.application
        if IPublicationReceiver.providedBy(application):
            try:
                application.publication_received(peer, forward.publisher, forward.topic, forward.payload)
            except Exception:
                # The application's bug is not the broker's protocol error.
                _log.failure("publication_received failed")

    def _connection_event(self, event: str, subject: Any) -> None:
        # Subscriptions live on the broker's side of one connection: send
        # them again on every new one (after a reconnect too).
        if event == "ready":
            session = subject.wrappedProtocol
            for frame in self._subscribe_frames:
                session.write_frame(frame)


class PubSubTopology(Topology):
    name = "pubsub"
    description = "clients publish and subscribe to topics through a broker (example plugin)"
    roles = ("broker", "client")
    transports = ("tcp", "udp")
    default_app = "pubsub-log"
    options = PubSubOptions
    message_types: ClassVar[Mapping[str, int]] = MESSAGE_TYPES

    def settings(self, options: Mapping[str, Any]) -> PubSubSettings:
        return parse_settings(options, default_role=self.roles[0])

    def validate(self, config: Any) -> None:
        super().validate(config)
        if config.role == "broker" and not config.listen:
            raise ValueError("--listen: a broker needs an endpoint to listen on")
        if config.role == "client" and not config.connect:
            raise ValueError("--connect: a client needs the broker's endpoint")

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        wanted = "client" if our_role == "broker" else "broker"
        if peer_role != wanted:
            return f"a pubsub {our_role} talks to a {wanted}, and the peer is a {peer_role}"
        return None

    def build(self, node: Any) -> Broker | Client:
        """Wire the node for its role; what it returns, the node keeps as ``topology_state``."""
        config = node.config
        if config.role == "broker":
            broker = Broker(node)
            for description in config.listen:
                node.listen(description)
            return broker
        client = Client(node, node.settings)
        for description in config.connect:
            node.connect(description)
        return client
