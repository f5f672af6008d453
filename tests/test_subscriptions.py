"""Durable subscribers' contract, against a real SQLite file: where they resume, what they see
twice (effects) and never twice (their own tables), and that none of them holds up the log."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from loacl.domain.accounts import EmailVerified
from loacl.domain.events import Event, RecordedEvent
from loacl.settings import Settings
from loacl.store import checkpoints
from loacl.store.eventstore import EventStore
from loacl.store.notifier import Notifier
from loacl.store.projections import default_projections
from loacl.store.subscribers import default_subscribers
from loacl.store.subscriptions import (
    Effect,
    Options,
    Subscriptions,
    Table,
    backoff,
)

PATIENCE = 30.0  # a guard against a hang, never a measurement


def verified(n: int) -> Event:
    return EmailVerified(user_id=f"u{n}")


async def append(store: EventStore, count: int, per_append: int = 1) -> None:
    for start in range(0, count, per_append):
        await store.append(f"user-{start}", [verified(start)] * min(per_append, count - start))


async def eventually(check: Callable[[], bool]) -> None:
    """Poll what another connection sees (a checkpoint row) until it holds."""
    for _ in range(int(PATIENCE / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


def position(db_path: Path, name: str) -> checkpoints.Checkpoint:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return checkpoints.load(conn, name)


class Recorder:
    """An effect: remembers every seq it was handed, in order, repeats included."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.gate: asyncio.Event | None = None  # when set up, each batch waits for it

    async def __call__(self, events: Sequence[RecordedEvent]) -> None:
        self.seen.extend(e.seq for e in events)
        gate = self.gate
        if gate is not None:
            await gate.wait()
            gate.clear()


class Sleeps:
    """Backoff sleeps without time: records each delay, and from the ``hold_at``-th one on
    waits until released."""

    def __init__(self, hold_at: int = 1_000_000) -> None:
        self.delays: list[float] = []
        self.hold_at = hold_at
        self.release = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self.hold_at:
            await self.release.wait()
        await asyncio.sleep(0)


def options(**changes: object) -> Options:
    # Only the notifier wakes a caught-up runner here: an idle timeout would hide a lost wake-up.
    base: dict[str, object] = {"checkpoint_interval": 0.0, "idle_timeout": 3600.0,
                               "sleep": Sleeps()}
    return Options(**(base | changes))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    store: EventStore, *subscribers: Table | Effect, opts: Options | None = None
) -> AsyncIterator[Subscriptions]:
    async with Subscriptions(store, subscribers, opts or options()) as subs:
        yield subs


