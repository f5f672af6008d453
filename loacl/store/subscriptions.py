"""Durable subscribers: named readers of the log that resume exactly where they stopped.

A subscriber reads the log in batches after its checkpoint, is woken by the store's notifier
after each commit (no polling while idle), and on failure records the error and retries with
capped exponential backoff. Two kinds:

- ``Table(name, apply, types, tables)``: ``apply(conn, events)`` runs on the store's write
  connection in one transaction with the checkpoint, so its rows and its position move
  together: each event changes its tables exactly once, whatever crashes when.
- ``Effect(name, handle, types)``: ``await handle(events)`` acts outside the database (a webhook,
  a mail) and the checkpoint is written after it returns. A crash in between hands the same
  batch over again: at least once. Handlers must be idempotent; an event's ``seq`` is its stable
  id (a delivery id, a mail's Message-ID).

``types`` (wire event types) narrows what a subscriber is handed; the position still moves over
the events it skips, without a write per commit (``Options.checkpoint_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from loacl.domain.errors import LoaclError
from loacl.domain.events import RecordedEvent
from loacl.store import checkpoints
from loacl.store.eventstore import Clock, EventStore, utc_now
from loacl.store.records import EVENT_COLUMNS, decode_rows

if TYPE_CHECKING:
    from loacl.store.postgres.upstream import PgUpstream

log = structlog.get_logger(__name__)

Apply = Callable[[sqlite3.Connection, Sequence[RecordedEvent]], None]
Handle = Callable[[Sequence[RecordedEvent]], Awaitable[None]]


@dataclass(frozen=True)
class Table:
    name: str
    apply: Apply
    types: frozenset[str] | None = None  # None: every event
    tables: tuple[str, ...] = ()  # emptied by `loacl subscribers reset`


@dataclass(frozen=True)
class Effect:
    name: str
    handle: Handle
    types: frozenset[str] | None = None


Subscriber = Table | Effect


@dataclass(frozen=True)
class Options:
    batch_size: int = 500
    # Rows scanned per read when ``types`` skips most of them: bounds one query's time on the
    # shared read connection during a long catch-up.
    scan_window: int = 20_000
    # An append by another process (a CLI command) wakes nobody here: read the log this often.
    idle_timeout: float = 30.0
    checkpoint_interval: float = 1.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Clock = utc_now
    ticks: Callable[[], float] = time.monotonic


def backoff(failures: int, options: Options) -> float:
    return float(min(options.backoff_cap, options.backoff_base * 2 ** min(failures - 1, 32)))


@dataclass
class _Runner:
    subscriber: Subscriber
    store: EventStore
    options: Options
    position: int = -1  # -1: not loaded yet
    saved: int = 0  # the position last written
    saved_at: float = 0.0
    failures: int = 0
    _sql: str = field(init=False, default="")

    def __post_init__(self) -> None:
        types = self.subscriber.types
        only = "" if types is None else f" AND type IN ({','.join('?' * len(types))})"
        self._sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? AND seq <= ?{only} "
            "ORDER BY seq LIMIT ?"
        )

    async def run(self) -> None:
        shared = self._shared()
        if shared is not None:
            # Several instances share the log: one of them at a time acts, from the
            # checkpoint in PostgreSQL (store.postgres.upstream).
            async with shared.exclusive(self.subscriber.name):
                await self._run()
        else:
            await self._run()

    def _shared(self) -> PgUpstream | None:
        """Where the checkpoint lives when it is not in this file: an effect's, with a log
        in PostgreSQL."""
        return self.store.upstream if isinstance(self.subscriber, Effect) else None

    async def _run(self) -> None:
        notifier = self.store.notifier
        while True:
            try:
                more = await self._step()
            except LoaclError as exc:
                if exc.code == "store_closed":  # the server is going down: nothing to record
                    log.info("subscriber.stopped", name=self.subscriber.name)
                    return
                await self._failed(exc)
                continue
            except Exception as exc:
                await self._failed(exc)
                continue
            if not more:
                unsaved = self.position != self.saved
                options = self.options
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        options.checkpoint_interval if unsaved else options.idle_timeout
                    ):
                        await notifier.wait_past(self.position)

    async def _step(self) -> bool:
        """Process one batch; False when caught up with the log."""
        name = self.subscriber.name
        if self.position < 0:
            loaded = await self.store.run_on_writer(lambda c: checkpoints.ensure(c, name))
            shared = self._shared()
            self.position = self.saved = (
                loaded.position if shared is None else await shared.checkpoint(name)
            )
            self.failures = loaded.failures
        head = await self.store.head()
        if head <= self.position:
            if self.position != self.saved or self.failures:
                # A success after failures is written at once: status must stop showing them.
                await self._save([], self.position, force=self.failures > 0)
            return False
        upto = min(head, self.position + self.options.scan_window)
        types = self.subscriber.types or ()
        rows = await self.store.query(
            self._sql, (self.position, upto, *types, self.options.batch_size)
        )
        events = decode_rows(rows, self.store.keyring)
        end = events[-1].seq if len(events) >= self.options.batch_size else upto
        if isinstance(self.subscriber, Effect) and events:
            await self.subscriber.handle(events)
        await self._save(events, end, force=bool(events))
        return end < head

    async def _save(self, events: list[RecordedEvent], end: int, *, force: bool) -> None:
        """Write the checkpoint (with a table subscriber's rows); a run of skipped events only
        every ``checkpoint_interval`` seconds, so that a commit of deltas costs no write."""
        options = self.options
        if not force and options.ticks() - self.saved_at < options.checkpoint_interval:
            self.position = end
            return
        subscriber, expected, now = self.subscriber, self.saved, options.clock()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                checkpoints.advance(conn, subscriber.name, expected, end, now)
                if isinstance(subscriber, Table) and events:
                    subscriber.apply(conn, events)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        shared = self._shared()
        try:
            if shared is not None:
                await shared.advance(subscriber.name, expected, end, now)
            else:
                await self.store.run_on_writer(write)
        except checkpoints.Moved as moved:
            log.warning("subscriber.moved", name=subscriber.name, position=moved.position)
            self.position = self.saved = moved.position
            return
        self.position = self.saved = end
        self.saved_at = options.ticks()
        self.failures = 0

    async def _failed(self, exc: Exception) -> None:
        self.failures += 1
        name, failures, now = self.subscriber.name, self.failures, self.options.clock()
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.warning("subscriber.failed", name=name, failures=failures, error=error)
        try:
            await self.store.run_on_writer(
                lambda c: checkpoints.record_failure(c, name, error, failures, now)
            )
        except Exception as again:  # the store itself is failing: the log line must do
            log.warning("subscriber.record_failed", name=name, error=repr(again))
        # The failed batch is read again from the checkpoint: skipped events not yet saved
        # are read again too, which costs a scan and nothing more.
        self.position = -1 if self.position < 0 else self.saved
        await self.options.sleep(backoff(failures, self.options))


class Subscriptions:
    """Runs each subscriber as a task while the server runs; ``stop`` cancels them promptly."""

    def __init__(
        self, store: EventStore, subscribers: Iterable[Subscriber], options: Options | None = None
    ) -> None:
        self.store = store
        self.subscribers = list(subscribers)
        names = [s.name for s in self.subscribers]
        if len(set(names)) != len(names):
            raise LoaclError("duplicate_subscriber", f"subscriber names repeat: {names}")
        self.options = options or Options()
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[_Runner] = []

    def positions(self) -> dict[str, int]:
        """Each running subscriber's position in memory (-1: not loaded yet); for metrics."""
        return {r.subscriber.name: r.position for r in self._runners}

    def failures(self) -> dict[str, int]:
        """Each running subscriber's failures in a row."""
        return {r.subscriber.name: r.failures for r in self._runners}

    async def start(self) -> None:
        for subscriber in self.subscribers:
            runner = _Runner(subscriber, self.store, self.options)
            self._runners.append(runner)
            self._tasks.append(
                asyncio.create_task(runner.run(), name=f"subscriber-{subscriber.name}")
            )

    async def stop(self) -> None:
        """Cancel every runner and wait for them. A table batch already on the writer commits
        or not as a whole; an effect cut short is handed over again after the restart."""
        tasks, self._tasks = self._tasks, []
        self._runners = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Subscriptions:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
