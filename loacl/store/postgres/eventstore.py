"""The event store on PostgreSQL (asyncpg): the same contract as the SQLite store
(``store.contract.EventLog``), the same rows and hash chain, for several LOACL instances sharing
one database.

Global order without gaps. A position is handed out by the appender itself, from the head row
(``event_log_head``) it locks with ``SELECT ... FOR UPDATE`` and holds until its transaction
commits. So appends, from any number of connections and instances, are serialized on the head:
an append can only take positions after the previous one has committed, and a reader that has
seen position N has seen everything before it. A ``SERIAL``/``IDENTITY`` column would not do:
sequence numbers are handed out when a row is inserted and become visible when its transaction
commits, in whatever order the transactions end, so a reader tailing ``seq > last`` can pass a
number whose transaction commits afterwards and never read it (tests/test_store_contract.py
shows it happen). The hash chain needs the previous hash anyway, so the lock costs nothing more.

Group commit. Appends are queued; one task per store drains the queue and writes every request
waiting in one transaction (a version conflict or a repeated idempotency key refuses or
answers its own request, not the batch). While one transaction is in flight the next batch
gathers, so many concurrent writers cost few commits. Results go back, and subscribers in this
process are told, only after the commit.

Not here yet: projections (the read tables are SQLite's), which is why ``DATABASE_URL`` does not
select this store (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import asyncpg
import structlog
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.privacy import subject_of_stream
from loacl.store import codec
from loacl.store.audit import AuditResult
from loacl.store.batches import Append, Attempt, encode_request
from loacl.store.broker import Broker
from loacl.store.checkpoints import Checkpoint, Moved
from loacl.store.eventstore import Clock, utc_now
from loacl.store.keys import Keyring, SealKey, erased_message
from loacl.store.notifier import Notifier
from loacl.store.postgres import Connection, migrate
from loacl.store.postgres import keys as pgkeys
from loacl.store.records import EVENT_COLUMNS, decode_rows

log = structlog.get_logger(__name__)

S = TypeVar("S")

MAX_BATCH = 2000
_STOP = object()

_SELECT = f"SELECT {EVENT_COLUMNS} FROM events"
_READ_ALL = f"{_SELECT} WHERE seq > $1 ORDER BY seq LIMIT $2"  # LIMIT NULL: no limit
_READ_STREAM = f"{_SELECT} WHERE stream = $1 AND version > $2 ORDER BY version"
_READ_RANGE = f"{_SELECT} WHERE seq BETWEEN $1 AND $2 ORDER BY seq"
# The erasure count read with the head: a key erased by another instance is never used again.
_LOCK_HEAD = (
    "SELECT h.seq, h.hash, (SELECT erasures FROM key_state WHERE id = 1) AS erasures "
    "FROM event_log_head h WHERE h.id = 1 FOR UPDATE OF h"
)
# One index probe per stream (the unique (stream, version) index, read backwards): a plain
# ``stream = ANY(...) GROUP BY`` over many streams turns into a scan of the whole table.
_VERSIONS = (
    "SELECT s.stream, (SELECT max(e.version) FROM events e WHERE e.stream = s.stream) "
    "FROM unnest($1::text[]) AS s(stream)"
)
# A prepared statement of arrays, one round trip: cheaper than COPY for a batch of hundreds
# (COPY asks the catalogue for the table's columns first, every time).
_INSERT = (
    "WITH written AS (INSERT INTO events (seq, stream, version, type, schema_version, payload, "
    "metadata, recorded_at, hash) SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], "
    "$4::text[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[])) "
    "UPDATE event_log_head SET seq = $10, hash = $11 WHERE id = 1"
)
_KEYS = "SELECT key, first_seq, last_seq FROM append_keys WHERE key = ANY($1::text[])"
_CHECKPOINT = (
    "SELECT name, position, updated_at, last_error, error_at, failures "
    "FROM subscriber_checkpoints WHERE name = $1"
)


class PgEventStore:
    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utc_now,
        keyring: Keyring | None = None,
        broker: Broker | None = None,
        notifier: Notifier | None = None,
        pool_size: int = 10,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.url = url
        self.clock = clock
        self.keyring = keyring
        self.broker = broker or Broker()
        self.notifier = notifier or Notifier()
        self.pool_size = pool_size
        self.max_batch = max_batch
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._write_conn: PoolConnectionProxy[Any] | None = None
        self.commits = 0  # transactions that wrote appends: group commit, observed by tests
        # Stream versions as of position _versions_at, the head our last commit left.
        self._known_versions: dict[str, int] = {}
        self._versions_at = -1

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._pool = await migrate.create_pool(self.url, self.pool_size)
        try:
            async with self._pool.acquire() as conn:
                await migrate.check(conn)
                if self.keyring is not None:
                    await pgkeys.read_state(conn, self.keyring)
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._writer = asyncio.create_task(self._run_writer(), name="loacl-pg-writer")

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._queue.put_nowait(_STOP)
            await writer
            await self._release_writer()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        self.broker.close()
        self.notifier.close()

    async def __aenter__(self) -> PgEventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connection(self) -> PoolAcquireContext[Any]:
        if self._pool is None:
            raise LoaclError("store_closed", "the event store is not open")
        return self._pool.acquire()

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
        """As ``EventStore.append``: all or none, ``expected_version`` checked, an
        idempotency key answered with the events its first append wrote."""
        if self._writer is None:
            raise LoaclError("store_closed", "the event store is not open")
        if not events:
            return []
        future: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Append(
            stream, events, expected_version, metadata or Metadata(), idempotency_key, future,
            subject or subject_of_stream(stream),
        ))
        return await future

    async def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            await self._commit_or_refuse(batch)
            self._deliver(batch)

    async def _commit_or_refuse(self, batch: list[Append]) -> None:
        for request in batch:
            request.result, request.replayed = [], False
        try:
            if self._write_conn is None:
                # Held from batch to batch: giving it back to the pool costs a reset each time.
                assert self._pool is not None
                self._write_conn = await self._pool.acquire()
            try:
                erased = await self._commit(self._write_conn, batch)
            except BaseException:
                await self._release_writer()  # a broken connection is not used again
                raise
            self.commits += 1
            if self.keyring is not None:
                for subject in erased:
                    self.keyring.forget(subject)
        except Exception as exc:  # the whole transaction failed: every request learns it
            log.exception("store.commit_failed")
            error = LoaclError("store_unavailable", f"the event store could not commit: {exc}")
            for request in batch:
                request.result = error

    async def _release_writer(self) -> None:
        conn, self._write_conn = self._write_conn, None
        if conn is not None and self._pool is not None:
            await self._pool.release(conn)

    async def _commit(self, conn: Connection, batch: list[Append]) -> set[str]:
        """Write the batch in one transaction; the subjects it erased."""
        keyring = self.keyring
        if keyring is not None:
            await pgkeys.prepare(conn, keyring, [
                r.subject for r in batch
                if r.subject is not None and not keyring.known(r.subject) and r.needs_key()
            ], self.clock())
        async with conn.transaction():
            # The head lock: held to the commit, it orders every append of every instance.
            head = await conn.fetchrow(_LOCK_HEAD)
            assert head is not None, "migration 0001 writes the head row"
            if keyring is not None:
                keyring.observe(head["erasures"])
            recorded_at = codec.format_time(self.clock())
            attempt = Attempt(head["seq"], head["hash"], 0, recorded_at,
                              codec.parse_time(recorded_at))
            versions = await self._versions(conn, batch, head["seq"])
            used = await self._used_keys(conn, batch)
            for request in batch:
                if request.idempotency_key is not None and await self._answer_retry(
                    conn, request, attempt, used
                ):
                    continue
                version = versions.get(request.stream, 0)
                expected = request.expected_version
                if expected is not None and expected != version:
                    request.result = ConflictError(request.stream, expected, version)
                    continue
                try:
                    key = await self._key(conn, request, attempt)
                    rows, recorded = encode_request(request, attempt, version, key, keyring)
                except LoaclError as exc:
                    request.result = exc
                    continue
                except Exception as exc:  # an event that cannot be encoded refuses its request
                    log.error("store.append_failed", stream=request.stream, error=repr(exc))
                    request.result = LoaclError(
                        "store_error", "the event store could not write the events"
                    )
                    continue
                attempt.rows.extend(rows)
                if request.idempotency_key is not None:
                    attempt.keys.append(
                        (request.idempotency_key, request.stream, recorded[0].seq,
                         recorded[-1].seq)
                    )
                    attempt.by_key[request.idempotency_key] = recorded
                request.result = recorded
                attempt.seq, attempt.hash = recorded[-1].seq, recorded[-1].hash
                versions[request.stream] = recorded[-1].version
            if attempt.rows:  # the rows and the new head in one statement
                await conn.execute(
                    _INSERT, *(list(column) for column in zip(*attempt.rows, strict=True)),
                    attempt.seq, attempt.hash,
                )
            if attempt.keys:
                await conn.executemany(
                    "INSERT INTO append_keys (key, stream, first_seq, last_seq) "
                    "VALUES ($1, $2, $3, $4)", attempt.keys,
                )
            for subject in attempt.erased:
                await pgkeys.destroy(conn, subject, recorded_at)
        # Committed: the versions are the log's as of our head, until someone else appends.
        self._known_versions.update(versions)
        self._versions_at = attempt.seq
        return attempt.erased

    async def _versions(
        self, conn: Connection, batch: list[Append], head: int
    ) -> dict[str, int]:
        """Each stream's version, read under the head lock. Kept between batches while the
        head is the one our last commit left (no other instance appended since)."""
        known = self._known_versions
        if head != self._versions_at or len(known) > 100_000:
            known.clear()
        wanted = list({r.stream for r in batch if r.stream not in known})
        if wanted:
            for stream, version in await conn.fetch(_VERSIONS, wanted):
                known[stream] = version or 0
        # A copy: a batch that rolls back must not leave its versions behind.
        return {r.stream: known[r.stream] for r in batch}

    async def _used_keys(
        self, conn: Connection, batch: list[Append]
    ) -> dict[str, tuple[int, int]]:
        wanted = [r.idempotency_key for r in batch if r.idempotency_key is not None]
        if not wanted:
            return {}
        rows = await conn.fetch(_KEYS, wanted)
        return {r["key"]: (r["first_seq"], r["last_seq"]) for r in rows}

    async def _answer_retry(
        self, conn: Connection, request: Append, attempt: Attempt,
        used: dict[str, tuple[int, int]],
    ) -> bool:
        """True when the request's key was used before (in this batch or an earlier one)."""
        key = request.idempotency_key
        assert key is not None
        earlier = attempt.by_key.get(key)
        if earlier is not None:
            request.result, request.replayed = earlier, True
            return True
        found = used.get(key)
        if found is None:
            return False
        rows = await conn.fetch(_READ_RANGE, *found)
        if self.keyring is not None:
            await pgkeys.preload(conn, self.keyring, rows)
        request.result, request.replayed = decode_rows(_rows(rows), self.keyring), True
        return True

    async def _key(
        self, conn: Connection, request: Append, attempt: Attempt
    ) -> SealKey | None:
        subject, keyring = request.subject, self.keyring
        if subject is None or keyring is None:
            return None
        if subject in attempt.erased:
            raise LoaclError("subject_erased", erased_message(subject))
        return await pgkeys.for_sealing(conn, keyring, subject, required=request.needs_key())

    def _deliver(self, batch: list[Append]) -> None:
        committed: list[RecordedEvent] = []
        for request in batch:
            result = request.result
            if isinstance(result, BaseException):
                if not request.future.done():
                    request.future.set_exception(result)
                continue
            if not request.replayed:
                committed.extend(result)
            if not request.future.done():
                request.future.set_result(result)
        if committed:
            self.notifier.advance(committed[-1].seq)
            self.broker.publish(committed)

    # -- reading ----------------------------------------------------------------------------

    async def _read(self, sql: str, *args: Any) -> list[RecordedEvent]:
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
            if self.keyring is not None and rows:
                await pgkeys.preload(conn, self.keyring, rows)
        return decode_rows(_rows(rows), self.keyring)

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        return await self._read(_READ_STREAM, stream, after_version)

    async def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        return await self._read(_READ_ALL, after, limit)

    async def load(
        self, stream: str, initial: S, evolve: Callable[[S, Event], S]
    ) -> tuple[S, int]:
        state = initial
        events = await self.read_stream(stream)
        for recorded in events:
            state = evolve(state, recorded.event)
        return state, len(events)

    async def stream_version(self, stream: str) -> int:
        async with self._connection() as conn:
            found = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM events WHERE stream = $1", stream
            )
        return int(found)

    async def head(self) -> int:
        # The head row moves in the transaction that writes the events: never ahead of them.
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT seq FROM event_log_head WHERE id = 1"))

    # -- subscriber checkpoints -------------------------------------------------------------

    async def checkpoint(self, name: str) -> Checkpoint:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO subscriber_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING",
                name,
            )
            row = await conn.fetchrow(_CHECKPOINT, name)
        assert row is not None, "inserted just before"
        return Checkpoint(*row)

    async def advance_checkpoint(self, name: str, expected: int, position: int) -> None:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE subscriber_checkpoints SET position = $1, updated_at = $2, failures = 0 "
                "WHERE name = $3 AND position = $4",
                position, codec.format_time(self.clock()), name, expected,
            )
            if status == "UPDATE 0":
                row = await conn.fetchrow(_CHECKPOINT, name)
                raise Moved(int(row["position"]) if row is not None else 0)

    # -- audit ------------------------------------------------------------------------------

    async def verify(self, chunk: int = 10_000) -> AuditResult:
        """The hash chain walked from the first event, and the head row checked against it,
        in one snapshot (a running appender's commits are not mistaken for damage)."""
        async with self._connection() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            return await verify(conn, chunk)


