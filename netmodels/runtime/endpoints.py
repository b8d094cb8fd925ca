"""
Checking endpoint strings where they are typed: at option parsing.

Twisted parses ``tcp:70000`` without complaint and fails only when it
listens; a port is 16 bits, so the number is checked here, with the rest of
the string, and every error names what is wrong.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.internet.endpoints import clientFromString, serverFromString

from netmodels.transports.udp import is_datagram, parse_endpoint

__all__ = ["check_endpoint", "endpoint_port", "reachable_beyond_loopback"]

_UNESCAPED_COLON = re.compile(r"(?<!\\):")
#: Endpoint kinds whose strings carry a port, and where it is among the positional fields.
_PORT_POSITION = {
    "tcp": (0, 1),
    "tcp6": (0, 1),
    "ssl": (0, 1),
    "tls": (None, 1),
    "mtls": (0, None),
}


def endpoint_port(description: str, server: bool) -> str | None:
    """The port field of a ``tcp:``, ``tcp6:``, ``ssl:``, ``mtls:`` or ``tls:`` string; ``None``: none."""
    kind, _, body = description.partition(":")
    positions = _PORT_POSITION.get(kind)
    if positions is None:
        return None
    position = positions[0] if server else positions[1]
    if body.startswith("["):
        # A bracketed IPv6 host is one positional field.
        host, _, rest = body[1:].partition("]")
        fields = [host, *_UNESCAPED_COLON.split(rest.lstrip(":"))] if rest else [host]
    else:
        fields = _UNESCAPED_COLON.split(body) if body else []
    positional: list[str] = []
    for field in fields:
        key, equals, value = field.partition("=")
        if equals and key == "port":
            return value
        if not equals:
            positional.append(field)
    if position is None or position >= len(positional):
        return None
    return positional[position]


def check_endpoint(description: str, transport: str, server: bool) -> None:
    """
    Raise ``ValueError`` saying what is wrong with ``description`` as a
    ``transport`` (``"tcp"`` or ``"udp"``) endpoint to listen on (``server``)
    or to dial. Nothing is opened.
    """
    if is_datagram(description) != (transport == "udp"):
        kind = "udp" if is_datagram(description) else "stream"
        raise ValueError(f"a {kind} endpoint needs --transport {'udp' if kind == 'udp' else 'tcp'}")
    if transport == "udp":
        parse_endpoint(None, description, server)
        return
    port = endpoint_port(description, server)
    if port is not None:
        lowest = 0 if server else 1
        if not port.isdigit() or not lowest <= int(port) <= 65535:
            raise ValueError(f"port {port!r} is not a number from {lowest} to 65535")
    if server:
        serverFromString(None, description)
    else:
        clientFromString(None, description)


def reachable_beyond_loopback(description: str) -> bool:
    """
    Whether a server endpoint string may accept connections from other
    machines: a ``tcp:``/``tcp6:``/``ssl:``/``mtls:`` port on every interface or on one
    that is not loopback. A Unix socket is not; any other kind is assumed to be.
    """
    kind, _, body = description.partition(":")
    if kind == "unix":
        return False
    if kind not in ("tcp", "tcp6", "ssl", "mtls"):
        return True
    for field in _UNESCAPED_COLON.split(body):
        key, equals, value = field.partition("=")
        if equals and key == "interface":
            interface = value.replace("\\:", ":")
            if interface == "localhost":
                return False
            try:
                return not ipaddress.ip_address(interface).is_loopback
            except ValueError:
                return True
    return True
