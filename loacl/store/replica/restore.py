"""Restore the database from its replica, latest or as it was at a moment, into a new file
that is checked before it may take the database's place.

A point-in-time restore is exact to the event: Litestream restores whole sync batches (one a
second while level-0 files are kept, coarser after compaction), so LOACL restores a state from
after the moment and cuts the log at it (``store.cut``). The log is append-only, so any state
that holds an event recorded after the moment holds every event recorded up to it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from loacl.domain.errors import LoaclError
from loacl.private import FILE_MODE
from loacl.store import backup, codec, cut, migrations
from loacl.store.projections import Projections
from loacl.store.rebuild import remove_file, swap_in
from loacl.store.replica import litestream
from loacl.store.replica.status import meta_folder
from loacl.store.sqlite import connect
from loacl.store.subscriptions import Subscriber

# The replica lists its files' times to the second: a file listed at or after moment + SLACK was
# made after the moment, whatever its sub-second part and the few milliseconds between
# Litestream reading the WAL and stamping the file.
SLACK = timedelta(seconds=2)


@dataclass(frozen=True)
class Restored:
    path: Path  # the new, checked file
    txid: int  # the replica's transaction restored
    events: int
    last_recorded: datetime | None  # the time of its last event
    cut_after: int | None  # the position the log was cut after, for a point in time
    newest: datetime  # when the replica's newest file was made


def restore(
    config: Path, db_path: Path, moment: datetime | None, projections: Projections,
    subscribers: Sequence[Subscriber],
) -> Restored:
    """Restore into ``<db>.from-replica``, cut at ``moment`` if given, check it (integrity and
    the hash chain); the database itself is not touched."""
    files = litestream.replica_files(config, db_path)
    if not files:
        raise LoaclError("replica_empty", "the replica holds no backup yet")
    newest = max(f.created for f in files)
    out = db_path.with_name(db_path.name + ".from-replica")
    remove_file(out)
    try:
        txid = _restore_state(config, db_path, out, moment, files)
        cut_after = None
        if moment is not None:
            cut_after, out = _cut(out, moment, projections, subscribers)
        events, last = _check(out)
        os.chmod(out, FILE_MODE)  # it holds everything the database does (loacl.private)
    except BaseException:
        remove_file(out)
        remove_file(db_path.with_name(db_path.name + ".cut"))
        raise
    return Restored(out, txid, events, last, cut_after, newest)


def _restore_state(
    config: Path, db_path: Path, out: Path, moment: datetime | None,
    files: list[litestream.LtxFile],
) -> int:
    if moment is None:
        return litestream.restore(config, db_path, out)
    later = [f.max_txid for f in files if f.created >= moment + SLACK]
    if later:
        try:
            txid = litestream.restore(config, db_path, out, upto=min(later))
        except LoaclError:
            remove_file(out)  # not a state the replica can give (compacted away): the newest
        else:
            if _recorded_after(out, moment):
                return txid
            remove_file(out)  # shipped late, or nothing happened since: the newest then
    return litestream.restore(config, db_path, out)


def _recorded_after(path: Path, moment: datetime) -> bool:
    conn = connect(path, readonly=True)
    try:
        return cut.first_after(conn, codec.format_time(moment)) is not None
    except sqlite3.OperationalError:
        return False  # no log in it yet
    finally:
        conn.close()


def _cut(
    restored: Path, moment: datetime, projections: Projections,
    subscribers: Sequence[Subscriber],
) -> tuple[int | None, Path]:
    """Cut the restored file's log after the last event recorded up to ``moment``; the
    position cut after (None: nothing to cut) and the file to use."""
    conn = connect(restored)
    try:
        version = migrations.current(conn)
        if version > migrations.LATEST:
            raise LoaclError("schema_too_new", f"the replica's database is at schema {version}, "
                                               "newer than this LOACL knows")
        first = cut.first_after(conn, codec.format_time(moment))
        if first is None:
            return None, restored
        # The cut knows the newest schema's tables: bring an older file up to it first.
        migrations.up(conn)
    finally:
        conn.close()
    fresh = restored.with_name(restored.name.removesuffix(".from-replica") + ".cut")
    cut.cut(restored, fresh, first - 1, projections, subscribers)
    remove_file(restored)
    final = restored
    fresh.rename(final)
    return first - 1, final


def _check(path: Path) -> tuple[int, datetime | None]:
    conn = connect(path)
    try:
        try:
            result = backup.check(conn)
        except sqlite3.DatabaseError as exc:
            raise LoaclError("backup_corrupt", f"the restored file is not a LOACL database: "
                                               f"{exc}") from exc
        if not result.ok:
            raise LoaclError("backup_corrupt", f"the restored log fails its audit at event "
                                               f"{result.bad_seq}: {result.reason}")
        row = conn.execute("SELECT recorded_at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return result.events, codec.parse_time(row[0]) if row else None


def swap(restored: Path, db_path: Path) -> Path | None:
    """Put the restored file in the database's place, keeping a copy of the database it
    replaces (its path, or None when there was none). Litestream's local state beside the
    database described the old file: it goes, and Litestream starts afresh from the replica's
    position on its next start. Call it with the server stopped (``ServeLock`` held)."""
    kept = swap_in(db_path, restored, before="restore")
    shutil.rmtree(meta_folder(db_path), ignore_errors=True)
    return kept


def would_lose(db_path: Path, restored: Path, *, force: bool) -> int | None:
    """How many of the database's events the restored file lacks (None: the database cannot
    be read); refuses to lose any (``events_would_be_lost``) unless ``force``."""
    if not db_path.exists():
        return 0
    live = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    incoming = sqlite3.connect(f"file:{restored}?mode=ro", uri=True)
    try:
        live.execute("PRAGMA busy_timeout=5000")
        lost: int | None = backup.events_lost(live, incoming)
    except sqlite3.DatabaseError as exc:
        if not force:
            raise LoaclError(
                "database_unreadable",
                f"{db_path} cannot be read ({exc}), so what the restore would drop is unknown; "
                "pass --force to replace it all the same (a copy of it is kept)",
            ) from exc
        lost = None
    finally:
        incoming.close()
        live.close()
    if lost and not force:
        raise LoaclError(
            "events_would_be_lost",
            f"{db_path} holds {lost} events that the restored state does not: restoring it "
            "would lose them. Pass --force to restore all the same (a copy of the current "
            "database is kept)",
        )
    return lost


def holds_events(db_path: Path) -> int:
    """How many events the database holds: 0 when it does not exist or has no log yet."""
    if not db_path.exists() or db_path.stat().st_size == 0:
        return 0
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()
    return int(row[0])

