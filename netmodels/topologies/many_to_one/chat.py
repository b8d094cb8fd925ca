"""
The ``chat`` application: the server relays each client's line to the others, or to a group.
"""

from __future__ import annotations

import collections

from twisted.logger import Logger

from netmodels.runtime.application import Application
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.session import (
    MessageTooLarge,
)
from netmodels.topologies.many_to_one.hub import Hub, hub_of

__all__ = ["RECENT", "ChatApplication"]


_chat_log = Logger(namespace="netmodels.app.chat")


#: How many received lines a chat client keeps (for tests and the curious).
RECENT = 100


class ChatApplication(Application):
    """
    ``--app chat``, the default of ``many-to-one``.

    On the server, each message from a client goes to every *other* client,
    prefixed with the sender's node id: ``alice: hello``. A message
    ``@NAME text`` goes only to the clients in group ``NAME``, as
    ``alice @NAME: text``. Empty messages are ignored.

    A client logs every line it receives and, every ``--interval`` seconds
    (0: never), says ``hello from <id> #<n>``.

    Over UDP it asks for the reliable channel: a chat loses no line.
    """

    reliable = True

    def __init__(self, config: NodeConfig) -> None:
        self.role = config.role
        self.interval = config.interval
        self.node_id = config.node_id
        self.max_body = config.max_frame - 1
        self.sent = 0
        self.received = 0
        self.relayed = 0
        #: The last :data:`RECENT` lines a client received.
        self.recent: collections.deque[bytes] = collections.deque(maxlen=RECENT)
        self._hub: Hub | None = None

    def start(self, node: Node) -> None:
        super().start(node)
        self._hub = hub_of(node)
        if self.role == "client":
            self.repeat(self.interval, self._tick)

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        if self.role == "server":
            self._relay(peer, payload)
            return
        self.received += 1
        self.recent.append(payload)
        _chat_log.info("[{node}] {line}", node=self.node_id, line=payload.decode("utf-8", "replace"))

    def say(self, text: bytes) -> int:
        """On a client: send ``text`` to the server. Returns 1 if sent, 0 if not connected."""
        assert self.node is not None
        sent = 0
        for peer in self.node.peers():
            peer.send(text)
            sent += 1
        self.sent += sent
        return sent

    def _tick(self) -> None:
        self.say(f"hello from {self.node_id} #{self.sent + 1}".encode())

    def _relay(self, peer: IPeer, payload: bytes) -> None:
        if not payload.strip():
            return
        group: str | None = None
        prefix = f"{peer.node_id}: ".encode()
        if payload[:1] == b"@":
            name, _, text = payload[1:].partition(b" ")
            group = name.decode("utf-8", "replace")
            prefix = f"{peer.node_id} @{group}: ".encode()
            payload = text
        line = prefix + payload
        if len(line) > self.max_body:
            _chat_log.warn(
                "not relaying {size} bytes from {peer}: over the frame limit with its prefix",
                size=len(line),
                peer=peer.node_id,
            )
            return
        assert self.node is not None
        hub = self._hub
        try:
            if hub is None:
                sent = self.node.broadcast(line, exclude=peer)
            else:
                sent = hub.broadcast(line, group=group, exclude=peer)
        except MessageTooLarge as e:
            # A client that advertised a smaller frame limit than ours.
            _chat_log.warn("relaying from {peer}: {error}", peer=peer.node_id, error=str(e))
            return
        self.relayed += sent
