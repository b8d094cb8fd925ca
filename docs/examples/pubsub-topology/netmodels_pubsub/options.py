"""
The topology's own command-line options and the settings they make.

``twistd netmodels --topology pubsub`` merges :class:`PubSubOptions` into its
own, so ``--subscribe`` and ``--publish`` sit next to ``--listen``,
``--interval`` and the rest; :func:`parse_settings` checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen
from twisted.python import usage

from netmodels_pubsub.wire import check_topic

__all__ = ["PubSubOptions", "PubSubSettings", "parse_settings"]


class PubSubOptions(usage.Options):
    """``--subscribe TOPIC`` and ``--publish TOPIC=TEXT``, both repeatable."""

    def __init__(self) -> None:
        super().__init__()
        # Repeatable options collect into lists; usage.Options has no default for them.
        self["subscribe"] = []
        self["publish"] = []

    def opt_subscribe(self, topic: str) -> None:
        """client: receive what is published on TOPIC (repeatable)."""
        self["subscribe"].append(topic)

    def opt_publish(self, publication: str) -> None:
        """client: publish TEXT on TOPIC every --interval seconds, given as TOPIC=TEXT (repeatable)."""
        self["publish"].append(publication)


@frozen
class PubSubSettings:
    """A node's pubsub settings (kept by the node as ``node.settings``)."""

    #: Topics a client subscribes to, in order, without repeats.
    subscribe: tuple[str, ...] = ()
    #: ``(topic, text)`` pairs a client publishes every ``--interval`` seconds.
    publish: tuple[tuple[str, str], ...] = ()


def _topic(option: str, topic: str) -> str:
    try:
        return check_topic(topic)
    except ValueError as e:
        raise ValueError(f"--{option}: {e}") from None


def parse_settings(options: Mapping[str, Any], default_role: str) -> PubSubSettings:
    """
    Check ``--subscribe`` and ``--publish`` and return the settings; a
    ``ValueError`` starts with the option's name.
    """
    subscribe = tuple(dict.fromkeys(_topic("subscribe", t) for t in options.get("subscribe") or ()))
    publish = []
    for publication in options.get("publish") or ():
        topic, equals, text = publication.partition("=")
        if not equals or not topic:
            raise ValueError(f"--publish: expected TOPIC=TEXT, not {publication!r}")
        publish.append((_topic("publish", topic), text))
    role = options.get("role") or default_role
    if role == "broker":
        for option, given in (("subscribe", subscribe), ("publish", publish)):
            if given:
                raise ValueError(f"--{option}: only a client has it; the broker forwards")
    return PubSubSettings(subscribe, tuple(publish))
