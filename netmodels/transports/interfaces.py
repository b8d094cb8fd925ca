"""
What the transports and the layer above them (the connection manager) call
on each other, declared: each side checks ``providedBy`` once, when the
connection is made, instead of probing for methods on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import Attribute, Interface

from netmodels.core.reasons import CloseReason

__all__ = ["IConnectionObserver", "IDatagramTransport", "IErrnoObserver", "IErrnoSource", "ILivenessObserver"]


class IErrnoObserver(Interface):
    """Told the errno of a failed read or write, which Twisted drops."""

    def record_errno(number: int) -> None:
        """A ``recv``/``send`` failed with ``number`` (``EAGAIN`` included)."""


class IErrnoSource(Interface):
    """A transport without a socket (a fake) that reports the errno of the fault that ended it."""

    def set_errno_observer(observer: Callable[[int], None]) -> None:
        """Call ``observer(errno)`` when a fault ends the connection, as a socket's ``recv`` would fail."""


class ILivenessObserver(Interface):
    """Told that the peer is alive when no data shows it."""

    def resetKeepalive() -> None:
        """
        The transport heard the peer without passing data up (a datagram
        ACK, a segment held back for reordering): the peer is alive.
        """


class IConnectionObserver(IErrnoObserver, ILivenessObserver):
    """
    The protocol on a transport that reports more than bytes (the
    connection manager's wrapper): errnos, liveness, and why it gave up.
    """

    def end(reason: CloseReason, detail: str) -> None:
        """End the connection, recording ``reason``: the transport gave up on it."""


class IDatagramTransport(Interface):
    """
    The extras of a session on a datagram transport, beside its
    ``ITransport``: ``write`` takes the reliable, ordered channel (a byte
    stream, as on TCP); :meth:`write_unreliable` the unreliable one. The
    transport never looks inside what it carries beyond the length prefix
    of whole frames: which channel a frame takes is for the caller to say.
    """

    reliable = Attribute(
        "Whether application data takes the reliable channel: the endpoint's option, or the peer asked."
    )

    def write_unreliable(frames: bytes) -> None:
        """
        Send ``frames`` (one or more whole length-prefixed frames) on the
        unreliable channel: as few datagrams as hold them, each delivered
        at most once, or lost. Raises ``ValueError`` for a frame no
        datagram can hold.
        """

    def use_reliable_channel() -> None:
        """Record that application data now takes the reliable channel (the peer asked)."""

    def datagram_status() -> dict[str, Any]:
        """Datagrams each way, retransmissions, the unreliable channel's counts."""
