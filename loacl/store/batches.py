"""Writing one batch of appends, in named steps: read the head, answer retried keys, check
versions, write each request (encode, project, insert), move the stream index mark, write the
head. A request is written one of two ways: fast (no savepoints; every row goes in with one
``executemany`` at the end) or carefully (each request in a savepoint of its own). A batch is
tried fast first, and written again carefully only when one of its requests fails.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.privacy import SubjectErased
from loacl.store import codec
from loacl.store.keys import Keyring, SealKey, erased_message
from loacl.store.projections import Projections
from loacl.store.records import SELECT_EVENTS, decode_rows, new_record, stream_version

log = structlog.get_logger(__name__)

_INSERT_KEY = (
    "INSERT INTO append_keys (key, stream, first_seq, last_seq) VALUES (?, ?, ?, ?)"
)
_FIND_KEY = "SELECT first_seq, last_seq FROM append_keys WHERE key = ?"
_READ_RANGE = f"{SELECT_EVENTS} WHERE seq BETWEEN ? AND ? ORDER BY seq"
_INSERT = (
    "INSERT INTO events (seq, stream, version, type, schema_version, payload, metadata, "
    "recorded_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The last event and the index mark, read afresh by every batch inside its write transaction.
_HEAD = (
    "SELECT seq, hash, (SELECT indexed_seq FROM event_log_head WHERE id = 1) FROM events "
    "ORDER BY seq DESC LIMIT 1"
)
# How many erasures the database has seen: when it moved, the keys in memory are read again.
# A store with keys reads it with the head, in the same statement (one call per batch fewer).
_ERASURES = "SELECT erasures FROM key_state WHERE id = 1"
_HEAD_ERASURES = (
    "SELECT seq, hash, (SELECT indexed_seq FROM event_log_head WHERE id = 1), "
    f"({_ERASURES}) FROM events ORDER BY seq DESC LIMIT 1"
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


# Attempts at a batch without PostgreSQL's head lock before one under it (an upstream only).
UNLOCKED_TRIES = 3


@dataclass(eq=False, slots=True)
class Append:
    """One call of ``EventStore.append``, queued for the writer; it leaves with its result."""

    stream: str
    events: Sequence[Event]
    expected_version: int | None
    metadata: Metadata
    idempotency_key: str | None
    future: asyncio.Future[list[RecordedEvent]]
    # Whose personal data the events hold (store.keys): sealed with that subject's key.
    subject: str | None = None
    result: list[RecordedEvent] | BaseException = field(default_factory=list)
    replayed: bool = False

    def needs_key(self) -> bool:
        """Whether writing the request seals anything: a personal field with a value, or the
        client's address."""
        if self.subject is None:
            return False
        if self.metadata.client_ip:
            return True
        return any(
            getattr(event, name) for event in self.events for name in type(event).personal
        )


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
    erased: set[str] = field(default_factory=set)  # subjects erased by this batch so far
    # Stream versions this attempt learnt (read, copied in, written): the writer's memory
    # takes them only once the attempt commits, as a rollback undoes what they describe.
    versions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.first_seq = self.seq


# How one request is written: False gives up the whole attempt.
_WriteOne = Callable[[sqlite3.Connection, Append, _Attempt, int], bool]


def _encode(
    request: Append, attempt: _Attempt, version: int, key: SealKey | None, keyring: Keyring | None
) -> tuple[list[tuple[Any, ...]], list[RecordedEvent]]:
    """A request's rows of the log, each chained to the one before, and the same as records;
    personal fields and the client's address sealed with ``key``."""
    stream, recorded_at, when = request.stream, attempt.recorded_at, attempt.when
    if key is not None and request.metadata.client_ip and keyring is not None:
        metadata = keyring.seal_metadata(key, request.metadata, codec.encode_sealed_metadata)
    else:
        metadata = codec.encode_metadata(request.metadata)
    seq, last_hash = attempt.seq, attempt.hash
    rows: list[tuple[Any, ...]] = []
    recorded: list[RecordedEvent] = []
    encode = codec.encode_payload
    for offset, event in enumerate(request.events, start=1):
        payload = encode(event, key) if event.personal else encode(event)
        row_seq = seq + offset
        row_version = version + offset
        last_hash = codec.chain_hash(
            last_hash, row_seq, stream, row_version, event.event_type, event.schema_version,
            payload, metadata, recorded_at,
        )
        rows.append((row_seq, stream, row_version, event.event_type, event.schema_version,
                     payload, metadata, recorded_at, last_hash))
        recorded.append(new_record(RecordedEvent, (
            row_seq, stream, row_version, event, request.metadata, when, last_hash,
        )))
        if type(event) is SubjectErased:
            attempt.erased.add(event.subject)
    return rows, recorded


def _key_row(key: str, recorded: list[RecordedEvent]) -> tuple[str, str, int, int]:
    return (key, recorded[0].stream, recorded[0].seq, recorded[-1].seq)


