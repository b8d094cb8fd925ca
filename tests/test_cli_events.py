"""
The operator CLI's sans-IO parts: what ``netmodels monitor`` reports between
two status documents, the URLs it accepts, and the tables it prints.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from netmodels.cli.client import base_url
from netmodels.cli.events import changes
from netmodels.cli.render import age, connections_table, event_line, members_table, status_text, table


def record(
    connection_id: int, state: str = "open", reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    document = {
        "id": connection_id,
        "peer": f"127.0.0.1:{40000 + connection_id}",
        "peer_id": f"peer{connection_id}",
        "direction": "inbound",
        "transport": "tcp",
        "state": state,
        "opened_at": 1000.0,
        "closed_at": None if reason is None else 1012.0,
        "reason": reason,
        "initiator": None if reason is None else "remote",
        "errno": None,
        "detail": "",
        "bytes_in": 10,
        "bytes_out": 20,
        "messages_in": 1,
        "messages_out": 2,
        "rtt": None,
    }
    document.update(extra)
    return document


def member(node_id: str, state: str = "alive", connected: bool = True, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "state": state, "since": 990.0, "incarnation": 7, "connected": connected,
            "last_reason": None, "endpoints": [f"tcp:host=127.0.0.1:port={node_id}"], **extra}  # fmt: skip


def status(records: list[dict[str, Any]], peers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A status document whose per-reason totals count ``records`` that ended."""
    counters: dict[str, int] = {"opened_inbound": len(records)}
    for entry in records:
        if entry["reason"]:
            counters[entry["reason"]] = counters.get(entry["reason"], 0) + 1
    document: dict[str, Any] = {"node": {"id": "n"}, "connections": records, "counters": counters}
    if peers is not None:
        document["peers"] = peers
    return document


def kinds(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (event.kind, event.subject.get("id"), event.previous, event.count)
        for event in changes(previous, current)
    ]


class ChangesTests(SynchronousTestCase):
    def test_first_document_is_the_baseline(self) -> None:
        self.assertEqual(kinds(None, status([record(1), record(2, "closed", "reset")])), [])

    def test_nothing_changed(self) -> None:
        document = status([record(1)], [member("b")])
        self.assertEqual(kinds(document, document), [])

    def test_opened_then_closed(self) -> None:
        empty = status([])
        opened = status([record(1)])
        closed = status([record(1, "closed", "reset")])
        self.assertEqual(kinds(empty, opened), [("opened", 1, None, 0)])
        self.assertEqual(kinds(opened, closed), [("closed", 1, None, 0)])
        self.assertEqual(kinds(closed, closed), [])

    def test_handshaking_is_not_open_yet(self) -> None:
        self.assertEqual(kinds(status([]), status([record(1, "handshaking")])), [])
        self.assertEqual(
            kinds(status([record(1, "handshaking")]), status([record(1)])), [("opened", 1, None, 0)]
        )

    def test_ended_between_polls_is_still_reported(self) -> None:
        """A connection that opened and closed between two polls, and a failed connect, in id order."""
        after = status([record(3, "failed", "refused"), record(2, "closed", "timeout")])
        self.assertEqual(kinds(status([]), after), [("closed", 2, None, 0), ("failed", 3, None, 0)])

    def test_closes_that_left_the_history_are_counted(self) -> None:
        before = status([record(1)])
        after = status([record(1, "closed", "reset")])
        after["counters"]["reset"] = 5
        self.assertEqual(kinds(before, after), [("closed", 1, None, 0), ("missed", None, None, 4)])

    def test_totals_going_back_is_a_restart(self) -> None:
        before = status([record(1, "closed", "reset")])
        self.assertEqual(kinds(before, status([])), [("restarted", "n", None, 0)])

    def test_member_changes(self) -> None:
        before = status([], [member("b"), member("c")])
        after = status([], [member("b", "suspect"), member("c", connected=False), member("d")])
        self.assertEqual(
            kinds(before, after),
            [("member", "b", "alive", 0), ("member", "c", "alive", 0), ("member", "d", None, 0)],
        )

    def test_connections_before_members(self) -> None:
        before = status([record(1)], [member("b")])
        after = status([record(1, "closed", "timeout")], [member("b", "dead", connected=False)])
        self.assertEqual(kinds(before, after), [("closed", 1, None, 0), ("member", "b", "alive", 0)])


