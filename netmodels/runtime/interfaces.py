"""
netmodels' public interfaces.

A **topology** (:class:`ITopology`) decides who listens, who dials and how
messages flow; an **application** (:class:`IApplication`) is the user's code,
fed messages and requests from :class:`IPeer` handles. Both are found as
Twisted plugins in the ``netmodels.plugins`` package, so a third party extends
netmodels exactly the way the built-in ones are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from netmodels.core.connection import ConnectionRecord
    from netmodels.runtime.node import Node, NodeConfig

__all__ = ["IApplication", "IApplicationFactory", "IPeer", "ITopology"]


class IPeer(Interface):
    """One connected peer, after its HELLO, as the application sees it."""

    connection_id = Attribute("int: the manager's id for this connection.")
    node_id = Attribute("str: the peer's node id from its HELLO.")
    role = Attribute("str: the peer's role from its HELLO.")
    record = Attribute("netmodels.manager.ConnectionRecord: counters, state, close reason.")

    def send(payload: bytes) -> None:
        """
        Send one message (DATA). Raises ``MessageTooLarge`` when it exceeds the
        frame limit and ``PeerClosed`` after the connection has ended; the
        connection is unaffected by either.
        """

    def request(payload: bytes, timeout: float | None = None) -> object:
        """
        Send a request; returns a ``Deferred`` firing with the response bytes,
        or failing with ``RequestTimeout``, ``RemoteError`` or ``PeerClosed``.
        Many requests may be in flight at once.
        """

    def close() -> None:
        """Say BYE and close with FIN (RST if it does not drain in time)."""

    def reset() -> None:
        """Close at once with RST; the peer sees ``ECONNRESET``."""


class IApplication(Interface):
    """
    The user's code. One instance per node; every callback says which peer.
    Subclass :class:`netmodels.runtime.application.Application` for no-op defaults.
    """

    def start(node: Node) -> None:
        """The node is running; ``node`` offers ``peers()`` and ``clock``."""

    def stop() -> None:
        """The node is stopping."""

    def peer_ready(peer: IPeer) -> None:
        """A peer finished its handshake."""

    def message_received(peer: IPeer, payload: bytes) -> None:
        """A one-way message (DATA) arrived from ``peer``."""

    def request_received(peer: IPeer, payload: bytes) -> object:
        """
        A request arrived; return the response bytes, or a ``Deferred`` of
        them. An exception (or failed Deferred) is sent back as an ERROR.
        """

    def peer_lost(peer: IPeer, record: ConnectionRecord) -> None:
        """The connection to ``peer`` ended; ``record.reason`` says why."""


class IApplicationFactory(Interface):
    """A plugin that makes applications: ``--app NAME`` picks one by name."""

    name = Attribute("str: the --app value.")
    description = Attribute("str: one line for --list-apps.")

    def __call__(config: NodeConfig) -> IApplication:
        """Make the application for a node configured by ``config``."""


class ITopology(Interface):
    """A plugin that wires a node: ``--topology NAME`` picks one by name."""

    name = Attribute("str: the --topology value.")
    description = Attribute("str: one line for --list-topologies.")
    roles = Attribute("tuple[str, ...]: the roles it accepts; the first is the default.")
    transports = Attribute("tuple[str, ...]: the transports it runs on ('tcp', 'udp').")
    default_app = Attribute("str: the application used when --app is not given.")

    def validate(config: NodeConfig) -> None:
        """Raise ``ValueError`` naming the option if ``config`` cannot work."""

    def check_peer(our_role: str, peer_role: str) -> str | None:
        """``None`` if a peer of ``peer_role`` may talk to us, else why not."""

    def build(node: Node) -> None:
        """Add this topology's listeners and dialers to ``node`` (a ``Node``)."""
