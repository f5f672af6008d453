"""Numbered SQL migrations for PostgreSQL, applied under an advisory lock: several instances
starting at once migrate once (the others wait, then find nothing left to do)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import asyncpg

from loacl.domain.errors import LoaclError
from loacl.store.migrations import Migration
from loacl.store.postgres import Connection

_NAME = re.compile(r"^(\d{4})_(\w+)\.up\.sql$")
# Any constant shared by every LOACL: pg_advisory_lock's key space is the database's.
MIGRATION_LOCK = 0x10AC1_0001


def load() -> list[Migration]:
    folder = resources.files("loacl.store.postgres.migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            down = folder / entry.name.replace(".up.sql", ".down.sql")
            found.append(Migration(int(match[1]), match[2], entry.read_text(), down.read_text()))
    return sorted(found, key=lambda m: m.version)


MIGRATIONS = load()
LATEST = MIGRATIONS[-1].version

_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


async def applied(conn: Connection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, applied_at FROM schema_migrations")
    return {int(r["version"]): str(r["applied_at"]) for r in rows}


async def current(conn: Connection) -> int:
    return max(await applied(conn), default=0)


async def check(conn: Connection) -> None:
    """Refuse a database whose schema is not this LOACL's: newer (another LOACL migrated it)
    or older (``loacl migrate up`` is due)."""
    schema = await current(conn)
    if schema > LATEST:
        raise LoaclError(
            "schema_too_new",
            f"the database is at schema {schema}, newer than this LOACL knows ({LATEST}): run "
            "the LOACL that migrated it",
        )
    if schema < LATEST:
        raise LoaclError(
            "schema_out_of_date", "the database needs migrations: run `loacl migrate up`"
        )


async def connect(url: str) -> Connection:
    """One connection, or ``database_unavailable`` saying why there is none."""
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise LoaclError("database_unavailable", f"cannot connect to PostgreSQL: {exc}") from exc


async def create_pool(url: str, size: int, **options: Any) -> asyncpg.Pool:
    """A connection pool, or ``database_unavailable`` saying why there is none."""
    try:
        return await asyncpg.create_pool(url, min_size=1, max_size=size, **options)
    except (OSError, asyncpg.PostgresError) as exc:
        raise LoaclError("database_unavailable", f"cannot connect to PostgreSQL: {exc}") from exc


async def up(conn: Connection, to: int | None = None) -> list[Migration]:
    """Apply every migration up to ``to`` (the latest by default), each in its own transaction,
    holding the migration lock throughout; the steps this call applied."""
    target = LATEST if to is None else to
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(_TABLE)
        # Read under the lock: an instance that waited sees what the first one applied.
        done = await applied(conn)
        steps = [m for m in MIGRATIONS if m.version <= target and m.version not in done]
        for m in steps:
            async with conn.transaction():
                await conn.execute(m.up)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) "
                    "VALUES ($1, $2, $3)",
                    m.version, m.name, datetime.now(UTC).isoformat(timespec="seconds"),
                )
        return steps
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
