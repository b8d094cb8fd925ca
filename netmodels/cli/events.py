"""
What ``netmodels monitor`` reports, worked out from two successive
``GET /status`` documents. Sans-IO: fed documents, it returns events.

A node keeps its last 256 closed connections, so a poll can miss closes when
more than that many happen between two polls; its per-reason totals do not
forget, and the difference is reported as a ``missed`` event rather than lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from netmodels.core.reasons import CloseReason

__all__ = ["MonitorEvent", "changes", "closes_total"]

#: Connection states in which a record has ended.
_ENDED = ("closed", "failed")


@frozen
class MonitorEvent:
    """
    One change: ``kind`` is ``opened``, ``closed`` or ``failed`` (a connect
    that never was) for connections, ``member`` for a p2p member's state,
    ``missed`` for closes that fell out of the node's history, ``restarted``
    when the node's totals went back (a new process behind the URL).
    """

    kind: str
    subject: Mapping[str, Any]
    #: For ``member``: the state before (None when the member is new).
    previous: str | None = None
    #: For ``missed``: how many.
    count: int = 0

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"event": self.kind, **self.subject}
        if self.kind == "member":
            document["previous_state"] = self.previous
        if self.kind == "missed":
            document = {"event": self.kind, "count": self.count}
        return document


def closes_total(status: Mapping[str, Any]) -> int:
    """Every close and failed connect the node has counted since it started."""
    counters = status.get("counters", {})
    return sum(int(counters.get(str(reason), 0)) for reason in CloseReason)


def changes(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[MonitorEvent]:
    """
    The events between ``previous`` and ``current`` status documents of one
    node, in order: connections by id, then members by id. The first
    document (``previous`` None) is the baseline: nothing has happened yet.
    """
    if previous is None:
        return []
    if closes_total(current) < closes_total(previous):
        return [MonitorEvent("restarted", current.get("node", {}))]
    events = _connection_events(previous, current)
    seen_ending = sum(1 for event in events if event.kind in _ENDED)
    missed = closes_total(current) - closes_total(previous) - seen_ending
    if missed > 0:
        events.append(MonitorEvent("missed", {}, count=missed))
    return events + _member_events(previous, current)


def _connection_events(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[MonitorEvent]:
    before = {record["id"]: record for record in previous.get("connections", [])}
    events = []
    for record in sorted(current.get("connections", []), key=lambda record: record["id"]):
        old = before.get(record["id"])
        state = record["state"]
        if state in _ENDED:
            if old is None or old["state"] not in _ENDED:
                events.append(MonitorEvent(state, record))
        elif state == "open" and (old is None or old["state"] != "open"):
            events.append(MonitorEvent("opened", record))
    return events


def _member_events(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[MonitorEvent]:
    before = {member["id"]: member for member in previous.get("peers", [])}
    events = []
    for member in sorted(current.get("peers", []), key=lambda member: member["id"]):
        old = before.get(member["id"])
        if old is None or old["state"] != member["state"] or old["connected"] != member["connected"]:
            events.append(MonitorEvent("member", member, previous=None if old is None else old["state"]))
    return events
