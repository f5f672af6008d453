"""``loacl copy --from URL --to URL``: an installation's event log moved between a SQLite file
and a PostgreSQL database, either way, and its hash chain checked on arrival.

What moves: the events, byte for byte and in order (so the hashes hold), the log's head, the
idempotency keys, the data keys with their ids (a sealed value names its key by id; an erased
key, its wrapped key NULL, stays erased) and the key state (master key id, erasure count, where
sealing began), the subscriber checkpoints of the subscribers that act outside the database,
and what those did and have still to do: webhook deliveries (pending ones are sent where the
log arrives, under the same ids), each endpoint's run of failures, and the handoff mails sent
(``store.operational``). Everything is read in one snapshot of the source and streamed in
chunks: neither the log nor any table is held in memory whole.

Subscriber checkpoints. A checkpoint says what its subscriber has done up to a position. For a
subscriber that acts outside the database (a webhook sent, a mail) that is true wherever the
log goes, and carrying it keeps the move from doing it all again. A table subscriber
(``subscriptions.Table``, such as ``usage``) has done its work in tables of its own, which do
not move (PostgreSQL has no home for them yet, and they are derived from the log anyway): its
checkpoint is left behind, so that it starts from position 0 where the log arrives and builds
its tables again, as ``loacl subscribers reset`` would.

Into PostgreSQL: the database is migrated first (``store.postgres.migrate``), and everything is
written in one transaction holding the log's head row, the chain is walked in that same
transaction and compared with the source's head, and only then committed. A copy that fails its
check is rolled back: the database is left as empty as it was found.

Into SQLite: a new file is built beside the target (``NAME.copy``), migrated to the latest
schema, filled, its chain audited against the source's head, and its read tables built by
replaying the log (as ``loacl replay`` does), so the file is a working LOACL database. Only
then does it take the target's name; a failed copy removes it, and the target is never
touched. Tables outside the log that only SQLite has (uploaded files' bytes, knowledge vectors
and the like) are not in PostgreSQL and so are not in the copy either:
``Copied.left_behind`` names those that held rows.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loacl.domain.errors import LoaclError
from loacl.store import audit, migrations
from loacl.store.audit import AuditResult
from loacl.store.backup import ServeLock
from loacl.store.codec import GENESIS_HASH
from loacl.store.keys import Keyring
from loacl.store.postgres import Connection, migrate
from loacl.store.postgres.eventstore import verify as pg_verify
from loacl.store.projections import default_projections
from loacl.store.rebuild import remove_file, swap_in
from loacl.store.records import EVENT_COLUMNS
from loacl.store.replay import apply_all
from loacl.store.search import is_search_table
from loacl.store.sqlite import connect, database_path
from loacl.store.subscribers import default_subscribers
from loacl.store.subscriptions import Table

Progress = Callable[[int, int], None]
# Asked for one progress callback per stage: "copy", "verify", "replay".
Reporter = Callable[[str], Progress]

CHUNK = 5000

# The tables both backends have, with the columns carried, in the order they are written.
_APPEND_KEYS = ("append_keys", ("key", "stream", "first_seq", "last_seq"))
_DATA_KEYS = (
    "data_keys", ("key_id", "subject", "wrapped", "master_id", "created_at", "erased_at")
)
_CHECKPOINTS = (
    "subscriber_checkpoints",
    ("name", "position", "updated_at", "last_error", "error_at", "failures"),
)
# What the effects did and have still to do (store.operational): PostgreSQL keeps them for the
# instances, so they move with the log. A delivery's claim stays behind: nobody is sending it.
_DELIVERIES = (
    "webhook_deliveries",
    ("delivery_id", "message_id", "webhook_id", "event_type", "source_seq", "ordering_key",
     "payload", "status", "attempts", "created_at", "retry_until", "next_attempt_at",
     "last_attempt_at", "response_status", "latency_ms", "last_error", "delivered_at"),
)
_HEALTH = ("webhook_health",
           ("webhook_id", "failures_in_row", "last_success_at", "last_failure_at"))
_MAILS = ("handoff_mails", ("kind", "key", "conversation_id", "sent_at"))
_SIDE_TABLES = (_APPEND_KEYS, _DATA_KEYS, _CHECKPOINTS, _DELIVERIES, _HEALTH, _MAILS)
_EVENT_NAMES = tuple(c.strip() for c in EVENT_COLUMNS.split(","))
# Derived from the log or carried above: not "left behind" when a SQLite source has them.
_LOG_TABLES = frozenset([
    "events", "event_log_head", "stream_index", "schema_migrations", "integrity_mark",
    "key_state", *(name for name, _ in _SIDE_TABLES),
])


def table_subscribers() -> dict[str, tuple[str, ...]]:
    """The table subscribers' names and their own tables: their checkpoints stay behind."""
    return {s.name: s.tables for s in default_subscribers() if isinstance(s, Table)}


