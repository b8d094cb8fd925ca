"""The client-server topology, its echo application and its demo."""

from netmodels.topologies.client_server.topology import ClientServer, EchoApplication

__all__ = ["ClientServer", "EchoApplication"]
