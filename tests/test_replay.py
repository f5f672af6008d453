from __future__ import annotations

import asyncio
import functools
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loacl import cli as loacl_cli
from loacl.domain import accounts
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, RecordedEvent
from loacl.store import audit, backup, migrations, replay
from loacl.store.codec import Opener
from loacl.store.eventstore import NO_STREAM, EventStore, read_all_sync
from loacl.store.projections import Projections, default_projections
from loacl.store.sqlite import connect
from tests.conftest import RunCli

TABLES = default_projections().tables
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
Dump = dict[str, list[tuple[object, ...]]]
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(db_path: Path, run_cli: RunCli) -> Cli:
    return functools.partial(run_cli, db_path)


async def append_users(store: EventStore, first: int, count: int) -> None:
    for n in range(first, first + count):
        await store.append(
            accounts.user_stream(f"u{n}"),
            accounts.register(f"u{n}", f"u{n}@example.org", f"User {n}", f"hash-{n}"),
            expected_version=NO_STREAM,
        )


async def _seed(path: Path) -> None:
    """Nine events: three users, one verified, one session refreshed then revoked."""
    async with EventStore(path, default_projections()) as store:
        await append_users(store, 1, 3)
        await store.append("user-u1", [accounts.EmailVerified(user_id="u1")], expected_version=1)
        await store.append(
            "session-s1", accounts.start_session("s1", "u1", "t1", EXPIRES),
            expected_version=NO_STREAM,
        )
        await store.append(
            "session-s1",
            [accounts.SessionRefreshed(session_id="s1", previous_token_hash="t1",
                                       refresh_token_hash="t2", expires_at=EXPIRES)],
            expected_version=1,
        )
        await store.append(
            "session-s2", accounts.start_session("s2", "u2", "t3", EXPIRES),
            expected_version=NO_STREAM,
        )
        await store.append(
            "session-s1",
            [accounts.SessionRevoked(session_id="s1", reason="refresh_token_reused")],
            expected_version=2,
        )
        await store.append(
            "user-u3",
            [accounts.PasswordChanged(user_id="u3", password_hash="hash-3b", reason="reset")],
            expected_version=1,
        )


@pytest.fixture
def used_db(db_path: Path) -> Path:
    asyncio.run(_seed(db_path))
    return db_path


def dump(path: Path) -> Dump:
    conn = sqlite3.connect(path)
    try:
        return replay.dump_tables(conn, TABLES)
    finally:
        conn.close()


