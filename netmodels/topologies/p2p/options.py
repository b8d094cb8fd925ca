"""The p2p topology's own command-line options and the settings they make."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen
from twisted.python import usage

from netmodels.runtime.endpoints import check_endpoint

__all__ = ["P2POptions", "P2PSettings"]


@frozen
class P2PSettings:
    #: The most peers a node dials (it accepts more, up to --max-connections).
    max_peers: int = 32
    #: How many nodes to run in this process (``--nodes``), meshed on loopback.
    nodes: int = 1

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> P2PSettings:
        return cls(
            max_peers=_whole("max-peers", options.get("max-peers", "32")),
            nodes=_whole("nodes", options.get("nodes", "1")),
        )


class P2POptions(usage.Options):
    optParameters = [
        ["max-peers", None, "32", "The most peers a node dials; beyond, a partial mesh."],
        ["nodes", None, "1", "Run N nodes in this process on ephemeral loopback ports, meshed."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["peer"] = []

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
        super().postOptions()


def _whole(option: str, text: object) -> int:
    try:
        value = int(str(text))
    except ValueError:
        raise ValueError(f"--{option}: expected a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"--{option}: must be at least 1, not {text!r}")
    return value
