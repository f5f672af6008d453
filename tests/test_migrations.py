from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loacl.cli import main
from loacl.domain import accounts
from loacl.domain.errors import LoaclError
from loacl.settings import CONFIG_ENV, ENV_NAMES
from loacl.store import migrations
from loacl.store.backup import ServeLock
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect

Cli = Callable[..., tuple[int, str, str]]
ALL = migrations.MIGRATIONS
NAMES = [f"{m.version:04d}_{m.name}" for m in ALL]
APPLIED = [(m.version, m.name) for m in ALL]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "db" / "loacl.db"


@pytest.fixture
def cli(
    path: Path, chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Cli]:
    for name in [CONFIG_ENV, *ENV_NAMES.values()]:
        monkeypatch.delenv(name, raising=False)
    config = chdir_tmp / "loacl.toml"
    config.write_text(f'database_url = "sqlite:///{path}"\ndata_dir = "{chdir_tmp / "data"}"\n')

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    yield run


def schema(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(
            conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall(),
            key=repr,
        )
    finally:
        conn.close()


def names(path: Path) -> set[str]:
    return {row[1] for row in schema(path)}


def applied(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    finally:
        conn.close()


def status_lines(out: str) -> list[tuple[str, str]]:
    return [(line.split()[0], line.split()[1]) for line in out.splitlines()]


def reverted(out: str) -> list[str]:
    """The lines of ``migrate down`` before the last, which names the copy kept."""
    *steps, last = out.splitlines()
    kept = Path(last.removeprefix("the database as it was before is kept at "))
    assert kept.exists() and kept.parent.name == "safety", last
    return steps


async def _append_one(path: Path) -> None:
    async with EventStore(path, default_projections()) as store:
        await store.append(
            "user-u1", accounts.register("u1", "a@example.org", None, "h"),
            expected_version=NO_STREAM,
        )


def test_up_status_down_up_round_trip(path: Path, cli: Cli) -> None:
    code, out, _ = cli("migrate", "up")
    assert code == 0
    assert out == "".join(f"applied {name}\n" for name in NAMES)
    assert NAMES[:2] == ["0001_event_log", "0002_accounts"]
    full = schema(path)
    assert {"events", "event_log_head", "append_keys", "users", "sessions", "refresh_tokens",
            "sessions_user", "events_no_update", "events_no_delete"} <= names(path)

    code, out, _ = cli("migrate", "status")
    assert code == 0
    assert status_lines(out) == [(name, "applied") for name in NAMES]
    assert schema(path) == full

    code, out, _ = cli("migrate", "down")
    assert code == 0
    assert reverted(out) == [f"reverted {NAMES[-1]}"]
    assert applied(path) == APPLIED[:-1]
    code, out, _ = cli("migrate", "status")
    assert status_lines(out) == [
        *((name, "applied") for name in NAMES[:-1]), (NAMES[-1], "pending")
    ]

    code, out, _ = cli("migrate", "up")
    assert code == 0
    assert out == f"applied {NAMES[-1]}\n"
    assert schema(path) == full

    # Down to the accounts step and back: its tables go, the log stays, and all comes back.
    assert cli("migrate", "down", "--to", "1")[0] == 0
    assert applied(path) == APPLIED[:1]
    assert not {"users", "sessions", "refresh_tokens", "sessions_user"} & names(path)
    assert "events" in names(path)
    assert cli("migrate", "up")[0] == 0
    assert schema(path) == full

    assert cli("migrate", "up") == (0, "nothing to do\n", "")
    assert schema(path) == full


def test_down_to_zero_and_back(path: Path, cli: Cli) -> None:
    cli("migrate", "up")
    full = schema(path)
    code, out, _ = cli("migrate", "down", "--to", "0")
    assert code == 0
    assert reverted(out) == [f"reverted {name}" for name in reversed(NAMES)]
    assert names(path) == {"schema_migrations"}
    assert cli("migrate", "down") == (0, "nothing to do\n", "")
    code, out, _ = cli("migrate", "up", "--to", "1")
    assert out == "applied 0001_event_log\n"
    assert applied(path) == [(1, "event_log")]
    cli("migrate", "up")
    assert schema(path) == full


def test_down_steps_one_at_a_time(path: Path, cli: Cli) -> None:
    cli("migrate", "up")
    for name in reversed(NAMES):
        code, out, err = cli("migrate", "down")
        assert (code, err) == (0, "")
        assert reverted(out) == [f"reverted {name}"]
    assert applied(path) == []


def test_down_to_the_current_version_does_nothing(path: Path, cli: Cli) -> None:
    cli("migrate", "up")
    full = schema(path)
    assert cli("migrate", "down", "--to", str(migrations.LATEST)) == (0, "nothing to do\n", "")
    assert schema(path) == full


def test_down_refuses_to_drop_the_event_log(path: Path, cli: Cli) -> None:
    cli("migrate", "up")
    asyncio.run(_append_one(path))
    before = schema(path)
    conn = sqlite3.connect(path)
    users_before = conn.execute("SELECT * FROM users").fetchall()
    conn.close()
    assert len(users_before) == 1

    code, out, err = cli("migrate", "down", "--to", "0")
    assert code == 1
    assert out == ""
    assert "[migration_refused]" in err
    assert "0001_event_log" in err and "events" in err
    # Nothing reverted, not even the steps above the refused one.
    assert schema(path) == before
    assert applied(path) == APPLIED
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM users").fetchall() == users_before
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    conn.close()

    # Stepping down one at a time reaches the same refusal, and leaves the log.
    for name in reversed(NAMES[1:]):
        code, out, _ = cli("migrate", "down")
        assert (code, reverted(out)) == (0, [f"reverted {name}"])
    code, _, err = cli("migrate", "down")
    assert code == 1
    assert "[migration_refused]" in err
    assert "events" in names(path)
    assert applied(path) == [(1, "event_log")]


def test_down_refusal_is_checked_before_anything_is_reverted() -> None:
    """The library call, not only the CLI: a refused plan changes nothing."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrations.up(conn)
    conn.execute(
        "INSERT INTO events VALUES (1, 's', 1, 't', 1, '{}', '{}', '2030-01-01', 'h')"
    )
    with pytest.raises(LoaclError) as caught:
        migrations.down(conn, 0)
    assert caught.value.code == "migration_refused"
    assert migrations.current(conn) == migrations.LATEST
    conn.close()


def test_down_negative_target(path: Path, cli: Cli) -> None:
    cli("migrate", "up")
    code, _, err = cli("migrate", "down", "--to", "-1")
    assert code == 1
    assert "[invalid_migration_target]" in err
    assert applied(path) == APPLIED


def test_status_of_a_missing_database_does_not_create_it(path: Path, cli: Cli) -> None:
    code, out, err = cli("migrate", "status")
    assert code == 1
    assert out == ""
    assert "[database_not_found]" in err
    assert not path.exists()
    assert not path.parent.exists()
    code, _, err = cli("migrate", "down")
    assert code == 1
    assert not path.exists()


def test_status_of_a_fresh_file(path: Path, cli: Cli) -> None:
    path.parent.mkdir()
    sqlite3.connect(path).close()
    code, out, _ = cli("migrate", "status")
    assert code == 0
    assert status_lines(out) == [(name, "pending") for name in NAMES]


def test_failed_migration_rolls_back(path: Path, cli: Cli) -> None:
    cli("migrate", "up", "--to", "1")
    conn = connect(path)
    conn.execute("CREATE TABLE sessions (x)")  # 0002 creates users, then fails on sessions
    conn.close()
    before = schema(path)
    code, out, err = cli("migrate", "up")
    assert code == 1
    assert out == ""
    assert "[migration_failed]" in err
    assert "sessions" in err
    assert schema(path) == before
    assert applied(path) == [(1, "event_log")]


def test_migrations_are_numbered_and_paired() -> None:
    versions = [m.version for m in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert versions[-1] == migrations.LATEST
    assert migrations.MIGRATIONS[0].guarded_tables == ["events"]
    for m in migrations.MIGRATIONS:
        assert m.up.strip() and m.down.strip()


async def _append_interleaved(path: Path, index_lag: int) -> None:
    async with EventStore(path, default_projections(), index_lag=index_lag) as store:
        for n in range(5):
            await store.append(
                accounts.user_stream(f"u{n}"),
                accounts.register(f"u{n}", f"u{n}@example.org", None, "h"),
                expected_version=NO_STREAM,
            )
        for n in range(5):
            await store.append(
                accounts.user_stream(f"u{n}"), [accounts.EmailVerified(user_id=f"u{n}")]
            )


async def _streams(path: Path) -> dict[str, list[int]]:
    async with EventStore(path, default_projections()) as store:
        return {
            stream: [r.seq for r in await store.read_stream(stream)]
            for stream in (accounts.user_stream(f"u{n}") for n in range(5))
        }


def test_the_stream_index_step_keeps_every_event_both_ways(path: Path, cli: Cli) -> None:
    cli("migrate", "up")
    asyncio.run(_append_interleaved(path, index_lag=4))
    conn = sqlite3.connect(path)
    events = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    (indexed,) = conn.execute("SELECT indexed_seq FROM event_log_head").fetchone()
    conn.close()
    assert 0 < indexed < len(events)  # part indexed, part in the tail
    streams = asyncio.run(_streams(path))
    assert sorted(seq for seqs in streams.values() for seq in seqs) == [r[0] for r in events]

    code, out, _ = cli("migrate", "down", "--to", "4")  # later steps are reverted first
    assert (code, reverted(out)[-1]) == (0, "reverted 0005_stream_index")
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM events ORDER BY seq").fetchall() == events
    with pytest.raises(sqlite3.IntegrityError):  # the table keeps versions unique again
        conn.execute("INSERT INTO events SELECT 99, stream, version, type, schema_version, "
                     "payload, metadata, recorded_at, hash FROM events WHERE seq = 1")
    conn.close()
    assert "stream_index" not in names(path)

    code, out, _ = cli("migrate", "up")
    assert (code, out.splitlines()[0]) == (0, "applied 0005_stream_index")
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM events ORDER BY seq").fetchall() == events
    assert conn.execute("SELECT stream, version, seq FROM stream_index").fetchall() == sorted(
        (r[1], r[2], r[0]) for r in events
    )
    assert conn.execute("SELECT indexed_seq FROM event_log_head").fetchone() == (len(events),)
    conn.close()
    assert asyncio.run(_streams(path)) == streams
    assert cli("audit", "verify")[0] == 0


def test_down_refuses_while_a_server_uses_the_database(path: Path, cli: Cli) -> None:
    """Reverting under a running server broke it (``no such table``) until ``migrate up``."""
    cli("migrate", "up")
    asyncio.run(_append_one(path))
    full = schema(path)
    with ServeLock(path):
        code, out, err = cli("migrate", "down")
        assert (code, out) == (1, "")
        assert "[database_in_use]" in err and "--force" in err
        assert schema(path) == full
        assert not (path.parent / "safety").exists()

        code, out, err = cli("migrate", "down", "--force")
        assert (code, err) == (0, "")
    *_, last = out.splitlines()
    kept = Path(last.removeprefix("the database as it was before is kept at "))
    assert schema(kept) == full  # the copy is the database as it was, event included
    conn = sqlite3.connect(kept)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    conn.close()
    assert applied(path) == APPLIED[:-1]


def test_a_refused_down_keeps_no_copy(path: Path, cli: Cli) -> None:
    cli("migrate", "up")
    asyncio.run(_append_one(path))
    code, _, err = cli("migrate", "down", "--to", "0")
    assert code == 1
    assert "events" in err
    assert not list((path.parent / "safety").glob("*"))
