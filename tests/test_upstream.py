"""Several LOACL instances on one log in PostgreSQL, each with its own SQLite copy
(store.postgres.upstream): what one appends, the others copy, project and publish; the read
tables' vetoes hold across instances; erasure reaches every copy; each copy's chain is
PostgreSQL's. Against a real PostgreSQL (tests/pg.py) and real files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import asyncpg
import pytest

from loacl.domain.accounts import UserRegistered
from loacl.domain.conversations import (
    AssistantDelta,
    AssistantInterrupted,
    AssistantStarted,
    MessagePosted,
)
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata, RecordedEvent
from loacl.domain.privacy import SubjectErased, subject
from loacl.domain.widgets import ConversationStarted
from loacl.services.recovery import recover
from loacl.settings import format_master_key
from loacl.store import audit, batches, migrations, records
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.keys import Keyring, MasterKeys
from loacl.store.postgres.eventstore import PgEventStore
from loacl.store.postgres.upstream import CHANNEL, PgUpstream
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect
from loacl.store.subscriptions import Effect, Options, Subscriptions
from loacl.store.views.conversations import streaming_replies

MASTER = bytes(range(32))


def keyring() -> Keyring:
    return Keyring(MasterKeys(lambda: [MASTER]))


def migrated(path: Path) -> Path:
    conn = connect(path)
    migrations.up(conn)
    conn.close()
    return path


@pytest.fixture
async def instances(
    tmp_path: Path, pg_url: str
) -> AsyncIterator[Callable[[str], asyncio.Future[EventStore]]]:
    opened: list[EventStore] = []

    async def start(name: str) -> EventStore:
        # One keyring for the store and its upstream: keys learnt by one open for the other.
        keys = keyring()
        store = EventStore(
            migrated(tmp_path / f"{name}.db"), default_projections(), keyring=keys,
            upstream=PgUpstream(pg_url, keys, poll_seconds=0.2),
        )
        await store.open()
        opened.append(store)
        return store

    def opener(name: str) -> asyncio.Future[EventStore]:
        return asyncio.ensure_future(start(name))

    yield opener
    for store in opened:
        await store.close()


def cli_config(tmp_path: Path, pg_url: str, master_key: str = "", extra: str = "") -> Path:
    """A config file for the command line on the log in PostgreSQL: the instances' data folder
    and master key (or ``master_key``), a copy of its own."""
    config = tmp_path / "cli.toml"
    config.write_text(
        f'database_url = "{pg_url}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'instance_database = "{tmp_path / "cli.db"}"\n'
        f'master_key = "{master_key or format_master_key(MASTER)}"\n' + extra
    )
    return config


def registered(user: str, email: str) -> UserRegistered:
    return UserRegistered(user_id=user, email=email, name=f"Name of {user}", password_hash="h")


async def until(condition: Callable[[], bool], patience: float = 30.0) -> None:
    """Poll another connection's view until it holds (NOTIFY, or the 0.2 s poll, wakes the
    copy; a healthy run needs a small part of the patience)."""
    for _ in range(int(patience / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


async def test_an_append_on_one_instance_is_copied_projected_and_published_by_the_other(
    instances: Callable[[str], asyncio.Future[EventStore]], pg_url: str
) -> None:
    a, b = await instances("a"), await instances("b")
    seen: list[RecordedEvent] = []
    subscription = b.broker.subscribe()

    async def collect() -> None:
        async for event in subscription:
            seen.append(event)

    reader = asyncio.create_task(collect())
    written = await a.append("user-u1", [registered("u1", "one@example.test")],
                             expected_version=NO_STREAM)
    await until(lambda: len(seen) == 1)
    assert [e.seq for e in seen] == [written[0].seq]
    assert seen[0].event == written[0].event  # opened with the key copied from PostgreSQL
    assert await b.query("SELECT email FROM users WHERE user_id = 'u1'") == [("one@example.test",)]
    # And back: B appends, A copies it first thing in its next batch.
    await b.append("user-u2", [registered("u2", "two@example.test")], expected_version=NO_STREAM)
    third = await a.append("user-u3", [registered("u3", "three@example.test")])
    assert third[0].seq == 3
    assert await a.query("SELECT user_id FROM users ORDER BY user_id") == [
        ("u1",), ("u2",), ("u3",)
    ]
    subscription.close()
    await reader
    # The same rows, the same chain, in PostgreSQL and both copies.
    async with PgEventStore(pg_url, keyring=keyring()) as pg:
        result = await pg.verify()
        assert result.ok and result.events == 3
        expected = [(r.seq, r.hash) for r in await pg.read_all()]
    await until(lambda: len(rows(b.path, "SELECT seq FROM events")) == 3)
    for store in (a, b):
        assert rows(store.path, "SELECT seq, hash FROM events ORDER BY seq") == expected
        conn = connect(store.path)
        assert audit.verify(conn).ok
        conn.close()


async def test_a_read_tables_veto_holds_across_instances(
    instances: Callable[[str], asyncio.Future[EventStore]],
) -> None:
    """The same e-mail address registered on two instances: the second is refused, because
    each batch is written against a copy brought level under PostgreSQL's head lock."""
    a, b = await instances("a"), await instances("b")
    await a.append("user-u1", [registered("u1", "same@example.test")])
    with pytest.raises(LoaclError) as refused:
        await b.append("user-u2", [registered("u2", "same@example.test")])
    assert refused.value.code == "email_taken"
    # Nothing was written for the refusal, in PostgreSQL or in either copy.
    assert await b.head() == 1
    await a.append("user-u3", [registered("u3", "other@example.test")])
    assert await a.head() == 2


