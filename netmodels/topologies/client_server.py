"""The client-server topology and its echo application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from netmodels.runtime.application import Application
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.topology import Topology

if TYPE_CHECKING:
    from netmodels.runtime.node import Node, NodeConfig

__all__ = ["ClientServer", "EchoApplication"]


_log = Logger(namespace="netmodels.app.echo")


class EchoApplication(Application):
    """
    Answers every request with its own bytes, and echoes one-way messages.
    On the client role it sends a request every ``interval`` seconds and logs
    the round trip, so a client-server pair does something out of the box.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.role = config.role
        self.interval = config.interval
        self.sent = 0
        self.answered = 0

    def start(self, node: Node) -> None:
        super().start(node)
        if self.role == "client":
            self.repeat(self.interval, self._tick)

    def message_received(self, peer: IPeer, payload: bytes) -> None:
        if self.role != "client":
            peer.send(payload)

    def request_received(self, peer: IPeer, payload: bytes) -> bytes:
        return payload

    def _tick(self) -> None:
        assert self.node is not None
        clock = self.node.clock
        for peer in self.node.peers():
            self.sent += 1
            started = clock.seconds()
            payload = f"hello {self.sent}".encode()
            peer.request(payload).addCallbacks(
                lambda reply, p=peer, t=started: self._answered(p, reply, clock.seconds() - t),
                lambda failure, p=peer: _log.warn(
                    "request to {peer} failed: {error}",
                    peer=p.node_id,
                    error=failure.getErrorMessage(),
                ),
            )

    def _answered(self, peer: IPeer, reply: bytes, elapsed: float) -> None:
        self.answered += 1
        _log.info(
            "[{node}] {peer} answered {reply!r} in {ms:.2f} ms",
            node=self.node.config.node_id if self.node is not None else "?",
            peer=peer.node_id,
            reply=reply.decode("utf-8", "replace"),
            ms=elapsed * 1000,
        )


class ClientServer(Topology):
    """
    One server, clients that dial it. Clients send requests (with correlation
    ids, many in flight) and messages; the server answers.
    """

    name = "client-server"
    description = "servers listen, clients dial and send requests (request/response, echo)"
    roles = ("server", "client")

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        if config.role == "server" and not config.listen:
            raise ValueError("--listen: the server role needs at least one endpoint to listen on")
        if config.role == "client" and not config.connect:
            raise ValueError("--connect: the client role needs at least one endpoint to dial")

    def check_peer(self, our_role: str, peer_role: str) -> str | None:
        expected = "client" if our_role == "server" else "server"
        if peer_role != expected:
            return f"a {our_role} talks to a {expected}, and the peer is a {peer_role}"
        return None

    def build(self, node: Node) -> None:
        for description in node.config.listen:
            node.listen(description)
        if node.config.role == "client":
            for description in node.config.connect:
                node.connect(description)
