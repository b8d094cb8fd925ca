"""
UDP endpoints: ``udp:`` endpoint strings, and endpoints in the shape of
Twisted's stream endpoints (Twisted has none for datagrams, twisted#4471).
"""

from __future__ import annotations

import re
import socket
from typing import Any

import attrs
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.internet.protocol import Factory

from netmodels.transports.udp.dialler import Dialler
from netmodels.transports.udp.listener import DatagramListeningPort, Listener
from netmodels.transports.udp.options import DatagramOptions, udp_address

__all__ = ["DatagramClientEndpoint", "DatagramServerEndpoint", "is_datagram", "parse_endpoint"]

# Endpoint strings

_ESCAPED_SPLIT = re.compile(r"(?<!\\):")


def is_datagram(description: str) -> bool:
    """Whether ``description`` is one of ours (``udp:...``)."""
    return description.startswith(("udp:", "udp6:"))


def _split(description: str) -> tuple[list[str], dict[str, str]]:
    body = description.split(":", 1)[1] if ":" in description else ""
    # "[::1]:9000" -> host "::1"; backslash escapes as in Twisted's endpoint strings.
    bracketed = re.match(r"^\[([^\]]*)\](.*)$", body)
    parts: list[str] = []
    if bracketed:
        parts.append(bracketed[1])
        body = bracketed[2].lstrip(":")
    parts += [part.replace("\\:", ":") for part in _ESCAPED_SPLIT.split(body)] if body else []
    positional: list[str] = []
    options: dict[str, str] = {}
    for part in parts:
        key, equals, value = part.partition("=")
        if equals and key.isidentifier():
            if key in options:
                raise ValueError(f"{key!r} given twice")
            options[key] = value
        else:
            positional.append(part)
    return positional, options


_DEFAULT_OPTIONS = DatagramOptions()


def _port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def parse_endpoint(
    reactor: Any,
    description: str,
    server: bool,
    options: DatagramOptions = _DEFAULT_OPTIONS,
    clock: IReactorTime | None = None,
) -> DatagramServerEndpoint | DatagramClientEndpoint:
    """
    ``udp:PORT[:interface=ADDR]`` (``server=True``) or
    ``udp:HOST:PORT[:timeout=SECONDS]`` (also ``host=`` and ``port=``; IPv6
    hosts in brackets or with escaped colons). Raises ``ValueError`` with
    what is wrong. ``reactor`` provides ``listenUDP``; ``clock`` (default:
    the reactor) the time.
    """
    if not is_datagram(description):
        raise ValueError(f"not a udp endpoint: {description!r}")
    positional, keywords = _split(description)
    clock = clock or reactor
    if server:
        allowed = {"port", "interface"}
        unknown = set(keywords) - allowed
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (udp servers take port, interface)")
        if "port" in keywords:
            positional.insert(0, keywords["port"])
        if len(positional) != 1:
            raise ValueError("expected udp:PORT[:interface=ADDR]")
        interface = keywords.get("interface", "")
        if interface and not _is_ip(interface):
            raise ValueError(f"interface must be an IP address, not {interface!r}")
        return DatagramServerEndpoint(reactor, _port_number(positional[0]), interface, options, clock)
    allowed = {"host", "port", "timeout"}
    unknown = set(keywords) - allowed
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (udp clients take host, port, timeout)")
    if "host" in keywords:
        positional.insert(0, keywords["host"])
    if "port" in keywords:
        positional.append(keywords["port"])
    if len(positional) != 2 or not positional[0]:
        raise ValueError("expected udp:HOST:PORT")
    if "timeout" in keywords:
        try:
            timeout = float(keywords["timeout"])
        except ValueError:
            raise ValueError(f"bad timeout {keywords['timeout']!r}") from None
        options = attrs.evolve(options, connect_timeout=timeout)
    return DatagramClientEndpoint(reactor, positional[0], _port_number(positional[1]), options, clock)


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


class DatagramServerEndpoint:
    """Listen for sessions on a UDP port (``IStreamServerEndpoint``-shaped)."""

    def __init__(
        self, reactor: Any, port: int, interface: str, options: DatagramOptions, clock: IReactorTime
    ) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.options = options
        self._clock = clock

    def listen(self, factory: Factory[Any]) -> defer.Deferred[DatagramListeningPort]:
        fd_set = self._reactor if IReactorFDSet.providedBy(self._reactor) else None
        listener = Listener(factory, self.options, self._clock, fd_set)
        try:
            port = self._reactor.listenUDP(
                self.port, listener, interface=self.interface, maxPacketSize=self.options.max_datagram + 1
            )
        except Exception:
            return defer.fail()
        host = port.getHost()
        listener.host = udp_address(host.host, host.port)
        return defer.succeed(DatagramListeningPort(port, listener, self._clock))


class DatagramClientEndpoint:
    """Dial one session over UDP (``IStreamClientEndpoint``-shaped)."""

    def __init__(self, reactor: Any, host: str, port: int, options: DatagramOptions, clock: IReactorTime):
        self._reactor = reactor
        self.host = host
        self.port = port
        self.options = options
        self._clock = clock

    def connect(self, factory: Factory[Any]) -> defer.Deferred[Any]:
        if _is_ip(self.host):
            return self._dial(self.host, factory)
        resolving: defer.Deferred[str] = self._reactor.resolve(self.host)
        return resolving.addCallback(self._dial, factory)

    def _dial(self, address: str, factory: Factory[Any]) -> defer.Deferred[Any]:
        dialler: Dialler
        result: defer.Deferred[Any] = defer.Deferred(lambda _: dialler.cancel())
        dialler = Dialler(factory, (address, self.port), self.options, self._clock, result)
        interface = "::" if ":" in address else ""
        try:
            port = self._reactor.listenUDP(
                0, dialler, interface=interface, maxPacketSize=self.options.max_datagram + 1
            )
            port.connect(address, self.port)
        except Exception as e:
            return defer.fail(error.ConnectError(str(e)))
        dialler.begin()
        return result