async def test_concurrent_appends_on_two_instances_interleave_without_gaps(
    instances: Callable[[str], asyncio.Future[EventStore]], pg_url: str
) -> None:
    a, b = await instances("a"), await instances("b")

    async def writer(store: EventStore, name: str) -> None:
        for i in range(30):
            await store.append(f"conversation-{name}", [ConversationStarted(
                conversation_id=name, widget_id="w", visitor_id=f"v{i}",
            )] if i == 0 else [registered(f"{name}-{i}", f"{name}-{i}@example.test")],
                metadata=Metadata(client_ip="203.0.113.9"))

    await asyncio.gather(*(writer(s, f"{n}{k}") for s, n in ((a, "a"), (b, "b"))
                           for k in range(3)))
    await until(lambda: len(rows(a.path, "SELECT seq FROM events")) == 180)
    await until(lambda: len(rows(b.path, "SELECT seq FROM events")) == 180)
    assert rows(a.path, "SELECT seq, hash FROM events ORDER BY seq") == rows(
        b.path, "SELECT seq, hash FROM events ORDER BY seq"
    )
    assert [r[0] for r in rows(a.path, "SELECT seq FROM events ORDER BY seq")] == list(
        range(1, 181)
    )
    # Every projection ran once per event on both copies.
    for store in (a, b):
        assert len(await store.query("SELECT user_id FROM users")) == 6 * 29
    async with PgEventStore(pg_url, keyring=keyring()) as pg:
        assert (await pg.verify()).events == 180


async def test_a_batch_written_on_a_copy_that_fell_behind_is_written_again_after_the_news(
    instances: Callable[[str], asyncio.Future[EventStore]], pg_url: str
) -> None:
    """A batch is written on the copy first and sent only if PostgreSQL's head is still where
    the copy ends. A deaf to the log's notifications (as after a lost connection) takes its
    copy for the head while B appends: its batch finds the head moved, nothing of it is in
    PostgreSQL, and it is written again after B's event, which it copies first."""
    a, b = await instances("a"), await instances("b")
    first = await a.append("user-u1", [registered("u1", "one@example.test")])
    upstream = a.upstream
    assert upstream is not None
    listener = upstream._listener
    await listener.remove_listener(CHANNEL, upstream._notified)
    upstream.woken = None
    assert a._polling is not None
    a._polling.cancel()  # nor does its poll bring the copy level meanwhile
    await until(lambda: len(rows(b.path, "SELECT seq FROM events")) == 1)
    by_b = await b.append("user-u2", [registered("u2", "two@example.test")])
    assert len(rows(a.path, "SELECT seq FROM events")) == 1  # A has not heard of it
    moved = upstream.head_moved
    by_a = await a.append("user-u3", [registered("u3", "three@example.test")])
    assert upstream.head_moved == moved + 1
    assert [first[0].seq, by_b[0].seq, by_a[0].seq] == [1, 2, 3]
    # A's copy holds B's event before its own, as PostgreSQL does.
    async with PgEventStore(pg_url, keyring=keyring()) as pg:
        assert (await pg.verify()).events == 3
        expected = [(r.seq, r.hash) for r in await pg.read_all()]
    assert rows(a.path, "SELECT seq, hash FROM events ORDER BY seq") == expected
    assert await a.query("SELECT user_id FROM users ORDER BY user_id") == [
        ("u1",), ("u2",), ("u3",)
    ]
    # An address B took meanwhile, unknown to A's copy: A's batch finds the head moved, and
    # written again, against the copy brought level, it is refused.
    await b.append("user-u4", [registered("u4", "four@example.test")])
    with pytest.raises(LoaclError) as refused:
        await a.append("user-u5", [registered("u5", "four@example.test")])
    assert refused.value.code == "email_taken"
    assert upstream.head_moved == moved + 2
    async with PgEventStore(pg_url, keyring=keyring()) as pg:
        assert (await pg.verify()).events == 4


