"""Consistent copies of the database while the server writes, and putting one back."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from loacl.domain.errors import LoaclError
from loacl.store import audit, integrity
from loacl.store.sqlite import connect


class ServeLock:
    """Held by a running server, so that a restore (or a second server) knows the file is in use."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
    if not db_path.exists():
        raise LoaclError("database_not_found", f"no database at {db_path}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    # Not connect(): it asks for WAL, which a read-only connection cannot set on a file in
    # rollback-journal mode (a backup made by this very function).
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    source.execute("PRAGMA busy_timeout=5000")
    target = sqlite3.connect(partial)
    try:
        source.backup(target, pages=-1)
        target.execute("PRAGMA journal_mode=DELETE")  # a backup is one self-contained file
        result = check(target)
    except BaseException:
        target.close()
        partial.unlink(missing_ok=True)  # no half-made copy left beside the backups
        raise
    finally:
        target.close()
        source.close()
    os.replace(partial, dest)
    return result


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


def restore(source_path: Path, db_path: Path, *, force: bool = False) -> audit.AuditResult:
    """Put a backup back. Refuses a database a server is using unless ``force``."""
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
            target = connect(db_path)
            try:
                source.backup(target, pages=-1)
            finally:
                target.close()
        finally:
            lock.release()
    finally:
        source.close()
    return result


def safety_copy(db_path: Path, *, now: datetime | None = None) -> Path | None:
    """Copy the database as it is, before a restore replaces it, to
    ``<name>.before-restore-<UTC time>`` beside it; its path, or None when there is no
    database. One consistent file (SQLite's backup API folds in the WAL); a file SQLite cannot
    read (the damage a restore may be meant to undo) is copied byte for byte, WAL and all."""
    if not db_path.exists():
        return None
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    dest = db_path.with_name(f"{db_path.name}.before-restore-{stamp}")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        target = sqlite3.connect(partial)
        try:
            source.backup(target, pages=-1)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
            source.close()
    except sqlite3.DatabaseError:
        partial.unlink(missing_ok=True)
        shutil.copyfile(db_path, partial)
        wal = Path(f"{db_path}-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(f"{dest}-wal"))
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, dest)
    return dest
