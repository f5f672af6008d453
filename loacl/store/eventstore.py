"""The event store: one writer thread commits queued appends together (group commit).

Appends are queued from the event loop; the writer drains the queue, writes every request of the
batch in one ``BEGIN IMMEDIATE`` transaction (each inside a savepoint, so one refused request does
not sink the others), applies projections in the same transaction, commits, and only then hands
results and events back to the loop, in commit order.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.store import codec, migrations
from loacl.store.broker import Broker
from loacl.store.projections import Projections
from loacl.store.sqlite import PRAGMAS, connect

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
S = TypeVar("S")

NO_STREAM = 0  # expected_version for a stream that must not exist yet
MAX_BATCH = 2000
# How far stream_index may trail the log. Written in bulk, sorted, each index page takes many
# entries at once; the trailing events are found by a scan of at most this many rows.
INDEX_LAG = 1000

# A row of the log, in the order decode_rows reads it (the CLI and audit read the same).
EVENT_COLUMNS = "seq, stream, version, type, schema_version, payload, metadata, recorded_at, hash"
_SELECT = f"SELECT {EVENT_COLUMNS} FROM events"
_READ_ALL = f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?"
_INSERT_KEY = (
    "INSERT INTO append_keys (key, stream, first_seq, last_seq) VALUES (?, ?, ?, ?)"
)
_FIND_KEY = "SELECT first_seq, last_seq FROM append_keys WHERE key = ?"
_READ_RANGE = f"{_SELECT} WHERE seq BETWEEN ? AND ? ORDER BY seq"
_INSERT = (
    "INSERT INTO events (seq, stream, version, type, schema_version, payload, metadata, "
    "recorded_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The last event and the index mark, read afresh by every batch inside its write transaction.
_HEAD = (
    "SELECT seq, hash, (SELECT indexed_seq FROM event_log_head WHERE id = 1) FROM events "
    "ORDER BY seq DESC LIMIT 1"
)
# OR IGNORE: an entry already there is the same one (the writer checked every version under
# the write lock); one that disagrees means a damaged log, which `loacl audit verify` names.
# Refusing here would refuse every later append to every stream.
_INDEX_TAIL = (
    "INSERT OR IGNORE INTO stream_index (stream, version, seq) "
    "SELECT stream, version, seq FROM events WHERE seq > ? ORDER BY stream, version"
)
_WRITE_HEAD = (
    "INSERT INTO event_log_head (id, seq, hash, indexed_seq) VALUES (1, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
    "indexed_seq = excluded.indexed_seq"
)
_INDEXED_SEQ = "(SELECT coalesce(max(indexed_seq), 0) FROM event_log_head)"
# The events of one stream, its two parameters both the stream's name: those in the index and
# those in the log's tail after it. In one statement (one snapshot) the two never overlap;
# SQLite answers each side from a primary key (a multi-index OR).
IN_STREAM = (
    "(seq IN (SELECT seq FROM stream_index WHERE stream = ?) "
    f"OR (seq > {_INDEXED_SEQ} AND stream = ?))"
)
# One statement, so one snapshot: the indexed part and the tail after it never overlap.
_STREAM_VERSION = (
    f"SELECT coalesce((SELECT max(version) FROM events WHERE seq > {_INDEXED_SEQ} "
    "AND stream = ?1), (SELECT max(version) FROM stream_index WHERE stream = ?1), 0)"
)
_READ_STREAM = f"{_SELECT} WHERE {IN_STREAM} AND version > ? ORDER BY version"


def utc_now() -> datetime:
    return datetime.now(UTC)


_new_record = tuple.__new__  # positional, without NamedTuple's keyword handling: replay's hot path


def decode_rows(rows: Iterable[Sequence[Any]]) -> list[RecordedEvent]:
    """Rows of the events table as records. Replay decodes every event through here, so the
    look-ups are hoisted out of the loop and a record is built as a plain tuple. The events of
    one append share their metadata and those of one commit their time: each is decoded once
    per run of equal values."""
    # Keyed by type alone (a tuple key costs more than the rest of the loop): an event of an
    # older schema version than the one cached takes the slow path.
    decoders: dict[str, tuple[int, Callable[[str | bytes], Event]]] = {}
    new, record = _new_record, RecordedEvent
    metadata_raw: Any = None
    time_raw: Any = None
    metadata = Metadata()
    when = datetime.min
    out: list[RecordedEvent] = []
    append = out.append
    for seq, stream, version, type_, schema_version, payload, raw_md, raw_at, hash_ in rows:
        found = decoders.get(type_)
        if found is not None and found[0] == schema_version:
            decode = found[1]
        else:
            decode = codec.payload_decoder(type_, schema_version)
            decoders[type_] = (schema_version, decode)
        if raw_md != metadata_raw:
            metadata, metadata_raw = codec.decode_metadata(raw_md), raw_md
        if raw_at != time_raw:
            when, time_raw = codec.parse_time(raw_at), raw_at
        append(new(record, (seq, stream, version, decode(payload), metadata, when, hash_)))
    return out


def stream_version(conn: sqlite3.Connection, stream: str) -> int:
    return int(conn.execute(_STREAM_VERSION, (stream,)).fetchone()[0])


def read_all_sync(
    conn: sqlite3.Connection, after: int = 0, limit: int | None = None
) -> list[RecordedEvent]:
    rows = conn.execute(_READ_ALL, (after, -1 if limit is None else limit)).fetchall()
    return decode_rows(rows)


@dataclass(eq=False, slots=True)
class _Append:
    stream: str
    events: Sequence[Event]
    expected_version: int | None
    metadata: Metadata
    idempotency_key: str | None
    future: asyncio.Future[list[RecordedEvent]]
    result: list[RecordedEvent] | BaseException = field(default_factory=list)
    replayed: bool = False


@dataclass(eq=False)
class _Call:
    """Run a function on the write connection, in the writer thread."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None


