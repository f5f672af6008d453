"""The event store's contract: what any EventStore must do, tested against a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from loacl.domain import accounts
from loacl.domain.accounts import EmailVerified, SessionRevoked, UserRegistered
from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.widgets import ConversationStarted
from loacl.store import audit, eventstore
from loacl.store.broker import Subscription, SubscriptionOverflow
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.projections import default_projections

# A guard against a hang, never a measurement: every wait here ends long before it.
PATIENCE = 10.0


class CountingClock:
    """A clock that says how often the writer asked it the time: once per batch."""

    def __init__(self) -> None:
        self.calls = 0
        self.start = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.calls += 1
        return self.start + timedelta(seconds=self.calls)


@pytest.fixture
def clock() -> CountingClock:
    return CountingClock()


@pytest.fixture
async def timed_store(db_path: Path, clock: CountingClock) -> AsyncIterator[EventStore]:
    async with EventStore(db_path, default_projections(), clock=clock) as opened:
        yield opened


def verified(user_id: str) -> Event:
    """An event whose projection touches no row when the user does not exist: filler."""
    return EmailVerified(user_id=user_id)


def register(user_id: str, email: str | None = None) -> list[Event]:
    return accounts.register(user_id, email or f"{user_id}@example.com", None, "argon2-hash")


@contextlib.asynccontextmanager
async def writer_held(store: EventStore) -> AsyncIterator[None]:
    """Hold the writer thread inside a call; appends queued in the block land in one batch."""
    started = threading.Event()
    release = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait()

    held = asyncio.ensure_future(store.run_on_writer(hold))
    try:
        assert await asyncio.to_thread(started.wait, PATIENCE)
        yield
        # Tasks created in the block run their first step (the enqueue) before we resume.
        await asyncio.sleep(0)
    finally:
        release.set()
        await held


def verify_chain(db_path: Path) -> audit.AuditResult:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return audit.verify(conn)


def raw_rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(sql, params).fetchall()


async def take(subscription: Subscription, count: int) -> list[RecordedEvent]:
    return [await asyncio.wait_for(subscription.get(), PATIENCE) for _ in range(count)]


# -- appending ------------------------------------------------------------------------------


async def test_append_returns_consecutive_seq_and_version(
    timed_store: EventStore, clock: CountingClock
) -> None:
    meta = Metadata(actor="user-a", request_id="req-1", client_ip="127.0.0.1", causation_id="c")
    first = await timed_store.append(
        "user-a", [verified("a"), verified("a"), verified("a")],
        expected_version=NO_STREAM, metadata=meta,
    )
    assert [(r.seq, r.stream, r.version) for r in first] == [
        (1, "user-a", 1), (2, "user-a", 2), (3, "user-a", 3),
    ]
    assert [r.event for r in first] == [verified("a")] * 3
    assert all(r.metadata == meta for r in first)
    assert all(r.type == "user.email_verified" for r in first)
    assert first[0].recorded_at == clock.start + timedelta(seconds=1)
    assert len({r.hash for r in first}) == 3

    other = await timed_store.append("user-b", [verified("b")], expected_version=NO_STREAM)
    assert [(r.seq, r.version) for r in other] == [(4, 1)]
    more = await timed_store.append("user-a", [verified("a"), verified("a")], expected_version=3)
    assert [(r.seq, r.version) for r in more] == [(5, 4), (6, 5)]

    # What append returned is exactly what the log holds.
    assert await timed_store.read_stream("user-a") == first + more
    assert await timed_store.read_all() == [*first, *other, *more]
    assert await timed_store.head() == 6
    assert verify_chain(timed_store.path).ok


async def test_append_without_expected_version_skips_the_check(store: EventStore) -> None:
    await store.append("user-a", [verified("a")])
    again = await store.append("user-a", [verified("a")])
    assert [(r.seq, r.version) for r in again] == [(2, 2)]


async def test_append_of_nothing_writes_nothing(store: EventStore) -> None:
    assert await store.append("user-a", [], expected_version=NO_STREAM) == []
    assert await store.head() == 0


async def test_projection_runs_in_the_append_transaction(store: EventStore) -> None:
    await store.append("user-u1", register("u1", "ana@example.com"), expected_version=NO_STREAM)
    # A read right after the append sees the read table the append changed.
    assert await store.query("SELECT user_id, email FROM users") == [("u1", "ana@example.com")]


@pytest.mark.parametrize(
    ("expected", "actual"),
    [(NO_STREAM, 2), (1, 2), (3, 2), (7, 2)],
)
async def test_stale_expected_version_is_a_conflict_and_writes_nothing(
    store: EventStore, expected: int, actual: int
) -> None:
    await store.append("user-a", [verified("a"), verified("a")], expected_version=NO_STREAM)
    before = raw_rows(store.path, "SELECT seq, hash FROM event_log_head")

    with pytest.raises(ConflictError) as caught:
        await store.append("user-a", [verified("a")], expected_version=expected)

    assert caught.value.code == "version_conflict"
    assert (caught.value.stream, caught.value.expected, caught.value.actual) == (
        "user-a", expected, actual,
    )
    assert caught.value.extra == {
        "stream": "user-a", "expected_version": expected, "actual_version": actual,
    }
    assert [r.version for r in await store.read_stream("user-a")] == [1, 2]
    assert await store.head() == 2
    assert raw_rows(store.path, "SELECT seq, hash FROM event_log_head") == before


async def test_expected_version_on_a_missing_stream_is_a_conflict(store: EventStore) -> None:
    with pytest.raises(ConflictError) as caught:
        await store.append("user-nobody", [verified("nobody")], expected_version=1)
    assert (caught.value.code, caught.value.actual) == ("version_conflict", 0)
    assert await store.head() == 0
    assert raw_rows(store.path, "SELECT count(*) FROM event_log_head") == [(0,)]


@pytest.mark.parametrize("one_batch", [False, True], ids=["as-they-come", "one-batch"])
async def test_racing_appends_with_one_expected_version_exactly_one_wins(
    store: EventStore, one_batch: bool
) -> None:
    await store.append("user-a", [verified("a")], expected_version=NO_STREAM)

    def contender(n: int) -> asyncio.Task[list[RecordedEvent]]:
        return asyncio.create_task(
            store.append("user-a", [SessionRevoked(session_id=f"s{n}", reason="logout")],
                         expected_version=1)
        )

    if one_batch:
        async with writer_held(store):
            tasks = [contender(n) for n in range(50)]
    else:
        tasks = [contender(n) for n in range(50)]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    winners = [o for o in outcomes if isinstance(o, list)]
    losers = [o for o in outcomes if not isinstance(o, list)]
    assert len(winners) == 1
    assert len(losers) == 49
    assert all(isinstance(o, ConflictError) and o.actual == 2 for o in losers)
    stream = await store.read_stream("user-a")
    assert [r.version for r in stream] == [1, 2]
    assert stream[1] == winners[0][0]
    assert verify_chain(store.path).ok


# -- idempotency ----------------------------------------------------------------------------


async def test_retried_append_returns_the_first_result_and_writes_nothing(
    store: EventStore,
) -> None:
    subscription = store.broker.subscribe()
    meta = Metadata(request_id="r-1")
    first = await store.append(
        "user-a", [verified("a"), verified("a")], expected_version=NO_STREAM,
        metadata=meta, idempotency_key="client-msg-1",
    )
    # The retry carries the now stale expected version: it still gets the first answer.
    retry = await store.append(
        "user-a", [verified("a"), verified("a")], expected_version=NO_STREAM,
        metadata=meta, idempotency_key="client-msg-1",
    )
    assert retry == first
    assert await store.head() == 2
    assert raw_rows(store.path, "SELECT key, stream, first_seq, last_seq FROM append_keys") == [
        ("client-msg-1", "user-a", 1, 2),
    ]

    # Subscribers heard of the first append only: the next news after it is a later append.
    assert [r.seq for r in await take(subscription, 2)] == [1, 2]
    later = await store.append("user-b", [verified("b")])
    assert await take(subscription, 1) == later


async def test_same_key_twice_in_one_batch_writes_once(store: EventStore) -> None:
    subscription = store.broker.subscribe()
    async with writer_held(store):
        tasks = [
            asyncio.create_task(
                store.append("user-a", [verified("a")], idempotency_key="k", expected_version=n)
            )
            for n in (NO_STREAM, NO_STREAM, 5)
        ]
    first, second, third = await asyncio.gather(*tasks)
    assert first == second == third
    assert await store.head() == 1
    later = await store.append("user-b", [verified("b")])
    assert await take(subscription, 2) == first + later


async def test_refused_append_does_not_consume_its_key(store: EventStore) -> None:
    await store.append("user-a", [verified("a")])
    with pytest.raises(ConflictError):
        await store.append("user-a", [verified("a")], expected_version=NO_STREAM,
                           idempotency_key="k")
    again = await store.append("user-a", [verified("a")], expected_version=1,
                               idempotency_key="k")
    assert [(r.seq, r.version) for r in again] == [(2, 2)]


# -- group commit ---------------------------------------------------------------------------


async def test_hundreds_of_concurrent_appends_all_land(
    timed_store: EventStore, clock: CountingClock
) -> None:
    streams = [f"conversation-{n}" for n in range(17)]
    # Sizes 1..3 so that one request's events are numbered together inside a batch.
    requests = [
        (streams[n % len(streams)], [verified(str(n))] * (1 + n % 3)) for n in range(300)
    ]
    async with writer_held(timed_store):
        held = [asyncio.create_task(timed_store.append(s, e)) for s, e in requests[:200]]
    # The rest come while the writer is busy or idle, in batches of whatever size.
    loose = [asyncio.create_task(timed_store.append(s, e)) for s, e in requests[200:]]
    results = await asyncio.gather(*held, *loose)

    # The 200 appends queued while the writer was held were committed in one transaction.
    held_at = {r.recorded_at for result in results[:200] for r in result}
    assert held_at == {clock.start + timedelta(seconds=1)}
    assert clock.calls < len(requests)

    total = sum(len(e) for _, e in requests)
    log = await timed_store.read_all()
    assert [r.seq for r in log] == list(range(1, total + 1))
    for result, (stream, events) in zip(results, requests, strict=True):
        assert [r.stream for r in result] == [stream] * len(events)
        assert [r.seq for r in result] == list(range(result[0].seq, result[0].seq + len(events)))
        assert [r.version for r in result] == list(
            range(result[0].version, result[0].version + len(events))
        )
    for stream in streams:
        versions = [r.version for r in await timed_store.read_stream(stream)]
        assert versions == list(range(1, len(versions) + 1))
    by_seq = {r.seq: r for r in log}
    assert all(by_seq[r.seq] == r for result in results for r in result)
    checked = verify_chain(timed_store.path)
    assert (checked.ok, checked.events) == (True, total)


async def test_batches_are_capped_at_max_batch(
    timed_store: EventStore, clock: CountingClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventstore, "MAX_BATCH", 5)
    async with writer_held(timed_store):
        tasks = [asyncio.create_task(timed_store.append("user-a", [verified("a")]))
                 for _ in range(12)]
    results = await asyncio.gather(*tasks)
    assert [r[0].seq for r in results] == list(range(1, 13))
    assert clock.calls == 3
    assert len({r[0].recorded_at for r in results}) == 3


async def test_a_refused_request_does_not_sink_its_batch(store: EventStore) -> None:
    subscription = store.broker.subscribe()
    async with writer_held(store):
        tasks = [
            asyncio.create_task(store.append(stream, events, expected_version=NO_STREAM))
            for stream, events in [
                ("user-u1", register("u1", "same@example.com")),
                # The users table refuses a second account for one e-mail: a projection veto.
                ("user-u2", [*register("u2", "same@example.com"), verified("u2")]),
                ("user-u3", register("u3", "other@example.com")),
                ("user-u1", [verified("u1")]),  # a stale expected version, in the same batch
                ("user-u4", register("u4")),
            ]
        ]
    u1, u2, u3, stale, u4 = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(u2, LoaclError)
    assert u2.code == "email_taken"
    assert isinstance(stale, ConflictError)
    assert isinstance(u1, list)
    assert isinstance(u3, list)
    assert isinstance(u4, list)
    # Refused requests leave no hole: the next request takes the position they did not use.
    assert [r.seq for r in (*u1, *u3, *u4)] == [1, 2, 3]
    assert await store.read_stream("user-u2") == []
    assert await store.query("SELECT user_id FROM users ORDER BY user_id") == [
        ("u1",), ("u3",), ("u4",),
    ]
    assert verify_chain(store.path).ok
    # Subscribers hear only what was committed.
    assert await take(subscription, 3) == [*u1, *u3, *u4]


async def test_a_read_table_veto_is_a_conflict_that_keeps_sqlite_to_the_log(
    store: EventStore,
) -> None:
    # The same conversation started in a second stream: the read table's primary key refuses.
    started: list[Event] = [ConversationStarted(conversation_id="c1", widget_id="w",
                                                visitor_id="v1")]

    await store.append("conversation-c1", started, expected_version=NO_STREAM)
    with capture_logs() as logs, pytest.raises(LoaclError) as caught:
        await store.append("conversation-c2", started, expected_version=NO_STREAM)
    assert caught.value.code == "conflict"
    assert "UNIQUE" not in caught.value.message
    assert "conversations" not in caught.value.message
    [refused] = [e for e in logs if e["event"] == "store.append_refused"]
    assert refused["stream"] == "conversation-c2"
    assert "UNIQUE constraint failed" in refused["error"]
    assert await store.read_stream("conversation-c2") == []
    assert verify_chain(store.path).ok


async def test_an_event_that_cannot_be_encoded_does_not_sink_its_batch(
    store: EventStore,
) -> None:
    broken = UserRegistered(
        user_id="x", email="x@example.com", name=cast(Any, object()), password_hash="h"
    )
    async with writer_held(store):
        good = asyncio.create_task(store.append("user-a", [verified("a")]))
        bad = asyncio.create_task(store.append("user-x", [broken]))
        after = asyncio.create_task(store.append("user-b", [verified("b")]))
    outcomes = await asyncio.gather(good, bad, after, return_exceptions=True)
    assert isinstance(outcomes[1], LoaclError)
    assert outcomes[1].code == "store_error"
    assert [type(o) for o in (outcomes[0], outcomes[2])] == [list, list]
    assert await store.head() == 2
    assert verify_chain(store.path).ok


async def test_a_failed_commit_fails_every_request_then_the_store_recovers(
    store: EventStore, db_path: Path
) -> None:
    def impatient(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout=0")

    await store.run_on_writer(impatient)
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(LoaclError) as caught:
            await store.append("user-a", [verified("a")])
        assert caught.value.code == "store_unavailable"
        with pytest.raises(LoaclError) as probed:
            await store.probe_write_lock(0.05)
        assert probed.value.code == "database_unavailable"
        other.execute("ROLLBACK")
    await store.probe_write_lock()
    written = await store.append("user-a", [verified("a")], expected_version=NO_STREAM)
    assert [(r.seq, r.version) for r in written] == [(1, 1)]


# -- the log is append-only -----------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET payload = '{}' WHERE seq = 1",
        "UPDATE events SET hash = 'x'",
        "DELETE FROM events WHERE seq = 1",
        "DELETE FROM events",
    ],
)
async def test_the_log_refuses_update_and_delete(
    store: EventStore, db_path: Path, sql: str
) -> None:
    await store.append("user-a", [verified("a"), verified("a")])
    before = raw_rows(db_path, "SELECT * FROM events ORDER BY seq")
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
        conn.rollback()
    assert raw_rows(db_path, "SELECT * FROM events ORDER BY seq") == before
    assert verify_chain(db_path).ok


# -- reading --------------------------------------------------------------------------------


async def test_read_stream_and_read_all_keep_their_order(store: EventStore) -> None:
    for n in range(4):
        await store.append("user-a", [verified(f"a{n}")])
        await store.append("user-b", [verified(f"b{n}"), verified(f"b{n}")])
    everything = await store.read_all()
    assert [r.seq for r in everything] == list(range(1, 13))

    a = await store.read_stream("user-a")
    assert [r.version for r in a] == [1, 2, 3, 4]
    assert [cast(EmailVerified, r.event).user_id for r in a] == ["a0", "a1", "a2", "a3"]
    assert [r.version for r in await store.read_stream("user-b", after_version=5)] == [6, 7, 8]
    assert await store.read_stream("user-a", after_version=4) == []
    assert await store.read_stream("user-nobody") == []

    assert await store.read_all(after=2, limit=3) == everything[2:5]
    assert await store.read_all(after=10) == everything[10:]
    assert await store.read_all(after=12) == []
    assert await store.read_all(limit=0) == []
    # Paging with after= and limit= walks the whole log once.
    paged: list[RecordedEvent] = []
    while page := await store.read_all(after=paged[-1].seq if paged else 0, limit=5):
        paged.extend(page)
    assert paged == everything


# -- subscribers ----------------------------------------------------------------------------


async def test_subscribers_get_committed_events_in_seq_order(
    store: EventStore, db_path: Path
) -> None:
    seen_committed: list[bool] = []
    with contextlib.closing(sqlite3.connect(db_path)) as spy:

        def committed(event: RecordedEvent) -> bool:
            # Runs while the broker publishes: another connection must already see the row.
            found = spy.execute("SELECT hash FROM events WHERE seq = ?", (event.seq,)).fetchone()
            seen_committed.append(found == (event.hash,))
            return True

        watcher = store.broker.subscribe(committed)
        subscription = store.broker.subscribe()
        only_b = store.broker.subscribe(lambda r: r.stream == "user-b")

        await store.append("user-u1", register("u1", "one@example.com"))
        async with writer_held(store):
            tasks = [
                asyncio.create_task(store.append(f"user-{n % 3}", [verified(str(n))] * 2))
                for n in range(30)
            ]
            refused = [
                asyncio.create_task(store.append("user-u9", register("u9", "one@example.com"))),
                asyncio.create_task(store.append("user-u1", [verified("u1")],
                                                 expected_version=NO_STREAM)),
            ]
        await asyncio.gather(*tasks)
        assert all(isinstance(o, LoaclError)
                   for o in await asyncio.gather(*refused, return_exceptions=True))
        last = await store.append("user-b", [verified("b")])

        received = await take(subscription, 62)
        assert received == await store.read_all()
        assert [r.seq for r in received] == list(range(1, 63))
        assert all(r.stream != "user-u9" for r in received)
        assert await take(only_b, 1) == last
        assert [r.seq for r in await take(watcher, 62)] == list(range(1, 63))
        assert seen_committed == [True] * 62


async def test_a_slow_subscriber_is_dropped_and_the_others_go_on(store: EventStore) -> None:
    slow = store.broker.subscribe(maxsize=2)
    fast = store.broker.subscribe(maxsize=1000)
    first = await store.append("user-a", [verified("a")] * 5)
    assert await take(fast, 5) == first

    # The slow one gets what fitted in its buffer, without a gap, then learns it was dropped.
    assert await take(slow, 2) == first[:2]
    with pytest.raises(SubscriptionOverflow):
        await asyncio.wait_for(slow.get(), PATIENCE)
    assert slow.overflowed

    second = await store.append("user-a", [verified("a")])
    assert await take(fast, 1) == second


async def test_closing_the_store_ends_subscriptions(db_path: Path) -> None:
    store = EventStore(db_path, default_projections())
    await store.open()
    subscription = store.broker.subscribe()
    written = await store.append("user-a", [verified("a")])
    await store.close()
    assert [r async for r in subscription] == written


# -- life cycle -----------------------------------------------------------------------------


async def test_a_closed_store_refuses_work(db_path: Path) -> None:
    store = EventStore(db_path, default_projections())
    with pytest.raises(LoaclError) as never_opened:
        await store.append("user-a", [verified("a")])
    assert never_opened.value.code == "store_closed"

    await store.open()
    await store.append("user-a", [verified("a")])
    await store.close()
    await store.close()  # closing twice is harmless

    calls: list[Callable[[], Any]] = [
        lambda: store.append("user-a", [verified("a")]),
        lambda: store.run_on_writer(lambda conn: None),
        store.probe_write_lock,
        store.read_all,
        lambda: store.read_stream("user-a"),
        store.head,
    ]
    for call in calls:
        with pytest.raises(LoaclError) as caught:
            await call()
        assert caught.value.code == "store_closed"


async def test_an_append_racing_close_is_refused_not_lost(db_path: Path) -> None:
    store = EventStore(db_path, default_projections())
    await store.open()
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() has asked the writer to stop and waits for it
    with pytest.raises(LoaclError) as caught:
        await asyncio.wait_for(store.append("user-a", [verified("a")]), PATIENCE)
    assert caught.value.code == "store_closed"
    await closing


async def test_run_on_writer_runs_on_the_writer_thread(store: EventStore) -> None:
    def where(conn: sqlite3.Connection) -> tuple[str, int]:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        assert mode == "wal"
        return threading.current_thread().name, int(
            conn.execute("SELECT count(*) FROM events").fetchone()[0]
        )

    await store.append("user-a", [verified("a")])
    assert await store.run_on_writer(where) == ("loacl-writer", 1)

    def fails(conn: sqlite3.Connection) -> None:
        raise LoaclError("boom", "the call failed")

    with pytest.raises(LoaclError, match="the call failed"):
        await store.run_on_writer(fails)
    # The writer goes on after a failed call.
    written = await store.append("user-b", [verified("b")], expected_version=NO_STREAM)
    assert [r.version for r in written] == [1]


async def test_a_call_that_leaves_a_transaction_open_does_not_break_appends(
    store: EventStore,
) -> None:
    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO append_keys VALUES ('stray', 'x', 1, 1)")
        raise RuntimeError("gave up midway")

    with pytest.raises(RuntimeError):
        await store.run_on_writer(half_done)
    written = await store.append("user-a", [verified("a")])
    assert [r.seq for r in written] == [1]
    assert raw_rows(store.path, "SELECT key FROM append_keys") == []


async def test_the_chain_continues_after_reopen(db_path: Path) -> None:
    async with EventStore(db_path, default_projections()) as store:
        first = await store.append("user-u1", register("u1"), expected_version=NO_STREAM)
        await store.append("user-u1", [verified("u1")], expected_version=1)

    async with EventStore(db_path, default_projections()) as store:
        assert await store.head() == 2
        with pytest.raises(LoaclError) as caught:
            await store.append("user-u2", register("u2", "u1@example.com"))
        assert caught.value.code == "email_taken"
        again = await store.append("user-u1", [verified("u1")], expected_version=2)
        assert [(r.seq, r.version) for r in again] == [(3, 3)]
        assert (await store.read_all())[0] == first[0]

    checked = verify_chain(db_path)
    assert (checked.ok, checked.events, checked.last_hash) == (True, 3, again[0].hash)
    assert raw_rows(db_path, "SELECT seq, hash FROM event_log_head") == [(3, again[0].hash)]


# -- the stream index, written behind the log -----------------------------------------------


async def test_reads_find_every_event_on_both_sides_of_the_index_mark(db_path: Path) -> None:
    """With the index trailing by 5, each read joins indexed events and the log's tail."""
    expected: dict[str, list[RecordedEvent]] = {f"user-{n}": [] for n in range(3)}
    async with EventStore(db_path, default_projections(), index_lag=5) as store:
        for i in range(30):
            stream = f"user-{i * 7 % 3}"
            expected[stream] += await store.append(
                stream, [verified(stream)], expected_version=len(expected[stream])
            )
            (indexed,) = raw_rows(db_path, "SELECT indexed_seq FROM event_log_head")[0]
            assert i + 1 - indexed < 5
            for name, events in expected.items():
                assert await store.read_stream(name) == events
                assert await store.stream_version(name) == len(events)
                assert await store.read_stream(name, after_version=2) == events[2:]
        assert await store.read_stream("user-none") == []
        assert await store.stream_version("user-none") == 0
    assert raw_rows(db_path, "SELECT stream, version, seq FROM stream_index") == sorted(
        (r.stream, r.version, r.seq) for events in expected.values() for r in events
        if r.seq <= indexed
    )
    assert verify_chain(db_path).ok


