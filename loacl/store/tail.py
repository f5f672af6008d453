"""The log as stored, row by row, for people reading it (``loacl events``): payloads and
metadata as the JSON text the log holds, not decoded into events, so that an event of a type
this LOACL does not know still shows. Sealed personal fields are opened when the master key is
at hand (``[erased]`` once their subject is erased), and shown as ``<sealed>`` when not."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from loacl.domain.errors import LoaclError
from loacl.store.keys import MARK, METADATA_AAD, PLAIN, Keyring
from loacl.store.records import EVENT_COLUMNS, IN_STREAM

SEALED = "<sealed>"


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


def page_after(conn: sqlite3.Connection, after: int, limit: int) -> list[StoredEvent]:
    """At most ``limit`` events after ``after``, in order: a long read in bounded steps."""
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
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


def deltas_of(
    conn: sqlite3.Connection, end: StoredEvent, keys: Keyring | None = None
) -> Deltas | None:
    """The delta events a reply's end closes (None for any other event)."""
    if end.type not in REPLY_ENDS:
        return None
    try:
        message_id = json.loads(end.payload).get("message_id")
    except (ValueError, AttributeError):
        return None
    # The payloads whole: SQLite's JSON functions cut a sealed value at its leading NUL.
    texts = [str(json.loads(p).get("text") or "") for (p,) in conn.execute(
        f"SELECT payload FROM events WHERE seq > ? AND {IN_STREAM} AND type = '{DELTA}' "
        "AND seq < ? AND json_extract(payload, '$.message_id') = ?",
        [0, end.stream, end.stream, end.seq, message_id],
    )]
    aad = f"{DELTA}.text".encode()
    return Deltas(len(texts), sum(len(_opened(t, aad, keys)) for t in texts))


def _opened(value: str, aad: bytes, keys: Keyring | None) -> str:
    if not value.startswith(MARK):
        return value
    if value.startswith(PLAIN):
        return value[len(PLAIN):]
    if keys is None:
        return SEALED
    try:
        return keys.open(value, aad)
    except (LoaclError, ValueError):
        return SEALED


def opened(event: StoredEvent, keys: Keyring | None) -> StoredEvent:
    """The event with its sealed fields opened (its JSON written again), or as it is when it
    has none."""
    if "\\u0000" not in event.payload and "\\u0000" not in event.metadata:
        return event
    payload, metadata = event.payload, event.metadata
    try:
        data = json.loads(payload)
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, str):
                    data[name] = _opened(value, f"{event.type}.{name}".encode(), keys)
            payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        meta = json.loads(metadata)
        if isinstance(meta, dict) and isinstance(meta.get("client_ip"), str):
            meta["client_ip"] = _opened(meta["client_ip"], METADATA_AAD, keys)
            metadata = json.dumps(meta, ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return event
    return StoredEvent(event.seq, event.stream, event.version, event.type,
                       event.schema_version, payload, metadata, event.recorded_at, event.hash)


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
