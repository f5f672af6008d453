"""The event store: one writer thread commits queued appends together (group commit).

Appends are queued from the event loop; the writer drains the queue, writes every request of the
batch in one ``BEGIN IMMEDIATE`` transaction (``batches``: one refused request does not sink the
others), applies projections in the same transaction, commits, and only then hands results and
events back to the loop, in commit order. The log's rows and their SQL are in ``records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite
import structlog

from loacl import tracing
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.privacy import subject_of_stream
from loacl.store import audit, checkpoints, migrations
from loacl.store.batches import Append as _Append
from loacl.store.batches import BatchWriter
from loacl.store.broker import Broker
from loacl.store.keys import Keyring
from loacl.store.notifier import Notifier
from loacl.store.projections import Projections
from loacl.store.records import EVENT_COLUMNS as EVENT_COLUMNS
from loacl.store.records import IN_STREAM as IN_STREAM
from loacl.store.records import READ_ALL, READ_STREAM, STREAM_VERSION, decode_rows
from loacl.store.records import read_all_sync as read_all_sync
from loacl.store.sqlite import PRAGMAS, connect

if TYPE_CHECKING:
    from loacl.store.postgres.upstream import PgUpstream

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
# Told of each commit, on the writer thread: appends in the batch, events written, seconds.
OnCommit = Callable[[int, int, float], None]
S = TypeVar("S")

NO_STREAM = 0  # expected_version for a stream that must not exist yet
MAX_BATCH = 2000
# How far stream_index may trail the log. Written in bulk, sorted, each index page takes many
# entries at once; the trailing events are found by a scan of at most this many rows.
INDEX_LAG = 1000


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class _Call:
    """Run a function on the write connection, in the writer thread."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None


_STOP = object()

# How long the write-lock probe waits for a lock held elsewhere: far below /readyz's 1 s answer,
# and short enough that the writer, arriving meanwhile, barely notices it.
PROBE_WAIT = 0.2


@dataclass
class WriterHealth:
    """How the writer's commits went, in ``time.monotonic()`` seconds. Written by the writer
    thread alone, read by /readyz: single attribute writes, so no lock."""

    busy_since: float | None = None  # a commit is under way
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None

    def failing(self) -> bool:
        """True when the latest commit failed."""
        failure, success = self.last_failure, self.last_success
        return failure is not None and (success is None or failure >= success)


