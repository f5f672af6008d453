"""The log as stored, row by row, for people reading it (``loacl events``): payloads and
metadata as the JSON text the log holds, not decoded into events, so that an event of a type
this LOACL does not know still shows."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

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


DELTA = "assistant.delta"
REPLY_ENDS = frozenset({"assistant.completed", "assistant.failed", "assistant.interrupted"})


@dataclass(frozen=True, slots=True)
class EventFilter:
    stream: str | None = None
    type: str | None = None
    # A reply's text arrives as many delta events; left out, their count goes on its end.
    deltas: bool = True

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
        if not self.deltas and self.type != DELTA:
            clauses.append(f"type != '{DELTA}'")
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


@dataclass(frozen=True, slots=True)
class Deltas:
    count: int
    chars: int


def deltas_of(conn: sqlite3.Connection, end: StoredEvent) -> Deltas | None:
    """The delta events a reply's end closes (None for any other event)."""
    if end.type not in REPLY_ENDS:
        return None
    try:
        message_id = json.loads(end.payload).get("message_id")
    except (ValueError, AttributeError):
        return None
    count, chars = conn.execute(
        f"SELECT count(*), coalesce(sum(length(json_extract(payload, '$.text'))), 0) "
        f"FROM events WHERE seq > ? AND {IN_STREAM} AND type = '{DELTA}' "
        "AND seq < ? AND json_extract(payload, '$.message_id') = ?",
        [0, end.stream, end.stream, end.seq, message_id],
    ).fetchone()
    return Deltas(int(count), int(chars))


def actor(event: StoredEvent) -> str:
    """Who caused the event, as its metadata says ("-" when nobody is named)."""
    try:
        return str(json.loads(event.metadata).get("actor") or "-")
    except (ValueError, AttributeError):
        return "-"


def summary(payload: str, width: int = 100, value_width: int = 32) -> str:
    """A payload in one short line: ``key=value`` pairs, long texts cut."""
    try:
        data: Any = json.loads(payload)
    except ValueError:
        return _cut(payload, width)
    if not isinstance(data, dict):
        return _cut(json.dumps(data), width)
    parts = [f"{key}={_short(value, value_width)}" for key, value in data.items()]
    return _cut(" ".join(parts), width)


def _short(value: Any, width: int) -> str:
    if isinstance(value, str):
        return json.dumps(_cut(value, width), ensure_ascii=False)
    if isinstance(value, dict | list):
        return _cut(json.dumps(value, separators=(",", ":"), ensure_ascii=False), width)
    return json.dumps(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
