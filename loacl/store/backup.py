"""Consistent copies of the database while the server writes, and putting one back."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from loacl.domain.errors import LoaclError
from loacl.private import private_file, private_folder
from loacl.store import audit, integrity
from loacl.store.sqlite import connect


class ServeLock:
    """Held by a running server, so that a restore (or a second server) knows the file is in use."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        private_folder(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ServeLock:
        if not self.acquire():
            raise LoaclError("database_in_use", f"{self.path.name}: a LOACL server uses it")
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def backup(db_path: Path, dest: Path) -> audit.AuditResult:
    """Copy the database with SQLite's online backup API, in one step (one read snapshot)."""
    return _copy(db_path, dest, check)


def _copy(
    db_path: Path, dest: Path, judge: Callable[[sqlite3.Connection], audit.AuditResult] | None
) -> audit.AuditResult:
    if not db_path.exists():
        raise LoaclError("database_not_found", f"no database at {db_path}")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    private_file(partial)  # a backup holds everything the database does: 0600
    # Not connect(): it asks for WAL, which a read-only connection cannot set on a file in
    # rollback-journal mode (a backup made by this very function).
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    source.execute("PRAGMA busy_timeout=5000")
    target = sqlite3.connect(partial)
    try:
        # Pages are copied as they are, without reading their b-trees: a damaged file copies.
        source.backup(target, pages=-1)
        target.execute("PRAGMA journal_mode=DELETE")  # a backup is one self-contained file
        result = judge(target) if judge else audit.AuditResult(True, 0, "")
    except BaseException:
        target.close()
        partial.unlink(missing_ok=True)  # no half-made copy left beside the backups
        raise
    finally:
        target.close()
        source.close()
    os.chmod(partial, 0o600)
    os.replace(partial, dest)
    return result


def safety_path(db_path: Path, before: str) -> Path:
    """Where the copy of ``db_path`` kept before a destructive command goes: a ``safety``
    folder beside it, named by the command and the UTC time."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return db_path.parent / "safety" / f"{db_path.stem}-before-{before}-{stamp}{db_path.suffix}"


def safety_copy(db_path: Path, before: str) -> Path | None:
    """Copy the database, as it is (damage included: it is kept, not checked), before a
    command replaces or reverts it; None when there is no database to keep."""
    if not db_path.exists():
        return None
    dest = safety_path(db_path, before)
    dest.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        _copy(db_path, dest, None)
    except sqlite3.DatabaseError:
        # Not a database SQLite can open at all: keep its bytes (and any WAL) as they are.
        for suffix in ("", "-wal"):
            if Path(f"{db_path}{suffix}").exists():
                shutil.copyfile(f"{db_path}{suffix}", f"{dest}{suffix}")
                os.chmod(f"{dest}{suffix}", 0o600)
    return dest


def check(conn: sqlite3.Connection) -> audit.AuditResult:
    """The copy's integrity, its damage named as ``loacl audit verify`` names it, then its
    hash chain."""
    damage = integrity.check(conn)
    if not damage.ok:
        raise LoaclError(
            "backup_corrupt",
            f"integrity check failed: {damage.names()} damaged ({'; '.join(damage.messages[:3])})",
        )
    return audit.verify(conn)


@dataclass(frozen=True)
class Restored:
    audit: audit.AuditResult
    lost: int | None  # events of the replaced database the backup lacks (None: unreadable)
    safety_copy: Path | None


def events_lost(live: sqlite3.Connection, incoming: sqlite3.Connection) -> int:
    """How many of ``live``'s events a restore of ``incoming`` would drop: those after the
    longest prefix the two logs share. The hash chain makes "the same event at position k"
    imply "the same log up to k", so the shared prefix is found by bisection."""
    live_head, incoming_head = _head(live), _head(incoming)
    low, high = 0, min(live_head, incoming_head)  # position ``low`` is known to be shared
    while low < high:
        mid = (low + high + 1) // 2
        if _hash(live, mid) == _hash(incoming, mid):
            low = mid
        else:
            high = mid - 1
    return live_head - low


def _head(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0  # a file no migration has run on yet holds no events
        raise


def _hash(conn: sqlite3.Connection, seq: int) -> str | None:
    row = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else str(row[0])


def _would_lose(db_path: Path, source: sqlite3.Connection) -> int:
    if not db_path.exists():
        return 0
    live = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        live.execute("PRAGMA busy_timeout=5000")
        return events_lost(live, source)
    except sqlite3.DatabaseError as exc:
        raise LoaclError(
            "database_unreadable",
            f"{db_path} cannot be read ({exc}), so what a restore would drop is unknown; "
            "pass --force to replace it all the same (a copy of it is kept)",
        ) from exc
    finally:
        live.close()


def restore(source_path: Path, db_path: Path, *, force: bool = False) -> Restored:
    """Put a backup back, keeping a copy of the database it replaces. Refuses, unless
    ``force``, a database a server is using or one holding events the backup does not."""
    if not source_path.exists():
        raise LoaclError("backup_not_found", f"no backup at {source_path}")
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    try:
        try:
            result = check(source)
        except sqlite3.DatabaseError as exc:
            raise LoaclError("backup_corrupt", f"{source_path} is not a LOACL database") from exc
        if not result.ok:
            raise LoaclError(
                "backup_corrupt",
                f"the backup's log fails its audit at event {result.bad_seq}: {result.reason}",
            )
        lock = ServeLock(db_path)
        if not lock.acquire() and not force:
            raise LoaclError(
                "database_in_use",
                f"a LOACL server is using {db_path}; stop it first or pass --force",
            )
        try:
            lost: int | None
            try:
                lost = _would_lose(db_path, source)
            except LoaclError:
                if not force:
                    raise
                lost = None  # unknown: the file cannot be read, and is replaced as asked
            if lost and not force:
                raise LoaclError(
                    "events_would_be_lost",
                    f"{db_path} holds {lost} events that {source_path} does not: restoring it "
                    "would lose them. Pass --force to restore all the same (a copy of the "
                    "current database is kept)",
                )
            kept = safety_copy(db_path, "restore")
            if lost is None:
                # Nothing of it can be read or written over: start from an empty file.
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{db_path}{suffix}").unlink(missing_ok=True)
            target = connect(db_path)
            try:
                source.backup(target, pages=-1)
            finally:
                target.close()
        finally:
            lock.release()
    finally:
        source.close()
    return Restored(result, lost, kept)
