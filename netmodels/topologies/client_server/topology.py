"""The client-server topology and its echo application."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from netmodels.core.reasons import CloseReason, Initiator
from netmodels.runtime.application import Application
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.session import PeerClosed
from netmodels.runtime.topology import ServerAndClients

if TYPE_CHECKING:
    from netmodels.runtime.node import Node, NodeConfig

__all__ = ["DEMO_LISTEN", "ClientServer", "ClientServerOptions", "ClientServerSettings", "EchoApplication"]


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
                lambda failure, p=peer: self._failed(p, failure),
            )

    def _failed(self, peer: IPeer, failure: Failure) -> None:
        error = failure.value
        if (
            isinstance(error, PeerClosed)
            and error.record.initiator is Initiator.LOCAL
            and error.record.reason in (CloseReason.CLEAN, CloseReason.ABORTED)
        ):
            # We closed the connection on purpose (FIN or RST) with a request in
            # flight: the manager has logged the close; nothing went wrong.
            _log.debug("request to {peer} not answered: {error}", peer=peer.node_id, error=str(error))
            return
        _log.warn("request to {peer} failed: {error}", peer=peer.node_id, error=failure.getErrorMessage())

    def _answered(self, peer: IPeer, reply: bytes, elapsed: float) -> None:
        self.answered += 1
        _log.info(
            "[{node}] {peer} answered {reply!r} in {ms:.2f} ms",
            node=self.node.config.node_id if self.node is not None else "?",
            peer=peer.node_id,
            reply=reply.decode("utf-8", "replace"),
            ms=elapsed * 1000,
        )


#: Where ``--demo`` listens when ``--listen`` is not given.
DEMO_LISTEN = "tcp:8750:interface=127.0.0.1"
#: The demo server's node id when ``--node-id`` is not given.
DEMO_SERVER_ID = "server"


@frozen
class ClientServerSettings:
    #: Run the demo: a server and three clients in this process.
    demo: bool = False


class ClientServerOptions(usage.Options):
    optFlags = [["demo", None, "Run a local demo: a server and three clients in one process."]]

    def postOptions(self) -> None:
        if self["demo"]:
            self["listen"] = self["listen"] or [DEMO_LISTEN]
            self["role"] = "server"
            # Named as the README's quoted log shows it, not by the host name.
            self["node-id"] = self["node-id"] or DEMO_SERVER_ID
        super().postOptions()


class ClientServer(ServerAndClients):
    """
    One server, clients that dial it. Clients send requests (with correlation
    ids, many in flight) and messages; the server answers.
    """

    name = "client-server"
    description = "servers listen, clients dial and send requests (request/response, echo)"
    options = ClientServerOptions

    def settings(self, options: Mapping[str, Any]) -> ClientServerSettings:
        return ClientServerSettings(demo=bool(options.get("demo", False)))

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        if config.role == "server" and not config.listen:
            raise ValueError("--listen: the server role needs at least one endpoint to listen on")
        if config.role == "client" and not config.connect:
            raise ValueError("--connect: the client role needs at least one endpoint to dial")

    def build(self, node: Node) -> None:
        for description in node.config.listen:
            node.listen(description)
        if node.config.role == "client":
            for description in node.config.connect:
                node.connect(description)

    def more_nodes(self, first: Node, make_node: Callable[[NodeConfig], Node]) -> list[Node]:
        if not first.settings.demo:
            return []
        # Imported here: the demo's applications build on this module's echo.
        from netmodels.topologies.client_server.demo import demo_clients

        return demo_clients(first)
