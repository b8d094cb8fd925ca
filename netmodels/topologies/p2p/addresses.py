"""
Where p2p nodes are: dialable endpoints of listeners, and SWIM's addresses beside them.
"""

from __future__ import annotations

from typing import Any

from netmodels.runtime.node import endpoint_label
from netmodels.topologies.p2p.swim_port import format_address

__all__ = ["dialable_endpoint", "fill_host", "swim_port_beside", "swim_seed_of"]


def dialable_endpoint(listener: Any) -> str:
    """A client endpoint string for a listener; ``*`` stands for the address peers see us at."""
    host = listener.port.getHost()
    address = getattr(host, "host", None)
    if address is None:
        return f"unix:path={host.name}"
    if address in ("0.0.0.0", "::", ""):
        address = "*"
    scheme = "udp" if getattr(host, "type", "TCP") == "UDP" else "tcp"
    return f"{scheme}:host={address.replace(':', chr(92) + ':')}:port={host.port}"


def swim_port_beside(port: Any) -> tuple[int, str]:
    """``--swim auto``: SWIM's (port, interface) beside a listening ``port``: its number (+1 over UDP)."""
    host = port.getHost()
    if getattr(host, "host", None) is None:
        raise ValueError(f"--swim auto: SWIM needs a TCP or UDP listener to sit beside, not {host}")
    return host.port + (1 if getattr(host, "type", "TCP") == "UDP" else 0), host.host


def swim_seed_of(peer: str, transport: str, swim_port: int | None) -> str | None:
    """
    The SWIM seed of a bootstrap peer's endpoint: its host, at its SWIM port
    (``swim_port``, as ours; with ``--swim auto``, the peer's own port, plus one
    over UDP). A DNS name stays one: SWIM resolves it each time, and every
    address it has is a seed. ``None`` for an endpoint with no host and port.
    """
    label = endpoint_label(peer)
    if label == peer:
        return None
    host, _, port = label.rpartition(":")
    theirs = int(port) + (1 if transport == "udp" else 0) if swim_port is None else swim_port
    return format_address(host.strip("[]").replace("\\", ""), theirs)


def fill_host(endpoint: str, observed: str | None) -> str:
    """``endpoint`` with its ``*`` host replaced by the address the peer was seen at."""
    if "host=*" in endpoint and observed:
        return endpoint.replace("host=*", "host=" + observed.replace(":", chr(92) + ":"))
    return endpoint
