"""Replay into a fresh database file: the event log and the tables the log does not derive are
copied, every read table is built again from the events alone, and the new file takes the old
one's place in one rename. A damaged read table or index is never read, so this repairs it."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from loacl.domain.errors import LoaclError
from loacl.store import audit, backup, migrations
from loacl.store.backup import ServeLock
from loacl.store.keys import Keyring
from loacl.store.projections import Projections
from loacl.store.replay import Progress, ReplayResult, apply_all
from loacl.store.search import is_search_table
from loacl.store.sqlite import connect

# Rebuilt, not copied: the stream index is derived from the log; the migrations' record and
# the key state are copied on their own (the fresh file has its own rows already).
_REPLACED = ("schema_migrations", "key_state")
_NOT_COPIED = frozenset(["stream_index", *_REPLACED])


def remove_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@dataclass(frozen=True)
class Rebuilt(ReplayResult):
    safety_copy: Path | None = None  # the file that was replaced, kept as it was


def rebuild(
    db_path: Path, projections: Projections, *, progress: Progress | None = None,
    chunk: int = 5000, keys: Keyring | None = None,
) -> Rebuilt:
    """Refuses while a server holds the database (``database_in_use``). The replaced file is
    kept in the safety folder (a second name for it, so keeping it costs no copy)."""
    if not db_path.exists():
        raise LoaclError("database_not_found", f"no database at {db_path}")
    fresh = db_path.with_name(db_path.name + ".replay")
    with ServeLock(db_path):
        remove_file(fresh)
        try:
            count = _build(db_path, fresh, projections, progress, chunk, keys)
            kept = swap_in(db_path, fresh, before="replay")
        except BaseException:
            remove_file(fresh)
            raise
    return Rebuilt(count, list(projections.tables), kept)


def _build(
    db_path: Path, fresh: Path, projections: Projections, progress: Progress | None, chunk: int,
    keys: Keyring | None,
) -> int:
    source = connect(db_path, readonly=True)
    try:
        version = migrations.current(source)
    finally:
        source.close()
    conn = connect(fresh)
    try:
        migrations.up(conn, to=version)
        conn.execute("ATTACH DATABASE ? AS src", (f"file:{db_path}?mode=ro",))
        conn.execute("BEGIN IMMEDIATE")
        _copy_kept(conn, projections)
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
        chain = audit.verify(conn)
        if not chain.ok:
            raise LoaclError(
                "chain_broken",
                f"the event log fails its check at event {chain.bad_seq}: {chain.reason}; "
                "replay would rebuild from an edited log. Restore a backup, or run "
                "`loacl repair NEW_FILE`",
            )
        (total,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        _, count = apply_all(
            conn, projections, progress, chunk, total,
            keys.attach(conn) if keys is not None else None,
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return count


def _columns(conn: sqlite3.Connection, table: str) -> str:
    return ", ".join(f'"{r[1]}"' for r in conn.execute(f'PRAGMA main.table_info("{table}")'))


def _copy_kept(conn: sqlite3.Connection, projections: Projections) -> None:
    """The log, the blobs, the checkpoints and every other table replay does not build."""
    names = [str(n) for (n,) in conn.execute(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )]
    in_source = {str(n) for (n,) in conn.execute(
        "SELECT name FROM src.sqlite_master WHERE type = 'table'"
    )}
    for table in names:
        if (table in projections.tables or table in _NOT_COPIED or table not in in_source
                or is_search_table(table)):
            continue
        cols = _columns(conn, table)
        try:
            conn.execute(f'INSERT INTO main."{table}" ({cols}) SELECT {cols} FROM src."{table}"')
        except sqlite3.DatabaseError as exc:
            if not audit.damaged(exc):
                raise
            raise LoaclError(
                "log_damaged",
                f"table {table}, which replay copies rather than rebuilds, cannot be read "
                f"({exc}); `loacl audit verify` names the first bad event, and `loacl repair "
                "NEW_FILE` copies every readable row into a new file",
            ) from exc
    for table in _REPLACED:
        if table in names and table in in_source:
            conn.execute(f'DELETE FROM main."{table}"')
            conn.execute(f'INSERT INTO main."{table}" SELECT * FROM src."{table}"')
    if "stream_index" in names:
        conn.execute(
            "INSERT INTO main.stream_index (stream, version, seq) SELECT stream, version, seq "
            "FROM main.events WHERE seq <= (SELECT coalesce(max(indexed_seq), 0) "
            "FROM main.event_log_head) ORDER BY stream, version"
        )


def swap_in(db_path: Path, fresh: Path, *, before: str) -> Path | None:
    """Put ``fresh`` in the place of ``db_path`` in one rename, keeping the replaced file in
    the safety folder (named after the command, ``before``); its path there, or None when
    there was no file to replace."""
    # The old file's WAL must not outlive it: SQLite would apply its frames to the new file.
    kept = None
    if db_path.exists():
        old = connect(db_path)
        try:
            old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass  # a damaged file may refuse; its WAL is removed below all the same
        finally:
            old.close()
    with open(fresh, "rb") as f:
        os.fsync(f.fileno())
    if db_path.exists():
        kept = _keep(db_path, before)
    os.replace(fresh, db_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    dir_fd = os.open(db_path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return kept


def _keep(db_path: Path, before: str) -> Path:
    """A second name for the file about to be replaced (and for its WAL, should a damaged file
    have refused the checkpoint), in the safety folder."""
    kept = backup.safety_path(db_path, before)
    kept.parent.mkdir(mode=0o700, exist_ok=True)
    for suffix in ("", "-wal"):
        source = Path(f"{db_path}{suffix}")
        if source.exists() and source.stat().st_size:
            try:
                os.link(source, f"{kept}{suffix}")
            except OSError:  # another file system, or one without links
                shutil.copy2(source, f"{kept}{suffix}")
    return kept