class EventStore:
    def __init__(
        self,
        path: Path,
        projections: Projections,
        *,
        clock: Clock = utc_now,
        broker: Broker | None = None,
        notifier: Notifier | None = None,
        index_lag: int = INDEX_LAG,
        autocheckpoint: int | None = None,
        keyring: Keyring | None = None,
        on_commit: OnCommit | None = None,
        upstream: PgUpstream | None = None,
    ) -> None:
        self.path = path
        # Where the log lives when this file is a copy of it (store.postgres.upstream).
        self.upstream = upstream
        self._catching_up: asyncio.Task[None] | None = None
        self._wake_again = False
        self._polling: asyncio.Task[None] | None = None
        self.on_commit = on_commit
        # The writer's wal_autocheckpoint (store.sqlite.connect): 0 while Litestream runs.
        self.autocheckpoint = autocheckpoint
        # Seals personal fields on the way in and opens them on the way out (store.keys);
        # without one they are written plain (tests of the store itself, the benchmark).
        self.keyring = keyring
        self.projections = projections
        self.clock = clock
        self.broker = broker or Broker()
        # Wakes durable subscribers (store.subscriptions), which read the log themselves.
        self.notifier = notifier or Notifier()
        # Told of the events copied in from another instance (store.postgres.upstream) before
        # any subscriber: a reply streaming there is followed here through them
        # (services.remote_replies), and a tab told of its start must find it.
        self.on_copied: list[Callable[[Sequence[RecordedEvent]], None]] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self.index_lag = index_lag
        self._batches = BatchWriter(projections, clock, index_lag, keyring, upstream)
        self.writer_health = WriterHealth()

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = connect(self.path, autocheckpoint=self.autocheckpoint)
        schema = migrations.current(self._writer)
        if schema > migrations.LATEST:
            # An older LOACL would write without what the newer schema expects of writers
            # (such as moving the stream index mark).
            self._writer.close()
            self._writer = None
            raise LoaclError(
                "schema_too_new",
                f"the database is at schema {schema}, newer than this LOACL knows "
                f"({migrations.LATEST}): run the LOACL that migrated it",
            )
        if self.keyring is not None:
            if schema < migrations.LATEST:
                self._writer.close()
                self._writer = None
                raise LoaclError(
                    "schema_out_of_date", "the database needs migrations: run `loacl migrate up`"
                )
            self.keyring.open_reader(self.path)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in PRAGMAS:
            await self._reader.execute(pragma)
        self._thread = threading.Thread(target=self._run_writer, name="loacl-writer", daemon=True)
        self._thread.start()
        if self.upstream is not None:
            try:
                await self._open_upstream(self.upstream)
            except BaseException:
                await self.close()
                raise

    async def _open_upstream(self, upstream: PgUpstream) -> None:
        """Connect to PostgreSQL, check this file is a copy of its log, bring it level, and
        keep it level: woken by NOTIFY, and looking every ``poll_seconds`` anyway."""
        from loacl.store.postgres.upstream import local_head

        await upstream.open(self.projections.apply)
        await upstream.check(await self.run_on_writer(local_head))
        await self.run_on_writer(upstream.refresh_keys)  # after a rotation of the master key
        await self.catch_up()
        upstream.woken = self._wake
        self._polling = asyncio.create_task(self._poll(upstream.poll_seconds),
                                            name="loacl-upstream-poll")

    def _wake(self) -> None:
        # Woken while a catch-up runs: it may have read PostgreSQL before the commit that woke
        # us, so it goes round once more rather than leave that commit to the next poll.
        self._wake_again = True
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.create_task(self._catch_up_logged())

    async def _poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self._wake()

    async def _catch_up_logged(self) -> None:
        while self._wake_again:
            self._wake_again = False
            try:
                await self.catch_up()
            except Exception as exc:
                if isinstance(exc, LoaclError) and exc.code == "store_closed":
                    return
                log.exception("store.catch_up_failed")

    async def catch_up(self) -> int:
        """Copy in what other instances appended to the log in PostgreSQL since this copy's
        last event, and publish it to this process's subscribers; how many events."""
        upstream = self.upstream
        if upstream is None:
            return 0

        def copy(conn: sqlite3.Connection) -> int:
            copied = upstream.catch_up(conn)
            self._batches.took(copied)
            if copied:
                # From the writer thread, in order with the batches' deliveries.
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._deliver, [], [], copied)
            return len(copied)

        return int(await self.run_on_writer(copy))

    async def close(self) -> None:
        if self.upstream is not None:
            self.upstream.woken = None  # no catch-up starts once closing
        for task in (self._polling, self._catching_up):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._polling = self._catching_up = None
        if self._thread is not None:
            # Refuse new work before the writer stops: an append queued behind the stop would
            # never be answered.
            thread, self._thread = self._thread, None
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join)
        # The keyring's read-only connection first: the last connection to close checkpoints
        # the WAL into the file and removes it, which a read-only one cannot do.
        if self.keyring is not None:
            self.keyring.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self.upstream is not None:
            await self.upstream.close()
        self.broker.close()
        self.notifier.close()

    async def __aenter__(self) -> EventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing ----------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[Event],
        *,
        expected_version: int | None = None,
        metadata: Metadata | None = None,
        idempotency_key: str | None = None,
        subject: str | None = None,
    ) -> list[RecordedEvent]:
        """Append events to a stream; all or none of them are written.

        ``expected_version`` None skips the check, 0 (``NO_STREAM``) asks for a new stream, N for
        a stream at version N; otherwise ``ConflictError``. With ``idempotency_key`` a retried
        append returns the events the first one wrote and writes nothing. ``subject`` is whose
        personal data the events and the client's address are (``domain.privacy``), when the
        stream's name does not say (a conversation's and an owner's streams do).
        """
        with tracing.span("store.append", **{"loacl.stream": stream,
                                             "loacl.events": len(events)}):
            return await self.enqueue(
                stream, events, expected_version=expected_version, metadata=metadata,
                idempotency_key=idempotency_key, subject=subject,
            )

    def enqueue(
        self,
        stream: str,
        events: Sequence[Event],
        *,
        expected_version: int | None = None,
        metadata: Metadata | None = None,
        idempotency_key: str | None = None,
        subject: str | None = None,
    ) -> asyncio.Future[list[RecordedEvent]]:
        """:meth:`append`, queued now, without waiting: the future is its outcome.

        The writer commits queued appends in the order they were queued, so an append queued
        here precedes, in the log, every append queued after this call returns (a caller may
        go on before the commit and still know where its events land). Its outcome must be
        awaited (or read) all the same: a refused append is an exception in the future.
        """
        if self._thread is None or self._loop is None:
            raise LoaclError("store_closed", "the event store is not open")
        future: asyncio.Future[list[RecordedEvent]] = self._loop.create_future()
        if not events:
            future.set_result([])
            return future
        self._queue.put(
            _Append(stream, events, expected_version, metadata or Metadata(),
                    idempotency_key, future, subject or subject_of_stream(stream))
        )
        return future

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, calls, stopping = self._take_batch(item)
            assert self._loop is not None
            if batch:
                self._commit_or_refuse(batch)
                # Told before the calls run: a call waiting out a lock held by another process
                # (busy_timeout) must not hold back an append's outcome, a refusal least of all.
                self._loop.call_soon_threadsafe(self._deliver, batch, [], self._batches.copied)
            self._run_calls(calls)
            if calls:
                self._loop.call_soon_threadsafe(self._deliver, [], calls)

    def _take_batch(self, item: Any) -> tuple[list[_Append], list[_Call], bool]:
        """The first item and whatever else is queued (appends up to MAX_BATCH); True when a
        stop was met, which ends the writer once this batch is done."""
        batch: list[_Append] = []
        calls: list[_Call] = []
        while True:
            (calls if isinstance(item, _Call) else batch).append(item)
            if len(batch) >= MAX_BATCH:
                return batch, calls, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, calls, False
            if item is _STOP:
                return batch, calls, True

    def _commit_or_refuse(self, batch: list[_Append]) -> None:
        assert self._writer is not None
        health = self.writer_health
        health.busy_since = started = time.monotonic()
        try:
            self._batches.commit(self._writer, batch)
            health.last_success = time.monotonic()
            if self.on_commit is not None:
                written = sum(
                    len(r.result) for r in batch
                    if not r.replayed and not isinstance(r.result, BaseException)
                )
                self.on_commit(len(batch), written, health.last_success - started)
        except Exception as exc:  # the whole transaction failed: every request learns it
            # The error first: a reader that sees the new failure time sees its error.
            health.last_error = str(exc)
            health.last_failure = time.monotonic()
            log.exception("store.commit_failed")
            error = LoaclError("store_unavailable", f"the event store could not commit: {exc}")
            for request in batch:
                request.result = error
        finally:
            health.busy_since = None

    def _run_calls(self, calls: list[_Call]) -> None:
        for call in calls:
            try:
                call.result = call.fn(self._writer)  # type: ignore[arg-type]
            except Exception as exc:
                call.error = exc
            self._end_stray_transaction()

    def _end_stray_transaction(self) -> None:
        # A call that left its transaction open would make the next batch's BEGIN fail.
        conn = self._writer
        assert conn is not None
        if conn.in_transaction:
            log.warning("store.call_left_transaction_open")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("store.rollback_failed")

    def _deliver(
        self, batch: list[_Append], calls: list[_Call], copied: Sequence[RecordedEvent] = ()
    ) -> None:
        for call in calls:
            if call.future.done():
                continue
            if call.error is not None:
                call.future.set_exception(call.error)
            else:
                call.future.set_result(call.result)
        # Events copied from another instance first: they precede the batch in the log.
        committed: list[RecordedEvent] = list(copied)
        for request in batch:
            result = request.result
            if isinstance(result, BaseException):
                if not request.future.done():
                    request.future.set_exception(result)
                continue
            if not request.replayed:  # a retried idempotent append is no news to subscribers
                committed.extend(result)
            if not request.future.done():
                request.future.set_result(result)
        for told in self.on_copied if copied else ():
            try:
                told(copied)
            except Exception:
                log.exception("store.on_copied_failed")
        if committed:
            self.notifier.advance(committed[-1].seq)
            self.broker.publish(committed)

    async def truncate_wal(self) -> bool:
        """Checkpoint the whole WAL into the file and cut the WAL to nothing, so that pages
        written before (an erased conversation's text) are nowhere in it; False when a reader
        held an older snapshot and the WAL could not be cut this time."""

        def truncate(conn: sqlite3.Connection) -> bool:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return not busy

        return bool(await self.run_on_writer(truncate))

    async def run_on_writer(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` on the write connection between batches (the only writer)."""
        if self._thread is None or self._loop is None:
            raise LoaclError("store_closed", "the event store is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Call(fn, future))
        return await future

    async def probe_write_lock(self, wait: float = PROBE_WAIT) -> None:
        """Take and release the write lock on a short-lived connection of its own, waiting at
        most ``wait`` seconds for it. It never queues behind the writer's batches (as a call
        through ``run_on_writer`` would), and it writes nothing: the writer stays the only
        connection that writes (the WAL-reset bug, ``store.sqlite``)."""
        if self._thread is None:
            raise LoaclError("store_closed", "the event store is not open")

        def probe() -> None:
            uri = f"file:{self.path}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=wait)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        try:
            # The thread ends by itself once SQLite's busy timeout runs out.
            await asyncio.wait_for(asyncio.to_thread(probe), wait + 0.3)
        except sqlite3.Error as exc:
            raise LoaclError(
                "database_unavailable", f"the database's write lock is not free: {exc}"
            ) from exc
        except TimeoutError:
            raise LoaclError(
                "database_unavailable", "the database's write lock did not answer in time"
            ) from None

    # -- reading ----------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if self._reader is None:
            raise LoaclError("store_closed", "the event store is not open")
        # One call on the reader's thread: a cursor left open between execute and fetchall
        # keeps its read snapshot, and a query run meanwhile would miss the latest commit.
        return list(await self._reader.execute_fetchall(sql, params))

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        rows = await self._fetch(READ_STREAM, (stream, stream, after_version))
        return decode_rows(rows, self.keyring)

    async def load(
        self, stream: str, initial: S, evolve: Callable[[S, Event], S]
    ) -> tuple[S, int]:
        """A stream folded into state, and the version to append at: load, decide, append."""
        state = initial
        events = await self.read_stream(stream)
        for recorded in events:
            state = evolve(state, recorded.event)
        return state, len(events)

    async def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        rows = await self._fetch(READ_ALL, (after, -1 if limit is None else limit))
        return decode_rows(rows, self.keyring)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read-only query against the read tables."""
        return await self._fetch(sql, params)

    async def stream_version(self, stream: str) -> int:
        rows = await self._fetch(STREAM_VERSION, (stream,))
        return int(rows[0][0])

    async def head(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(seq), 0) FROM events", ())
        return int(rows[0][0])

    # -- subscriber checkpoints and audit (store.contract) ----------------------------------

    async def checkpoint(self, name: str) -> checkpoints.Checkpoint:
        found: checkpoints.Checkpoint = await self.run_on_writer(
            lambda conn: checkpoints.ensure(conn, name)
        )
        return found

    async def advance_checkpoint(self, name: str, expected: int, position: int) -> None:
        now = self.clock()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                checkpoints.advance(conn, name, expected, position, now)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self.run_on_writer(write)

    async def verify(self) -> audit.AuditResult:
        """``audit.verify`` on a read-only connection of its own, off the event loop."""

        def walk() -> audit.AuditResult:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout=5000")
                return audit.verify(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(walk)

