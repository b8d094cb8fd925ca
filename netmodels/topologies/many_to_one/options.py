"""The many-to-one topology's own command-line options and the settings they make."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen
from twisted.python import usage

__all__ = ["ManyToOneOptions", "ManyToOneSettings"]


@frozen
class ManyToOneSettings:
    #: The groups a client declares (sent in its HELLO).
    groups: tuple[str, ...] = ()
    #: Endpoints where the server accepts raw line clients.
    raw_listen: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ManyToOneSettings:
        return cls(groups=tuple(options.get("group", ())), raw_listen=tuple(options.get("raw-listen", ())))


class ManyToOneOptions(usage.Options):
    def __init__(self) -> None:
        super().__init__()
        self["group"] = []
        self["raw-listen"] = []

    def opt_group(self, name: str) -> None:
        """A group to join (client), e.g. ops (repeatable)."""
        self["group"].append(name)

    def opt_raw_listen(self, description: str) -> None:
        """Accept raw line clients (nc) on this endpoint (server; repeatable)."""
        self["raw-listen"].append(description)
