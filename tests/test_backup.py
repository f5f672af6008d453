from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loacl.domain import accounts
from loacl.domain.errors import LoaclError
from loacl.store import backup, migrations, replay
from loacl.store.backup import ServeLock
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect
from tests.conftest import RunCli

TABLES = default_projections().tables
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(run_cli: RunCli) -> Cli:
    """``cli(db, *args)``: the CLI against the database file ``db``."""
    return run_cli


async def append_users(store: EventStore, first: int, count: int) -> None:
    for n in range(first, first + count):
        await store.append(
            accounts.user_stream(f"u{n}"),
            accounts.register(f"u{n}", f"u{n}@example.org", None, f"hash-{n}"),
            expected_version=NO_STREAM,
        )


def seed(path: Path, first: int, count: int) -> None:
    async def run() -> None:
        async with EventStore(path, default_projections()) as store:
            await append_users(store, first, count)
            await store.append(
                f"user-u{first}", [accounts.EmailVerified(user_id=f"u{first}")],
                expected_version=1,
            )

    asyncio.run(run())


def content(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The log and the read tables, read without writing anything."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = replay.dump_tables(conn, TABLES)
        found["events"] = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
        return found
    finally:
        conn.close()


def tamper(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET payload = replace(payload, 'u2@', 'evil@') WHERE seq = 2")
    conn.commit()
    conn.close()


@pytest.fixture
def source(db_path: Path) -> Path:
    seed(db_path, 1, 5)  # six events
    return db_path


@pytest.fixture
def backup_file(source: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "backups" / "copy.db"
    assert backup.backup(source, dest).ok
    return dest


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A live database elsewhere, with a log of its own (longer than the backup's)."""
    path = tmp_path / "live" / "loacl.db"
    conn = connect(path)
    migrations.up(conn)
    conn.close()
    seed(path, 100, 10)
    return path


async def test_backup_while_the_store_keeps_appending(
    store: EventStore, db_path: Path, tmp_path: Path, cli: Cli
) -> None:
    await append_users(store, 1, 50)
    appended = [0]
    stop = asyncio.Event()
    started = asyncio.Event()

    async def writer() -> None:
        n = 1000
        while not stop.is_set():
            await append_users(store, n, 1)
            await store.append(
                f"user-u{n}", [accounts.EmailVerified(user_id=f"u{n}")], expected_version=1
            )
            appended[0] += 1
            n += 1
            if appended[0] == 5:
                started.set()

    task = asyncio.create_task(writer())
    dest = tmp_path / "out" / "backup.db"
    try:
        await asyncio.wait_for(started.wait(), timeout=30)
        before = await store.head()
        code, out, _ = await asyncio.wait_for(
            asyncio.to_thread(cli, db_path, "backup", str(dest)), timeout=60
        )
        after = await store.head()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert code == 0, out
    events = int(out.split()[2])
    assert out == f"backed up {events} events to {dest} (audit ok)\n"
    assert before <= events <= after

    # One self-contained file, no WAL beside it, no partial file left.
    assert sorted(p.name for p in dest.parent.iterdir()) == ["backup.db"]
    conn = sqlite3.connect(dest)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    # One snapshot: the read tables hold exactly what the copied log says.
    copied = replay.dump_tables(conn, TABLES)
    types = [row[0] for row in conn.execute("SELECT type FROM events")]
    conn.close()
    assert len(types) == events
    assert len(copied["users"]) == types.count("user.registered")
    verified = [row for row in copied["users"] if row[4] is not None]
    assert len(verified) == types.count("user.email_verified")

    code, out, _ = await asyncio.to_thread(cli, dest, "audit", "verify")
    assert code == 0
    assert out.startswith(f"ok: {events} events, last hash ")
    code, _, _ = await asyncio.to_thread(cli, dest, "replay")
    assert code == 0
    assert {t: content(dest)[t] for t in TABLES} == copied


def test_backup_of_a_missing_database(tmp_path: Path, cli: Cli) -> None:
    missing = tmp_path / "nothing" / "loacl.db"
    dest = tmp_path / "out" / "copy.db"
    code, out, err = cli(missing, "backup", str(dest))
    assert code == 1
    assert out == ""
    assert f"loacl: no database at {missing} [database_not_found]" in err
    assert not dest.exists()
    assert not missing.exists()


def test_backup_of_a_file_that_is_not_a_database(tmp_path: Path, cli: Cli) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"not a database\n" * 400)
    dest = tmp_path / "out" / "copy.db"
    code, out, err = cli(bogus, "backup", str(dest))
    assert code == 1
    assert out == ""
    assert "file is not a database [database_error]" in err
    assert list(dest.parent.iterdir()) == []  # no copy, and no partial one


def test_backup_of_a_backup(backup_file: Path, tmp_path: Path, cli: Cli) -> None:
    """A backup is a rollback-journal file; backing it up again must work too."""
    again = tmp_path / "again.db"
    code, out, err = cli(backup_file, "backup", str(again))
    assert (code, err) == (0, "")
    assert out == f"backed up 6 events to {again} (audit ok)\n"
    assert content(again) == content(backup_file)


def test_backup_overwrites_an_older_backup(
    source: Path, backup_file: Path, cli: Cli
) -> None:
    seed(source, 50, 2)
    code, out, _ = cli(source, "backup", str(backup_file))
    assert code == 0
    assert out.startswith("backed up 9 events")
    assert content(backup_file) == content(source)


def test_backup_of_a_tampered_database_reports_the_audit(
    source: Path, tmp_path: Path, cli: Cli
) -> None:
    tamper(source)
    dest = tmp_path / "copy.db"
    code, out, _ = cli(source, "backup", str(dest))
    assert code == 1
    assert "audit FAILED" in out
    assert "event 2" in out


def test_restore_refuses_while_a_server_holds_the_lock(
    backup_file: Path, target: Path, cli: Cli
) -> None:
    before = content(target)
    with ServeLock(target):
        code, out, err = cli(target, "restore", str(backup_file))
        assert code == 1
        assert out == ""
        assert "[database_in_use]" in err
        assert "--force" in err
        assert content(target) == before

        code, out, err = cli(target, "restore", "--force", str(backup_file))
        assert (code, err) == (0, "")
        restored, kept_line = out.splitlines()
        assert restored == f"restored 6 events into {target}"
        kept = kept_path(kept_line, "with 11 events the backup does not hold")
    assert content(target) == content(backup_file)
    assert content(kept) == before
    code, out, _ = cli(target, "audit", "verify")
    assert code == 0
    assert out.startswith("ok: 6 events")


def kept_path(line: str, lost: str = "") -> Path:
    """The safety copy named by restore's second line (which says what it held that was lost)."""
    start = "the database it replaced" + (f", {lost}" if lost else "") + ", is kept at "
    assert line.startswith(start), line
    kept = Path(line.removeprefix(start))
    assert kept.parent.name == "safety"
    assert kept.stat().st_mode & 0o077 == 0
    return kept


def test_restore_refuses_to_drop_events_the_backup_lacks(
    source: Path, backup_file: Path, target: Path, cli: Cli
) -> None:
    """The live log and the backup share nothing: all 11 live events would go."""
    before = content(target)
    code, out, err = cli(target, "restore", str(backup_file))
    assert (code, out) == (1, "")
    assert "holds 11 events that" in err
    assert "--force" in err
    assert "[events_would_be_lost]" in err
    assert content(target) == before
    assert not (target.parent / "safety").exists()


def test_restore_of_an_older_backup_of_the_same_database(
    source: Path, backup_file: Path, cli: Cli
) -> None:
    seed(source, 50, 2)  # three events the backup has not seen
    before = content(source)
    code, out, err = cli(source, "restore", str(backup_file))
    assert code == 1
    assert f"{source} holds 3 events that {backup_file} does not" in err
    assert content(source) == before

    code, out, err = cli(source, "restore", "--force", str(backup_file))
    assert (code, err) == (0, "")
    restored, kept_line = out.splitlines()
    assert restored == f"restored 6 events into {source}"
    kept = kept_path(kept_line, "with 3 events the backup does not hold")
    assert content(kept) == before
    assert content(source) == content(backup_file)


def test_restore_of_a_backup_holding_everything_needs_no_force(
    source: Path, tmp_path: Path, cli: Cli
) -> None:
    """A backup at least as new as the live log loses nothing; the old file is kept anyway."""
    older = tmp_path / "older.db"
    assert backup.backup(source, older).ok
    before = content(older)
    seed(source, 50, 2)
    newer = tmp_path / "newer.db"
    assert backup.backup(source, newer).ok
    code, out, err = cli(older, "restore", str(newer))
    assert (code, err) == (0, "")
    restored, kept_line = out.splitlines()
    assert restored == f"restored 9 events into {older}"
    assert content(kept_path(kept_line)) == before
    assert content(older) == content(newer)


def test_restore_over_an_unreadable_database_needs_force(
    backup_file: Path, tmp_path: Path, cli: Cli
) -> None:
    live = tmp_path / "live.db"
    live.write_bytes(b"not a database\n" * 400)
    code, out, err = cli(live, "restore", str(backup_file))
    assert (code, out) == (1, "")
    assert "[database_unreadable]" in err
    assert live.read_bytes() == b"not a database\n" * 400
    code, out, err = cli(live, "restore", "--force", str(backup_file))
    assert (code, err) == (0, "")
    kept = kept_path(out.splitlines()[1], "which could not be read")
    assert kept.read_bytes() == b"not a database\n" * 400
    assert content(live) == content(backup_file)


def test_restore_without_a_server(
    source: Path, backup_file: Path, target: Path, cli: Cli
) -> None:
    assert len(content(target)["events"]) == 11
    code, out, err = cli(target, "restore", "--force", str(backup_file))
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"restored 6 events into {target}"
    assert content(target) == content(source)
    assert cli(target, "audit", "verify")[:2] == (
        0, f"ok: 6 events, last hash {content(source)['events'][-1][-1]}\n"
    )
    # The restored database takes appends again, and the lock is free for a server.
    seed(target, 200, 1)
    assert cli(target, "audit", "verify")[1].startswith("ok: 8 events")
    lock = ServeLock(target)
    assert lock.acquire()
    lock.release()


def test_restore_into_a_new_place(backup_file: Path, tmp_path: Path, cli: Cli) -> None:
    fresh = tmp_path / "new" / "folder" / "loacl.db"
    code, out, _ = cli(fresh, "restore", str(backup_file))
    assert (code, out) == (0, f"restored 6 events into {fresh}\n")  # nothing to keep
    assert content(fresh) == content(backup_file)
    assert cli(fresh, "audit", "verify")[0] == 0


def test_restore_refuses_a_tampered_backup(
    backup_file: Path, target: Path, cli: Cli
) -> None:
    tamper(backup_file)
    before = content(target)
    code, out, err = cli(target, "restore", str(backup_file))
    assert code == 1
    assert out == ""
    assert "[backup_corrupt]" in err
    assert "event 2" in err
    assert content(target) == before


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(b"not a database\n" * 400), id="text"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(
            lambda p: sqlite3.connect(p).execute("CREATE TABLE t (x)").connection.close(),
            id="other-sqlite",
        ),
    ],
)
def test_restore_refuses_a_file_that_is_not_a_loacl_database(
    make: Callable[[Path], object], tmp_path: Path, target: Path, cli: Cli
) -> None:
    bogus = tmp_path / "bogus.db"
    make(bogus)
    original = bogus.read_bytes()
    before = content(target)
    code, out, err = cli(target, "restore", str(bogus))
    assert code == 1
    assert out == ""
    assert "[backup_corrupt]" in err
    assert "Traceback" not in err
    assert content(target) == before
    assert bogus.read_bytes() == original


def test_restore_refuses_a_damaged_database_file(
    backup_file: Path, tmp_path: Path, target: Path, cli: Cli
) -> None:
    damaged = tmp_path / "damaged.db"
    shutil.copy(backup_file, damaged)
    data = bytearray(damaged.read_bytes())
    for offset in range(4096, len(data), 4096):  # scribble over every b-tree page header
        data[offset:offset + 16] = b"\xff" * 16
    damaged.write_bytes(bytes(data))
    before = content(target)
    code, _, err = cli(target, "restore", str(damaged))
    assert code == 1
    assert "[backup_corrupt]" in err
    assert content(target) == before


def test_restore_of_a_missing_backup(tmp_path: Path, target: Path, cli: Cli) -> None:
    before = content(target)
    code, _, err = cli(target, "restore", str(tmp_path / "nope.db"))
    assert code == 1
    assert "[backup_not_found]" in err
    assert content(target) == before


def test_serve_lock_is_exclusive(db_path: Path) -> None:
    first, second = ServeLock(db_path), ServeLock(db_path)
    assert first.acquire()
    assert not second.acquire()
    with pytest.raises(LoaclError, match="a LOACL server uses it"), second:
        pass
    first.release()
    with second:
        assert not first.acquire()
    assert first.acquire()
    first.release()
