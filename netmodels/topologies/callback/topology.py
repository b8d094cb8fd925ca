"""
The callback topology: the "port 25" model of the socket notes.

A **client** dials the server (the *control* connection), proves it knows the
shared ``--token`` in its HELLO, and registers a *callback endpoint*: the port
it listens on (``--callback``); the host is the address the server sees. Then
it waits.

The **server** accepts messages for a client with :meth:`CallbackServer.
deliver` (or ``POST /deliver/<client>`` on the status endpoint) and keeps each
one in its :class:`~netmodels.topologies.callback.outbox.Outbox` until the client acknowledges
it. While the client is *alive* (its control connection open, registered,
and its keepalive not suspect) the server dials the callback endpoint and
delivers there; when the dial fails it records why (``refused``,
``unreachable``, ``timeout``, ...) and delivers on the control connection
instead (the *fallback* path). While the client is not alive, messages wait;
they go out, in order, as soon as it registers again.

Every message is sent until it is acknowledged (at least once on the wire);
the client remembers the highest id delivered from each server store
(:class:`~netmodels.topologies.callback.outbox.DeliveredLog`) and drops what it has already
seen, so the application sees each message once, in order.

Wire messages (see ``docs/protocol.md``): ``REGISTER`` (client to server,
JSON ``{"port": N | null, "kind": "tcp"}``), ``DELIVER`` (server to client: a
u64 message id, then the payload) and ``ACK`` (client to server: a u64 id,
acknowledging every message up to it).

The default application is :class:`InboxApplication` (``--app inbox``): it
logs every message it receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.topology import ServerAndClients
from netmodels.topologies.callback.client import CallbackClient
from netmodels.topologies.callback.messages import MESSAGE_TYPES
from netmodels.topologies.callback.options import CallbackOptions, CallbackSettings
from netmodels.topologies.callback.outbox import DeliveredLog, Outbox
from netmodels.topologies.callback.server import CallbackServer

__all__ = ["Callback", "callback_of"]


_log = Logger(namespace="netmodels.callback")


def callback_of(node: Node) -> CallbackServer | CallbackClient | None:
    """The :class:`CallbackServer` or :class:`CallbackClient` of a callback node, else ``None``."""
    state = node.topology_state
    return state if isinstance(state, CallbackServer | CallbackClient) else None


class Callback(ServerAndClients):
    """
    The "port 25" model: clients register a callback endpoint over a control
    connection; the server dials back to deliver, or falls back to the
    control connection, and keeps what it cannot deliver.
    """

    name = "callback"
    description = (
        "clients register a --callback endpoint; the server dials back to deliver "
        "(fallback: the control connection), keeping undelivered messages in an outbox"
    )
    role_prefix = "callback "
    default_app = "inbox"

    options = CallbackOptions
    message_types = MESSAGE_TYPES

    def settings(self, options: Mapping[str, Any]) -> CallbackSettings:
        return CallbackSettings.from_options(options)

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        settings = config.settings if isinstance(config.settings, CallbackSettings) else CallbackSettings()
        if config.role == "server":
            if not config.listen:
                raise ValueError("--listen: the server role needs at least one endpoint to listen on")
            if settings.callback is not None:
                raise ValueError("--callback: clients listen for callbacks; the server dials them")
        else:
            if len(config.connect) != 1:
                raise ValueError(
                    "--connect: a callback client dials exactly one server, "
                    f"not {len(config.connect)} endpoints"
                )
            if config.listen:
                raise ValueError("--listen: a callback client listens on its --callback endpoint only")

    def build(self, node: Node) -> CallbackServer | CallbackClient:
        config = node.config
        settings: CallbackSettings = node.settings
        if config.role == "server":
            outbox = Outbox(_stored(node, settings.outbox), max_per_client=settings.outbox_limit)
            node.on_stop(outbox.close)
            server = CallbackServer(node, outbox, settings.token)
            for description in config.listen:
                node.listen(description)
            if settings.token is None:
                node.on_start(
                    lambda: _log.warn("no --token: any client may register, and POST /deliver is off")
                )
            return server
        client = CallbackClient(node, DeliveredLog(_stored(node, settings.outbox)), settings.token)
        if settings.callback is not None:
            client.listen(settings.callback)
        node.connect(config.connect[0], client.control_factory)
        return client


def _stored(node: Node, outbox: str | None) -> str | None:
    return None if outbox is None else node.state_path(outbox)