class EventLineTests(SynchronousTestCase):
    def line(self, previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
        return [event_line(event, clock=lambda: 0.0) for event in changes(previous, current)]

    def test_close_says_why(self) -> None:
        closed = record(1, "closed", "reset", errno="ECONNRESET", detail="peer sent RST")
        self.assertEqual(
            self.line(status([record(1)]), status([closed])),
            ["1970-01-01T00:00:00Z closed     #1 inbound tcp 127.0.0.1:40001 (peer1) "
             "reset (remote, ECONNRESET): peer sent RST"],
        )  # fmt: skip

    def test_member_and_missed(self) -> None:
        before = status([], [member("b")])
        after = status([], [member("b", "dead", connected=False, last_reason="timeout")])
        after["counters"]["refused"] = 2
        self.assertEqual(
            self.line(before, after),
            [
                "1970-01-01T00:00:00Z missed     2 closes between two polls (poll more often: --interval)",
                "1970-01-01T00:00:00Z member     b: alive -> dead (not connected, last reason timeout)",
            ],
        )

    def test_json_shape(self) -> None:
        [event] = changes(status([], [member("b")]), status([], [member("b", "suspect")]))
        self.assertEqual(event.as_dict()["event"], "member")
        self.assertEqual(event.as_dict()["previous_state"], "alive")


class RenderTests(SynchronousTestCase):
    def test_table_aligns_columns(self) -> None:
        self.assertEqual(table(("A", "LONGER"), [("xyz", None), (1, 2)]), "A    LONGER\nxyz  -\n1    2")

    def test_age(self) -> None:
        self.assertEqual(
            [age(100.0, now) for now in (104.9, 220.0, 7300.0, 100000.0)], ["4s", "2m", "2h", "1d"]
        )
        self.assertIsNone(age(None, 10.0))

    def test_connections_table(self) -> None:
        lines = connections_table([record(1, "closed", "reset", rtt=0.0021)], now=2000.0).splitlines()
        self.assertEqual(lines[0].split()[:3], ["ID", "DIRECTION", "TRANSPORT"])
        self.assertEqual(
            lines[1].split(), ["1", "inbound", "tcp", "127.0.0.1:40001", "peer1", "closed", "12s", "reset",
                               "remote", "-", "2.1ms", "1/2", "10/20"],
        )  # fmt: skip

    def test_status_sections(self) -> None:
        """A topology's section is one line; a table inside it is counted, not spelled out."""
        document = status([record(1)])
        document["node"] = {"id": "hub", "topology": "many-to-one", "role": "server", "transport": "tcp",
                            "app": "chat", "listening": ["tcp:127.0.0.1:8750"], "connecting": []}  # fmt: skip
        document["many_to_one"] = {
            "clients": {"a": {"backlog": 0}, "b": {"backlog": 3}},
            "dropped": {"slow": 1},
        }
        lines = dict(line.split(None, 1) for line in status_text(document).splitlines())
        self.assertEqual(lines["many_to_one"], "clients=2 dropped={slow=1}")
        self.assertEqual(lines["node"], "hub: many-to-one server over tcp, app chat")
        self.assertEqual(lines["connections"], "open 1")

    def test_members_table(self) -> None:
        lines = members_table([member("b", connected=False, last_reason="timeout")], now=1000.0).splitlines()
        self.assertEqual(
            lines[1].split(), ["b", "alive", "10s", "7", "no", "timeout", "tcp:host=127.0.0.1:port=b"]
        )


class BaseUrlTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        for given, expected in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/status", "http://127.0.0.1:8080"),
            ("https://node.example/ops/status/", "https://node.example/ops"),
        ]:
            self.assertEqual(base_url(given), expected)

    def test_refused(self) -> None:
        for given, words in [
            ("127.0.0.1:8080", "not an http:// or https:// URL"),
            ("ftp://host", "not an http:// or https:// URL"),
            ("http://:8080", "names no host"),
            ("http://host:70000", "bad port"),
            ("http://host:0", "bad port"),
            ("http://host:8080/status?x=1", "without ?query"),
        ]:
            with self.assertRaises(ValueError) as raised:
                base_url(given)
            self.assertIn(words, str(raised.exception))
