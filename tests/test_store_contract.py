"""One contract, two event stores: every test here runs against SQLite (a real file) and
PostgreSQL (a real server, tests/pg.py). What LOACL relies on of a log is in
``store.contract.EventLog``; the PostgreSQL-only tests at the end show why its appends are
serialized on the log's head."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from loacl.domain.accounts import EmailVerified
from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Event, RecordedEvent
from loacl.domain.privacy import SubjectErased, is_erased
from loacl.domain.widgets import ConversationStarted
from loacl.store import codec
from loacl.store.checkpoints import Moved
from loacl.store.contract import EventLog
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.keys import MARK, Keyring, MasterKeys
from loacl.store.postgres import migrate
from loacl.store.postgres.eventstore import PgEventStore
from loacl.store.projections import default_projections
from tests.test_eventstore import writer_held

MASTER = bytes(range(32))
PATIENCE = 10.0  # a guard against a hang, never a measurement


def _conforms(sqlite_store: EventStore, pg_store: PgEventStore) -> list[EventLog]:
    """mypy checks here that both stores satisfy the contract."""
    return [sqlite_store, pg_store]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def filler(n: int) -> Event:
    """An event with no personal field whose projection touches no row."""
    return EmailVerified(user_id=f"u{n}")


def keyring() -> Keyring:
    return Keyring(MasterKeys(lambda: [MASTER]))


@dataclass
class Backend:
    """One kind of store under test: how to open stores on one database, and how to reach
    that database below the store (to look at raw rows, or to damage them)."""

    name: str
    make: Callable[[Keyring | None], EventLog]
    # Rows of a raw SQL statement without parameters.
    raw: Callable[[str], Awaitable[list[tuple[Any, ...]]]]
    # Rewrite one event's payload, getting past the append-only trigger as an attacker would.
    tamper: Callable[[int, str], Awaitable[None]]
    # Holds the writer so that appends made meanwhile wait to be written together.
    held: Callable[[EventLog], contextlib.AbstractAsyncContextManager[None]]
    commits: Callable[[EventLog], int]
    opened: list[EventLog] = field(default_factory=list)

    async def open(self, keys: Keyring | None = None) -> EventLog:
        store = self.make(keys)
        await store.open()
        self.opened.append(store)
        return store


def _sqlite_backend(path: Path) -> Backend:
    counts: dict[int, list[int]] = {}

    def make(keys: Keyring | None) -> EventLog:
        done: list[int] = []
        store = EventStore(path, default_projections(), clock=Clock(), keyring=keys,
                           on_commit=lambda appends, events, seconds: done.append(appends))
        counts[id(store)] = done
        return store

    def run(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    async def raw(sql: str) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(run, sql)

    async def tamper(seq: int, payload: str) -> None:
        def edit() -> None:
            conn = sqlite3.connect(path)
            try:
                conn.execute("DROP TRIGGER events_no_update")
                conn.execute("UPDATE events SET payload = ? WHERE seq = ?", (payload, seq))
                conn.commit()
            finally:
                conn.close()

        await asyncio.to_thread(edit)

    def held(store: EventLog) -> contextlib.AbstractAsyncContextManager[None]:
        assert isinstance(store, EventStore)
        return writer_held(store)

    return Backend("sqlite", make, raw, tamper, held, lambda s: len(counts[id(s)]))


@contextlib.asynccontextmanager
async def _nothing_held(store: EventLog) -> AsyncIterator[None]:
    # Appends made without an await between them are all queued before the writer task runs
    # again: one event loop, and the writer is woken behind them.
    yield


def _pg_backend(url: str) -> Backend:
    def make(keys: Keyring | None) -> EventLog:
        return PgEventStore(url, clock=Clock(), keyring=keys, pool_size=4)

    async def raw(sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def tamper(seq: int, payload: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_update")
            await conn.execute("UPDATE events SET payload = $1 WHERE seq = $2", payload, seq)
        finally:
            await conn.close()

    def commits(store: EventLog) -> int:
        assert isinstance(store, PgEventStore)
        return store.commits

    return Backend("postgres", make, raw, tamper, _nothing_held, commits)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(
    request: pytest.FixtureRequest, db_path: Path
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        found = _sqlite_backend(db_path)
    else:
        found = _pg_backend(request.getfixturevalue("pg_url"))
    yield found
    for store in reversed(found.opened):
        await store.close()


async def tail(store: EventLog, until: int) -> list[int]:
    """Positions seen by a reader that reads on from the last one it saw, as a subscriber
    does, until it has seen ``until``."""
    seen: list[int] = []
    last = 0
    async with asyncio.timeout(PATIENCE * 3):
        while last < until:
            found = await store.read_all(after=last, limit=50)
            seen += [r.seq for r in found]
            if found:
                last = found[-1].seq
            else:
                await asyncio.sleep(0.001)
    return seen


# -- appending ----------------------------------------------------------------------------------


async def test_append_and_read_back(backend: Backend) -> None:
    store = await backend.open()
    first = await store.append("user-a", [filler(1), filler(2)], expected_version=NO_STREAM)
    second = await store.append("user-b", [filler(3)])
    assert [(r.seq, r.stream, r.version) for r in first + second] == [
        (1, "user-a", 1), (2, "user-a", 2), (3, "user-b", 1),
    ]
    assert [r.event for r in await store.read_stream("user-a")] == [filler(1), filler(2)]
    assert [r.seq for r in await store.read_stream("user-a", after_version=1)] == [2]
    assert await store.stream_version("user-a") == 2
    assert await store.stream_version("user-none") == 0
    assert await store.head() == 3
    assert await store.read_all() == first + second


async def test_expected_version_conflicts(backend: Backend) -> None:
    store = await backend.open()
    await store.append("user-a", [filler(1)], expected_version=NO_STREAM)
    with pytest.raises(ConflictError):
        await store.append("user-a", [filler(2)], expected_version=NO_STREAM)
    with pytest.raises(ConflictError):
        await store.append("user-a", [filler(2)], expected_version=5)
    await store.append("user-a", [filler(2)], expected_version=1)
    assert await store.stream_version("user-a") == 2
    assert await store.head() == 2  # nothing of the refused appends was written


async def test_versions_written_by_another_instance_are_seen(backend: Backend) -> None:
    """Each store remembers stream versions between its commits; another instance's append
    must make it read them again."""
    one, two = await backend.open(), await backend.open()
    await one.append("user-a", [filler(1)], expected_version=NO_STREAM)
    await two.append("user-a", [filler(2)], expected_version=1)
    with pytest.raises(ConflictError):
        await one.append("user-a", [filler(3)], expected_version=1)
    written = await one.append("user-a", [filler(3)], expected_version=2)
    assert [(r.seq, r.version) for r in written] == [(3, 3)]
    assert (await two.verify()).ok


async def test_one_conflict_in_a_batch_refuses_only_its_own_append(backend: Backend) -> None:
    store = await backend.open()
    await store.append("user-a", [filler(0)])
    async with backend.held(store):
        good = asyncio.ensure_future(store.append("user-b", [filler(1)], expected_version=0))
        bad = asyncio.ensure_future(store.append("user-a", [filler(2)], expected_version=0))
        after = asyncio.ensure_future(store.append("user-a", [filler(3)], expected_version=1))
    assert [r.seq for r in await good] == [2]
    with pytest.raises(ConflictError):
        await bad
    assert [r.seq for r in await after] == [3]
    assert (await store.verify()).ok


async def test_idempotency_key_returns_the_first_append(backend: Backend) -> None:
    store = await backend.open()
    first = await store.append("user-a", [filler(1)], idempotency_key="k1")
    again = await store.append("user-a", [filler(99)], idempotency_key="k1")
    assert again == first
    assert await store.head() == 1
    # The same key twice in one batch: written once, both told the same events.
    async with backend.held(store):
        one = asyncio.ensure_future(store.append("user-b", [filler(2)], idempotency_key="k2"))
        two = asyncio.ensure_future(store.append("user-b", [filler(3)], idempotency_key="k2"))
    assert await one == await two
    assert await store.head() == 2
    # A store opened later (another instance) answers the key from the database.
    other = await backend.open()
    assert await other.append("user-a", [filler(4)], idempotency_key="k1") == first


async def test_concurrent_appends_commit_together_in_one_gapless_order(backend: Backend) -> None:
    store = await backend.open()
    async with backend.held(store):
        pending = [
            asyncio.ensure_future(store.append(f"user-{i % 7}", [filler(i), filler(-i)]))
            for i in range(200)
        ]
    results = await asyncio.gather(*pending)
    # Group commit: the 200 appends queued while the writer was held went in one transaction.
    assert backend.commits(store) == 1
    seqs = sorted(r.seq for result in results for r in result)
    assert seqs == list(range(1, 401))
    log = await store.read_all()
    assert [r.seq for r in log] == seqs
    for i in range(7):
        versions = [r.version for r in await store.read_stream(f"user-{i}")]
        assert versions == list(range(1, len(versions) + 1))
    assert (await store.verify()).ok


async def test_several_instances_append_while_a_reader_tails(backend: Backend) -> None:
    """Four stores on one database (four LOACL instances), each with many writers, while a
    fifth reads on from the last position it saw. It must see every event exactly once, in
    order: an event that commits after the reader passed its number would be lost to it."""
    writers = [await backend.open() for _ in range(4)]
    reader = await backend.open()

    async def write(store: EventLog, n: int) -> None:
        for i in range(5):
            await store.append(f"user-{n}", [filler(i)])

    total = 4 * 10 * 5
    seen, _ = await asyncio.gather(
        tail(reader, total),
        asyncio.gather(*(write(w, n * 10 + k) for n, w in enumerate(writers) for k in range(10))),
    )
    assert seen == list(range(1, total + 1))
    assert (await reader.verify()).ok


# -- reading ------------------------------------------------------------------------------------


async def test_read_from_a_position(backend: Backend) -> None:
    store = await backend.open()
    for i in range(10):
        await store.append("user-a", [filler(i)])
    assert [r.seq for r in await store.read_all(after=4, limit=3)] == [5, 6, 7]
    assert [r.seq for r in await store.read_all(after=8)] == [9, 10]
    assert await store.read_all(after=10) == []


async def test_load_folds_a_stream(backend: Backend) -> None:
    store = await backend.open()
    await store.append("user-a", [filler(1), filler(2), filler(3)])

    def count(state: int, event: Event) -> int:
        return state + 1

    assert await store.load("user-a", 0, count) == (3, 3)


# -- the hash chain -----------------------------------------------------------------------------


async def test_hash_chain_verifies_and_tampering_is_found(backend: Backend) -> None:
    store = await backend.open()
    for i in range(5):
        await store.append(f"user-{i}", [filler(i)])
    log = await store.read_all()
    result = await store.verify()
    assert (result.ok, result.events, result.last_hash) == (True, 5, log[-1].hash)
    # The same rows give the same hashes whichever database holds them.
    prev = codec.GENESIS_HASH
    for seq, stream, version, type_, schema, payload, metadata, at, stored in await backend.raw(
        "SELECT seq, stream, version, type, schema_version, payload, metadata, recorded_at, hash "
        "FROM events ORDER BY seq"
    ):
        prev = codec.chain_hash(prev, seq, stream, version, type_, schema, payload, metadata, at)
        assert prev == stored

    with pytest.raises(Exception, match="append-only"):
        await backend.raw("UPDATE events SET payload = '{}' WHERE seq = 3")
    await backend.tamper(3, '{"user_id":"someone else"}')
    broken = await store.verify()
    assert (broken.ok, broken.bad_seq) == (False, 3)


# -- subscriber checkpoints ---------------------------------------------------------------------


async def test_checkpoints_resume_where_a_subscriber_stopped(backend: Backend) -> None:
    store = await backend.open()
    for i in range(6):
        await store.append("user-a", [filler(i)])
    checkpoint = await store.checkpoint("mailer")
    assert checkpoint.position == 0
    handled = await store.read_all(after=checkpoint.position, limit=4)
    await store.advance_checkpoint("mailer", 0, handled[-1].seq)
    await store.close()

    restarted = await backend.open()
    resumed = await restarted.checkpoint("mailer")
    assert resumed.position == 4
    assert [r.seq for r in await restarted.read_all(after=resumed.position)] == [5, 6]
    # A second runner still holding the old position learns where the checkpoint is.
    with pytest.raises(Moved) as moved:
        await restarted.advance_checkpoint("mailer", 0, 6)
    assert moved.value.position == 4
    await restarted.advance_checkpoint("mailer", 4, 6)
    assert (await restarted.checkpoint("mailer")).position == 6


# -- sealed personal fields and erasure ---------------------------------------------------------


async def test_personal_fields_are_sealed_and_erased_with_their_key(backend: Backend) -> None:
    store = await backend.open(keyring())
    started = ConversationStarted(
        conversation_id="c1", widget_id="w1", visitor_id="v1", external_user_id="alice@example.com"
    )
    other = ConversationStarted(
        conversation_id="c2", widget_id="w1", visitor_id="v2", external_user_id="bob@example.com"
    )
    await store.append("conversation-c1", [started])
    await store.append("conversation-c2", [other])
    payloads = " ".join(p for (p,) in await backend.raw("SELECT payload FROM events"))
    assert "alice" not in payloads and "bob" not in payloads
    assert "\\u0000" in payloads  # sealed values: NUL and base64 (store.keys.MARK)
    assert MARK == "\x00"
    # Another instance, with its own keyring, reads the keys from the database.
    reader = await backend.open(keyring())
    assert (await reader.read_stream("conversation-c1"))[0].event == started

    await store.append("conversation-c1", [SubjectErased(
        subject="conversation:c1", reason="request", requested_by="operator",
        scope="conversation:c1",
    )])
    for opened in (store, await backend.open(keyring())):
        erased = (await opened.read_stream("conversation-c1"))[0].event
        assert isinstance(erased, ConversationStarted)
        assert is_erased(erased.external_user_id)
        kept = (await opened.read_stream("conversation-c2"))[0].event
        assert kept == other  # another subject's key is untouched
    with pytest.raises(LoaclError) as refused:
        await store.append("conversation-c1", [started])
    assert refused.value.code == "subject_erased"
    # Erasure destroys a key outside the chain: the log still verifies.
    assert (await store.verify()).ok


# -- PostgreSQL only: why appends are serialized on the head ------------------------------------


async def test_a_naive_serial_tail_skips_an_event(pg_url: str) -> None:
    """What the head lock prevents, shown step by step on a plain ``SERIAL`` column.

    T1 takes number 1 from the sequence, T2 takes number 2 and commits; a reader reading
    ``seq > 0`` sees 2 and goes on from there; T1 then commits number 1, which the reader,
    now asking for ``seq > 2``, never reads. Sequences hand numbers out in one order, and
    transactions commit in another."""
    t1, t2, reader = [await asyncpg.connect(pg_url) for _ in range(3)]
    try:
        await reader.execute("CREATE TABLE naive (seq SERIAL PRIMARY KEY, body TEXT)")
        one = t1.transaction()
        await one.start()
        await t1.execute("INSERT INTO naive (body) VALUES ('first to start')")
        await t2.execute("INSERT INTO naive (body) VALUES ('second to start')")  # commits
        seen = [r["seq"] for r in await reader.fetch("SELECT seq FROM naive WHERE seq > 0")]
        assert seen == [2]
        await one.commit()
        seen += [r["seq"] for r in await reader.fetch("SELECT seq FROM naive WHERE seq > 2")]
        assert seen == [2]  # event 1 is in the table, and the tail never saw it
        assert await reader.fetchval("SELECT count(*) FROM naive") == 2
    finally:
        for conn in (t1, t2, reader):
            await conn.close()


async def test_an_append_waits_for_the_head_an_earlier_transaction_holds(pg_url: str) -> None:
    """The same race against the store: a transaction (another instance's append) holds the
    head; our append cannot take a number until it commits, so the number it takes is after
    the other's, and a reader never sees a later position before an earlier one."""
    store = PgEventStore(pg_url)
    await store.open()
    other = await asyncpg.connect(pg_url)
    watcher = await asyncpg.connect(pg_url)
    try:
        held = other.transaction()
        await held.start()
        await other.fetchrow("SELECT seq, hash FROM event_log_head WHERE id = 1 FOR UPDATE")
        ours = asyncio.ensure_future(store.append("user-b", [filler(2)]))
        async with asyncio.timeout(PATIENCE):  # until our append waits on the head's lock
            while True:
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
        assert not ours.done()
        assert await store.read_all() == []
        # The other instance writes event 1 as the store would, and commits.
        payload, metadata, at = codec.encode_payload(filler(1)), "{}", "2030-01-01T00:00:00+00:00"
        digest = codec.chain_hash(codec.GENESIS_HASH, 1, "user-a", 1, "user.email_verified", 1,
                                  payload, metadata, at)
        await other.execute(
            "INSERT INTO events VALUES (1, 'user-a', 1, 'user.email_verified', 1, $1, $2, $3, $4)",
            payload, metadata, at, digest,
        )
        await other.execute("UPDATE event_log_head SET seq = 1, hash = $1", digest)
        await held.commit()
        written: list[RecordedEvent] = await asyncio.wait_for(ours, PATIENCE)
        assert [r.seq for r in written] == [2]
        assert [r.seq for r in await store.read_all()] == [1, 2]
        assert (await store.verify()).ok
    finally:
        await other.close()
        await watcher.close()
        await store.close()


async def test_a_lost_connection_fails_its_batch_and_the_next_one_reconnects(
    pg_url: str,
) -> None:
    store = PgEventStore(pg_url)
    await store.open()
    admin = await asyncpg.connect(pg_url)
    try:
        await store.append("user-a", [filler(1)])
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        with pytest.raises(LoaclError) as failed:
            await store.append("user-a", [filler(2)])
        assert failed.value.code == "store_unavailable"
        written = await store.append("user-a", [filler(3)])
        assert [(r.seq, r.version) for r in written] == [(2, 2)]
        assert (await store.verify()).ok
    finally:
        await admin.close()
        await store.close()


async def test_instances_starting_together_migrate_once(pg_empty_url: str) -> None:
    conns = [await asyncpg.connect(pg_empty_url) for _ in range(5)]
    try:
        applied = await asyncio.gather(*(migrate.up(c) for c in conns))
        assert sorted(len(steps) for steps in applied) == [0, 0, 0, 0, len(migrate.MIGRATIONS)]
        versions = [r["version"] for r in await conns[0].fetch(
            "SELECT version FROM schema_migrations ORDER BY version"
        )]
        assert versions == [m.version for m in migrate.MIGRATIONS]
    finally:
        for conn in conns:
            await conn.close()


async def test_a_store_refuses_an_unmigrated_database(pg_empty_url: str) -> None:
    with pytest.raises(LoaclError) as refused:
        await PgEventStore(pg_empty_url).open()
    assert refused.value.code == "schema_out_of_date"


async def test_an_unreachable_server_is_a_loacl_error() -> None:
    # Port 1 on loopback: nothing listens there.
    with pytest.raises(LoaclError) as refused:
        await PgEventStore("postgresql://nobody@127.0.0.1:1/none").open()
    assert refused.value.code == "database_unavailable"
