from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from loacl.domain import accounts
from loacl.store import audit, backup, codec, eventstore
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.projections import default_projections
from tests.conftest import RunCli

Cli = Callable[..., tuple[int, str, str]]

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def cli(db_path: Path, run_cli: RunCli) -> Cli:
    return functools.partial(run_cli, db_path)


async def _seed(path: Path, index_lag: int = eventstore.INDEX_LAG) -> None:
    """Eight events over four streams, versions interleaved."""
    async with EventStore(path, default_projections(), index_lag=index_lag) as store:
        for n in (1, 2):
            await store.append(
                accounts.user_stream(f"u{n}"),
                accounts.register(f"u{n}", f"u{n}@example.org", None, f"hash-{n}"),
                expected_version=NO_STREAM,
            )
        await store.append(
            "user-u1", [accounts.EmailVerified(user_id="u1")], expected_version=1
        )
        await store.append(
            "session-s1", accounts.start_session("s1", "u1", "t1", EXPIRES),
            expected_version=NO_STREAM,
        )
        await store.append(
            "user-u2",
            [accounts.PasswordChanged(user_id="u2", password_hash="hash-2b", reason="reset")],
            expected_version=1,
        )
        await store.append(
            "session-s1",
            [accounts.SessionRefreshed(session_id="s1", previous_token_hash="t1",
                                       refresh_token_hash="t2", expires_at=EXPIRES)],
            expected_version=1,
        )
        await store.append(
            "session-s1", accounts.revoke_session(
                accounts.Session("s1", "u1", "t2", exists=True), "logout"
            ),
            expected_version=2,
        )
        await store.append(
            "user-u1",
            [accounts.PasswordChanged(user_id="u1", password_hash="hash-1b", reason="rehash")],
            expected_version=2,
        )


@pytest.fixture
def used_db(db_path: Path) -> Path:
    asyncio.run(_seed(db_path))
    return db_path


