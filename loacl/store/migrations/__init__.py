"""Numbered SQL migrations, each with an up and a down, recorded in ``schema_migrations``."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from loacl.domain.errors import LoaclError

_NAME = re.compile(r"^(\d{4})_(\w+)\.up\.sql$")
_GUARD = re.compile(r"^-- refuse-if-rows: (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str

    @property
    def guarded_tables(self) -> list[str]:
        return _GUARD.findall(self.down)


def load() -> list[Migration]:
    folder = resources.files(__package__)
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            down = folder / entry.name.replace(".up.sql", ".down.sql")
            found.append(
                Migration(int(match[1]), match[2], entry.read_text(), down.read_text())
            )
    return sorted(found, key=lambda m: m.version)


MIGRATIONS = load()
LATEST = MIGRATIONS[-1].version


def _ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )


def applied(conn: sqlite3.Connection) -> dict[int, str]:
    _ensure_table(conn)
    return dict(conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall())


def current(conn: sqlite3.Connection) -> int:
    return max(applied(conn), default=0)


def status(conn: sqlite3.Connection) -> list[tuple[int, str, str | None]]:
    done = applied(conn)
    return [(m.version, m.name, done.get(m.version)) for m in MIGRATIONS]


def _run(conn: sqlite3.Connection, script: str) -> None:
    try:
        conn.executescript(script)
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise LoaclError("migration_failed", str(exc)) from exc


def up(conn: sqlite3.Connection, to: int | None = None) -> list[Migration]:
    target = LATEST if to is None else to
    done = applied(conn)
    steps = [m for m in MIGRATIONS if m.version <= target and m.version not in done]
    for m in steps:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        _run(
            conn,
            f"BEGIN IMMEDIATE;\n{m.up}\n"
            f"INSERT INTO schema_migrations (version, name, applied_at) "
            f"VALUES ({m.version}, '{m.name}', '{now}');\nCOMMIT;",
        )
    return steps


def down(conn: sqlite3.Connection, to: int | None = None) -> list[Migration]:
    """Revert one step, or every step above ``to``. Never drops a table that holds events."""
    done = applied(conn)
    if not done:
        return []
    target = max(done) - 1 if to is None else to
    if target < 0:
        raise LoaclError("invalid_migration_target", "--to must be 0 or more")
    steps = [m for m in reversed(MIGRATIONS) if m.version > target and m.version in done]
    # Check every step before reverting any: a refusal half-way would leave a partial downgrade.
    for m in steps:
        for table in m.guarded_tables:
            (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            if count:
                raise LoaclError(
                    "migration_refused",
                    f"migration {m.version:04d}_{m.name} would drop {table}, which holds "
                    f"{count} rows; back the database up and remove the file instead",
                )
    for m in steps:
        _run(
            conn,
            f"BEGIN IMMEDIATE;\n{m.down}\n"
            f"DELETE FROM schema_migrations WHERE version = {m.version};\nCOMMIT;",
        )
    return steps