def temp_tables(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM temp.sqlite_master")]


def append_now(path: Path, first: int, count: int = 1) -> None:
    """Append through a second connection (a server's), from synchronous code."""

    async def run() -> None:
        async with EventStore(path, default_projections()) as store:
            await append_users(store, first, count)

    asyncio.run(run())


def test_cli_replay_leaves_the_tables_identical(used_db: Path, cli: Cli) -> None:
    before = dump(used_db)
    assert [len(before[t]) for t in ("users", "sessions", "refresh_tokens")] == [3, 2, 3]
    code, out, err = cli("replay")
    assert code == 0
    replayed, kept_line = out.splitlines()
    assert replayed == f"replayed 9 events into {len(TABLES)} tables: {', '.join(TABLES)}"
    assert "replay: 9/9 events (100%)" in err
    assert dump(used_db) == before
    kept = Path(kept_line.removeprefix("the file it replaced is kept at "))
    assert kept.parent == used_db.parent / "safety"
    assert dump(kept) == before  # the old file, under a second name
    assert audit.verify(sqlite3.connect(kept)).ok


def test_replay_rebuilds_what_was_lost(used_db: Path, cli: Cli) -> None:
    before = dump(used_db)
    conn = connect(used_db)
    conn.execute("DELETE FROM users WHERE user_id = 'u2'")
    conn.execute("UPDATE sessions SET revoked_at = NULL")
    conn.execute("DELETE FROM refresh_tokens")
    conn.execute("INSERT INTO refresh_tokens VALUES ('stray', 's9', 'x', NULL)")
    conn.close()
    assert dump(used_db) != before
    assert cli("replay")[0] == 0
    assert dump(used_db) == before


def test_replay_beside_a_running_server_rebuilds_in_place(used_db: Path, cli: Cli) -> None:
    """A server holds the file: no fresh file is swapped under it, the tables are rebuilt in
    place instead."""
    before = dump(used_db)
    _spoil(used_db)
    inode = used_db.stat().st_ino
    with backup.ServeLock(used_db):
        code, out, err = cli("replay")
    assert code == 0
    assert out.startswith("replayed 9 events")
    assert "a server uses the database: rebuilding the read tables in place" in err
    assert used_db.stat().st_ino == inode
    assert dump(used_db) == before


def test_replay_swaps_in_a_fresh_file(used_db: Path, cli: Cli) -> None:
    before = dump(used_db)
    inode = used_db.stat().st_ino
    assert cli("replay")[0] == 0
    assert used_db.stat().st_ino != inode
    assert dump(used_db) == before
    assert audit.verify(sqlite3.connect(used_db)).ok
    assert [p.name for p in used_db.parent.iterdir() if ".replay" in p.name] == []


def test_replay_of_an_empty_log_empties_the_tables(db_path: Path, cli: Cli) -> None:
    conn = connect(db_path)
    conn.execute("INSERT INTO users VALUES ('x', 'x@example.org', NULL, 'h', NULL, 'a', 'a')")
    conn.close()
    code, out, _ = cli("replay")
    assert code == 0
    assert out.startswith(f"replayed 0 events into {len(TABLES)} tables")
    assert dump(db_path) == {t: [] for t in TABLES}


def test_replay_keeps_the_read_tables_schema(used_db: Path) -> None:
    def schema() -> list[tuple[object, ...]]:
        conn = sqlite3.connect(used_db)
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        conn.close()
        return sorted(rows, key=repr)

    before = schema()
    conn = connect(used_db)
    result = replay.replay(conn, default_projections())
    assert temp_tables(conn) == []
    conn.close()
    assert result == replay.ReplayResult(9, TABLES)
    assert schema() == before


def _failing(after: int, code: str = "boom") -> Projections:
    """The real projections plus a handler that fails at the ``after``-th user event."""
    projections = default_projections()
    seen = [0]

    @projections.on
    def explode(
        conn: sqlite3.Connection,
        event: accounts.UserRegistered | accounts.EmailVerified | accounts.PasswordChanged,
        recorded: RecordedEvent,
    ) -> None:
        seen[0] += 1
        if seen[0] == after:
            raise LoaclError(code, f"failed at event {recorded.seq}")

    return projections


def _spoil(path: Path) -> Dump:
    """Make the read tables differ from what a replay gives, so that a swap would show."""
    conn = connect(path)
    conn.execute("DELETE FROM users WHERE user_id = 'u3'")
    conn.execute("UPDATE sessions SET expires_at = 'spoiled'")
    conn.close()
    return dump(path)


def test_failed_replay_leaves_the_old_tables(used_db: Path) -> None:
    old = _spoil(used_db)
    conn = connect(used_db)
    with pytest.raises(LoaclError, match="failed at event 9"):
        replay.replay(conn, _failing(after=5), chunk=2)
    assert temp_tables(conn) == []
    assert not conn.in_transaction
    assert replay.dump_tables(conn, TABLES) == old
    # The same connection can replay again once the fault is gone.
    replay.replay(conn, default_projections())
    conn.close()
    assert dump(used_db) != old


def test_failed_replay_through_the_cli(
    used_db: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _spoil(used_db)
    monkeypatch.setattr(loacl_cli, "default_projections", lambda: _failing(after=2))
    code, out, err = cli("replay")
    assert code == 1
    assert out == ""
    assert "failed at event 2 [boom]" in err
    assert dump(used_db) == old


def _append_after_the_fold(
    monkeypatch: pytest.MonkeyPatch, path: Path, first: int
) -> list[int]:
    """Append events in the window between the last chunk of the fold and the swap."""
    calls: list[int] = []

    def read(
        conn: sqlite3.Connection, after: int = 0, limit: int | None = None,
        keys: Opener | None = None, unopened: Any = None, opened_types: Any = None,
    ) -> list[RecordedEvent]:
        events = read_all_sync(conn, after, limit, keys, unopened, opened_types)
        if limit is not None and not events and not calls:
            calls.append(after)
            append_now(path, first, 2)
        return events

    monkeypatch.setattr(replay, "read_all_sync", read)
    return calls


def test_replay_folds_in_events_appended_before_the_swap(
    used_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _spoil(used_db)
    calls = _append_after_the_fold(monkeypatch, used_db, first=10)
    conn = connect(used_db)
    result = replay.replay(conn, default_projections(), chunk=4)
    conn.close()
    assert calls == [9]
    assert result.events == 11
    live = dump(used_db)
    assert {row[0] for row in live["users"]} == {"u1", "u2", "u3", "u10", "u11"}
    # A fresh replay (nothing appended now) gives the very same rows.
    monkeypatch.undo()
    conn = connect(used_db)
    replay.replay(conn, default_projections())
    conn.close()
    assert dump(used_db) == live


def test_failure_while_folding_in_late_events_leaves_the_old_tables(
    used_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _spoil(used_db)
    _append_after_the_fold(monkeypatch, used_db, first=10)
    conn = connect(used_db)
    # Five user events in the log, then the two late ones: the seventh fails, inside the swap.
    with pytest.raises(LoaclError, match="failed at event 11"):
        replay.replay(conn, _failing(after=7))
    assert temp_tables(conn) == []
    assert not conn.in_transaction
    conn.close()
    after = dump(used_db)
    # The late events reached the live tables through the store; nothing else changed.
    assert {r[0] for r in after["users"]} == {r[0] for r in old["users"]} | {"u10", "u11"}
    assert after["sessions"] == old["sessions"]
    assert after["refresh_tokens"] == old["refresh_tokens"]


async def test_replay_folds_in_events_appended_during_the_fold(
    store: EventStore, db_path: Path
) -> None:
    await append_users(store, 1, 10)
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) <= 3:
            asyncio.run_coroutine_threadsafe(
                append_users(store, 100 + len(seen), 1), loop
            ).result(timeout=30)

    def run() -> replay.ReplayResult:
        conn = connect(db_path)
        try:
            return replay.replay(conn, default_projections(), progress=progress, chunk=3)
        finally:
            conn.close()

    result = await asyncio.wait_for(asyncio.to_thread(run), timeout=60)
    assert result.events == 13
    assert seen[0] == (3, 10)
    assert seen[-1] == (13, 13)
    users = {row[0] for row in dump(db_path)["users"]}
    assert users == {f"u{n}" for n in range(1, 11)} | {"u101", "u102", "u103"}


async def test_replay_while_a_server_keeps_appending(store: EventStore, db_path: Path) -> None:
    await append_users(store, 1, 20)
    stop = asyncio.Event()
    appended = [0]

    async def writer() -> None:
        n = 1000
        while not stop.is_set():
            await append_users(store, n, 1)
            await store.append(
                f"user-u{n}", [accounts.EmailVerified(user_id=f"u{n}")], expected_version=1
            )
            appended[0] += 1
            n += 1

    def run() -> replay.ReplayResult:
        conn = connect(db_path)
        try:
            return replay.replay(conn, default_projections(), chunk=5)
        finally:
            conn.close()

    task = asyncio.create_task(writer())
    try:
        for _ in range(3):
            await asyncio.wait_for(asyncio.to_thread(run), timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert appended[0] > 0
    live = dump(db_path)
    assert len(live["users"]) == 20 + appended[0]
    assert sum(1 for row in live["users"] if row[4] is not None) == appended[0]
    await asyncio.to_thread(run)
    assert dump(db_path) == live


# -- the property: replay equals live ---------------------------------------------------------

EMAILS = ["ann@example.org", "bob@example.org", "cy@example.org", "dee@example.org"]
BASE = datetime(2031, 5, 17, 12, 0, tzinfo=UTC)
SESSION_KINDS = ["refresh", "reuse", "revoke"]
KINDS = ["register", "verify", "password", "start", *SESSION_KINDS]


@dataclass
class Model:
    users: list[str] = field(default_factory=list)
    emails: set[str] = field(default_factory=set)
    sessions: list[str] = field(default_factory=list)
    tokens: int = 0
    refused: list[str] = field(default_factory=list)

    def token(self) -> str:
        self.tokens += 1
        return f"token-hash-{self.tokens}"


async def _user(store: EventStore, user_id: str) -> tuple[accounts.User, int]:
    state = accounts.User()
    events = await store.read_stream(accounts.user_stream(user_id))
    for recorded in events:
        state = accounts.evolve_user(state, recorded.event)
    return state, len(events)


async def _session(store: EventStore, session_id: str) -> tuple[accounts.Session, int]:
    state = accounts.Session()
    events = await store.read_stream(accounts.session_stream(session_id))
    for recorded in events:
        state = accounts.evolve_session(state, recorded.event)
    return state, len(events)


async def _step(store: EventStore, model: Model, kind: str, a: int, b: int, tz: int) -> None:
    # A command that needs a user or a session first makes one, so that short examples reach
    # the interesting steps.
    if kind != "register" and not model.users:
        kind = "register"
    elif kind in SESSION_KINDS and not model.sessions:
        kind = "start"
    expires = BASE.astimezone(timezone(timedelta(minutes=tz))) + timedelta(
        days=1 + a, microseconds=b * 7919
    )
    if kind == "register":
        burst = 1 + b % 3
        emails = [EMAILS[(a + i * (b // 3)) % len(EMAILS)] for i in range(burst)]
        ids = [f"u{len(model.users) + len(model.refused) + i}" for i in range(burst)]
        results = await asyncio.gather(
            *(
                store.append(
                    accounts.user_stream(user_id),
                    accounts.register(user_id, email, f"Ówner {user_id}" if a % 2 else None,
                                      f"argon-{user_id}"),
                    expected_version=NO_STREAM,
                )
                for user_id, email in zip(ids, emails, strict=True)
            ),
            return_exceptions=True,
        )
        for user_id, email, outcome in zip(ids, emails, results, strict=True):
            if email in model.emails:
                assert isinstance(outcome, LoaclError) and outcome.code == "email_taken", outcome
                model.refused.append(user_id)
            else:
                assert isinstance(outcome, list), outcome
                model.users.append(user_id)
                model.emails.add(email)
        return
    if kind in {"verify", "password", "start"}:
        user, version = await _user(store, model.users[a % len(model.users)])
        events: list[Event]
        if kind == "verify":
            events = accounts.verify_email(user)
            assert (events == []) == user.verified
        elif kind == "password":
            events = accounts.change_password(user, model.token(), "reset")
        else:
            session_id = f"s{len(model.sessions)}"
            model.sessions.append(session_id)
            await store.append(
                accounts.session_stream(session_id),
                accounts.start_session(session_id, user.user_id, model.token(), expires),
                expected_version=NO_STREAM,
            )
            return
        if events:
            await store.append(
                accounts.user_stream(user.user_id), events, expected_version=version
            )
        return
    session, version = await _session(store, model.sessions[a % len(model.sessions)])
    if kind == "revoke":
        events = accounts.revoke_session(session, "logout")
        assert (events == []) == session.revoked
    else:
        if kind == "refresh":
            presented = session.current_token_hash
        elif session.used_token_hashes:
            presented = sorted(session.used_token_hashes)[b % len(session.used_token_hashes)]
        else:
            presented = "never-issued"
        if session.revoked or presented == "never-issued":
            with pytest.raises(LoaclError, match="refresh token is not valid"):
                accounts.refresh_session(session, presented, "unused", expires, BASE)
            return
        events = accounts.refresh_session(session, presented, model.token(), expires, BASE)
        if kind == "reuse":
            assert events == [
                accounts.SessionRevoked(
                    session_id=session.session_id, reason="refresh_token_reused"
                )
            ]
        else:
            assert isinstance(events[0], accounts.SessionRefreshed)
    if events:
        await store.append(
            accounts.session_stream(session.session_id), events, expected_version=version
        )


async def _live(path: Path, commands: list[tuple[str, int, int, int]]) -> Model:
    model = Model()
    async with EventStore(path, default_projections()) as store:
        for command in commands:
            await _step(store, model, *command)
    return model


commands_strategy = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 7),
        st.integers(0, 8),
        st.integers(-12 * 60, 14 * 60),
    ),
    min_size=10,
    max_size=40,
)


@settings(max_examples=50, deadline=None)
@given(commands=commands_strategy)
def test_replay_equals_live(commands: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "loacl.db"
        conn = connect(path)
        migrations.up(conn)
        model = asyncio.run(_live(path, commands))

        live = replay.dump_tables(conn, TABLES)
        assert sorted(str(row[0]) for row in live["users"]) == sorted(model.users)
        assert len(live["sessions"]) == len(model.sessions)
        assert len(live["refresh_tokens"]) == len(model.sessions) + sum(
            1 for row in live["refresh_tokens"] if row[3] is not None
        )
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()

        result = replay.replay(conn, default_projections())
        assert result.events == count
        rebuilt = replay.dump_tables(conn, TABLES)
        for table in TABLES:
            assert rebuilt[table] == live[table], table
        assert audit.verify(conn).ok
        conn.close()