_STOP = object()


@dataclass(eq=False, slots=True)
class _Attempt:
    """One attempt at writing a batch: where the log ends as the batch grows it, the time all
    its events share, and what the fast path inserts at the end."""

    seq: int
    hash: str
    indexed: int  # the stream index covers the log up to here
    recorded_at: str
    when: datetime
    first_seq: int = -1
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[tuple[str, str, int, int]] = field(default_factory=list)
    by_key: dict[str, list[RecordedEvent]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.first_seq = self.seq


# How one request is written: False gives up the whole attempt.
_WriteOne = Callable[[sqlite3.Connection, _Append, _Attempt, int], bool]


def _encode(
    request: _Append, attempt: _Attempt, version: int
) -> tuple[list[tuple[Any, ...]], list[RecordedEvent]]:
    """A request's rows of the log, each chained to the one before, and the same as records."""
    stream, recorded_at, when = request.stream, attempt.recorded_at, attempt.when
    metadata = codec.encode_metadata(request.metadata)
    seq, last_hash = attempt.seq, attempt.hash
    rows: list[tuple[Any, ...]] = []
    recorded: list[RecordedEvent] = []
    for offset, event in enumerate(request.events, start=1):
        payload = codec.encode_payload(event)
        row_seq = seq + offset
        row_version = version + offset
        last_hash = codec.chain_hash(
            last_hash, row_seq, stream, row_version, event.event_type, event.schema_version,
            payload, metadata, recorded_at,
        )
        rows.append((row_seq, stream, row_version, event.event_type, event.schema_version,
                     payload, metadata, recorded_at, last_hash))
        recorded.append(_new_record(RecordedEvent, (
            row_seq, stream, row_version, event, request.metadata, when, last_hash,
        )))
    return rows, recorded


def _key_row(key: str, recorded: list[RecordedEvent]) -> tuple[str, str, int, int]:
    return (key, recorded[0].stream, recorded[0].seq, recorded[-1].seq)


class EventStore:
    def __init__(
        self,
        path: Path,
        projections: Projections,
        *,
        clock: Clock = utc_now,
        broker: Broker | None = None,
        index_lag: int = INDEX_LAG,
    ) -> None:
        self.path = path
        self.projections = projections
        self.clock = clock
        self.broker = broker or Broker()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        # Stream versions as of our last commit, valid while nobody else appends.
        self._versions: dict[str, int] = {}
        self._last_seq = -1
        self._indexed_seq = 0
        self.index_lag = index_lag

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = connect(self.path)
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
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in PRAGMAS:
            await self._reader.execute(pragma)
        self._thread = threading.Thread(target=self._run_writer, name="loacl-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            # Refuse new work before the writer stops: an append queued behind the stop would
            # never be answered.
            thread, self._thread = self._thread, None
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        self.broker.close()

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
    ) -> list[RecordedEvent]:
        """Append events to a stream; all or none of them are written.

        ``expected_version`` None skips the check, 0 (``NO_STREAM``) asks for a new stream, N for
        a stream at version N; otherwise ``ConflictError``. With ``idempotency_key`` a retried
        append returns the events the first one wrote and writes nothing.
        """
        if self._thread is None or self._loop is None:
            raise LoaclError("store_closed", "the event store is not open")
        if not events:
            return []
        future: asyncio.Future[list[RecordedEvent]] = self._loop.create_future()
        self._queue.put(
            _Append(stream, events, expected_version, metadata or Metadata(), idempotency_key,
                    future)
        )
        return await future

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, calls, stopping = self._take_batch(item)
            if batch:
                self._commit_or_refuse(batch)
            self._run_calls(calls)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver, batch, calls)

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
        try:
            self._commit(batch)
        except Exception as exc:  # the whole transaction failed: every request learns it
            log.exception("store.commit_failed")
            error = LoaclError("store_unavailable", f"the event store could not commit: {exc}")
            for request in batch:
                request.result = error

    def _run_calls(self, calls: list[_Call]) -> None:
        for call in calls:
            try:
                call.result = call.fn(self._writer)  # type: ignore[arg-type]
            except Exception as exc:
                call.error = exc
            self._end_stray_transaction()

    def _commit(self, batch: list[_Append]) -> None:
        """Write a batch in one transaction, fast if it can be, carefully if it must.

        The fast path writes every request with one ``executemany`` and no savepoints. If any
        request fails (a projection's veto, an event that cannot be encoded), the transaction is
        rolled back and the batch is written again request by request, each in a savepoint, so
        that only the failing request is refused.
        """
        conn = self._writer
        assert conn is not None
        for write_one in (self._write_fast, self._write_careful):
            for request in batch:
                request.result, request.replayed = [], False
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._write_batch(conn, batch, write_one):
                    conn.execute("COMMIT")
                    return
                conn.execute("ROLLBACK")
            except BaseException:
                self._forget()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._forget()

    def _forget(self) -> None:
        """After a rollback: what the writer remembers of the log must be read again."""
        self._versions.clear()
        self._last_seq = -1

    def _write_batch(
        self, conn: sqlite3.Connection, batch: list[_Append], write_one: _WriteOne
    ) -> bool:
        """Write the batch inside the open transaction; False when ``write_one`` gave up."""
        attempt = self._read_head(conn)
        for request in batch:
            if request.idempotency_key is not None and self._answer_retry(conn, request, attempt):
                continue
            version = self._check_version(conn, request)
            if version is None:
                continue
            if not write_one(conn, request, attempt, version):
                return False
        self._insert_pending(conn, attempt)
        self._advance_index(conn, attempt)
        self._write_head(conn, attempt)
        return True

    # -- the steps of a batch ---------------------------------------------------------------

    def _read_head(self, conn: sqlite3.Connection) -> _Attempt:
        """Where the log ends, read inside the write transaction, and the batch's time."""
        row = conn.execute(_HEAD).fetchone()
        seq, prev_hash, indexed = row if row else (0, codec.GENESIS_HASH, 0)
        indexed = indexed or 0
        if seq != self._last_seq or indexed != self._indexed_seq:
            # Someone else (a CLI command) appended or rebuilt the index since our last commit,
            # or this is the first batch: cached versions may be stale.
            self._versions.clear()
        self._indexed_seq = indexed
        recorded_at = codec.format_time(self.clock())
        return _Attempt(seq, prev_hash, indexed, recorded_at, codec.parse_time(recorded_at))

    def _answer_retry(
        self, conn: sqlite3.Connection, request: _Append, attempt: _Attempt
    ) -> bool:
        """True when the request's key was used before (in this batch or an earlier one): it
        then gets the events written that time and writes nothing."""
        key = request.idempotency_key
        assert key is not None
        earlier = attempt.by_key.get(key)
        if earlier is not None:
            request.result, request.replayed = earlier, True
            return True
        found = conn.execute(_FIND_KEY, (key,)).fetchone()
        if not found:
            return False
        rows = conn.execute(_READ_RANGE, found).fetchall()
        request.result, request.replayed = decode_rows(rows), True
        return True

    def _check_version(self, conn: sqlite3.Connection, request: _Append) -> int | None:
        """The stream's version to append after, or None when the request expected another
        (it is then refused with a conflict)."""
        versions = self._versions
        version = versions.get(request.stream)
        if version is None:
            version = versions[request.stream] = stream_version(conn, request.stream)
        expected = request.expected_version
        if expected is not None and expected != version:
            request.result = ConflictError(request.stream, expected, version)
            return None
        return version

    def _write_fast(
        self, conn: sqlite3.Connection, request: _Append, attempt: _Attempt, version: int
    ) -> bool:
        """Encode and project one request; its rows wait for one ``executemany`` at the end.
        False gives the attempt up: the batch is then written carefully."""
        try:
            rows, recorded = _encode(request, attempt, version)
            self.projections.apply(conn, recorded)
        except Exception:
            return False
        attempt.rows.extend(rows)
        if request.idempotency_key is not None:
            attempt.keys.append(_key_row(request.idempotency_key, recorded))
        self._accept(request, recorded, attempt)
        return True

    def _write_careful(
        self, conn: sqlite3.Connection, request: _Append, attempt: _Attempt, version: int
    ) -> bool:
        """Write one request in a savepoint of its own: a failure refuses this request only."""
        conn.execute("SAVEPOINT append")
        try:
            # Encoding is guarded too: an event that cannot be encoded refuses its own
            # request, not the whole batch.
            rows, recorded = _encode(request, attempt, version)
            conn.executemany(_INSERT, rows)
            self.projections.apply(conn, recorded)
            if request.idempotency_key is not None:
                conn.execute(_INSERT_KEY, _key_row(request.idempotency_key, recorded))
        except Exception as exc:
            conn.execute("ROLLBACK TO append")
            conn.execute("RELEASE append")
            request.result = _as_loacl_error(exc, request.stream)
            return True
        conn.execute("RELEASE append")
        self._accept(request, recorded, attempt)
        return True

    def _accept(self, request: _Append, recorded: list[RecordedEvent], attempt: _Attempt) -> None:
        """The request is written: the next one follows its last event."""
        request.result = recorded
        if request.idempotency_key is not None:
            attempt.by_key[request.idempotency_key] = recorded
        last = recorded[-1]
        attempt.seq, attempt.hash = last.seq, last.hash
        self._versions[request.stream] = last.version

    def _insert_pending(self, conn: sqlite3.Connection, attempt: _Attempt) -> None:
        if attempt.rows:
            # Projections ran before these inserts; none of them reads the events table.
            conn.executemany(_INSERT, attempt.rows)
        if attempt.keys:
            conn.executemany(_INSERT_KEY, attempt.keys)

    def _advance_index(self, conn: sqlite3.Connection, attempt: _Attempt) -> None:
        # Only a batch that wrote events moves the mark: another writer notices a new head seq
        # and reads the mark again, but would not notice a mark moved under an unchanged head.
        if attempt.seq != attempt.first_seq and attempt.seq - attempt.indexed >= self.index_lag:
            conn.execute(_INDEX_TAIL, (attempt.indexed,))
            attempt.indexed = attempt.seq

    def _write_head(self, conn: sqlite3.Connection, attempt: _Attempt) -> None:
        if attempt.seq:
            conn.execute(_WRITE_HEAD, (attempt.seq, attempt.hash, attempt.indexed))
        self._last_seq = attempt.seq
        self._indexed_seq = attempt.indexed
        if len(self._versions) > 100_000:
            self._versions.clear()

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

    def _deliver(self, batch: list[_Append], calls: list[_Call]) -> None:
        for call in calls:
            if call.future.done():
                continue
            if call.error is not None:
                call.future.set_exception(call.error)
            else:
                call.future.set_result(call.result)
        committed: list[RecordedEvent] = []
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
        if committed:
            self.broker.publish(committed)

    async def run_on_writer(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` on the write connection between batches (the only writer)."""
        if self._thread is None or self._loop is None:
            raise LoaclError("store_closed", "the event store is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Call(fn, future))
        return await future

    async def check_writable(self) -> None:
        def probe(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise LoaclError(
                    "database_unavailable", f"the database is not writable: {exc}"
                ) from exc

        await self.run_on_writer(probe)

    # -- reading ----------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if self._reader is None:
            raise LoaclError("store_closed", "the event store is not open")
        # One call on the reader's thread: a cursor left open between execute and fetchall
        # keeps its read snapshot, and a query run meanwhile would miss the latest commit.
        return list(await self._reader.execute_fetchall(sql, params))

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        rows = await self._fetch(_READ_STREAM, (stream, stream, after_version))
        return decode_rows(rows)

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
        rows = await self._fetch(_READ_ALL, (after, -1 if limit is None else limit))
        return decode_rows(rows)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read-only query against the read tables."""
        return await self._fetch(sql, params)

    async def stream_version(self, stream: str) -> int:
        rows = await self._fetch(_STREAM_VERSION, (stream,))
        return int(rows[0][0])

    async def head(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(seq), 0) FROM events", ())
        return int(rows[0][0])


def _as_loacl_error(exc: Exception, stream: str) -> LoaclError:
    """What a refused request tells its caller. Projections that know what a veto means raise
    their own code (``email_taken``); any other constraint of a read table (one conversation
    per signed-in site user and widget) is a ``conflict``. SQLite's text names tables and
    columns: it goes to the log, never to the client."""
    if isinstance(exc, LoaclError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        log.warning("store.append_refused", stream=stream, error=str(exc))
        return LoaclError("conflict", "the change conflicts with one already made")
    log.error("store.append_failed", stream=stream, error=repr(exc))
    return LoaclError("store_error", "the event store could not write the events")
