"""
SWIM over UDP: the Twisted adapter of :mod:`netmodels.topologies.p2p.swim`.

A :class:`SwimPort` is one UDP socket and one :class:`~.swim.Swim`: it feeds
the core every datagram and the reactor's time, sends what the core sends,
and keeps one timer at the core's next deadline. Members' addresses are
``host:port`` (``[v6]:port``); a seed whose host is a DNS name is resolved
every time it is contacted, and every address it resolves to (A and AAAA)
is a seed, so a Kubernetes headless service works as a seed list.

With cluster keys, every packet is sealed (:class:`PacketSeal`), as
memberlist's keyring does: AES-256-GCM under the first key with a random
96-bit nonce, opened with any installed key. A packet that opens with none
is dropped and counted, never parsed. Like memberlist, a sealed packet can
be replayed by someone on the path; what a replay can do is bounded by the
protocol (an old incarnation is ignored; a replayed accusation is refuted).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.interfaces import IDelayedCall, IResolutionReceiver
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from netmodels.topologies.p2p.swim import ISwimOutput, Swim, SwimMember
from netmodels.topologies.p2p.swim_config import SwimConfig
from netmodels.topologies.p2p.swim_wire import MemberState

__all__ = ["PacketSeal", "SwimPort", "format_address", "is_ip_address", "parse_address", "routed_source"]

_log = Logger(namespace="netmodels.swim")

_SEAL_VERSION: Final = 1
_NONCE: Final = 12
#: Bound into every sealed packet's tag: a membership packet of netmodels, version 1.
_AD: Final = b"netmodels membership 1"
#: Bytes a seal adds: version, nonce, tag.
SEAL_OVERHEAD: Final = 1 + _NONCE + 16


class PacketSeal:
    """Seal and open membership packets with a cluster keyring (the first key seals)."""

    def __init__(self, keyring: Sequence[bytes]) -> None:
        if not keyring:
            raise ValueError("a seal needs at least one key")
        self._ciphers = [AESGCM(key) for key in keyring]

    def seal(self, packet: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return bytes((_SEAL_VERSION,)) + nonce + self._ciphers[0].encrypt(nonce, packet, _AD)

    def open(self, data: bytes) -> bytes | None:
        """The packet sealed in ``data``, or ``None`` if no installed key opens it."""
        if len(data) < SEAL_OVERHEAD or data[0] != _SEAL_VERSION:
            return None
        nonce, ciphertext = data[1 : 1 + _NONCE], data[1 + _NONCE :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, ciphertext, _AD)
            except InvalidTag:
                continue
        return None


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ``ValueError`` if it is neither."""
    host, colon, port_text = address.rpartition(":")
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: an IPv6 address goes in brackets, [::1]:7946")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: Where to route when there is no seed to route to: documentation addresses (RFC 5737,
#: RFC 3849). Nothing is sent: connecting a UDP socket only asks the kernel for a route.
_ANYWHERE: Final[dict[int, str]] = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def routed_source(seeds: Sequence[str], family: int = socket.AF_INET) -> str | None:
    """
    The local address the kernel would send from to the first seed given as an
    address (else to anywhere, by the default route): what a node bound to every
    interface advertises. ``None`` if there is no route at all.
    """
    hosts = [host for host, _ in map(parse_address, seeds) if is_ip_address(host)]
    for host in [*hosts, _ANYWHERE[family]]:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((host, 9))
            except OSError:
                continue
            source: str = probe.getsockname()[0]
            return source
    return None


@implementer(IResolutionReceiver)
class _Resolution:
    """Sends one packet to every address a name resolves to."""

    def __init__(self, port: SwimPort, name: str, data: bytes) -> None:
        self.port = port
        self.name = name
        self.data = data
        self.count = 0

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.count += 1
        self.port.write_to(self.data, (address.host, address.port))

    def resolutionComplete(self) -> None:
        if not self.count:
            self.port.counts["unresolved"] += 1
            _log.warn("membership seed {name}: resolves to no address", name=self.name)


