"""
The many-to-one topology plugin: its options, its checks, and how it wires a node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netmodels.runtime.endpoints import check_endpoint
from netmodels.runtime.node import Node, NodeConfig
from netmodels.runtime.topology import ServerAndClients
from netmodels.topologies.many_to_one.groups import check_groups
from netmodels.topologies.many_to_one.hub import Hub
from netmodels.topologies.many_to_one.options import ManyToOneOptions, ManyToOneSettings
from netmodels.topologies.many_to_one.raw import RawLineFactory, _raw_rejection

__all__ = ["ManyToOne"]


class ManyToOne(ServerAndClients):
    """
    One server, many clients. Clients dial the server and send to it (fan-in);
    the server sends to all of them or to a group (fan-out). The server may
    also accept raw line clients (``--raw-listen``).
    """

    name = "many-to-one"
    description = (
        "one server, many clients: fan-in, fan-out to all or to a --group; "
        "--raw-listen for nc/socat line clients"
    )
    role_prefix = "many-to-one "
    default_app = "chat"

    options = ManyToOneOptions

    def settings(self, options: Mapping[str, Any]) -> ManyToOneSettings:
        settings = ManyToOneSettings.from_options(options)
        problem = check_groups(settings.groups)
        if problem is not None:
            raise ValueError(f"--group: {problem}")
        for description in settings.raw_listen:
            try:
                check_endpoint(description, "tcp", server=True)
            except Exception as e:
                raise ValueError(f"--raw-listen: bad endpoint {description!r}: {e}") from None
        return settings

    def hello_extra(self, settings: object) -> Mapping[str, Any]:
        assert isinstance(settings, ManyToOneSettings)
        return {"groups": list(settings.groups)} if settings.groups else {}

    def validate(self, config: NodeConfig) -> None:
        super().validate(config)
        settings = config.settings if isinstance(config.settings, ManyToOneSettings) else ManyToOneSettings()
        if settings.raw_listen and config.encrypted:
            raise ValueError(
                "--raw-listen: raw line clients cannot run the secure handshake; not with "
                "--cluster-key-file or --identity"
            )
        if config.role == "server":
            if not config.listen and not settings.raw_listen:
                raise ValueError("--listen: the server role needs at least one endpoint to listen on")
            if settings.groups:
                raise ValueError("--group: clients declare groups; the server has none")
        else:
            if len(config.connect) != 1:
                raise ValueError(
                    "--connect: a many-to-one client dials exactly one server, "
                    f"not {len(config.connect)} endpoints"
                )
            if settings.raw_listen:
                raise ValueError("--raw-listen: only the server role accepts raw line clients")
            if config.listen:
                raise ValueError("--listen: a many-to-one client dials its server and listens on nothing")

    def build(self, node: Node) -> Hub:
        config = node.config
        hub = Hub(node)
        for description in config.listen:
            node.listen(description)
        if config.role == "server":
            for description in node.settings.raw_listen:
                node.listen(description, RawLineFactory(node), rejection_payload=_raw_rejection)
                hub.raw_listeners.append(node.listeners[-1])
            hub.raw_listen = node.settings.raw_listen
            node.on_start(hub.log_raw_listeners)
        else:
            node.connect(config.connect[0])
        return hub
