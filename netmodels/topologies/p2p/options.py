"""The p2p topology's own command-line options and the settings they make."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from attrs import frozen
from twisted.python import usage

from netmodels.runtime.endpoints import check_endpoint
from netmodels.topologies.p2p.swim_port import is_ip_address, parse_address

__all__ = ["P2POptions", "P2PSettings"]


@frozen
class P2PSettings:
    #: The most peers a node dials (it accepts more, up to --max-connections).
    max_peers: int = 32
    #: How many nodes to run in this process (``--nodes``), meshed on loopback.
    nodes: int = 1
    #: Membership (``--swim``): SWIM on this UDP port and interface; ``"auto"``: SWIM on
    #: the first listener's port (see :class:`~.mesh.SwimSetup`); ``None`` (``off``):
    #: membership from the connections and full-view gossip.
    swim: tuple[int, str] | Literal["auto"] | None = "auto"
    #: Where to join SWIM (``--swim-seed``, ``host:port``, DNS names allowed).
    swim_seeds: tuple[str, ...] = ()
    #: This node's SWIM address as the others reach it (``--swim-advertise``).
    swim_advertise: str | None = None
    #: With SWIM, above this many connections (inbound included) the least used
    #: inbound ones are trimmed down to ``max_peers`` (``--high-water``; ``None``: twice it).
    high_water: int | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> P2PSettings:
        swim = options.get("swim", "auto")
        return cls(
            max_peers=_whole("max-peers", options.get("max-peers", "32")),
            nodes=_whole("nodes", options.get("nodes", "1")),
            swim=None if swim == "off" else "auto" if swim == "auto" else parse_swim_listen(swim),
            swim_seeds=tuple(options.get("swim-seed", ())),
            swim_advertise=options.get("swim-advertise"),
            high_water=None
            if options.get("high-water") is None
            else _whole("high-water", options["high-water"]),
        )


_SWIM_FORMS = "expected auto, off or udp:PORT[:interface=IP]"


def parse_swim_listen(description: str) -> tuple[int, str]:
    """``udp:PORT[:interface=IP]`` as (port, interface); ``ValueError`` naming ``--swim``."""
    scheme, _, rest = description.partition(":")
    port_text, _, option = rest.partition(":")
    interface = ""
    if option:
        name, equals, interface = option.partition("=")
        if name != "interface" or not equals or not is_ip_address(interface):
            raise ValueError(f"--swim: {_SWIM_FORMS}, not {description!r}")
    if scheme != "udp" or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--swim: {_SWIM_FORMS}, not {description!r}")
    return int(port_text), interface


class P2POptions(usage.Options):
    optParameters = [
        ["max-peers", None, "32", "The most peers a node dials; beyond, a partial mesh."],
        ["nodes", None, "1", "Run N nodes in this process on ephemeral loopback ports, meshed."],
        [
            "high-water",
            None,
            None,
            "Above N connections, trim the least used inbound to --max-peers (default 2 x; SWIM only).",
        ],
        [
            "swim",
            None,
            "auto",
            "SWIM membership: auto (UDP, the first --listen port; +1 over --transport udp), "
            "udp:PORT[:interface=IP], or off (membership by connections; see docs/p2p-scale.rst).",
        ],
        [
            "swim-advertise",
            None,
            None,
            "This node's SWIM address as others reach it, HOST:PORT (default: the source routed to a seed).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["peer"] = []
        self["swim-seed"] = []

    def opt_swim_seed(self, address: str) -> None:
        """A SWIM member to join, HOST:PORT (repeatable; a DNS name: all its addresses; default: --peer's)."""
        self["swim-seed"].append(address)

    def opt_peer(self, description: str) -> None:
        """A bootstrap peer to dial, e.g. tcp:127.0.0.1:8760 (repeatable; as --connect)."""
        self["peer"].append(description)

    def postOptions(self) -> None:
        # Checked here, so that an error names --peer; then dialled like --connect.
        for description in self["peer"]:
            try:
                check_endpoint(description, self["transport"], server=False)
            except Exception as e:
                raise usage.UsageError(f"--peer: bad endpoint {description!r}: {e}") from None
        self["connect"] = [*self["connect"], *self["peer"]]
        # Several nodes need ports of their own: ephemeral ones on loopback.
        try:
            nodes = _whole("nodes", self["nodes"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if nodes > 1 and not self["listen"]:
            self["listen"] = [f"{self['transport']}:0:interface=127.0.0.1"]
        self._check_swim()
        if self["high-water"] is not None:
            try:
                high = _whole("high-water", self["high-water"])
                low = _whole("max-peers", self["max-peers"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            if self["swim"] == "off":
                raise usage.UsageError("--high-water: not with --swim off")
            if high < low:
                raise usage.UsageError(f"--high-water: must be at least --max-peers ({low}), not {high}")
        super().postOptions()

    def _check_swim(self) -> None:
        for option, addresses in (
            ("swim-seed", self["swim-seed"]),
            ("swim-advertise", [self["swim-advertise"]]),
        ):
            for address in addresses:
                if address is None:
                    continue
                try:
                    parse_address(address)
                except ValueError as e:
                    raise usage.UsageError(f"--{option}: {e}") from None
        if self["swim"] == "off":
            for option in ("swim-seed", "swim-advertise"):
                if self[option]:
                    raise usage.UsageError(f"--{option}: not with --swim off")
            return
        if self["swim"] != "auto":
            try:
                parse_swim_listen(self["swim"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


def _whole(option: str, text: object) -> int:
    try:
        value = int(str(text))
    except ValueError:
        raise ValueError(f"--{option}: expected a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"--{option}: must be at least 1, not {text!r}")
    return value
