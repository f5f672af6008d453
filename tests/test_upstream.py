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
from loacl.store import audit, migrations
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
    upstream.woken = None  # nor does its poll bring the copy level meanwhile
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
    data = tmp_path / "data"
    config = tmp_path / "cli.toml"
    config.write_text(
        f'database_url = "{pg_url}"\ndata_dir = "{data}"\n'
        f'instance_database = "{tmp_path / "cli.db"}"\n'
        f'master_key = "{format_master_key(MASTER)}"\n'
        "argon2_time_cost = 1\nargon2_memory_kib = 64\nargon2_parallelism = 1\n"
    )

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