@dataclass(frozen=True)
class Copied:
    events: int
    last_hash: str
    data_keys: int
    erased_keys: int
    append_keys: int
    checkpoints: int  # carried
    restarted: list[str]  # table subscribers whose checkpoints stay behind: they start at 0
    left_behind: dict[str, int] = field(default_factory=dict)  # SQLite-only tables with rows
    replayed: int = 0  # events replayed into the read tables (a SQLite target)
    safety_copy: Path | None = None  # an empty file the SQLite target replaced, kept


@dataclass
class _Counts:
    data_keys: int = 0
    erased_keys: int = 0
    append_keys: int = 0
    checkpoints: int = 0
    restarted: list[str] = field(default_factory=list)

    def side(self, table: str, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
        """The rows of a side table that are carried, counted."""
        if table == "subscriber_checkpoints":
            tables = table_subscribers()
            self.restarted += [str(r[0]) for r in rows if r[0] in tables]
            rows = [r for r in rows if r[0] not in tables]
            self.checkpoints += len(rows)
        elif table == "data_keys":
            self.data_keys += len(rows)
            self.erased_keys += sum(1 for r in rows if r[2] is None)
        elif table == "append_keys":
            self.append_keys += len(rows)
        return list(rows)


# -- URLs -------------------------------------------------------------------------------------


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _check_urls(source: str, target: str) -> None:
    kinds = {is_postgres(source), is_postgres(target)}
    for url in (source, target):
        if not is_postgres(url):
            database_path(url)  # invalid_database_url for anything else
    if kinds != {True, False}:
        raise LoaclError(
            "invalid_copy",
            "loacl copy moves a log between a SQLite file and a PostgreSQL database: one of "
            "--from and --to must be sqlite:///..., the other postgresql://... (a SQLite file "
            "is copied whole by `loacl backup`, a PostgreSQL database by pg_dump)",
        )


async def copy(
    source: str, target: str, *, keys: Keyring | None = None,
    progress: Reporter | None = None, chunk: int = CHUNK,
) -> Copied:
    """Copy the log at ``source`` to ``target`` (URLs). ``keys`` opens the sealed fields
    that a SQLite target's read tables hold (the master key the source's data keys are
    sealed with); without them such a log's replay fails."""
    _check_urls(source, target)
    if is_postgres(target):
        return await to_postgres(database_path(source), target, progress=progress, chunk=chunk)
    return await to_sqlite(source, database_path(target), keys=keys, progress=progress,
                           chunk=chunk)


def _stage(progress: Reporter | None, name: str) -> Progress | None:
    return progress(name) if progress is not None else None


def _not_verified(found: AuditResult, head: tuple[int, str], where: str) -> LoaclError | None:
    """The error for a copied chain that fails its walk or ends elsewhere than the source's
    head; None when it verifies and matches."""
    seq, hash_ = head
    if not found.ok:
        reason = f"event {found.bad_seq}: {found.reason}"
    elif (found.events, found.last_hash) != (seq, hash_):
        reason = (f"it ends at event {found.events} with hash {found.last_hash}, the source's "
                  f"head at event {seq} with hash {hash_}")
    else:
        return None
    return LoaclError(
        "copy_not_verified",
        f"the copied log fails its check ({reason}); {where}. `loacl audit verify` on the "
        "source says whether the source itself is damaged",
    )


# -- SQLite to PostgreSQL ---------------------------------------------------------------------


def _sqlite_tables(conn: sqlite3.Connection) -> set[str]:
    return {str(n) for (n,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )}


def _chunks(conn: sqlite3.Connection, sql: str, chunk: int) -> Iterator[list[Any]]:
    cursor = conn.execute(sql)
    try:
        while rows := cursor.fetchmany(chunk):
            yield rows
    finally:
        cursor.close()


def _left_behind(conn: sqlite3.Connection, tables: set[str]) -> dict[str, int]:
    """The source's tables that are neither the log's nor derived from it, with their rows."""
    derived = set(default_projections().tables)
    for own in table_subscribers().values():
        derived.update(own)
    found = {}
    for table in sorted(tables - _LOG_TABLES - derived):
        if is_search_table(table):
            continue
        (rows,) = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        if rows:
            found[table] = int(rows)
    return found


def _open_source(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise LoaclError("database_not_found", f"no database at {path}")
    return connect(path, readonly=True)


async def to_postgres(
    path: Path, url: str, *, progress: Reporter | None = None, chunk: int = CHUNK
) -> Copied:
    src = _open_source(path)
    try:
        src.execute("BEGIN")  # one snapshot: a server appending meanwhile is not half-copied
        tables = _sqlite_tables(src)
        if "events" not in tables:
            raise LoaclError("schema_out_of_date", f"{path} holds no event log: is it LOACL's?")
        row = src.execute("SELECT seq, hash FROM event_log_head WHERE id = 1").fetchone()
        head = (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)
        left = _left_behind(src, tables)
        conn = await migrate.connect(url)
        try:
            counts = await _fill_postgres(conn, src, tables, head, progress, chunk)
        finally:
            await conn.close()
    finally:
        if src.in_transaction:
            src.execute("COMMIT")
        src.close()
    return Copied(head[0], head[1], counts.data_keys, counts.erased_keys, counts.append_keys,
                  counts.checkpoints, counts.restarted, left)


async def _fill_postgres(
    conn: Connection, src: sqlite3.Connection, tables: set[str], head: tuple[int, str],
    progress: Reporter | None, chunk: int,
) -> _Counts:
    await migrate.up(conn)
    await migrate.check(conn)
    counts = _Counts()
    async with conn.transaction():
        # Held to the commit: no instance appends to the database while it is being filled.
        top = await conn.fetchval("SELECT seq FROM event_log_head WHERE id = 1 FOR UPDATE")
        held = await conn.fetchval(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM events LIMIT 1) e) + "
            "(SELECT count(*) FROM (SELECT 1 FROM data_keys LIMIT 1) k)"
        )
        if top or held:
            raise LoaclError(
                "copy_target_not_empty",
                "the PostgreSQL database already holds an event log (or data keys): copy into "
                "a new, empty database",
            )
        show = _stage(progress, "copy")
        done = 0
        for rows in _chunks(src, f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq", chunk):
            await conn.copy_records_to_table("events", records=rows, columns=_EVENT_NAMES)
            done = int(rows[-1][0])
            if show:
                show(done, max(head[0], done))
        if show and done == 0:
            show(0, 0)
        await conn.execute(
            "UPDATE event_log_head SET seq = $1, hash = $2 WHERE id = 1", head[0], head[1]
        )
        for table, columns in _SIDE_TABLES:
            if table not in tables:
                continue
            for rows in _chunks(src, f"SELECT {', '.join(columns)} FROM {table}", chunk):
                # COPY writes the ids given, identity column or not (OVERRIDING SYSTEM VALUE).
                carried = counts.side(table, rows)
                if carried:
                    await conn.copy_records_to_table(table, records=carried, columns=columns)
        # New data keys and deliveries are numbered after the copied ones: an id is never
        # reused (and a delivery's is its order within a key).
        for table, column in (("data_keys", "key_id"), ("webhook_deliveries", "delivery_id")):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), max({column})) "
                f"FROM {table} HAVING max({column}) IS NOT NULL"
            )
        if "key_state" in tables:
            state = src.execute(
                "SELECT master_id, erasures, sealed_after FROM key_state WHERE id = 1"
            ).fetchone()
        else:  # a log from before sealing: every event of it is plaintext
            state = (None, 0, head[0])
        if state is not None:
            await conn.execute(
                "UPDATE key_state SET master_id = $1, erasures = $2, sealed_after = $3 "
                "WHERE id = 1", *state,
            )
        found = await pg_verify(conn, chunk)
        error = _not_verified(found, head, "nothing was written to PostgreSQL")
        if error is not None:
            raise error  # rolls the transaction back
    return counts


