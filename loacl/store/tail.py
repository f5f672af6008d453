"""The log as stored, row by row, for people reading it (``loacl events``): payloads and
metadata as the JSON text the log holds, not decoded into events, so that an event of a type
this LOACL does not know still shows."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from loacl.store.records import EVENT_COLUMNS, IN_STREAM


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    stream: str
    version: int
    type: str
    schema_version: int
    payload: str
    metadata: str
    recorded_at: str
    hash: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    stream: str | None = None
    type: str | None = None

    def where(self) -> tuple[str, list[object]]:
        """SQL after ``seq > ?`` and its parameters after the position."""
        clauses: list[str] = ["seq > ?"]
        params: list[object] = []
        if self.stream:
            clauses.append(IN_STREAM)
            params += [self.stream, self.stream]
        if self.type:
            clauses.append("type = ?")
            params.append(self.type)
        return " AND ".join(clauses), params


def head(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


def event_at(conn: sqlite3.Connection, seq: int) -> StoredEvent | None:
    row = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchone()
    return StoredEvent(*row) if row else None


def events_after(
    conn: sqlite3.Connection, after: int, which: EventFilter = EventFilter()
) -> list[StoredEvent]:
    where, params = which.where()
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq", [after, *params]
    ).fetchall()
    return [StoredEvent(*row) for row in rows]


def last_events(
    conn: sqlite3.Connection, count: int, which: EventFilter = EventFilter()
) -> list[StoredEvent]:
    """The newest ``count`` events that match, oldest first."""
    if count <= 0:
        return []
    where, params = which.where()
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq DESC LIMIT ?",
        [0, *params, count],
    ).fetchall()
    return [StoredEvent(*row) for row in reversed(rows)]