async def test_expected_versions_hold_across_instances_and_a_copy_keeps_what_the_writer_knows(
    instances: Callable[[str], asyncio.Future[EventStore]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream's version another instance moved is the one an append is checked against,
    after the copy brings it; and events copied in do not make the writer forget the versions
    it knows of other streams (it would otherwise read each one from the log again, at nearly
    every batch while instances take turns)."""
    a, b = await instances("a"), await instances("b")
    looked_up: list[str] = []
    real = records.stream_version

    def counted(conn: sqlite3.Connection, stream: str) -> int:
        looked_up.append(stream)
        return real(conn, stream)

    monkeypatch.setattr(batches, "stream_version", counted)
    await a.append("user-mine", [registered("m1", "m1@example.test")], expected_version=0)
    await a.append("user-shared", [registered("s1", "s1@example.test")], expected_version=0)
    await until(lambda: len(rows(b.path, "SELECT seq FROM events")) == 2)
    # B moves the shared stream on; A's next append to it, expecting where A left it, is
    # refused once A's copy has B's event, and one expecting B's version is written.
    await b.append("user-shared", [registered("s2", "s2@example.test")], expected_version=1)
    await until(lambda: len(rows(a.path, "SELECT seq FROM events")) == 3)
    looked_up.clear()
    with pytest.raises(LoaclError) as refused:
        await a.append("user-shared", [registered("s3", "s3@example.test")], expected_version=1)
    assert refused.value.code == "version_conflict"
    await a.append("user-shared", [registered("s3", "s3@example.test")], expected_version=2)
    # B appends elsewhere; A's next batch copies it in and still knows its own stream.
    assert looked_up == [], looked_up
    await b.append("user-other", [registered("o1", "o1@example.test")], expected_version=0)
    looked_up.clear()  # B's first append to a stream new to it
    await a.append("user-mine", [registered("m2", "m2@example.test")], expected_version=1)
    assert looked_up == [], looked_up
    with pytest.raises(LoaclError) as stale:
        await a.append("user-mine", [registered("m3", "m3@example.test")], expected_version=1)
    assert stale.value.code == "version_conflict"
    await until(lambda: rows(a.path, "SELECT seq, hash FROM events ORDER BY seq") == rows(
        b.path, "SELECT seq, hash FROM events ORDER BY seq"))
    assert [r[0] for r in rows(a.path, "SELECT seq FROM events ORDER BY seq")] == list(
        range(1, 7))


async def test_an_instance_is_not_woken_by_its_own_commits(
    instances: Callable[[str], asyncio.Future[EventStore]]
) -> None:
    """The NOTIFY of a batch this instance committed wakes only the others: a catch-up for
    it would ask PostgreSQL for nothing while holding the writer. Another backend's wakes it,
    as a notification whose sender is not known does."""
    a = await instances("a")
    await a.append("user-u1", [registered("u1", "one@example.test")])
    upstream = a.upstream
    assert upstream is not None
    woken: list[None] = []
    upstream.woken = lambda: woken.append(None)
    own = upstream._writer_pid
    assert own is not None
    # A real notification of this instance's own next commit, as PostgreSQL sends it.
    await a.append("user-u2", [registered("u2", "two@example.test")])
    await asyncio.sleep(0.1)
    assert woken == []
    upstream._notified(None, own + 1, CHANNEL, "3")
    assert len(woken) == 1


async def test_an_erasure_on_one_instance_reaches_the_other_copy(
    instances: Callable[[str], asyncio.Future[EventStore]], pg_url: str
) -> None:
    a, b = await instances("a"), await instances("b")
    await a.append("user-u1", [registered("u1", "gone@example.test")])
    await until(lambda: bool(rows(b.path, "SELECT 1 FROM users")))
    owner = subject("owner", "u1")
    await a.append("privacy-u1", [SubjectErased(subject=owner, reason="request",
                                                 requested_by="operator", scope=owner)])
    await until(lambda: rows(
        b.path, f"SELECT wrapped IS NULL FROM data_keys WHERE subject = '{owner}'"
    ) == [(1,)])
    # B reads the account's events as erased, and refuses new ones for the subject.
    events = await b.read_stream("user-u1")
    assert str(events[0].event.email) == "[erased]"  # type: ignore[attr-defined]
    with pytest.raises(LoaclError) as refused:
        await b.append("user-u1", [registered("u1", "again@example.test")])
    assert refused.value.code == "subject_erased"
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval(
            "SELECT wrapped IS NULL FROM data_keys WHERE subject = $1", owner
        )
    finally:
        await conn.close()


async def test_rotating_the_master_key_reaches_postgresql_and_every_copy(
    instances: Callable[[str], asyncio.Future[EventStore]], tmp_path: Path, pg_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``loacl keys rotate`` with a log in PostgreSQL seals the data keys again there (and in
    the command's copy); once the old master key has left the settings, an instance whose copy
    still held the keys sealed with it is given them again from PostgreSQL when it opens, and
    a new instance copies them sealed with the new one: both read the sealed fields."""
    from loacl.cli import main

    a = await instances("a")
    for i in range(3):
        await a.append(f"user-u{i}", [registered(f"u{i}", f"{i}@example.test")])
    await a.close()
    new_master = bytes(range(100, 132))
    config = cli_config(
        tmp_path, pg_url, f"{format_master_key(new_master)},{format_master_key(MASTER)}")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", str(config), "keys", "rotate"]) == 0
    out = capsys.readouterr().out
    assert "(3 sealed again)" in out, out
    conn = await asyncpg.connect(pg_url)
    try:
        masters = {r[0] for r in await conn.fetch(
            "SELECT DISTINCT master_id FROM data_keys WHERE wrapped IS NOT NULL")}
        assert masters == {MasterKeys(lambda: [new_master]).current_id}
        assert await conn.fetchval("SELECT master_id FROM key_state") in masters
    finally:
        await conn.close()

    def only_new() -> Keyring:
        return Keyring(MasterKeys(lambda: [new_master]))

    for name in ("a", "fresh"):  # a's copy holds keys sealed with the old key; fresh has none
        keys = only_new()
        path = tmp_path / f"{name}.db"
        store = EventStore(migrated(path), default_projections(), keyring=keys,
                           upstream=PgUpstream(pg_url, keys))
        async with store:
            emails = [str(e.event.email)  # type: ignore[attr-defined]
                      for e in await store.read_all()]
            assert emails[:3] == ["0@example.test", "1@example.test", "2@example.test"], name
            await store.append(f"user-{name}", [registered(name, f"{name}@example.test")])
            assert (await store.verify()).ok
        assert {r[0] for r in rows(path, "SELECT DISTINCT master_id FROM data_keys")} == masters


async def test_a_new_instance_copies_the_whole_log_on_start_and_a_foreign_copy_is_refused(
    instances: Callable[[str], asyncio.Future[EventStore]], tmp_path: Path, pg_url: str
) -> None:
    a = await instances("a")
    for i in range(12):
        await a.append(f"user-u{i}", [registered(f"u{i}", f"{i}@example.test")])
    late = await instances("late")
    assert await late.query("SELECT count(*) FROM users") == [(12,)]
    # A file holding another log is not taken for a copy of this one.
    other = EventStore(migrated(tmp_path / "other.db"), default_projections(), keyring=keyring())
    async with other:
        await other.append("user-x", [registered("x", "x@example.test")])
    keys = keyring()
    foreign = EventStore(tmp_path / "other.db", default_projections(), keyring=keys,
                         upstream=PgUpstream(pg_url, keys))
    with pytest.raises(LoaclError) as refused:
        await foreign.open()
    assert refused.value.code == "instance_database_diverged"


async def test_an_effect_runs_on_one_instance_at_a_time_and_the_next_goes_on_from_its_checkpoint(
    instances: Callable[[str], asyncio.Future[EventStore]],
) -> None:
    """A webhook or a mail goes out once, not once per instance: an effect subscriber runs
    where PostgreSQL's lock for it is held, and its checkpoint is PostgreSQL's; when that
    instance stops, another takes over after the last event handled."""
    a, b = await instances("a"), await instances("b")
    handled: list[tuple[str, int]] = []

    def effect(name: str) -> Effect:
        async def handle(events: Sequence[RecordedEvent]) -> None:
            handled.extend((name, e.seq) for e in events)

        return Effect("mail", handle, types=frozenset({"user.registered"}))

    options = Options(idle_timeout=0.2, checkpoint_interval=0.05)
    on_a, on_b = Subscriptions(a, [effect("a")], options), Subscriptions(b, [effect("b")], options)
    await on_a.start()
    await on_b.start()
    for i in range(5):
        await (a if i % 2 else b).append(f"user-u{i}", [registered(f"u{i}", f"{i}@example.test")])
    await until(lambda: len(handled) == 5)
    holders = {name for name, _ in handled}
    assert len(holders) == 1, handled  # whichever took the lock, alone
    assert [seq for _, seq in handled] == [1, 2, 3, 4, 5]
    # The holder stops: the other takes over from PostgreSQL's checkpoint, not from its own
    # (it never ran), and handles only what came after.
    holder = holders.pop()
    stopping, staying = (on_a, on_b) if holder == "a" else (on_b, on_a)
    await stopping.stop()
    for i in range(5, 8):
        await a.append(f"user-u{i}", [registered(f"u{i}", f"{i}@example.test")])
    await until(lambda: len(handled) == 8)
    other = "b" if holder == "a" else "a"
    assert handled[5:] == [(other, 6), (other, 7), (other, 8)]
    await asyncio.sleep(0.3)  # nothing more comes
    assert len(handled) == 8
    await staying.stop()


async def test_operator_commands_on_a_postgresql_log(
    instances: Callable[[str], asyncio.Future[EventStore]], tmp_path: Path, pg_url: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """``migrate``, ``users create`` and ``audit verify`` with DATABASE_URL=postgresql://...:
    the command writes through PostgreSQL (a running instance copies it in), and the audit
    walks PostgreSQL's chain as well as the command's own copy."""
    import io

    from loacl.cli import main

    running = await instances("server")
    config = cli_config(tmp_path, pg_url, extra=(
        "argon2_time_cost = 1\nargon2_memory_kib = 64\nargon2_parallelism = 1\n"))

    def cli(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out + err

    code, out = await asyncio.to_thread(cli, "migrate", "status")
    assert code == 0 and "postgresql 0001_event_log" in out and "pending" not in out.split(
        "postgresql")[-1]
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough secret\n"))
    code, out = await asyncio.to_thread(
        cli, "users", "create", "--email", "ops@example.com", "--password-stdin")
    assert code == 0, out
    await until(lambda: bool(rows(running.path, "SELECT 1 FROM users")))
    assert await running.query("SELECT email FROM users") == [("ops@example.com",)]
    code, out = await asyncio.to_thread(cli, "audit", "verify")
    assert code == 0, out
    assert "postgresql ok: 1 events" in out and "\nok: 1 events" in out
    # Going down is PostgreSQL's own tools' business.
    code, _ = await asyncio.to_thread(cli, "migrate", "down")
    assert code != 0


async def test_reading_commands_see_the_whole_log_and_backup_is_pg_dump(
    instances: Callable[[str], asyncio.Future[EventStore]], tmp_path: Path, pg_url: str,
    pg_empty_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """With DATABASE_URL=postgresql://..., ``events``, ``events export``, ``replay`` and
    ``subscribers status`` read the command's own copy brought level with PostgreSQL first
    (another instance wrote the log, before and after the copy was made); an effect's position
    is PostgreSQL's checkpoint; ``backup`` audits the log and writes a pg_dump that pg_restore
    makes into a database whose chain audits to the same head."""
    import datetime as dt
    import json
    import os
    import stat
    import subprocess

    from loacl.cli import main
    from loacl.store.postgres import dump

    running = await instances("server")
    assert running.upstream is not None
    await running.append("user-u1", [registered("u1", "one@example.com")],
                         expected_version=NO_STREAM)
    config = cli_config(tmp_path, pg_url)

    def cli(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out + err

    code, out = await asyncio.to_thread(cli, "events", "tail", "--json")
    assert code == 0, out
    assert [json.loads(line)["stream"] for line in out.splitlines()] == ["user-u1"]
    # Appended by the other instance after this copy was made: the next command sees it.
    await running.append("user-u2", [registered("u2", "two@example.com")],
                         expected_version=NO_STREAM)
    code, out = await asyncio.to_thread(cli, "events", "export")
    assert code == 0, out
    exported = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["stream"] for e in exported] == ["user-u1", "user-u2"]
    assert exported[1]["payload"]["email"] == "two@example.com"  # opened with the master key
    await running.append("user-u3", [registered("u3", "three@example.com")],
                         expected_version=NO_STREAM)
    code, out = await asyncio.to_thread(cli, "replay")
    assert code == 0 and "replayed 3 events" in out, out
    assert sorted(rows(tmp_path / "cli.db", "SELECT email FROM users")) == [
        ("one@example.com",), ("three@example.com",), ("two@example.com",)]

    # An effect's checkpoint is PostgreSQL's: two of three events done there.
    now = dt.datetime.now(dt.UTC)
    await running.upstream.checkpoint("webhooks")
    await running.upstream.advance("webhooks", 0, 2, now)
    code, out = await asyncio.to_thread(cli, "subscribers", "status", "--json")
    assert code == 0, out
    status = {s["name"]: s for s in map(json.loads, out.splitlines())}
    assert status["webhooks"]["position"] == 2 and status["webhooks"]["lag_events"] == 1
    assert status["usage"]["lag_events"] <= 3

    backup = tmp_path / "log.dump"
    code, out = await asyncio.to_thread(cli, "backup", str(backup))
    assert code == 0, out
    assert "3 events, audit ok" in out and "pg_restore" in out
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert not list(tmp_path.glob("*.partial"))  # noqa: ASYNC240
    restore = Path(dump.pg_dump()).with_name("pg_restore")
    done = await asyncio.to_thread(
        subprocess.run, [str(restore), "--no-owner", "--dbname", pg_empty_url, str(backup)],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    restored = PgEventStore(pg_empty_url, keyring=keyring())
    await restored.open()
    try:
        checked = await restored.verify()
        head = (await restored.read_all())[-1]
    finally:
        await restored.close()
    assert checked.ok and checked.events == 3
    assert head.stream == "user-u3"

    # Following: the copy is kept level while the command runs, so what the other instance
    # appends meanwhile is shown.
    import sys

    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loacl", "--config", str(config), "events", "tail", "--follow",
        "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert follower.stdout is not None
        seen = [json.loads(await asyncio.wait_for(follower.stdout.readline(), 60))["stream"]
                for _ in range(3)]
        assert seen == ["user-u1", "user-u2", "user-u3"]
        await running.append("user-u4", [registered("u4", "four@example.com")],
                             expected_version=NO_STREAM)
        line = await asyncio.wait_for(follower.stdout.readline(), 60)
        assert json.loads(line)["stream"] == "user-u4"
    finally:
        follower.terminate()
        await follower.wait()

    # A server that cannot be reached: a clear error, and no file left behind.
    config.write_text(config.read_text().replace(pg_url, "postgresql://nobody@127.0.0.1:1/x"))
    code, out = await asyncio.to_thread(cli, "backup", str(tmp_path / "other.dump"))
    assert code != 0 and not (tmp_path / "other.dump").exists()


async def test_recovery_closes_only_replies_no_instance_runs(
    instances: Callable[[str], asyncio.Future[EventStore]],
) -> None:
    """A reply is leased by the instance that runs it (PostgreSQL's advisory lock on a
    connection of its own): another instance's recovery leaves it open while that instance
    lives, and closes it as interrupted once the instance is gone."""
    a, b = await instances("a"), await instances("b")
    assert a.upstream is not None and b.upstream is not None
    await a.upstream.lease("r1")
    await a.append("conversation-c1", [
        ConversationStarted(conversation_id="c1", widget_id="w", visitor_id="v"),
        MessagePosted(conversation_id="c1", message_id="q1", text="Where is my parcel?"),
        AssistantStarted(conversation_id="c1", message_id="r1", reply_to="q1",
                         assistant_id="a", provider="demo", model="demo"),
        AssistantDelta(message_id="r1", offset=0, text="It left"),
    ])
    await b.catch_up()
    assert await b.upstream.leased("r1")
    assert await recover(b) == 0
    assert [r.message_id for r in await streaming_replies(b)] == ["r1"]
    await a.close()  # the instance goes, and its connection with the lease
    assert not await b.upstream.leased("r1")
    assert await recover(b) == 1
    [ended] = [r.event for r in await b.read_stream("conversation-c1")][-1:]
    assert isinstance(ended, AssistantInterrupted) and ended.text == "It left"
    assert await streaming_replies(b) == []