def seen_table(db_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE seen (seq INTEGER NOT NULL)")  # no key: a repeat would show


def seen_rows(db_path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM seen ORDER BY rowid")]


def insert_seen(conn: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
    conn.executemany("INSERT INTO seen (seq) VALUES (?)", [(e.seq,) for e in events])


# -- reading and waking ---------------------------------------------------------------------


async def test_a_subscriber_reads_from_zero_then_is_woken_by_each_commit(
    store: EventStore, db_path: Path
) -> None:
    await append(store, 3)
    effect = Recorder()
    async with running(store, Effect("hooks", effect)):
        await eventually(lambda: effect.seen == [1, 2, 3])
        await append(store, 2)
        await eventually(lambda: effect.seen == [1, 2, 3, 4, 5])
        await eventually(lambda: position(db_path, "hooks").position == 5)


async def test_restart_resumes_at_the_checkpoint(db_path: Path) -> None:
    first = Recorder()
    async with EventStore(db_path, default_projections()) as store:
        await append(store, 10)
        async with running(store, Effect("hooks", first)):
            await eventually(lambda: position(db_path, "hooks").position == 10)
    async with EventStore(db_path, default_projections()) as store:
        await append(store, 5)  # while the subscriber is down
    again = Recorder()
    async with EventStore(db_path, default_projections()) as store, \
            running(store, Effect("hooks", again)):
        await eventually(lambda: again.seen == [11, 12, 13, 14, 15])
    assert first.seen == list(range(1, 11))


# -- effects: at least once -----------------------------------------------------------------


async def test_a_crash_after_the_effect_before_the_checkpoint_hands_the_batch_over_again(
    db_path: Path,
) -> None:
    cut = Recorder()
    cut.gate = asyncio.Event()  # the effect is done, the checkpoint never comes
    async with EventStore(db_path, default_projections()) as store:
        await append(store, 4)
        async with running(store, Effect("hooks", cut)):
            await eventually(lambda: cut.seen == [1, 2, 3, 4])
        # Stopping cancelled the runner between its effect and its checkpoint: a crash there.
        assert position(db_path, "hooks").position == 0
    again = Recorder()
    async with EventStore(db_path, default_projections()) as store, \
            running(store, Effect("hooks", again)):
        await eventually(lambda: position(db_path, "hooks").position == 4)
    assert again.seen == [1, 2, 3, 4]  # the same ids: the effect's idempotency key


async def test_a_failing_effect_backs_off_records_its_error_and_resumes(
    store: EventStore, db_path: Path
) -> None:
    await append(store, 3)
    handed: list[list[int]] = []
    healthy = False

    async def webhook(events: Sequence[RecordedEvent]) -> None:
        handed.append([e.seq for e in events])
        if not healthy:
            raise RuntimeError("endpoint answered 503")

    sleeps = Sleeps(hold_at=5)
    opts = options(sleep=sleeps, backoff_base=1.0, backoff_cap=5.0)
    async with running(store, Effect("hooks", webhook), opts=opts):
        await eventually(lambda: len(sleeps.delays) == 5)
        failing = position(db_path, "hooks")
        assert (failing.position, failing.failures) == (0, 5)
        assert failing.last_error == "RuntimeError: endpoint answered 503"
        assert sleeps.delays == [1.0, 2.0, 4.0, 5.0, 5.0]  # doubling, capped

        healthy = True
        sleeps.release.set()
        await eventually(lambda: position(db_path, "hooks").position == 3)
    assert handed == [[1, 2, 3]] * 6
    recovered = position(db_path, "hooks")
    assert recovered.failures == 0
    assert recovered.last_error == "RuntimeError: endpoint answered 503"  # kept for status


def test_backoff_doubles_up_to_its_cap() -> None:
    opts = Options(backoff_base=0.5, backoff_cap=60.0)
    assert [backoff(n, opts) for n in (1, 2, 3, 8, 9, 1000)] == [0.5, 1, 2, 60, 60, 60]


# -- tables: exactly once -------------------------------------------------------------------


async def test_a_table_subscriber_that_fails_mid_batch_writes_each_event_once(
    store: EventStore, db_path: Path
) -> None:
    seen_table(db_path)
    await append(store, 12)
    crashes = 1

    def apply(conn: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        nonlocal crashes
        for event in events:
            insert_seen(conn, [event])
            if event.seq == 7 and crashes:
                crashes -= 1
                raise RuntimeError("disk hiccup")  # 6 is written, 7 is not, mid-batch

    sleeps = Sleeps(hold_at=1)
    opts = options(sleep=sleeps, batch_size=5)
    async with running(store, Table("tally", apply), opts=opts):
        await eventually(lambda: sleeps.delays == [1.0])
        # Held after the failure: rows and checkpoint agree, the half batch left no trace.
        assert seen_rows(db_path) == [1, 2, 3, 4, 5]
        assert position(db_path, "tally").position == 5
        sleeps.release.set()
        await eventually(lambda: position(db_path, "tally").position == 12)
    assert seen_rows(db_path) == list(range(1, 13))


async def test_a_reset_rebuilds_a_running_table_subscriber_from_zero(
    store: EventStore, db_path: Path
) -> None:
    seen_table(db_path)
    await append(store, 3)
    async with running(store, Table("tally", insert_seen, tables=("seen",))):
        await eventually(lambda: position(db_path, "tally").position == 3)
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            checkpoints.reset(conn, "tally", ["seen"])
        assert seen_rows(db_path) == []
        await append(store, 1)  # wakes it: it finds its checkpoint moved and starts over
        await eventually(lambda: position(db_path, "tally").position == 4)
    assert seen_rows(db_path) == [1, 2, 3, 4]


# -- speed ----------------------------------------------------------------------------------


async def test_two_subscribers_at_different_speeds(store: EventStore, db_path: Path) -> None:
    seen_table(db_path)
    slow = Recorder()
    slow.gate = asyncio.Event()
    await append(store, 30, per_append=5)
    async with running(
        store, Table("fast", insert_seen), Effect("slow", slow), opts=options(batch_size=10)
    ):
        await append(store, 20, per_append=5)
        await eventually(lambda: position(db_path, "fast").position == 50)
        assert slow.seen == list(range(1, 11))  # still inside its first batch
        assert position(db_path, "slow").position == 0
        while position(db_path, "slow").position < 50:
            slow.gate.set()
            await asyncio.sleep(0.005)
    assert seen_rows(db_path) == list(range(1, 51))
    assert slow.seen == list(range(1, 51))


async def test_a_slow_subscriber_never_blocks_appends(store: EventStore, db_path: Path) -> None:
    stuck = Recorder()
    stuck.gate = asyncio.Event()
    async with running(store, Effect("stuck", stuck)):
        await append(store, 1)
        await eventually(lambda: stuck.seen == [1])
        # It holds its first batch; the log goes on without it, and nothing is queued for it.
        async with asyncio.timeout(PATIENCE):
            await append(store, 2000, per_append=20)
        assert await store.head() == 2001
        assert position(db_path, "stuck").position == 0
        gate, stuck.gate = stuck.gate, None
        gate.set()
        await eventually(lambda: position(db_path, "stuck").position == 2001)
    assert stuck.seen == list(range(1, 2002))


@pytest.mark.long
async def test_catch_up_from_zero_over_100000_events(db_path: Path) -> None:
    seen_table(db_path)
    async with EventStore(db_path, default_projections()) as store:
        for block in range(100):
            await store.append(f"user-{block}", [verified(block)] * 1000)
        effect = Recorder()
        usage_only = default_subscribers()  # types narrow it to replies: it skips them all
        async with running(store, Table("tally", insert_seen), Effect("hooks", effect),
                           *usage_only, opts=options(batch_size=2000)):
            await eventually(lambda: all(
                position(db_path, name).position == 100_000 for name in ("tally", "hooks", "usage")
            ))
    assert seen_rows(db_path) == list(range(1, 100_001))
    assert effect.seen == list(range(1, 100_001))


# -- notifier and wiring --------------------------------------------------------------------


async def test_the_notifier_wakes_waiters_past_a_position_and_holds_no_events() -> None:
    notifier = Notifier()
    notifier.advance(5)
    assert await notifier.wait_past(4) == 5  # already past: no wait
    waiting = asyncio.ensure_future(notifier.wait_past(5))
    await asyncio.sleep(0)
    notifier.advance(5)  # not past 5: still waiting
    await asyncio.sleep(0)
    assert not waiting.done()
    notifier.advance(9)
    assert await asyncio.wait_for(waiting, PATIENCE) == 9
    cancelled = asyncio.ensure_future(notifier.wait_past(9))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    closing = asyncio.ensure_future(notifier.wait_past(9))
    await asyncio.sleep(0)
    notifier.close()  # the store closes: nobody stays parked
    assert await asyncio.wait_for(closing, PATIENCE) == 9


async def test_a_runner_ends_when_its_store_closes(db_path: Path) -> None:
    store = EventStore(db_path, default_projections())
    await store.open()
    await append(store, 2)
    effect = Recorder()
    subs = Subscriptions(store, [Effect("hooks", effect)], options())
    await subs.start()
    await eventually(lambda: position(db_path, "hooks").position == 2)
    await store.close()  # out of order: the runner, woken, finds the store closed and ends
    (task,) = subs._tasks
    await asyncio.wait_for(task, PATIENCE)
    await subs.stop()
    assert position(db_path, "hooks").failures == 0


async def test_names_must_be_unique(store: EventStore) -> None:
    with pytest.raises(Exception, match="repeat"):
        Subscriptions(store, [Effect("a", Recorder()), Effect("a", Recorder())])


def test_the_server_runs_the_built_in_subscribers(settings: Settings) -> None:
    from loacl.http.app import create_app

    def names() -> list[str]:
        with contextlib.closing(sqlite3.connect(settings.database_path)) as conn:
            return [r[0] for r in conn.execute("SELECT name FROM subscriber_checkpoints")]

    # The log's own (default_subscribers), the budget and handoff mail (they need the mailer)
    # and the webhooks' outbox (it needs the server key).
    running = ["budget-mail", "handoff-mail", "usage", "webhooks.outbox"]
    with TestClient(create_app(settings)):
        for _ in range(int(PATIENCE / 0.01)):  # the lifespan's loop runs in another thread
            if sorted(names()) == running:
                break
            time.sleep(0.01)
    assert sorted(names()) == running
