"""
An example netmodels topology plugin: ``--topology static-peers``.

Every node is a peer: it listens on its ``--listen`` endpoints and dials the
peers named with ``--connect``. With two nodes::

    twistd -n netmodels -t static-peers --node-id a --listen tcp:8761
    twistd -n netmodels -t static-peers --node-id b --listen tcp:8762 --connect tcp:127.0.0.1:8761
"""

from __future__ import annotations

from netmodels.runtime.topology import Topology


class StaticPeers(Topology):
    # What --topology, --list-topologies and --role see.
    name = "static-peers"
    description = "every node listens and dials the peers named by --connect (example plugin)"
    roles = ("peer",)
    transports = ("tcp",)
    default_app = "shout"

    def validate(self, config):
        """Reject a configuration that cannot work; name the option in the message."""
        super().validate(config)  # checks --role and --transport against the lists above
        if not config.listen:
            raise ValueError("--listen: a static peer needs an endpoint to listen on")

    def check_peer(self, our_role, peer_role):
        """Called at each HELLO: None accepts the peer, a string refuses it (fatal protocol-error)."""
        if peer_role != "peer":
            return f"static-peers nodes talk to peers, and the peer is a {peer_role}"
        return None

    def build(self, node):
        """Add listeners and reconnecting dialers to the node; nothing runs until it starts."""
        for description in node.config.listen:
            node.listen(description)
        for description in node.config.connect:
            node.connect(description)


# The plugin: a module-level instance; --topology picks it by its name.
static_peers = StaticPeers()
