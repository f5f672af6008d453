"""PostgreSQL as the log's home for several LOACL instances, each keeping its own SQLite copy.

With ``DATABASE_URL=postgresql://...`` the log lives in PostgreSQL and every instance keeps, in
a SQLite file of its own (``instance_database``), a copy of it with all the read tables, built
by the same projections. Everything that reads (views, subscribers, replay, audit of the copy)
reads that file as it always has; only appends change: the SQLite store's writer thread writes
each batch in a transaction of its own file *and* in PostgreSQL, first without a lock:

1. ``begin(lock=False)``: events other instances appended since this copy's last one are
   copied into the open SQLite transaction and projected (PostgreSQL is not asked when no
   ``NOTIFY`` named a head past the copy's), so the copy is at the head as far as it knows.
2. The SQLite store writes the batch as on a single machine (versions, idempotency keys,
   sealing, projections with their vetoes: ``email_taken``, ``conversation_exists``).
3. ``commit``: one statement moves PostgreSQL's head from where the copy ends to the batch's
   last event *if it is still there*, and inserts the rows (the same text, the same hashes),
   the idempotency keys and a ``NOTIFY`` with it; PostgreSQL commits, then SQLite does. The
   head row's lock is held for that statement and its commit only. When another instance
   appended meanwhile, nothing is written: SQLite rolls back and the batch is written again
   (after copying the news; three tries in all, ``batches.UNLOCKED_TRIES``), then
4. with ``begin(lock=True)``: PostgreSQL's head row is locked (``SELECT ... FOR UPDATE``) until
   the commit, so nobody appends meanwhile; the copy is brought level under the lock, the batch
   written against read tables that are exact, and its rows inserted and committed. A batch
   that refused a request on an unlocked copy is written this way at once: a refusal is
   checked against an exact copy. Should PostgreSQL refuse, SQLite rolls back and the batch is
   refused; should the SQLite commit fail after PostgreSQL's, the copy is behind, and the next
   batch (or the next wake-up) brings it level.

Either way a batch lands right after the event its copy ended with, and its positions become
visible only after every lower one: the head row's lock orders the writers.

Other instances hear the ``NOTIFY`` (and look every ``poll_seconds`` anyway, should a
notification be lost with a connection) and bring their copies level the same way, without the
lock: PostgreSQL's positions become visible in order (store.postgres.eventstore), so reading
from the copy's head never skips one. What they copy is published to their own live subscribers
(a visitor's tab on that instance) as if it had been appended there.

Data keys are made in PostgreSQL (so that two instances never give one id to two keys) and
copied with their ids; an erasure nulls the key in both, in the transactions that write it.

The writer thread is not the event loop's: it hands each PostgreSQL step to the loop and waits
for it (``run_coroutine_threadsafe``). The loop never waits for the writer thread, so this cannot
deadlock."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import structlog

from loacl.domain.errors import LoaclError
from loacl.domain.events import RecordedEvent
from loacl.domain.privacy import SubjectErased
from loacl.store import codec
from loacl.store.checkpoints import Moved
from loacl.store.keys import Keyring
from loacl.store.postgres import keys as pgkeys
from loacl.store.postgres import migrate
from loacl.store.records import EVENT_COLUMNS, decode_rows

log = structlog.get_logger(__name__)

T = TypeVar("T")

CHANNEL = "loacl_log"
# A reply's text on its way, before the log has it (services.remote_replies): an instance
# whose tab follows a reply another instance runs says so on FOLLOW; the instance running it
# sends the reply's new text on LIVE once per socket window. Notifications only: the text
# never lands in a table or the WAL (the commits that carry them write no rows). An instance
# that starts a reply says so on STARTED once the start is committed, so that tabs elsewhere
# need not wait for their copy to bring it.
LIVE = "loacl_live"
FOLLOW = "loacl_follow"
STARTED = "loacl_started"
PAYLOAD_BYTES = 7900  # PostgreSQL refuses a payload of 8000 bytes or more
# Each (channel, payload) in the arrays' order, which is the order listeners hear them in.
_NOTIFY_ALL = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)"
POOL_SIZE = 8
_CHUNK = 5000

# A reply's lock: two 32-bit halves of its id's hash, so that two replies all but never share one.
_LEASE = "SELECT pg_advisory_lock(hashtext($1), hashtext($2))"
_TRY_LEASE = "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))"
_UNLEASE = "SELECT pg_advisory_unlock(hashtext($1), hashtext($2))"
_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext($1))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext($1))"
_READ_AFTER = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
_KEYS_AFTER = (
    "SELECT key, stream, first_seq, last_seq FROM append_keys WHERE first_seq > $1 "
    "AND first_seq <= $2"
)
# The head locked in a statement of its own: one that also read the events would read them in
# the snapshot it took before waiting for the lock, and miss what the holder committed.
_LOCK_HEAD = "SELECT seq, hash FROM event_log_head WHERE id = 1 FOR UPDATE"
# The rows, the new head and the notification, in one round trip.
_INSERT = (
    "WITH written AS (INSERT INTO events (seq, stream, version, type, schema_version, payload, "
    "metadata, recorded_at, hash) SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], "
    "$4::text[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[])), "
    "moved AS (UPDATE event_log_head SET seq = $10, hash = $11 WHERE id = 1) "
    "SELECT pg_notify($12, $10::text)"
)
# The batch written only if PostgreSQL's head is still the one the copy was at when the batch
# was written here: the head row's UPDATE waits for its lock and then checks the row as the
# holder left it (READ COMMITTED re-checks an updated row), so it moves the head, and the rows
# and idempotency keys go in, only when no instance appended meanwhile; a row is returned then,
# none otherwise. The lock is held for this one statement and its commit.
_INSERT_IF_HEAD = (
    "WITH moved AS (UPDATE event_log_head SET seq = $10, hash = $11 WHERE id = 1 AND seq = $12 "
    "AND hash = $13 RETURNING seq), "
    "written AS (INSERT INTO events (seq, stream, version, type, schema_version, payload, "
    "metadata, recorded_at, hash) SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], "
    "$4::text[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[]) "
    "WHERE EXISTS (SELECT FROM moved)), "
    "keyed AS (INSERT INTO append_keys (key, stream, first_seq, last_seq) SELECT * FROM "
    "unnest($15::text[], $16::text[], $17::bigint[], $18::bigint[]) "
    "WHERE EXISTS (SELECT FROM moved)) "
    "SELECT pg_notify($14, $10::text) FROM moved"
)
_LOCAL_INSERT = (
    "INSERT INTO events (seq, stream, version, type, schema_version, payload, metadata, "
    "recorded_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LOCAL_HEAD = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
_LOCAL_WRITE_HEAD = (
    "INSERT INTO event_log_head (id, seq, hash, indexed_seq) VALUES (1, ?, ?, "
    "(SELECT coalesce(max(indexed_seq), 0) FROM event_log_head)) "
    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash"
)
# Data keys as PostgreSQL holds them, to copy in (``_store_keys``).
_KEY_ROWS = "SELECT key_id, subject, wrapped, master_id, created_at, erased_at FROM data_keys"
# A key row from PostgreSQL, by its id: a row this copy made on its own for the same subject
# (an erasure's marker, before it heard of the key) gives way, and an erased key stays erased.
_LOCAL_KEY = (
    "INSERT INTO data_keys (key_id, subject, wrapped, master_id, created_at, erased_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (subject) DO UPDATE SET key_id = excluded.key_id, "
    "wrapped = iif(data_keys.erased_at IS NULL, excluded.wrapped, NULL), "
    "master_id = excluded.master_id, erased_at = coalesce(data_keys.erased_at, excluded.erased_at)"
)

Project = Callable[[sqlite3.Connection, list[RecordedEvent]], None]


def _lease_key(reply_id: str) -> tuple[str, str]:
    return f"loacl-reply:{reply_id}", f"{reply_id}:loacl-reply"


def local_head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute(_LOCAL_HEAD).fetchone()
    return (int(row[0]), str(row[1])) if row else (0, codec.GENESIS_HASH)


class PgUpstream:
    """The PostgreSQL side of a SQLite store whose log lives in PostgreSQL (module docstring).
    ``begin``, ``commit``, ``abort``, ``prepare_keys`` and ``catch_up`` run in the store's
    writer thread, on its connection; the rest on the event loop."""

    def __init__(
        self, url: str, keyring: Keyring | None, *, poll_seconds: float = 1.0,
        auto_migrate: bool = False,
    ) -> None:
        self.url = url
        self.keyring = keyring
        self.poll_seconds = poll_seconds
        self.auto_migrate = auto_migrate
        # Named in pg_stat_activity, so that an instance can tell whether others are running.
        self.instance = secrets.token_hex(6)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: asyncpg.Pool | None = None
        self._conn: Any = None  # the writer's connection, held from batch to batch
        self._transaction: Any = None  # open from begin to commit or abort
        self._locked_at = 0  # PostgreSQL's head when begin locked it (or read it, unlocked)
        self._locked_hash = codec.GENESIS_HASH
        self._locked = False  # whether begin took the head's lock
        self._heard_head = 0  # the highest head a NOTIFY on CHANNEL named
        self._writer_pid: int | None = None  # the server process of the connection appending
        # Tries at a batch without the head lock, and those of them that found the head moved
        # at commit (the batch then written again).
        self.unlocked_batches = 0
        self.head_moved = 0
        self._listener: Any = None
        self._leases: Any = None  # holds this instance's replies' locks
        self._leases_lock = asyncio.Lock()  # one statement at a time on it
        self._project: Project | None = None
        self.woken: Callable[[], None] | None = None  # set by the store: bring the copy level
        # Told of each notification on LIVE, FOLLOW and STARTED: (channel, payload).
        self.heard: Callable[[str, str], None] | None = None
        self._live: Any = None  # sends LIVE and FOLLOW notifications
        self._live_lock = asyncio.Lock()  # one statement at a time on it
        # Other channels listened to, each with who is told (``listen``).
        self._channels: dict[str, list[Callable[[], None]]] = {}

    # -- life cycle (event loop) --------------------------------------------------------------

    async def open(self, project: Project) -> None:
        self._loop = asyncio.get_running_loop()
        self._project = project
        # Four connections are held for good (the listener, the writer's, the leases', the live
        # text's, once a reply is followed), the rest serve short reads; a subscriber's
        # exclusive lock has one of its own.
        self._pool = await migrate.create_pool(
            self.url, POOL_SIZE, server_settings={"application_name": f"loacl {self.instance}"}
        )
        try:
            async with self._pool.acquire() as conn:
                if self.auto_migrate:
                    # Under PostgreSQL's advisory lock: instances starting together migrate once.
                    for step in await migrate.up(conn):
                        log.info("migrate.applied", version=step.version, name=step.name,
                                 database="postgresql")
                await migrate.check(conn)
                if self.keyring is not None:
                    await pgkeys.read_state(conn, self.keyring)
            self._listener = await self._pool.acquire()
            await self._listener.add_listener(CHANNEL, self._notified)
            for channel in (LIVE, FOLLOW, STARTED):
                await self._listener.add_listener(channel, self._heard)
            for channel in self._channels:
                await self._listener.add_listener(channel, self._told)
            self._leases = await self._pool.acquire()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._listener is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._listener.remove_listener(CHANNEL, self._notified)
                for channel in (LIVE, FOLLOW, STARTED):
                    await self._listener.remove_listener(channel, self._heard)
                for channel in self._channels:
                    await self._listener.remove_listener(channel, self._told)
        for conn in (self._listener, self._conn, self._leases, self._live):
            if conn is not None:
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    await pool.release(conn)  # a reset: the leases' locks go with it
        self._listener = self._conn = self._leases = self._live = None
        self._writer_pid = None
        await pool.close()

    def listen(self, channel: str, told: Callable[[], None]) -> None:
        """Have ``told`` called on each notification on ``channel`` (from ``open`` on, on the
        listener's connection: no connection more). Before ``open``."""
        self._channels.setdefault(channel, []).append(told)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection of the pool for a short piece of work (``store.postgres.operational``)."""
        if self._pool is None:
            raise LoaclError("store_closed", "the PostgreSQL log is not open")
        async with self._pool.acquire() as conn:
            yield conn

    # -- replies: each held by the instance that runs it ----------------------------------------

    async def lease(self, reply_id: str) -> None:
        """Hold the reply's advisory lock while this instance runs it (taken before its start
        is appended): recovery elsewhere leaves it alone. Held on a connection of its own, so
        that it ends with this instance: a reply whose instance died is free."""
        async with self._leases_lock:
            await self._leases.execute(_LEASE, *_lease_key(reply_id))

    async def release(self, reply_id: str) -> None:
        if self._leases is None:
            return
        async with self._leases_lock:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._leases.execute(_UNLEASE, *_lease_key(reply_id))

    async def leased(self, reply_id: str) -> bool:
        """Whether an instance (this one included) is running the reply now."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(_TRY_LEASE, *_lease_key(reply_id)):
                return True
            await conn.execute(_UNLEASE, *_lease_key(reply_id))
            return False

    # -- subscribers that act outside the database, run by one instance at a time --------------

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Hold PostgreSQL's advisory lock for the subscriber ``name`` (waiting while another
        instance holds it): a webhook or a mail goes out from one instance, not from each.
        Held on a connection of its own, so that it goes with the instance: should that die,
        PostgreSQL releases the lock and another instance takes over from the checkpoint."""
        assert self._pool is not None
        # Not from the pool: one per such subscriber, held while it runs, would drain it.
        conn = await asyncpg.connect(
            self.url, server_settings={"application_name": f"loacl {self.instance}"}
        )
        try:
            while True:  # not pg_advisory_lock: a wait in the server would outlive a cancel
                if await conn.fetchval(_TRY_LOCK, f"loacl-subscriber:{name}"):
                    break
                await asyncio.sleep(self.poll_seconds * 5)
            log.info("subscriber.exclusive", name=name, instance=self.instance)
            try:
                yield
            finally:
                with contextlib.suppress(OSError, asyncpg.PostgresError,
                                         asyncpg.InterfaceError):
                    await conn.execute(_UNLOCK, f"loacl-subscriber:{name}")
        finally:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await conn.close()

    async def checkpoint(self, name: str) -> int:
        """The position of a subscriber run by one instance at a time, kept in PostgreSQL so
        that whichever instance runs it next goes on from there."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO subscriber_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING",
                name,
            )
            return int(await conn.fetchval(
                "SELECT position FROM subscriber_checkpoints WHERE name = $1", name
            ))

    async def advance(self, name: str, expected: int, position: int, now: datetime) -> None:
        """Move that position if it is still ``expected``, else ``checkpoints.Moved``."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE subscriber_checkpoints SET position = $1, updated_at = $2, failures = 0 "
                "WHERE name = $3 AND position = $4",
                position, codec.format_time(now), name, expected,
            )
            if status == "UPDATE 0":
                found = await conn.fetchval(
                    "SELECT position FROM subscriber_checkpoints WHERE name = $1", name
                )
                raise Moved(int(found or 0))

    def _notified(self, _conn: object, pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._heard_head = max(self._heard_head, int(payload))
        if pid == self._writer_pid:
            # This instance's own batch: its copy has it already. A catch-up would only ask
            # PostgreSQL for nothing, holding the writer meanwhile (one round trip a batch).
            return
        if self.woken is not None:
            self.woken()

    def _told(self, _conn: object, _pid: int, channel: str, _payload: str) -> None:
        for told in self._channels.get(channel, ()):
            told()

    def _heard(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if self.heard is not None:
            self.heard(channel, payload)

    # -- live text: notifications, not rows -----------------------------------------------------

    async def notify(self, sent: Sequence[tuple[str, str]]) -> None:
        """Send each (channel, payload) (a payload under ``PAYLOAD_BYTES`` encoded), in this
        order, in one statement, on a connection of its own. Its commit writes no rows, so it
        waits for no disk (``synchronous_commit`` off on this connection only)."""
        if self._pool is None or not sent:
            return
        async with self._live_lock:
            if self._live is None:
                conn = await self._pool.acquire()
                try:
                    await conn.execute("SET synchronous_commit TO off")
                except BaseException:
                    await self._pool.release(conn)
                    raise
                self._live = conn
            try:
                await self._live.execute(_NOTIFY_ALL, [c for c, _ in sent], [p for _, p in sent])
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn, self._live = self._live, None  # a broken connection: a new one next time
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await self._pool.release(conn)
                raise

    async def check(self, conn_head: tuple[int, str]) -> None:
        """Refuse a copy that is not a beginning of PostgreSQL's log (another database's file,
        or PostgreSQL restored to an older point): it would be read as this log."""
        seq, hash_ = conn_head
        if seq == 0:
            return
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            found = await conn.fetchval("SELECT hash FROM events WHERE seq = $1", seq)
        if found != hash_:
            raise LoaclError(
                "instance_database_diverged",
                f"this instance's SQLite copy holds event {seq}, which PostgreSQL's log "
                "does not (another database's file, or PostgreSQL restored to an earlier "
                "point): move the file aside, and LOACL copies the log afresh",
            )

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._pool is None:
            work.close()
            raise LoaclError("store_closed", "the PostgreSQL log is not open")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _writer_conn(self) -> Any:
        if self._conn is None:
            assert self._pool is not None
            self._conn = await self._pool.acquire()
            self._writer_pid = self._conn.get_server_pid()
        return self._conn

    def prepare_keys(self, conn: sqlite3.Connection, subjects: Iterable[str]) -> None:
        """Give each subject a data key in PostgreSQL, and copy it here (``Keyring.prepare``,
        for a log kept in PostgreSQL). Outside any transaction of ``conn``."""
        keyring = self.keyring
        wanted = [s for s in dict.fromkeys(subjects) if keyring is not None and
                  not keyring.known(s)]
        if keyring is None or not wanted:
            return

        async def make() -> list[Any]:
            pg = await self._writer_conn()
            await pgkeys.prepare(pg, keyring, wanted)
            return list(await pg.fetch(
                f"{_KEY_ROWS} WHERE subject = ANY($1::text[])", wanted,
            ))

        rows = self._run(make())
        self._store_keys_apart(conn, rows)

    def begin(self, conn: sqlite3.Connection, lock: bool = True) -> list[RecordedEvent]:
        """Inside ``conn``'s open transaction: bring the copy level with PostgreSQL's head; the
        events copied (published once the store commits). With ``lock``, the head is locked
        until ``commit`` or ``abort``: nobody appends meanwhile. Without, nothing is locked:
        ``commit`` writes the batch only if the head has not moved (and says whether it did),
        and when no NOTIFY named a head past this copy's, PostgreSQL is not even asked."""
        seq, hash_ = local_head(conn)
        self._locked = lock
        if not lock and self._heard_head <= seq:
            self.unlocked_batches += 1
            self._locked_at, self._locked_hash = seq, hash_
            return []

        async def locked() -> tuple[list[Any], list[Any], list[Any]]:
            pg = await self._writer_conn()
            self._transaction = pg.transaction()
            await self._transaction.start()
            head = await pg.fetchrow(_LOCK_HEAD)
            assert head is not None, "migration 0001 writes the head row"
            self._locked_at, self._locked_hash = int(head["seq"]), str(head["hash"])
            return await self._missing(pg, seq, self._locked_at)

        async def unlocked() -> tuple[list[Any], list[Any], list[Any]]:
            pg = await self._writer_conn()
            found = await self._missing(pg, seq, None)
            rows = found[0]
            self._locked_at, self._locked_hash = (
                (int(rows[-1][0]), str(rows[-1][8])) if rows else (seq, hash_)
            )
            return found

        try:
            rows, keys, appended = self._run(locked() if lock else unlocked())
            if not lock:
                self.unlocked_batches += 1
                return self._copy(conn, rows, keys, appended)
            if self._locked_at < seq:
                raise LoaclError(
                    "instance_database_diverged",
                    f"this instance's SQLite copy is at event {seq}, PostgreSQL's log at "
                    f"{self._locked_at}: PostgreSQL was restored to an earlier point",
                )
            copied = self._copy(conn, rows, keys, appended)
            if local_head(conn) != (self._locked_at, self._locked_hash):
                # Never write a batch after anything but PostgreSQL's head: its rows would
                # land at positions PostgreSQL holds already.
                raise LoaclError(
                    "instance_database_diverged",
                    f"this instance's copy ends at {local_head(conn)[0]} after copying, "
                    f"PostgreSQL's head is {self._locked_at}",
                )
            return copied
        except BaseException:
            self.abort()
            raise

    def commit(self, conn: sqlite3.Connection, erased: set[str], at: datetime) -> bool:
        """Write into PostgreSQL what the batch wrote into ``conn`` after the head ``begin``
        found, and commit there (``conn`` commits next). False when ``begin`` took no lock and
        another instance appended since: nothing was written, and the batch must be written
        again (``conn`` rolled back)."""
        after = self._locked_at
        rows = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (after,)
        ).fetchall()
        appended = conn.execute(
            "SELECT key, stream, first_seq, last_seq FROM append_keys WHERE first_seq > ?",
            (after,),
        ).fetchall()
        moment = codec.format_time(at)
        if not self._locked:
            if not rows:
                return True  # nothing written: nothing to check the head for
            moved = not self._run(self._write_if_head(rows, appended, erased, moment))
            if moved:  # the next try reads what was appended, whatever NOTIFY said
                self.head_moved += 1
                self._heard_head = max(self._heard_head, after + 1)
            return not moved

        async def write() -> None:
            pg, transaction = self._conn, self._transaction
            assert pg is not None and transaction is not None
            self._transaction = None
            try:
                if rows:
                    await pg.execute(
                        _INSERT, *(list(column) for column in zip(*rows, strict=True)),
                        rows[-1][0], rows[-1][8], CHANNEL,
                    )
                if appended:
                    await pg.executemany(
                        "INSERT INTO append_keys (key, stream, first_seq, last_seq) "
                        "VALUES ($1, $2, $3, $4)", appended,
                    )
                for subject in erased:
                    await pgkeys.destroy(pg, subject, moment)
            except BaseException:
                await self._drop(transaction)
                raise
            await transaction.commit()

        self._run(write())
        return True

    async def _write_if_head(
        self, rows: list[Any], appended: list[Any], erased: set[str], moment: str
    ) -> bool:
        """The rows and keys written, the head moved and the NOTIFY sent, in one statement,
        if the head is still where ``begin`` found it; whether it was. Its own transaction
        when it erases a subject's key too."""
        pg = await self._writer_conn()
        columns = [list(column) for column in zip(*rows, strict=True)]
        keys = [list(column) for column in zip(*appended, strict=True)] if appended else \
            [[], [], [], []]
        args = (*columns, rows[-1][0], rows[-1][8], self._locked_at, self._locked_hash, CHANNEL,
                *keys)
        try:
            if not erased:
                return await pg.fetchrow(_INSERT_IF_HEAD, *args) is not None
            async with pg.transaction():
                if await pg.fetchrow(_INSERT_IF_HEAD, *args) is None:
                    return False
                for subject in erased:
                    await pgkeys.destroy(pg, subject, moment)
                return True
        except asyncpg.UniqueViolationError:
            # Rows at positions another instance's commit took between the head's check and
            # the insert cannot be: the head row's lock orders them. Counted as moved all the
            # same, to be written again under the lock.
            return False
        except (OSError, asyncpg.InterfaceError):
            conn, self._conn = self._conn, None  # a broken connection: not used again
            self._writer_pid = None
            if conn is not None and self._pool is not None:
                with contextlib.suppress(OSError, asyncpg.PostgresError,
                                         asyncpg.InterfaceError):
                    await self._pool.release(conn)
            raise

    def abort(self) -> None:
        """Release PostgreSQL's head lock without writing (the batch was rolled back)."""
        if self._transaction is None:
            return

        async def rollback() -> None:
            transaction, self._transaction = self._transaction, None
            await self._drop(transaction)

        try:
            self._run(rollback())
        except Exception:
            log.exception("upstream.rollback_failed")

    async def _drop(self, transaction: Any) -> None:
        try:
            await transaction.rollback()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # A broken connection: not used again (PostgreSQL ends its transaction itself).
            conn, self._conn = self._conn, None
            self._writer_pid = None
            if conn is not None and self._pool is not None:
                await self._pool.release(conn)

    def catch_up(self, conn: sqlite3.Connection) -> list[RecordedEvent]:
        """Bring the copy level with PostgreSQL, without the head lock (a wake-up between
        batches); the events copied. Outside any transaction of ``conn``."""
        copied: list[RecordedEvent] = []
        while True:
            seq, _ = local_head(conn)

            rows, keys, appended = self._run(self._fetch_after(seq))
            if not rows:
                return copied
            conn.execute("BEGIN IMMEDIATE")
            try:
                copied += self._copy(conn, rows, keys, appended)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if len(rows) < _CHUNK:
                return copied

    async def _fetch_after(self, seq: int) -> tuple[list[Any], list[Any], list[Any]]:
        assert self._pool is not None
        async with self._pool.acquire() as pg:
            return await self._missing(pg, seq, None)

    # -- copying --------------------------------------------------------------------------------

    async def _missing(
        self, pg: Any, after: int, upto: int | None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """The events after ``after`` (up to ``upto``, else a chunk), the data keys they name,
        and the idempotency keys they answer."""
        rows = [tuple(r) for r in await pg.fetch(
            _READ_AFTER, after, None if upto is not None else _CHUNK
        )]
        return await self._keys_of(pg, after, rows)

    async def _keys_of(
        self, pg: Any, after: int, rows: list[Any]
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """The rows with the data keys they name and the idempotency keys they answer."""
        if not rows:
            return [], [], []
        last = int(rows[-1][0])
        named = pgkeys.key_ids(text for row in rows for text in (row[5], row[6]))
        keys = list(await pg.fetch(
            f"{_KEY_ROWS} WHERE key_id = ANY($1::bigint[])", sorted(named),
        )) if named else []
        appended = list(await pg.fetch(_KEYS_AFTER, after, last))
        return rows, keys, [tuple(r) for r in appended]

    def _store_keys_apart(self, conn: sqlite3.Connection, rows: Sequence[Any]) -> None:
        """``_store_keys`` in a transaction of its own (between batches, on the writer)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._store_keys(conn, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _store_keys(self, conn: sqlite3.Connection, rows: Sequence[Any]) -> None:
        for r in rows:
            conn.execute("DELETE FROM data_keys WHERE key_id = ? AND subject != ?",
                         (r["key_id"], r["subject"]))
            conn.execute(_LOCAL_KEY, (r["key_id"], r["subject"], r["wrapped"], r["master_id"],
                                      r["created_at"], r["erased_at"]))
            if self.keyring is not None:
                self.keyring.learn(r["subject"], r["key_id"], r["wrapped"], r["master_id"])

    def refresh_keys(self, conn: sqlite3.Connection) -> int:
        """Give this copy again, from PostgreSQL, its data keys sealed with a master key this
        LOACL does not hold: ``loacl keys rotate`` sealed them again in PostgreSQL (and in its
        own copy), and the old master key may since have left the settings. How many."""
        if self.keyring is None:
            return 0
        known = set(self.keyring.masters.ids())
        stale = [int(key_id) for key_id, mid in conn.execute(
            "SELECT key_id, master_id FROM data_keys WHERE wrapped IS NOT NULL"
        ) if mid not in known]
        if not stale:
            return 0

        async def fetch() -> list[Any]:
            assert self._pool is not None
            async with self._pool.acquire() as pg:
                return list(await pg.fetch(
                    f"{_KEY_ROWS} WHERE key_id = ANY($1::bigint[])", stale,
                ))

        rows = self._run(fetch())
        self._store_keys_apart(conn, rows)
        return len(rows)

    def _copy(
        self, conn: sqlite3.Connection, rows: list[Any], keys: list[Any], appended: list[Any]
    ) -> list[RecordedEvent]:
        """Write events read from PostgreSQL into ``conn``'s open transaction and project
        them, as their own instance did."""
        if not rows:
            return []
        self._store_keys(conn, keys)
        conn.executemany(_LOCAL_INSERT, rows)
        conn.executemany(
            "INSERT OR IGNORE INTO append_keys (key, stream, first_seq, last_seq) "
            "VALUES (?, ?, ?, ?)", appended,
        )
        conn.execute(_LOCAL_WRITE_HEAD, (rows[-1][0], rows[-1][8]))
        records = decode_rows(rows, self.keyring)
        assert self._project is not None
        self._project(conn, records)
        if self.keyring is not None:
            for recorded in records:
                if isinstance(recorded.event, SubjectErased):
                    self.keyring.forget(recorded.event.subject)
        return records