class Upstream(Protocol):
    """Where the log lives when this file is a copy of it (store.postgres.upstream): each
    batch is written there too, under its lock, and the copy brought level with it first."""

    def prepare_keys(self, conn: sqlite3.Connection, subjects: Iterable[str]) -> None: ...

    def begin(self, conn: sqlite3.Connection, lock: bool = True) -> list[RecordedEvent]: ...

    def commit(self, conn: sqlite3.Connection, erased: set[str], at: datetime) -> bool: ...

    def abort(self) -> None: ...


class BatchWriter:
    """The writer thread's side of the store: it writes batches on the write connection and
    remembers, between them, what it learnt of the log."""

    def __init__(
        self, projections: Projections, clock: Callable[[], datetime], index_lag: int,
        keyring: Keyring | None = None, upstream: Upstream | None = None,
    ) -> None:
        self.projections = projections
        self.clock = clock
        self.index_lag = index_lag
        self.keyring = keyring
        self.upstream = upstream
        # Events another instance appended, copied in by the last commit (upstream only):
        # published before the batch's own.
        self.copied: list[RecordedEvent] = []
        # Stream versions as of our last commit (and events copied in with it), valid while
        # nobody else appends; the head they describe.
        self._versions: dict[str, int] = {}
        self._last_seq = -1
        self._attempt: _Attempt | None = None  # the last attempt written
        self._indexed_seq = 0

    def commit(self, conn: sqlite3.Connection, batch: list[Append]) -> None:
        """Write a batch in one transaction, fast if it can be, carefully if it must.

        The fast path writes every request with one ``executemany`` and no savepoints. If any
        request fails (a projection's veto, an event that cannot be encoded), the transaction is
        rolled back and the batch is written again request by request, each in a savepoint, so
        that only the failing request is refused.
        """
        keyring, upstream = self.keyring, self.upstream
        self.copied = []
        if keyring is not None:
            # New subjects get their keys first, committed on their own (store.keys).
            subjects = [
                r.subject for r in batch
                if r.subject is not None and not keyring.known(r.subject) and r.needs_key()
            ]
            if upstream is not None:
                upstream.prepare_keys(conn, subjects)
            else:
                keyring.prepare(conn, subjects)
        # With an upstream, a batch is first written without PostgreSQL's head lock and sent
        # only if nobody appended meanwhile (store.postgres.upstream); when somebody did, it is
        # written again, after the news, up to UNLOCKED_TRIES times in all, then under the
        # lock. A batch that refused a request is written again under the lock at once: a
        # refusal is checked against an exact copy.
        plan: list[tuple[_WriteOne, bool]] = [(self._write_fast, True),
                                              (self._write_careful, True)]
        if upstream is not None:
            plan[:0] = [(self._write_fast, False)] * UNLOCKED_TRIES
        step = 0
        while step < len(plan):
            write_one, lock = plan[step]
            for request in batch:
                request.result, request.replayed = [], False
            conn.execute("BEGIN IMMEDIATE")
            try:
                copied = upstream.begin(conn, lock) if upstream is not None else []
                erased = self._write_batch(conn, batch, write_one, copied)
                if erased is not None and not lock and any(
                    isinstance(r.result, BaseException) for r in batch
                ):
                    erased, step = None, len(plan) - 2  # refused unlocked: again, locked
                elif erased is not None:
                    if upstream is None or upstream.commit(conn, erased, self.clock()):
                        conn.execute("COMMIT")
                        self._committed()
                        self.copied = copied
                        if keyring is not None:
                            for subject in erased:
                                keyring.forget(subject)
                        return
                    step += 1  # another instance appended since: again, after the news
                else:
                    step = len(plan) - 1  # a request failed: carefully, one by one
                conn.execute("ROLLBACK")
                if upstream is not None:
                    upstream.abort()
            except BaseException:
                self._forget()
                if upstream is not None:
                    upstream.abort()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            # Rolled back: what the attempt learnt goes with it (attempt.versions), what the
            # writer knew from its last commit stands.

    def _forget(self) -> None:
        """After a failure: what the writer remembers of the log must be read again."""
        self._versions.clear()
        self._last_seq = -1

    def took(self, copied: Sequence[RecordedEvent]) -> None:
        """Events another instance appended, copied in and committed between batches (a
        catch-up): where they follow the last head this writer knew, what it knows stays true
        and their streams' versions are theirs."""
        if copied and copied[0].seq == self._last_seq + 1:
            for recorded in copied:
                self._versions[recorded.stream] = recorded.version
            self._last_seq = copied[-1].seq

    def _committed(self) -> None:
        """The last attempt committed: what it learnt of the log is now true."""
        attempt = self._attempt
        assert attempt is not None
        if len(self._versions) > 100_000:
            self._versions.clear()
        self._versions.update(attempt.versions)
        self._last_seq = attempt.seq
        self._indexed_seq = attempt.indexed

    def _write_batch(
        self, conn: sqlite3.Connection, batch: list[Append], write_one: _WriteOne,
        copied: Sequence[RecordedEvent] = (),
    ) -> set[str] | None:
        """Write the batch inside the open transaction, after the events ``copied`` in from
        another instance at its start; the subjects it erased, or None when ``write_one`` gave
        up."""
        attempt = self._attempt = self._read_head(conn, copied)
        for request in batch:
            if request.idempotency_key is not None and self._answer_retry(conn, request, attempt):
                continue
            version = self._check_version(conn, request, attempt)
            if version is None:
                continue
            if not write_one(conn, request, attempt, version):
                return None
        self._insert_pending(conn, attempt)
        self._advance_index(conn, attempt)
        self._write_head(conn, attempt)
        return attempt.erased

    # -- the steps of a batch ---------------------------------------------------------------

    def _read_head(self, conn: sqlite3.Connection, copied: Sequence[RecordedEvent]) -> _Attempt:
        """Where the log ends, read inside the write transaction, and the batch's time.

        Events copied in from another instance just now (an upstream) follow the head of the
        last commit: they move the head without making the versions remembered wrong, and
        their own streams' versions are known from them. Without that, a copy at nearly every
        batch (instances taking turns) would send every request to the log for its version."""
        keyring = self.keyring
        if keyring is None:
            row = conn.execute(_HEAD).fetchone()
            seq, prev_hash, indexed = row if row else (0, codec.GENESIS_HASH, 0)
        else:
            row = conn.execute(_HEAD_ERASURES).fetchone()
            if row is None:  # an empty log
                row = (0, codec.GENESIS_HASH, 0, conn.execute(_ERASURES).fetchone()[0])
            seq, prev_hash, indexed, erasures = row
            keyring.observe(erasures)
        indexed = indexed or 0
        expected = self._last_seq
        if copied and copied[0].seq == expected + 1:
            expected = copied[-1].seq
        if seq != expected or indexed != self._indexed_seq:
            # Someone else (a CLI command) appended or rebuilt the index since our last commit,
            # or this is the first batch: cached versions may be stale.
            self._versions.clear()
            self._indexed_seq = indexed
        recorded_at = codec.format_time(self.clock())
        attempt = _Attempt(seq, prev_hash, indexed, recorded_at, codec.parse_time(recorded_at))
        for recorded in copied:
            attempt.versions[recorded.stream] = recorded.version
        return attempt

    def _answer_retry(
        self, conn: sqlite3.Connection, request: Append, attempt: _Attempt
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
        request.result, request.replayed = decode_rows(rows, self.keyring), True
        return True

    def _check_version(
        self, conn: sqlite3.Connection, request: Append, attempt: _Attempt
    ) -> int | None:
        """The stream's version to append after, or None when the request expected another
        (it is then refused with a conflict)."""
        stream = request.stream
        version = attempt.versions.get(stream)
        if version is None:
            version = self._versions.get(stream)
            if version is None:
                version = attempt.versions[stream] = stream_version(conn, stream)
        expected = request.expected_version
        if expected is not None and expected != version:
            request.result = ConflictError(request.stream, expected, version)
            return None
        return version

    def _write_fast(
        self, conn: sqlite3.Connection, request: Append, attempt: _Attempt, version: int
    ) -> bool:
        """Encode and project one request; its rows wait for one ``executemany`` at the end.
        False gives the attempt up: the batch is then written carefully."""
        try:
            rows, recorded = _encode(
                request, attempt, version, self._key(conn, request, attempt), self.keyring
            )
            self.projections.apply(conn, recorded)
        except Exception:
            return False
        attempt.rows.extend(rows)
        if request.idempotency_key is not None:
            attempt.keys.append(_key_row(request.idempotency_key, recorded))
        self._accept(request, recorded, attempt)
        return True

    def _write_careful(
        self, conn: sqlite3.Connection, request: Append, attempt: _Attempt, version: int
    ) -> bool:
        """Write one request in a savepoint of its own: a failure refuses this request only."""
        conn.execute("SAVEPOINT append")
        try:
            # Encoding is guarded too: an event that cannot be encoded refuses its own
            # request, not the whole batch.
            rows, recorded = _encode(
                request, attempt, version, self._key(conn, request, attempt), self.keyring
            )
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

    def _key(self, conn: sqlite3.Connection, request: Append, attempt: _Attempt) -> SealKey | None:
        """The key the request's personal fields are sealed with; a subject erased (by this
        batch, or before) takes no more events."""
        subject, keyring = request.subject, self.keyring
        if subject is None or keyring is None:
            return None
        if subject in attempt.erased:
            raise LoaclError("subject_erased", erased_message(subject))
        known = keyring.sealing_key(subject)  # the common case: no look-up, no scan
        if known is not None:
            return known
        return keyring.for_sealing(conn, subject, required=request.needs_key())

    def _accept(self, request: Append, recorded: list[RecordedEvent], attempt: _Attempt) -> None:
        """The request is written: the next one follows its last event."""
        request.result = recorded
        if request.idempotency_key is not None:
            attempt.by_key[request.idempotency_key] = recorded
        last = recorded[-1]
        attempt.seq, attempt.hash = last.seq, last.hash
        attempt.versions[request.stream] = last.version

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



# For the PostgreSQL store, which writes the same rows the same way (store.postgres).
Attempt = _Attempt
encode_request = _encode
