"""Rebuild every read table from the log into fresh tables, then swap them in at once.

The fresh tables are TEMP tables with the same names and schema: inside this connection an
unqualified name finds the temp table first, so the ordinary projection handlers fill them. The
swap runs in one write transaction that first folds in whatever was appended meanwhile; a replay
that fails anywhere leaves the old tables as they were.
"""

from __future__ import annotations

import contextlib
import gc
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from loacl.domain.conversations import END_EVENTS, AssistantDelta
from loacl.store.codec import Opener
from loacl.store.projections import Projections
from loacl.store.records import read_all_sync

Progress = Callable[[int, int], None]

_INDEX = re.compile(r"^CREATE\s+(UNIQUE\s+)?INDEX\s+(IF\s+NOT\s+EXISTS\s+)?", re.IGNORECASE)
_TABLE = re.compile(r"^CREATE\s+TABLE\s+", re.IGNORECASE)


@dataclass(frozen=True)
class ReplayResult:
    events: int
    tables: list[str]


def _schema(conn: sqlite3.Connection, tables: list[str]) -> list[tuple[str, str, str]]:
    marks = ",".join("?" * len(tables))
    rows = conn.execute(
        f"SELECT type, name, sql FROM main.sqlite_master WHERE tbl_name IN ({marks}) "
        # Not the triggers: the fresh tables keep no search index; the main tables' triggers
        # fill it when the fresh rows are copied in.
        "AND type IN ('table', 'index') "
        "AND sql IS NOT NULL ORDER BY type DESC",  # tables before indexes
        tables,
    ).fetchall()
    return [(str(t), str(n), str(s)) for t, n, s in rows]


def _drop_temp(conn: sqlite3.Connection, tables: list[str]) -> None:
    for table in tables:
        conn.execute(f'DROP TABLE IF EXISTS temp."{table}"')


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Replay builds a few objects per event and keeps none past its chunk; none of them forms
    a cycle. Left on, the cyclic collector would walk each chunk's records again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_ENDS = frozenset(cls.event_type for cls in END_EVENTS)
_DELTA = AssistantDelta.event_type


class _Reply(msgspec.Struct):
    message_id: str = ""


_reply_of = msgspec.json.Decoder(_Reply).decode


def superseded(rows: Sequence[Sequence[Any]]) -> set[int]:
    """The positions of the deltas whose reply ends later among ``rows``. The end event carries
    the reply's whole text and its projection writes it over what the deltas wrote, so replay
    leaves their sealed text unopened: opening it is replay's largest cost once personal fields
    are sealed (a cipher call per delta), and it changes nothing the tables end with."""
    ended: set[str] = set()
    found: set[int] = set()
    for row in reversed(rows):
        kind = row[3]
        if kind in _ENDS:
            ended.add(_reply_of(row[5]).message_id)
        elif kind == _DELTA and _reply_of(row[5]).message_id in ended:
            found.add(row[0])
    return found


def apply_all(
    conn: sqlite3.Connection, projections: Projections, progress: Progress | None, chunk: int,
    total: int, keys: Opener | None = None,
) -> tuple[int, int]:
    """Every event through the projections, a chunk a transaction; the last seq and the count.
    Sealed fields are opened only where a handler reads them: in events of the types
    ``projections.opened`` names (a type no handler takes, or only handlers registered with
    ``Projections.on_sealed``, stays sealed), and not in deltas a later end overwrites."""
    done = 0
    count = 0
    with _cyclic_gc_paused():
        while True:
            # Short read transactions: a long one would stop checkpoints and grow the WAL.
            conn.execute("BEGIN")
            events = read_all_sync(
                conn, after=done, limit=chunk, keys=keys,
                unopened=superseded if keys is not None else None,
                opened_types=projections.opened,
            )
            projections.apply(conn, events)
            conn.execute("COMMIT")
            if not events:
                break
            done = events[-1].seq
            count += len(events)
            if progress:
                progress(done, max(total, done))
    return done, count


def replay(
    conn: sqlite3.Connection,
    projections: Projections,
    *,
    progress: Progress | None = None,
    chunk: int = 5000,
    keys: Opener | None = None,
) -> ReplayResult:
    """Sealed fields are opened with ``keys``: those of erased subjects read as ``[erased]``."""
    tables = projections.tables
    (total,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    _drop_temp(conn, tables)
    try:
        for kind, name, sql in _schema(conn, tables):
            if kind == "table":
                conn.execute(_TABLE.sub("CREATE TEMP TABLE ", sql, count=1))
            else:
                conn.execute(
                    _INDEX.sub(lambda m: f"CREATE {m[1] or ''}INDEX ", sql, count=1).replace(
                        f"INDEX {name} ", f"INDEX temp.{name} ", 1
                    )
                )
        done, count = apply_all(conn, projections, progress, chunk, total, keys)
        conn.execute("BEGIN IMMEDIATE")
        late = read_all_sync(conn, after=done, keys=keys, opened_types=projections.opened)
        projections.apply(conn, late)
        count += len(late)
        for table in tables:
            conn.execute(f'DELETE FROM main."{table}"')
            conn.execute(f'INSERT INTO main."{table}" SELECT * FROM temp."{table}"')
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        _drop_temp(conn, tables)
    return ReplayResult(count, list(tables))


def dump_tables(conn: sqlite3.Connection, tables: list[str]) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in a stable order: what replay must reproduce."""
    return {
        table: sorted(
            (tuple(row) for row in conn.execute(f'SELECT * FROM main."{table}"')), key=repr
        )
        for table in tables
    }
