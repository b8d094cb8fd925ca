"""
What every part of the UDP transport shares: the options of an endpoint,
and addresses in Twisted's and in text form.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from netmodels.core.datagram import DATA_HEADER, DEFAULT_MAX_DATAGRAM, MAX_DATAGRAM, MIN_DATAGRAM
from netmodels.core.frames import DEFAULT_MAX_FRAME

__all__ = ["DatagramOptions", "address_label", "udp_address"]


@frozen
class DatagramOptions:
    """How sessions on one UDP endpoint behave."""

    #: Largest datagram sent or accepted, headers included.
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    #: Send application data over the reliable channel too.
    reliable: bool = False
    #: Give up on data unacknowledged this long (``timeout``); ``None``: never.
    user_timeout: float | None = None
    #: A dial that has no answer within this long fails with ``timeout``.
    connect_timeout: float = 10.0
    #: Reliable segments in flight at most.
    window: int = 64
    #: Largest frame the reliable stream may carry (the node's frame limit).
    max_frame: int = DEFAULT_MAX_FRAME

    def __attrs_post_init__(self) -> None:
        if not MIN_DATAGRAM <= self.max_datagram <= MAX_DATAGRAM:
            raise ValueError(
                f"max datagram must be {MIN_DATAGRAM} to {MAX_DATAGRAM} bytes, not {self.max_datagram}"
            )

    @property
    def max_unreliable_body(self) -> int:
        """The largest frame body one DATA datagram carries (after the 5-byte frame header)."""
        return self.max_datagram - DATA_HEADER - 5


def udp_address(host: str, port: int) -> IAddress:
    """Twisted's address of ``host``:``port`` over UDP."""
    if ":" in host:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


def address_label(address: tuple[str, int]) -> str:
    """``("::1", 80)`` -> ``"[::1]:80"``: the text a cookie's MAC covers."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