async def test_two_stores_on_one_file_keep_versions_and_the_index(db_path: Path) -> None:
    """A CLI command writing beside the server: each writer reads the other's mark."""
    async with (
        EventStore(db_path, default_projections(), index_lag=3) as one,
        EventStore(db_path, default_projections(), index_lag=4) as other,
    ):
        for i in range(20):
            store = (one, other)[i % 2]
            written = await store.append("user-a", [verified("a")], expected_version=i)
            assert written[0].version == i + 1
            with pytest.raises(ConflictError):
                await (other, one)[i % 2].append("user-a", [verified("a")], expected_version=i)
            await store.append(f"user-{i}", [verified(str(i))], expected_version=NO_STREAM)
        assert [r.version for r in await one.read_stream("user-a")] == list(range(1, 21))
        assert await other.stream_version("user-a") == 20
    result = verify_chain(db_path)
    assert (result.ok, result.events) == (True, 40)


async def test_an_index_rebuilt_beside_a_running_writer_is_read_again(db_path: Path) -> None:
    """`loacl audit reindex` moves the index mark under an unchanged head: the writer must
    notice, or it would write its old mark back and index events twice."""
    async with EventStore(db_path, default_projections(), index_lag=5) as store:
        for version in range(3):
            await store.append("user-a", [verified("a")], expected_version=version)
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            assert audit.reindex(conn) == 3
        for version in range(3, 12):
            written = await store.append("user-a", [verified("a")], expected_version=version)
            assert written[0].version == version + 1
            assert [r.version for r in await store.read_stream("user-a")] == list(
                range(1, version + 2)
            )
    assert raw_rows(db_path, "SELECT indexed_seq FROM event_log_head") == [(8,)]
    assert verify_chain(db_path).ok


async def test_a_database_from_a_newer_loacl_is_refused(db_path: Path) -> None:
    """An older LOACL would write without what the newer schema expects of its writers."""
    from loacl.store import migrations

    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'later', 'x')",
            (migrations.LATEST + 1,),
        )
        conn.commit()
    store = EventStore(db_path, default_projections())
    with pytest.raises(LoaclError) as caught:
        await store.open()
    assert caught.value.code == "schema_too_new"
    assert f"schema {migrations.LATEST + 1}" in caught.value.message
    await store.close()  # nothing was left open
