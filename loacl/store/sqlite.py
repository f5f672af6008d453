"""Opening SQLite connections with the settings LOACL relies on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from loacl.domain.errors import LoaclError
from loacl.private import private_file

log = structlog.get_logger(__name__)

# SQLite 3.7.0 through 3.51.2 can lose committed writes when two connections write or
# checkpoint at the same moment (the WAL-reset bug); 3.51.3 fixed it.
# Why not write through apsw, which bundles a fixed SQLite (3.54.1)? It would be a second copy of
# SQLite in this process beside stdlib sqlite3 (aiosqlite readers, the lock probe, backups), and
# the copies do not share the list of open files that works around POSIX locks: a stdlib
# connection closing the file drops the apsw writer's locks mid-transaction, and another process
# can then take the write lock (https://www.sqlite.org/howtocorrupt.html, section 2.3;
# measured by scripts/bench/writer_driver.py). Its 1.1-1.2x faster raw inserts would save a few
# per cent of an append. So: stdlib sqlite3, one writing connection, and the warning below.
WAL_RESET_FIXED = (3, 51, 3)


def database_path(url: str) -> Path:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` to a path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise LoaclError(
            "invalid_database_url",
            f"DATABASE_URL must look like sqlite:///data/loacl.db, not {url!r}",
        )
    return Path(url[len(prefix):])


def connect(
    path: Path, *, readonly: bool = False, autocheckpoint: int | None = None
) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE).

    ``autocheckpoint`` 0 leaves checkpoints to Litestream while it replicates the file: a
    checkpoint of ours between two of its syncs makes it miss WAL frames and ship the whole
    database again, and two parties checkpointing at once is what the WAL-reset bug needs."""
    if not readonly:
        # Made 0600 (in a 0700 folder) before SQLite opens it: SQLite gives the -wal, -shm and
        # -journal files the database file's own mode.
        private_file(path)
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError as exc:
        raise LoaclError("database_unavailable", f"cannot open {path}: {exc}") from exc
    configure(conn)
    if autocheckpoint is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
    return conn


PRAGMAS = (
    # WAL lets readers run beside the one writer, and it is what Litestream replicates.
    "PRAGMA journal_mode=WAL",
    # Litestream takes short write locks; wait for them instead of failing at once.
    "PRAGMA busy_timeout=5000",
    # In WAL mode NORMAL loses nothing on an application crash, at worst the last commits on
    # power loss, and it is about three times faster than FULL.
    "PRAGMA synchronous=NORMAL",
    # Memory-mapped I/O widens the window of the WAL-reset bug on old SQLite; keep it off.
    "PRAGMA mmap_size=0",
    # Replay builds its read tables as temporary tables; keep them in memory.
    "PRAGMA temp_store=MEMORY",
)


def configure(conn: sqlite3.Connection) -> None:
    for pragma in PRAGMAS:
        conn.execute(pragma)


def check_version() -> tuple[int, ...]:
    """Log the linked SQLite version; warn when it has the WAL-reset bug."""
    version = sqlite3.sqlite_version_info
    if version < WAL_RESET_FIXED:
        log.warning(
            "sqlite.wal_reset_bug",
            sqlite_version=sqlite3.sqlite_version,
            fixed_in="3.51.3",
            meaning="this SQLite can corrupt a database in WAL mode when two connections "
            "write and checkpoint at the same moment",
            what_to_do="nothing while LOACL is the only program writing the file (it writes "
            "through one connection and leaves checkpoints to one party); do not write to it "
            "with other tools while it runs; a Python linked with SQLite 3.51.3 or newer is "
            "rid of the bug",
        )
    else:
        log.info("sqlite.version", sqlite_version=sqlite3.sqlite_version)
    return version
