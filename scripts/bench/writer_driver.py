"""Writer driver: stdlib ``sqlite3`` against ``apsw`` on the event store's group-commit workload.

Both write the same rows the same way the writer's fast path does (``store.batches``): batches
of 100 rows of ~200-byte payloads into a table shaped like ``events``, one ``executemany`` and
one head update per ``BEGIN IMMEDIATE ... COMMIT``, with the PRAGMAs of ``store.sqlite``. The
two drivers run in interleaved rounds (a slow spell on a shared machine hits both); each figure
is the best of the rounds.

Then the soundness check: each writer, mid-transaction, while a stdlib connection in the same
process opens and closes the same file (as the readers, the lock probe and backups do); does
another process still find the write lock taken?

apsw is not a dependency of LOACL: this is a measurement. Install it into a virtualenv first.

    pip install apsw
    python scripts/bench/writer_driver.py [--rows 100000] [--batch 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loacl.store.sqlite import PRAGMAS

# The columns of the events table (migration 0005) and a one-row head like event_log_head.
SCHEMA = (
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, "
    "version INTEGER NOT NULL, type TEXT NOT NULL, schema_version INTEGER NOT NULL, "
    "payload TEXT NOT NULL, metadata TEXT NOT NULL, recorded_at TEXT NOT NULL, "
    "hash TEXT NOT NULL)",
    "CREATE TABLE event_log_head (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "seq INTEGER NOT NULL, hash TEXT NOT NULL)",
    "INSERT INTO event_log_head VALUES (1, 0, '')",
)
INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
WRITE_HEAD = "UPDATE event_log_head SET seq = ?, hash = ? WHERE id = 1"

Row = tuple[int, str, int, str, int, str, str, str, str]


def make_rows(count: int) -> list[Row]:
    """Rows built before timing, so that only the driver and SQLite are measured."""
    rows: list[Row] = []
    for seq in range(1, count + 1):
        conversation = seq % 100
        text = "The quick brown fox jumps over the lazy dog, then naps: "[: 40 + seq % 16] * 2
        payload = (
            f'{{"conversation_id":"c{conversation:04d}-8f0d2f5c-1b7e-4c59",'
            f'"message_id":"m{seq:08d}-3a2d-41a7-9bb5","offset":{seq * 40},"text":"{text}"}}'
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()
        rows.append((
            seq, f"conversation-{conversation}", seq // 100, "assistant.delta", 1, payload,
            '{"actor":"bench"}', "2026-12-01T09:00:00.000000Z", digest,
        ))
    return rows


class Driver:
    """The calls the benchmark makes, over either library: execute and executemany."""

    def __init__(
        self,
        execute: Callable[[str, Sequence[Any]], object],
        executemany: Callable[[str, Sequence[Row]], object],
        close: Callable[[], object],
    ) -> None:
        self.execute = execute
        self.executemany = executemany
        self.close = close


def stdlib_driver(path: Path) -> Driver:
    # Autocommit, as store.sqlite.connect opens it: BEGIN IMMEDIATE is issued explicitly.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    return Driver(conn.execute, conn.executemany, conn.close)


def apsw_driver(apsw: Any, path: Path) -> Driver:
    conn = apsw.Connection(str(path))
    cursor = conn.cursor()
    return Driver(cursor.execute, cursor.executemany, conn.close)


def write(driver: Driver, rows: list[Row], batch: int) -> float:
    for pragma in PRAGMAS:
        driver.execute(pragma, ())
    for statement in SCHEMA:
        driver.execute(statement, ())
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        driver.execute("BEGIN IMMEDIATE", ())
        driver.executemany(INSERT, chunk)
        driver.execute(WRITE_HEAD, (chunk[-1][0], chunk[-1][8]))
        driver.execute("COMMIT", ())
    elapsed = time.perf_counter() - started
    driver.close()
    return elapsed


def check(path: Path, rows: list[Row]) -> None:
    """Each run wrote every row: a fast run that lost rows would be no result."""
    conn = sqlite3.connect(path)
    try:
        count, last = conn.execute("SELECT count(*), max(seq) FROM events").fetchone()
    finally:
        conn.close()
    if (count, last) != (len(rows), rows[-1][0]):
        raise SystemExit(f"{path.name}: wrote {count} rows up to {last}, expected {len(rows)}")


# Run in another process, as Litestream is: can it take the write lock now?
PROBE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
    print("taken")
except sqlite3.OperationalError:
    print("refused")
"""


def lock_holds(open_writer: Callable[[Path], Driver], path: Path) -> bool:
    """Whether the writer still holds its write lock, mid-transaction, after a stdlib
    connection in this process opened and closed the same file (as a reader, the lock probe
    or a backup does). Two copies of SQLite in one process do not see each other's open files,
    so a close() by one can drop the POSIX locks the other holds."""
    writer = open_writer(path)
    for pragma in PRAGMAS:
        writer.execute(pragma, ())
    writer.execute("CREATE TABLE t (x)", ())
    writer.execute("BEGIN IMMEDIATE", ())
    writer.execute("INSERT INTO t VALUES (1)", ())
    other = sqlite3.connect(path)
    other.execute("SELECT count(*) FROM sqlite_master").fetchone()
    other.close()
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    )
    writer.execute("COMMIT", ())
    writer.close()
    return probe.stdout.strip() == "refused"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        # Imported by name: apsw is optional, and mypy must pass whether or not it is installed.
        apsw = importlib.import_module("apsw")
    except ImportError:
        sys.exit("apsw is not installed (it is not a LOACL dependency): pip install apsw")
    rows = make_rows(args.rows)
    times: dict[str, list[float]] = {"sqlite3": [], "apsw": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            # Alternate which goes first, so that neither always meets a warm or cold cache.
            order = ("sqlite3", "apsw") if round_ % 2 == 0 else ("apsw", "sqlite3")
            for name in order:
                path = Path(tmp) / f"{name}{round_}.db"
                driver = stdlib_driver(path) if name == "sqlite3" else apsw_driver(apsw, path)
                times[name].append(write(driver, rows, args.batch))
                check(path, rows)
        held = {
            "sqlite3": lock_holds(stdlib_driver, Path(tmp) / "lock-sqlite3.db"),
            "apsw": lock_holds(lambda path: apsw_driver(apsw, path), Path(tmp) / "lock-apsw.db"),
        }
    rate = {name: len(rows) / min(values) for name, values in times.items()}
    print(
        f"{len(rows):,} rows of ~200-byte payloads, {args.batch} per BEGIN IMMEDIATE ... COMMIT; "
        f"best of {args.rounds} interleaved rounds"
    )
    print(f"sqlite3 (SQLite {sqlite3.sqlite_version})  {rate['sqlite3']:>10,.0f} rows/s")
    print(f"apsw    (SQLite {apsw.sqlite_lib_version()})  {rate['apsw']:>10,.0f} rows/s")
    rounds = ", ".join(
        f"{s / a:.2f}" for s, a in zip(times["sqlite3"], times["apsw"], strict=True)
    )
    print(f"apsw / sqlite3 = {rate['apsw'] / rate['sqlite3']:.2f}   (per round: {rounds})")
    print("writer's lock after a stdlib connection in the same process opened and closed the file:")
    for name, holds in held.items():
        verdict = "held" if holds else "LOST: another process took the write lock mid-transaction"
        print(f"  {name:<7} writer  {verdict}")


if __name__ == "__main__":
    main()