async def verify(conn: Connection, chunk: int = 10_000) -> AuditResult:
    """The chain and head check of ``PgEventStore.verify`` on the caller's connection, in the
    caller's transaction (``store.copy`` checks what it wrote before committing it)."""
    prev, count = codec.GENESIS_HASH, 0
    while True:
        rows = await conn.fetch(f"{_SELECT} WHERE seq > $1 ORDER BY seq LIMIT $2", count, chunk)
        for seq, stream, version, type_, schema, payload, metadata, at, stored in rows:
            if seq != count + 1:
                return AuditResult(False, count, prev, count + 1, f"event {count + 1} is missing")
            computed = codec.chain_hash(
                prev, seq, stream, version, type_, schema, payload, metadata, at
            )
            if computed != stored:
                return AuditResult(False, count, prev, seq, f"event {seq} does not match its hash")
            prev, count = stored, seq
        if len(rows) < chunk:
            break
    head = await conn.fetchrow("SELECT seq, hash FROM event_log_head WHERE id = 1")
    if head is None or head["seq"] != count or head["hash"] != prev:
        return AuditResult(
            False, count, prev, count + 1,
            f"the log ends at {count} but its head records event "
            f"{head['seq'] if head else '-'}: events were removed or rewritten",
        )
    return AuditResult(True, count, prev)


def _rows(records: list[asyncpg.Record]) -> list[Sequence[Any]]:
    """Records as the rows ``decode_rows`` reads: a record unpacks as a tuple does."""
    return cast(list[Sequence[Any]], records)