# -- PostgreSQL to SQLite ---------------------------------------------------------------------


async def _pg_chunks(conn: Connection, sql: str, chunk: int) -> AsyncIterator[list[Any]]:
    cursor = await conn.cursor(sql)
    while rows := await cursor.fetch(chunk):
        yield [tuple(r) for r in rows]


def _holds_events(path: Path) -> bool:
    if not path.exists():
        return False
    conn = connect(path, readonly=True)
    try:
        if "events" not in _sqlite_tables(conn):
            return False
        return conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None
    finally:
        conn.close()


async def to_sqlite(
    url: str, path: Path, *, keys: Keyring | None = None, progress: Reporter | None = None,
    chunk: int = CHUNK,
) -> Copied:
    fresh = path.with_name(path.name + ".copy")
    with ServeLock(path):
        if _holds_events(path):
            raise LoaclError(
                "copy_target_not_empty", f"{path} already holds an event log: name a new file"
            )
        remove_file(fresh)
        try:
            copied = await _build_sqlite(url, fresh, keys, progress, chunk)
            kept = swap_in(path, fresh, before="copy")
        except BaseException:
            remove_file(fresh)
            raise
    return dataclasses.replace(copied, safety_copy=kept)


async def _build_sqlite(
    url: str, fresh: Path, keys: Keyring | None, progress: Reporter | None, chunk: int
) -> Copied:
    pg = await migrate.connect(url)
    conn = connect(fresh)
    try:
        migrations.up(conn)
        schema = await migrate.current(pg)
        if schema != migrate.LATEST:
            raise LoaclError(
                "schema_out_of_date" if schema < migrate.LATEST else "schema_too_new",
                f"the PostgreSQL database is at schema {schema}, this LOACL at "
                f"{migrate.LATEST}: run `loacl migrate up` with the LOACL that matches it",
            )
        async with pg.transaction(isolation="repeatable_read", readonly=True):
            head, counts = await _fill_sqlite(pg, conn, progress, chunk)
        found = audit.verify(conn, progress=_stage(progress, "verify"))
        error = _not_verified(found, head, "the new file was removed")
        if error is not None:
            raise error
        _, replayed = apply_all(
            conn, default_projections(), _stage(progress, "replay"), chunk, head[0],
            keys.attach(conn) if keys is not None else None,
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
        await pg.close()
    return Copied(head[0], head[1], counts.data_keys, counts.erased_keys, counts.append_keys,
                  counts.checkpoints, counts.restarted, replayed=replayed)


async def _fill_sqlite(
    pg: Connection, conn: sqlite3.Connection, progress: Reporter | None, chunk: int
) -> tuple[tuple[int, str], _Counts]:
    row = await pg.fetchrow("SELECT seq, hash FROM event_log_head WHERE id = 1")
    head = (int(row["seq"]), str(row["hash"])) if row else (0, GENESIS_HASH)
    show = _stage(progress, "copy")
    marks = ", ".join("?" * len(_EVENT_NAMES))
    done = 0
    async for rows in _pg_chunks(pg, f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq", chunk):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({marks})", rows)
        conn.execute("COMMIT")
        done = int(rows[-1][0])
        if show:
            show(done, max(head[0], done))
    if show and done == 0:
        show(0, 0)
    counts = _Counts()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO event_log_head (id, seq, hash, indexed_seq) VALUES (1, ?, ?, ?)",
        (head[0], head[1], head[0]),
    )
    conn.execute(
        "INSERT INTO stream_index (stream, version, seq) "
        "SELECT stream, version, seq FROM events ORDER BY stream, version"
    )
    for table, columns in _SIDE_TABLES:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        async for rows in _pg_chunks(pg, f"SELECT {', '.join(columns)} FROM {table}", chunk):
            conn.executemany(sql, counts.side(table, rows))
    state = await pg.fetchrow(
        "SELECT master_id, erasures, sealed_after FROM key_state WHERE id = 1"
    )
    if state is not None:
        conn.execute(
            "UPDATE key_state SET master_id = ?, erasures = ?, sealed_after = ? WHERE id = 1",
            tuple(state),
        )
    conn.execute("COMMIT")
    return head, counts
