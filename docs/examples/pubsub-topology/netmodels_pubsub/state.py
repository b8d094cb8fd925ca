"""
What a broker and a client remember, sans-IO: plain data, no sockets, no clock.

The broker's :class:`Subscriptions` maps topics to subscribers (any hashable
key; the glue uses connection ids); the client's :class:`Inbox` counts what
arrived. Both render their part of ``GET /status``.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable
from typing import Any, Final, Generic, TypeVar

__all__ = ["MAX_SUBSCRIPTIONS", "Inbox", "Subscriptions", "TooManySubscriptions"]

#: The most topics one subscriber may hold: each costs the broker memory.
MAX_SUBSCRIPTIONS: Final = 256


#: What identifies a subscriber (the glue uses connection ids).
Key = TypeVar("Key", bound=Hashable)


class TooManySubscriptions(ValueError):
    """A subscriber asked for more than :data:`MAX_SUBSCRIPTIONS` topics."""


class Subscriptions(Generic[Key]):
    """Who subscribes to what, on the broker."""

    def __init__(self, max_per_subscriber: int = MAX_SUBSCRIPTIONS) -> None:
        self.max_per_subscriber = max_per_subscriber
        self._by_topic: dict[str, set[Key]] = {}
        self._by_subscriber: dict[Key, set[str]] = {}
        #: Publications received, and copies of them sent to subscribers.
        self.published = 0
        self.forwarded = 0

    def subscribe(self, subscriber: Key, topic: str) -> bool:
        """
        Add ``subscriber`` to ``topic``; False if it was there already.
        Raises :class:`TooManySubscriptions` past the per-subscriber limit.
        """
        topics = self._by_subscriber.setdefault(subscriber, set())
        if topic in topics:
            return False
        if len(topics) >= self.max_per_subscriber:
            raise TooManySubscriptions(
                f"more than {self.max_per_subscriber} topics for one subscriber (adding {topic!r})"
            )
        topics.add(topic)
        self._by_topic.setdefault(topic, set()).add(subscriber)
        return True

    def forget(self, subscriber: Key) -> list[str]:
        """Drop ``subscriber`` from every topic (it left); the topics it had."""
        topics = self._by_subscriber.pop(subscriber, set())
        for topic in topics:
            subscribers = self._by_topic[topic]
            subscribers.discard(subscriber)
            if not subscribers:
                # A topic nobody follows is not kept: clients choose the names.
                del self._by_topic[topic]
        return sorted(topics)

    def subscribers(self, topic: str) -> list[Key]:
        """Who gets a publication on ``topic`` (a copy: delivery may forget some)."""
        return list(self._by_topic.get(topic, ()))

    def topics_of(self, subscriber: Key) -> list[str]:
        return sorted(self._by_subscriber.get(subscriber, ()))

    def status(self) -> dict[str, Any]:
        """``{"topics": {topic: subscriber count}, ...}`` for ``GET /status``."""
        return {
            "topics": {topic: len(self._by_topic[topic]) for topic in sorted(self._by_topic)},
            "published": self.published,
            "forwarded": self.forwarded,
        }


class Inbox:
    """What a client received and sent."""

    def __init__(self, subscriptions: Iterable[str] = ()) -> None:
        self.subscriptions = tuple(subscriptions)
        self.received = 0
        self.published = 0
        self.by_topic: collections.Counter[str] = collections.Counter()
        self.last: dict[str, Any] | None = None

    def add(self, publisher: str, topic: str, payload: bytes) -> None:
        self.received += 1
        self.by_topic[topic] += 1
        self.last = {
            "publisher": publisher,
            "topic": topic,
            "text": payload[:256].decode("utf-8", "replace"),
        }

    def status(self) -> dict[str, Any]:
        """``{"received": N, ...}`` for ``GET /status``."""
        return {
            "received": self.received,
            "published": self.published,
            "subscriptions": list(self.subscriptions),
            "by_topic": dict(sorted(self.by_topic.items())),
            "last": self.last,
        }
