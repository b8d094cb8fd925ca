"""Text for people: tables of connections and members, a node's summary, monitor lines."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from netmodels.cli.events import MonitorEvent
from netmodels.core.reasons import CloseReason

__all__ = ["age", "connections_table", "event_line", "members_table", "status_text", "table"]

#: The keys of ``GET /status`` shown by :func:`status_text` in their own lines;
#: any other key is a topology's (or the datagram layer's) section.
_CORE_KEYS = {"node", "keepalive", "limits", "connections", "counters", "peers"}


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart, under a header; ``-`` for None."""
    cells = [list(columns)] + [["-" if value is None else str(value) for value in row] for row in rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return "\n".join(lines)


def age(since: float | None, now: float) -> str | None:
    """``since`` (Unix time) as how long ago: ``4s``, ``12m``, ``3h``, ``2d``."""
    if not since:
        return None
    seconds = max(0.0, now - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _rtt(value: float | None) -> str | None:
    return None if value is None else f"{value * 1000:.1f}ms"


def connections_table(records: Sequence[Mapping[str, Any]], now: float) -> str:
    """One row per connection record, as ``GET /status`` lists them."""
    columns = ("ID", "DIRECTION", "TRANSPORT", "PEER", "PEER ID", "STATE", "FOR", "REASON", "BY", "ERRNO",
               "RTT", "MSGS IN/OUT", "BYTES IN/OUT")  # fmt: skip
    rows = []
    for record in records:
        ended = record.get("closed_at")
        lasted = age(record.get("opened_at"), ended or now)
        rows.append((
            record["id"], record["direction"], record["transport"], record["peer"], record.get("peer_id"),
            record["state"], lasted, record.get("reason"), record.get("initiator"), record.get("errno"),
            _rtt(record.get("rtt")), f"{record['messages_in']}/{record['messages_out']}",
            f"{record['bytes_in']}/{record['bytes_out']}",
        ))  # fmt: skip
    return table(columns, rows)


def members_table(members: Sequence[Mapping[str, Any]], now: float) -> str:
    """One row per p2p member: id, state, since, incarnation, connected, last reason."""
    columns = ("ID", "STATE", "SINCE", "INCARNATION", "CONNECTED", "LAST REASON", "ENDPOINTS")
    rows = [
        (
            member["id"],
            member["state"],
            age(member.get("since"), now),
            member.get("incarnation"),
            "yes" if member.get("connected") else "no",
            member.get("last_reason"),
            " ".join(member.get("endpoints") or ()) or None,
        )
        for member in members
    ]
    return table(columns, rows)


def status_text(status: Mapping[str, Any]) -> str:
    """A node's ``GET /status`` as a page of ``name  value`` lines."""
    node = status["node"]
    records = status.get("connections", [])
    states: dict[str, int] = {}
    for record in records:
        states[record["state"]] = states.get(record["state"], 0) + 1
    counters = status.get("counters", {})
    reasons = {str(reason): counters.get(str(reason), 0) for reason in CloseReason}
    lines = [
        (
            "node",
            f"{node['id']}: {node['topology']} {node['role']} over {node['transport']}, app {node['app']}",
        ),
        ("listening", " ".join(node.get("listening") or ()) or None),
        ("connecting", " ".join(_client_target(client) for client in node.get("connecting") or ()) or None),
        ("keepalive", status.get("keepalive", {}).get("describe")),
        ("connections", _counts(states) or "none"),
        ("closes", _counts(reasons) or "none"),
    ]
    for key, section in status.items():
        if key not in _CORE_KEYS:
            lines.append((key, _section(section)))
    if "peers" in status:
        lines.append(("members", f"{len(status['peers'])} (netmodels members URL lists them)"))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name.ljust(width)}  {'-' if value is None else value}" for name, value in lines)


def _client_target(client: Mapping[str, Any]) -> str:
    """A dialer as ``peer (state)``: ``tcp:host:port (backing-off, refused)``."""
    reason = f", {client['last_reason']}" if client.get("last_reason") else ""
    return f"{client['peer']} ({client['state']}{reason})"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()) if count)


def _section(section: Any) -> str:
    """A topology's status section flattened to ``key=value`` pairs."""
    if not isinstance(section, Mapping):
        return str(section)
    pairs = []
    for key, value in section.items():
        if isinstance(value, Mapping) and any(isinstance(inner, Mapping | list) for inner in value.values()):
            # A table of its own (a hub's clients, say): --json has it; here, how many.
            value = f"{len(value)}"
        elif isinstance(value, Mapping):
            value = "{" + _section(value).replace(" ", ",") + "}"
        elif isinstance(value, list | tuple):
            value = ",".join(str(item) for item in value) or "-"
        pairs.append(f"{key}={value}")
    return " ".join(pairs)


def event_line(event: MonitorEvent, clock: Callable[[], float] = time.time) -> str:
    """One monitor event as a line: UTC time, what happened, to what."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock()))
    subject = event.subject
    if event.kind == "member":
        was = "new" if event.previous is None else event.previous
        link = "connected" if subject.get("connected") else "not connected"
        reason = f", last reason {subject['last_reason']}" if subject.get("last_reason") else ""
        return f"{stamp} member     {subject['id']}: {was} -> {subject['state']} ({link}{reason})"
    if event.kind == "missed":
        return f"{stamp} missed     {event.count} closes between two polls (poll more often: --interval)"
    if event.kind == "restarted":
        return f"{stamp} restarted  the node's totals went back: a new process, {subject.get('id', '?')}"
    peer = subject["peer"] + (f" ({subject['peer_id']})" if subject.get("peer_id") else "")
    where = f"#{subject['id']} {subject['direction']} {subject['transport']} {peer}"
    head = f"{stamp} {event.kind.ljust(10)} {where}"
    if event.kind == "opened":
        return head
    errno = f", {subject['errno']}" if subject.get("errno") else ""
    detail = f": {subject['detail']}" if subject.get("detail") else ""
    return f"{head} {subject['reason']} ({subject['initiator']}{errno}){detail}"
