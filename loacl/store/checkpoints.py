"""Subscriber checkpoints: where each named subscriber has got to, and how its last try went.

Checkpoints are not projections: a checkpoint records what its subscriber has *done* (sent a
mail, written rows of its own), which the log does not say. So ``loacl replay`` leaves them, and
the subscribers' own tables, as they are; rebuilding a table subscriber is ``reset`` (its tables
emptied and its position set to 0 in one transaction), and an effect subscriber is never reset
by LOACL, since that would repeat every effect it ever had.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from loacl.domain.errors import LoaclError
from loacl.store import codec

_COLUMNS = "name, position, updated_at, last_error, error_at, failures"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    position: int = 0
    updated_at: str | None = None
    last_error: str | None = None
    error_at: str | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class SubscriberStatus:
    name: str
    position: int
    lag_events: int  # events after the position
    lag_seconds: float  # age of the oldest unprocessed event; 0 when caught up
    updated_at: str | None
    last_error: str | None
    error_at: str | None
    failures: int


class Moved(Exception):
    """The stored position is not the one the runner holds: a reset, or a second runner of the
    same name. The runner takes the stored one and reads on from there."""

    def __init__(self, position: int) -> None:
        super().__init__(f"the checkpoint moved to {position}")
        self.position = position


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    name, position, updated_at, last_error, error_at, failures = row
    return Checkpoint(name, position, updated_at, last_error, error_at, failures)


def load(conn: sqlite3.Connection, name: str) -> Checkpoint:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM subscriber_checkpoints WHERE name = ?", (name,)
    ).fetchone()
    return Checkpoint(name) if row is None else _checkpoint(row)


def ensure(conn: sqlite3.Connection, name: str) -> Checkpoint:
    """The subscriber's checkpoint, created at 0 the first time it runs."""
    conn.execute(  # autocommit: a statement is its own transaction
        "INSERT INTO subscriber_checkpoints (name) VALUES (?) ON CONFLICT DO NOTHING", (name,)
    )
    return load(conn, name)


def advance(
    conn: sqlite3.Connection, name: str, expected: int, position: int, now: datetime
) -> None:
    """Move the position, inside the caller's transaction, if it is still ``expected``."""
    moved = conn.execute(
        "UPDATE subscriber_checkpoints SET position = ?, updated_at = ?, failures = 0 "
        "WHERE name = ? AND position = ?",
        (position, codec.format_time(now), name, expected),
    ).rowcount
    if not moved:
        raise Moved(load(conn, name).position)


def record_failure(
    conn: sqlite3.Connection, name: str, error: str, failures: int, now: datetime
) -> None:
    conn.execute(
        "INSERT INTO subscriber_checkpoints (name, position, last_error, error_at, failures) "
        "VALUES (?, 0, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET last_error = "
        "excluded.last_error, error_at = excluded.error_at, failures = excluded.failures",
        (name, error, codec.format_time(now), failures),
    )


def reset(conn: sqlite3.Connection, name: str, tables: Iterable[str]) -> None:
    """Empty a table subscriber's tables and start it again from 0, in one transaction: a
    running server's runner notices the moved checkpoint and reads from the start."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in tables:
            conn.execute(f'DELETE FROM "{table}"')
        conn.execute(
            "INSERT INTO subscriber_checkpoints (name, position) VALUES (?, 0) "
            "ON CONFLICT (name) DO UPDATE SET position = 0, updated_at = NULL, failures = 0",
            (name,),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def status(
    conn: sqlite3.Connection, names: Iterable[str], now: datetime,
    kept_elsewhere: Mapping[str, tuple[int, str | None]] | None = None,
) -> list[SubscriberStatus]:
    """Every named subscriber, and any other with a checkpoint row, by name. Reads only.
    ``kept_elsewhere``: the position (and when it moved) of subscribers whose checkpoint is
    not this file's (an effect's, with the log in PostgreSQL)."""
    try:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM subscriber_checkpoints").fetchall()
    except sqlite3.OperationalError as exc:
        raise LoaclError(
            "schema_out_of_date", "the database needs migrations: run `loacl migrate up`"
        ) from exc
    found = {c.name: c for c in map(_checkpoint, rows)}
    (head,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    out = []
    for name in sorted({*names, *found, *(kept_elsewhere or ())}):
        checkpoint = found.get(name) or Checkpoint(name)
        if kept_elsewhere is not None and name in kept_elsewhere:
            position, updated_at = kept_elsewhere[name]
            checkpoint = replace(checkpoint, position=position, updated_at=updated_at)
        lag_seconds = 0.0
        oldest = conn.execute(
            "SELECT recorded_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
            (checkpoint.position,),
        ).fetchone()
        if oldest is not None:
            lag_seconds = max(0.0, (now - codec.parse_time(oldest[0])).total_seconds())
        out.append(SubscriberStatus(
            name, checkpoint.position, max(0, head - checkpoint.position), lag_seconds,
            checkpoint.updated_at, checkpoint.last_error, checkpoint.error_at,
            checkpoint.failures,
        ))
    return out