def tamper(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Edit the log behind the store's back, the way an intruder with the file would."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("DROP TRIGGER events_no_delete")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.commit()
    conn.close()


def rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


def test_verify_fresh_database(cli: Cli) -> None:
    code, out, _ = cli("audit", "verify")
    assert code == 0
    assert out == f"ok: 0 events, last hash {codec.GENESIS_HASH}\n"


def test_verify_used_database(used_db: Path, cli: Cli) -> None:
    last = rows(used_db)[-1]
    assert last[0] == 8
    code, out, err = cli("audit", "verify")
    assert code == 0
    assert out == f"ok: 8 events, last hash {last[-1]}\n"
    assert "audit: 8/8 events (100%)" in err


def _forge_row(path: Path, seq: int, payload: str) -> tuple[str, tuple[Any, ...]]:
    """An edit of one row whose own hash is recomputed: the chain breaks at the next row."""
    row = rows(path)
    prev = row[seq - 2][-1] if seq > 1 else codec.GENESIS_HASH
    _, stream, version, type_, schema, _, metadata, at, _ = row[seq - 1]
    forged = codec.chain_hash(prev, seq, stream, version, type_, schema, payload, metadata, at)
    return "UPDATE events SET payload = ?, hash = ? WHERE seq = ?", (payload, forged, seq)


def _swap(path: Path, a: int, b: int) -> list[tuple[str, tuple[Any, ...]]]:
    by_seq = {r[0]: r[1:] for r in rows(path)}
    sql = (
        "UPDATE events SET stream = ?, version = ?, type = ?, schema_version = ?, "
        "payload = ?, metadata = ?, recorded_at = ?, hash = ? WHERE seq = ?"
    )
    # (stream, version) is UNIQUE: park one row on a placeholder stream first.
    return [
        ("UPDATE events SET stream = 'parked' WHERE seq = ?", (a,)),
        (sql, (*by_seq[a], b)),
        (sql, (*by_seq[b], a)),
    ]


Edits = Callable[[Path], list[tuple[str, tuple[Any, ...]]]]

# case -> (the edits, the first bad position); the events before it check out.
TAMPERINGS: dict[str, tuple[Edits, int]] = {
    "edited payload": (
        lambda p: [("UPDATE events SET payload = replace(payload, 'hash-2b', 'evil') "
                    "WHERE seq = 5", ())],
        5,
    ),
    "edited metadata": (
        lambda p: [("UPDATE events SET metadata = '{\"actor\":\"mallory\"}' WHERE seq = 2", ())],
        2,
    ),
    "edited first row": (
        lambda p: [("UPDATE events SET recorded_at = '2000-01-01T00:00:00.000000+00:00' "
                    "WHERE seq = 1", ())],
        1,
    ),
    "deleted middle row": (lambda p: [("DELETE FROM events WHERE seq = 4", ())], 4),
    "swapped rows": (lambda p: _swap(p, 3, 6), 3),
    "swapped adjacent rows": (lambda p: _swap(p, 6, 7), 6),
    "forged hash": (lambda p: [("UPDATE events SET hash = ? WHERE seq = 6", ("ab" * 32,))], 6),
    "forged hash of the last row": (
        lambda p: [("UPDATE events SET hash = ? WHERE seq = 8", ("cd" * 32,))], 8
    ),
    "edited payload with its own hash recomputed": (
        lambda p: [_forge_row(p, 3, '{"user_id":"u2"}')], 4
    ),
    "deleted last row": (lambda p: [("DELETE FROM events WHERE seq = 8", ())], 8),
    "deleted two last rows": (lambda p: [("DELETE FROM events WHERE seq >= 7", ())], 7),
    "last row rewritten with a valid chain": (
        lambda p: [_forge_row(p, 8, '{"user_id":"u1","password_hash":"x","reason":"reset"}')],
        8,
    ),
    "row appended past the head": (
        lambda p: [(
            "INSERT INTO events VALUES (9, 'user-u2', 3, 'user.email_verified', 1, ?, '{}', "
            "'2030-01-01T00:00:00.000000+00:00', ?)",
            ('{"user_id":"u2"}', codec.chain_hash(
                rows(p)[-1][-1], 9, "user-u2", 3, "user.email_verified", 1,
                '{"user_id":"u2"}', "{}", "2030-01-01T00:00:00.000000+00:00",
            )),
        )],
        9,
    ),
    "head record removed": (lambda p: [("DELETE FROM event_log_head", ())], 1),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_verify_names_the_first_bad_position(used_db: Path, cli: Cli, case: str) -> None:
    make, bad_seq = TAMPERINGS[case]
    tamper(used_db, *make(used_db))
    code, out, _ = cli("audit", "verify")
    assert code == 1
    assert out.startswith(f"FAILED at event {bad_seq}: "), out
    result = audit.verify(sqlite3.connect(used_db))
    assert (result.ok, result.bad_seq) == (False, bad_seq)
    if case != "head record removed":
        assert result.events == bad_seq - 1  # every event before the bad one checked out
        assert result.last_hash == (rows(used_db)[bad_seq - 2][-1] if bad_seq > 1
                                    else codec.GENESIS_HASH)


def test_version_gap_in_a_stream_is_found(used_db: Path) -> None:
    """A row whose hash is right but whose stream version skips (written with the chain)."""
    original = rows(used_db)
    conn = sqlite3.connect(used_db)
    conn.execute("DROP TRIGGER events_no_update")
    prev = original[2][-1]
    for seq, stream, version, type_, schema, payload, metadata, at, _ in original[3:]:
        if stream == "user-u2":
            version += 5
        prev = codec.chain_hash(prev, seq, stream, version, type_, schema, payload, metadata, at)
        conn.execute(
            "UPDATE events SET version = ?, hash = ? WHERE seq = ?", (version, prev, seq)
        )
    conn.execute("UPDATE event_log_head SET hash = ?", (prev,))
    conn.commit()
    result = audit.verify(conn)
    conn.close()
    assert (result.ok, result.bad_seq) == (False, 5)
    assert "version order of user-u2" in result.reason


class _AppendBeforeHead:
    """A connection that lets another writer commit just before the log head is read."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self.appended = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if "event_log_head" in sql and not self.appended:
            self.appended = True
            asyncio.run(self._append())
        return self._conn.execute(sql, params)

    async def _append(self) -> None:
        async with EventStore(self._path, default_projections()) as store:
            await store.append(
                "user-u9", accounts.register("u9", "u9@example.org", None, "h"),
                expected_version=NO_STREAM,
            )


def test_verify_reads_one_snapshot_while_the_log_grows(used_db: Path) -> None:
    conn = sqlite3.connect(used_db, isolation_level=None)
    proxy = _AppendBeforeHead(conn, used_db)
    result = audit.verify(cast(sqlite3.Connection, proxy))
    assert proxy.appended
    assert result.ok, result.reason
    assert result.events == 8
    assert not conn.in_transaction
    assert audit.verify(conn).events == 9
    conn.close()


def test_verify_small_chunks_and_progress(used_db: Path) -> None:
    seen: list[tuple[int, int]] = []
    conn = sqlite3.connect(used_db)
    result = audit.verify(conn, chunk=3, progress=lambda done, total: seen.append((done, total)))
    conn.close()
    assert result.ok
    assert seen == [(3, 8), (6, 8), (8, 8)]


def test_verify_missing_database(tmp_path: Path, run_cli: RunCli) -> None:
    missing = tmp_path / "nowhere" / "loacl.db"
    code, out, err = run_cli(missing, "audit", "verify")
    assert code == 1
    assert out == ""
    assert "[database_not_found]" in err
    assert str(missing) in err
    assert not missing.parent.exists()


def test_verify_unmigrated_database(tmp_path: Path, run_cli: RunCli) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    code, _, err = run_cli(empty, "audit", "verify")
    assert code == 1
    assert "no such table: events" in err
    assert "Traceback" not in err


@pytest.fixture
def indexed_db(db_path: Path) -> Path:
    """The same eight events, the first six of them in the stream index."""
    asyncio.run(_seed(db_path, index_lag=3))
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT indexed_seq FROM event_log_head").fetchone() == (6,)
    conn.close()
    return db_path


INDEX_TAMPERINGS: dict[str, tuple[list[tuple[str, tuple[Any, ...]]], int]] = {
    "index entry removed": ([("DELETE FROM stream_index WHERE seq = 4", ())], 4),
    "index entry pointing elsewhere": (
        [("UPDATE stream_index SET seq = 5 WHERE seq = 3", ())], 3
    ),
    "index entry for a stream the event is not in": (
        [("INSERT INTO stream_index VALUES ('user-u9', 1, 2)", ())], 2
    ),
    "index entry past the mark": (
        [("INSERT INTO stream_index SELECT stream, version, seq FROM events WHERE seq = 7", ())],
        7,
    ),
    "mark moved past the index": ([("UPDATE event_log_head SET indexed_seq = 8", ())], 7),
}


@pytest.mark.parametrize("case", list(INDEX_TAMPERINGS))
def test_verify_finds_a_stream_index_that_disagrees_with_the_log(
    indexed_db: Path, cli: Cli, case: str
) -> None:
    assert cli("audit", "verify")[0] == 0
    edits, bad_seq = INDEX_TAMPERINGS[case]
    tamper(indexed_db, *edits)
    code, out, _ = cli("audit", "verify")
    assert code == 1
    assert out.startswith(f"FAILED at event {bad_seq}: the stream index does not match"), out
    result = audit.verify(sqlite3.connect(indexed_db))
    assert (result.ok, result.bad_seq, result.events) == (False, bad_seq, 8)


def test_reindex_repairs_a_damaged_index_and_refuses_while_served(
    indexed_db: Path, cli: Cli
) -> None:
    tamper(indexed_db, ("DELETE FROM stream_index WHERE seq = 4", ()),
           ("INSERT INTO stream_index VALUES ('user-u9', 1, 2)", ()))
    assert cli("audit", "verify")[0] == 1
    with backup.ServeLock(indexed_db):  # a server runs on it
        code, out, err = cli("audit", "reindex")
        assert (code, out) == (1, "")
        assert "[database_in_use]" in err
    assert cli("audit", "verify")[0] == 1  # untouched
    assert cli("audit", "reindex")[:2] == (0, "reindexed 8 events\n")
    code, out, _ = cli("audit", "verify")
    assert (code, out) == (0, f"ok: 8 events, last hash {rows(indexed_db)[-1][-1]}\n")
    conn = sqlite3.connect(indexed_db)
    assert conn.execute("SELECT indexed_seq FROM event_log_head").fetchone() == (8,)
    conn.close()


def test_reindex_names_a_log_that_holds_a_version_twice(indexed_db: Path, cli: Cli) -> None:
    tamper(indexed_db, ("UPDATE events SET stream = 'user-u1', version = 1 WHERE seq = 2", ()))
    code, _, err = cli("audit", "reindex")
    assert code == 1
    assert "[log_damaged]" in err
    conn = sqlite3.connect(indexed_db)
    assert conn.execute("SELECT count(*) FROM stream_index").fetchone() == (6,)  # kept
    conn.close()


def test_reindex_follows_the_head_record(indexed_db: Path, cli: Cli) -> None:
    """The index never runs past the mark, even when the head record is behind the log."""
    tamper(indexed_db, ("UPDATE event_log_head SET seq = 5", ()))
    assert cli("audit", "reindex")[:2] == (0, "reindexed 5 events\n")
    conn = sqlite3.connect(indexed_db)
    assert conn.execute("SELECT max(seq) FROM stream_index").fetchone() == (5,)
    assert conn.execute("SELECT indexed_seq FROM event_log_head").fetchone() == (5,)
    conn.close()
    code, out, _ = cli("audit", "verify")
    assert code == 1 and "FAILED at event 6" in out  # the head is what is wrong