@implementer(ISwimOutput)
class SwimPort(DatagramProtocol):
    """One node's membership on a UDP socket."""

    noisy = False

    def __init__(
        self,
        reactor: Any,
        node_id: str,
        incarnation: int,
        config: SwimConfig | None = None,
        keyring: Sequence[bytes] = (),
        rng: random.Random | None = None,
        on_change: Callable[[SwimMember, MemberState | None], None] | None = None,
    ) -> None:
        """
        :param keyring: cluster keys (seal with the first, open with any); none: cleartext.
        :param on_change: called with each member whose state changed.
        """
        self.reactor = reactor
        self.node_id = node_id
        self.incarnation = incarnation
        self.config = config or SwimConfig()
        self.rng = rng or random.Random()
        #: The protocol, once :meth:`begin` started it.
        self.swim: Swim | None = None
        self.seal = PacketSeal(keyring) if keyring else None
        self.on_change = on_change
        self.counts = {"unsealed_dropped": 0, "unresolved": 0, "send_errors": 0}
        self._call: IDelayedCall | None = None
        self._stopped = False

    # Life

    def begin(self, seeds: Sequence[str] = (), advertise: str | None = None, meta: str = "") -> Swim:
        """
        Start the protocol once listening; join through ``seeds`` (``host:port``,
        names allowed). ``advertise``: this node's address as the others reach
        it (default: the socket's; bound to every interface, the local address
        routed to the first seed, see :func:`routed_source`, or loopback).
        ``meta``: what the others learn of this node with its state.
        """
        for seed in seeds:
            parse_address(seed)
        if advertise is None:
            assert self.transport is not None, "begin() once listening"
            host = self.transport.getHost()
            address = host.host
            if address in ("0.0.0.0", "::", ""):
                family = socket.AF_INET6 if address == "::" else socket.AF_INET
                # No route anywhere: this host reaches only itself.
                address = routed_source(seeds, family) or (
                    "::1" if family == socket.AF_INET6 else "127.0.0.1"
                )
                _log.info("SWIM advertises {address} (pass --swim-advertise to choose)", address=address)
            advertise = format_address(address, host.port)
        parse_address(advertise)
        self.swim = Swim(self.node_id, advertise, self.incarnation, self.config, self, self.rng, meta)
        self.swim.start(self.reactor.seconds(), seeds)
        self._arm()
        return self.swim

    def sync_with(self, node_id: str) -> None:
        """A stream link to ``node_id`` opened: see :meth:`.Swim.sync_with`."""
        if not self._stopped and self.swim is not None:
            self.swim.sync_with(node_id, self.reactor.seconds())

    def leave(self) -> None:
        """Tell a few members this node leaves, then stop."""
        if not self._stopped and self.swim is not None:
            self.swim.leave(self.reactor.seconds())
        self.halt()

    def halt(self) -> None:
        """Stop without a word (as a crash would, for the others)."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    # Twisted

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._stopped or self.swim is None:
            return
        if self.seal is not None:
            opened = self.seal.open(data)
            if opened is None:
                self.counts["unsealed_dropped"] += 1
                return
            data = opened
        self.swim.receive(format_address(addr[0], addr[1]), data, self.reactor.seconds())
        self._arm()

    # ISwimOutput

    def send(self, address: str, packet: bytes) -> None:
        data = packet if self.seal is None else self.seal.seal(packet)
        host, port = parse_address(address)
        if is_ip_address(host):
            self.write_to(data, (host, port))
        else:
            self.reactor.nameResolver.resolveHostName(_Resolution(self, host, data), host, port)

    def member_changed(self, member: SwimMember, previous: MemberState | None) -> None:
        if self.on_change is not None:
            self.on_change(member, previous)

    def write_to(self, data: bytes, address: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            transport.write(data, address)
        except (OSError, ValueError):
            # An unreachable address (no route, a v6 name on a v4 socket):
            # for the protocol, the same as a lost packet.
            self.counts["send_errors"] += 1

    # The timer

    def _arm(self) -> None:
        if self._stopped or self.swim is None:
            return
        deadline = self.swim.next_deadline()
        call = self._call
        if call is not None and call.active():
            if deadline is not None and abs(call.getTime() - deadline) < 1e-9:
                return
            call.cancel()
        self._call = None
        if deadline is not None:
            delay = max(0.0, deadline - self.reactor.seconds())
            self._call = self.reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        if not self._stopped and self.swim is not None:
            self.swim.tick(self.reactor.seconds())
            self._arm()
