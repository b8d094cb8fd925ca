"""
The callback topology's stores, in SQLite (the standard library's ``sqlite3``).

:class:`Outbox` (server): the messages accepted by ``deliver`` and not yet
acknowledged, kept in order per client, bounded per client and in total, and
the clients that ever registered. With a file path it survives a restart of
the server (WAL journal, ``synchronous=NORMAL``: a crash of the process loses
nothing committed; a power cut may lose the last transactions); without one
it lives in memory and dies with the process.

:class:`DeliveredLog` (client): the highest message id delivered to the
application from each server store, so a message delivered twice (at least
once on the wire) reaches the application once, across client restarts too
when it has a file.

No Twisted here: both are plain objects over a database connection, called
from the reactor thread. Each call is one short statement.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable

__all__ = ["DeliveredLog", "Outbox", "OutboxFull", "UnknownClient"]

#: Defaults for the bounds of an :class:`Outbox`.
MAX_PER_CLIENT = 10_000
MAX_TOTAL = 1_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    client TEXT PRIMARY KEY,
    callback TEXT,
    first_seen REAL NOT NULL
);
-- AUTOINCREMENT: an id is never reused, even after the newest rows are
-- deleted, so a client may drop any id it has already seen from this store.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    payload BLOB NOT NULL,
    accepted REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_client ON messages (client, id);
CREATE TABLE IF NOT EXISTS delivered (store TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
"""


class OutboxFull(Exception):
    """The outbox holds as many messages as it may (for this client, or in all)."""


class UnknownClient(KeyError):
    """No client of this id ever registered with this server."""

    def __str__(self) -> str:
        return f"unknown client {self.args[0]!r}: it never registered with this server"


def _open(path: str | None) -> sqlite3.Connection:
    # isolation_level=None: every statement commits on its own.
    db = sqlite3.connect(path or ":memory:", isolation_level=None)
    if path:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


class Outbox:
    """
    Undelivered messages, per client, in the order they were accepted.

    :param path: the SQLite file; ``None`` keeps everything in memory (lost
        when the process ends).
    :param max_per_client: the most messages waiting for one client.
    :param max_total: the most messages waiting in all.
    :param wall_clock: Unix time, for the ``accepted`` column.
    """

    def __init__(
        self,
        path: str | None = None,
        max_per_client: int = MAX_PER_CLIENT,
        max_total: int = MAX_TOTAL,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_per_client < 1 or max_total < 1:
            raise ValueError("outbox bounds must be at least 1")
        self.path = path
        self.max_per_client = max_per_client
        self.max_total = max_total
        self._wall_clock = wall_clock
        self._db = _open(path)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'store'").fetchone()
        if row is None:
            store = secrets.token_hex(8)
            self._db.execute("INSERT INTO meta (key, value) VALUES ('store', ?)", (store,))
        else:
            store = str(row[0])
        #: Identifies this store: message ids are unique within it, for ever.
        self.store_id = store
        self._known: dict[str, str | None] = dict(self._db.execute("SELECT client, callback FROM clients"))
        self._depth: dict[str, int] = dict(
            self._db.execute("SELECT client, COUNT(*) FROM messages GROUP BY client")
        )
        self._total = sum(self._depth.values())

    # Clients

    def remember(self, client_id: str, callback: str | None) -> None:
        """``client_id`` registered (with this callback endpoint): messages for it are accepted."""
        if client_id in self._known and self._known[client_id] == callback:
            return
        self._db.execute(
            "INSERT INTO clients (client, callback, first_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (client) DO UPDATE SET callback = excluded.callback",
            (client_id, callback, self._wall_clock()),
        )
        self._known[client_id] = callback

    def known(self, client_id: str) -> bool:
        return client_id in self._known

    def clients(self) -> list[str]:
        """Every client that ever registered, in name order."""
        return sorted(self._known)

    # Messages

    def enqueue(self, client_id: str, payload: bytes) -> int:
        """
        Keep ``payload`` for ``client_id``; returns its message id (greater than
        every id before it). Raises :class:`UnknownClient` or :class:`OutboxFull`.
        """
        if client_id not in self._known:
            raise UnknownClient(client_id)
        depth = self._depth.get(client_id, 0)
        if depth >= self.max_per_client:
            raise OutboxFull(
                f"outbox for {client_id!r} is full: {depth} undelivered messages "
                f"(the limit per client is {self.max_per_client})"
            )
        if self._total >= self.max_total:
            raise OutboxFull(
                f"outbox is full: {self._total} undelivered messages (the limit is {self.max_total})"
            )
        cursor = self._db.execute(
            "INSERT INTO messages (client, payload, accepted) VALUES (?, ?, ?)",
            (client_id, payload, self._wall_clock()),
        )
        self._depth[client_id] = depth + 1
        self._total += 1
        message_id = cursor.lastrowid
        assert message_id is not None
        return message_id

    def peek(self, client_id: str, after: int = 0, limit: int = 64) -> list[tuple[int, bytes]]:
        """Up to ``limit`` waiting messages for ``client_id`` with ids above ``after``, oldest first."""
        if not self._depth.get(client_id):
            return []
        rows = self._db.execute(
            "SELECT id, payload FROM messages WHERE client = ? AND id > ? ORDER BY id LIMIT ?",
            (client_id, after, limit),
        ).fetchall()
        return [(int(message_id), bytes(payload)) for message_id, payload in rows]

    def ack(self, client_id: str, up_to: int) -> int:
        """``client_id`` has every message up to id ``up_to``: forget them. Returns how many."""
        if not self._depth.get(client_id):
            return 0
        removed = self._db.execute(
            "DELETE FROM messages WHERE client = ? AND id <= ?", (client_id, up_to)
        ).rowcount
        if removed:
            left = self._depth[client_id] - removed
            if left:
                self._depth[client_id] = left
            else:
                del self._depth[client_id]
            self._total -= removed
        return int(removed)

    def depth(self, client_id: str | None = None) -> int:
        """Messages waiting for ``client_id``, or for everyone."""
        return self._total if client_id is None else self._depth.get(client_id, 0)

    def close(self) -> None:
        self._db.close()


class DeliveredLog:
    """
    On a callback client: the highest message id delivered to the application
    from each server store (an :class:`Outbox`'s ``store_id``). A store's ids
    only grow and it delivers them in order, so one number per store is the
    whole de-duplication state.

    :param path: the SQLite file (the client's ``--outbox``); ``None`` keeps
        it in memory, which de-duplicates within one run of the client only.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._db = _open(path) if path else None
        self._last: dict[str, int] = {}
        if self._db is not None:
            self._last = {
                str(store): int(last) for store, last in self._db.execute("SELECT * FROM delivered")
            }

    def last(self, store: str) -> int:
        return self._last.get(store, 0)

    def advance(self, store: str, message_id: int) -> None:
        """Every message of ``store`` up to ``message_id`` has reached the application."""
        self._last[store] = message_id
        if self._db is not None:
            self._db.execute(
                "INSERT INTO delivered (store, last_id) VALUES (?, ?) "
                "ON CONFLICT (store) DO UPDATE SET last_id = excluded.last_id",
                (store, message_id),
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
