"""Walk the hash chain and find the first position where the log was edited."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from loacl.domain.errors import LoaclError
from loacl.store import codec
from loacl.store.records import EVENT_COLUMNS

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AuditResult:
    ok: bool
    events: int
    last_hash: str
    bad_seq: int | None = None
    reason: str = ""


def verify(
    conn: sqlite3.Connection, *, progress: Progress | None = None, chunk: int = 10_000
) -> AuditResult:
    # One read transaction: the chain and its head come from the same snapshot, so an append
    # committed meanwhile by a running server is not mistaken for a removed tail.
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        return _verify(conn, progress, chunk)
    finally:
        if own:
            _end_read(conn)


def verify_from(conn: sqlite3.Connection, seq: int, hash_: str) -> AuditResult:
    """The chain from a position verified before (``seq`` and the hash it had) to the head:
    what start-up checks, so that its cost follows the events appended since (an edit of an
    earlier event is left to the full ``verify``, which reads them all). Stream versions
    are left to the full ``verify``: checking them needs every earlier event."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        if seq and _hash_at(conn, seq) != hash_:
            return AuditResult(
                False, seq - 1, _hash_at(conn, seq - 1), seq,
                f"event {seq} is missing or no longer has the hash it had when last verified",
            )
        # The marked event itself is walked again: an edit of the head as it was is caught.
        start = max(seq - 1, 0)
        chain = _walk_chain(
            conn, None, 10_000, start=start, prev=_hash_at(conn, start), versions=False
        )
        if not chain.ok:
            return chain
        return _check_head(conn, chain.events, chain.last_hash) or chain
    finally:
        if own:
            _end_read(conn)


def _end_read(conn: sqlite3.Connection) -> None:
    # A read that met a damaged page can make SQLite refuse the COMMIT too; nothing was written.
    if conn.in_transaction:
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def _hash_at(conn: sqlite3.Connection, seq: int) -> str:
    if seq <= 0:
        return codec.GENESIS_HASH
    row = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
    return str(row[0]) if row else ""


def _verify(conn: sqlite3.Connection, progress: Progress | None, chunk: int) -> AuditResult:
    chain = _walk_chain(conn, progress, chunk)
    if not chain.ok:
        return chain
    return _check_head(conn, chain.events, chain.last_hash) or chain


def damaged(exc: sqlite3.Error) -> bool:
    """SQLite found a damaged page (or a file that is no database), not a missing table or a
    lock."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (11, 26)  # CORRUPT, NOTADB


class _Unreadable(Exception):
    def __init__(self, seq: int, error: sqlite3.DatabaseError) -> None:
        super().__init__(seq, error)
        self.seq = seq
        self.error = error


_SELECT = f"SELECT {EVENT_COLUMNS} FROM events"


def _rows(conn: sqlite3.Connection, start: int, chunk: int) -> Iterator[Sequence[Any]]:
    """The events from ``start`` on, in order. A chunk that SQLite cannot read (a damaged page)
    is read again one event at a time, up to the first event that fails: ``_Unreadable``."""
    while True:
        try:
            rows = conn.execute(
                f"{_SELECT} WHERE seq >= ? ORDER BY seq LIMIT ?", (start, chunk)
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            for seq in range(start, start + chunk):
                try:
                    row = conn.execute(f"{_SELECT} WHERE seq = ?", (seq,)).fetchone()
                except sqlite3.DatabaseError as one:
                    if not damaged(one):
                        raise
                    raise _Unreadable(seq, one) from one
                if row is None:  # on the damaged page: a look-up finds nothing there
                    raise _Unreadable(seq, exc) from exc
                yield row
            raise _Unreadable(start, exc) from exc
        if not rows:
            return
        yield from rows
        start = rows[-1][0] + 1


def _walk_chain(
    conn: sqlite3.Connection, progress: Progress | None, chunk: int, *,
    start: int = 0, prev: str = codec.GENESIS_HASH, versions: bool = True,
) -> AuditResult:
    """Every event after ``start`` in order: no gap, each hash chained to the one before, each
    stream's versions counting up from 1 (when ``versions``); an unreadable event is named."""
    try:
        (total,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    except sqlite3.DatabaseError as exc:
        if not damaged(exc):
            raise
        total = 0
    expected_seq = start + 1
    seen: dict[str, int] = {}
    count = start
    try:
        for seq, stream, version, type_, schema, payload, metadata, at, stored in _rows(
            conn, expected_seq, chunk
        ):
            if seq != expected_seq:
                return AuditResult(
                    False, count, prev, expected_seq, f"event {expected_seq} is missing"
                )
            computed = codec.chain_hash(
                prev, seq, stream, version, type_, schema, payload, metadata, at
            )
            if computed != stored:
                return AuditResult(
                    False, count, prev, seq, f"event {seq} does not match its hash"
                )
            if versions and version != seen.get(stream, 0) + 1:
                return AuditResult(
                    False, count, prev, seq, f"event {seq} breaks the version order of {stream}"
                )
            seen[stream] = version
            prev = stored
            expected_seq += 1
            count += 1
            if progress and seq % chunk == 0:
                progress(seq, max(total, seq))
    except _Unreadable as bad:
        return AuditResult(
            False, count, prev, max(bad.seq, expected_seq),
            f"event {max(bad.seq, expected_seq)} cannot be read ({bad.error}): the log's "
            "pages are damaged; `loacl repair NEW_FILE` copies every readable event",
        )
    if progress and count > start and count % chunk:
        progress(count, max(total, count))
    return AuditResult(True, count, prev)


def _check_head(conn: sqlite3.Connection, count: int, prev: str) -> AuditResult | None:
    """What the head record and the stream index say against a sound chain of ``count``
    events ending in ``prev``; None when both agree with it."""
    head = conn.execute(
        "SELECT seq, hash, indexed_seq FROM event_log_head WHERE id = 1"
    ).fetchone()
    if head is None:
        if count:
            return AuditResult(False, count, prev, 1, "the log head record is missing")
    elif head[0] > count:
        return AuditResult(
            False, count, prev, count + 1,
            f"the log ends at {count} but its head records event {head[0]}: events were removed",
        )
    elif head[0] < count:
        return AuditResult(
            False, head[0], _hash_at(conn, head[0]), head[0] + 1,
            f"the log's head records event {head[0]} but the log goes on to {count}: "
            "events were added outside the store",
        )
    elif head[1] != prev:
        return AuditResult(
            False, count - 1, _hash_at(conn, count - 1), count,
            f"event {count} does not match the hash its head records: the log was rewritten",
        )
    bad = _first_unindexed(conn, head[2]) if head is not None else None
    if bad is not None:
        return AuditResult(
            False, count, prev, bad,
            f"the stream index does not match event {bad}: reads of its stream would miss "
            "or misplace events (rebuild it with `loacl audit reindex`, the server stopped)",
        )
    return None


def reindex(conn: sqlite3.Connection) -> int:
    """Rebuild the stream index from the log, up to the log's head record; the number of
    entries.

    The log is the truth and the index only says where each stream's events are, so nothing
    is lost. Run it with the server stopped."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        head = conn.execute("SELECT seq FROM event_log_head WHERE id = 1").fetchone()
        top = head[0] if head else 0
        conn.execute("DELETE FROM stream_index")
        conn.execute(
            "INSERT INTO stream_index (stream, version, seq) "
            "SELECT stream, version, seq FROM events WHERE seq <= ? ORDER BY stream, version",
            (top,),
        )
        (count,) = conn.execute("SELECT count(*) FROM stream_index").fetchone()
        conn.execute("UPDATE event_log_head SET indexed_seq = ?", (top,))
        conn.execute("COMMIT")
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        raise LoaclError(
            "log_damaged",
            f"the log holds one stream version twice ({exc}); `loacl audit verify` names it",
        ) from exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(count)


def _first_unindexed(conn: sqlite3.Connection, indexed_seq: int) -> int | None:
    """The first event whose stream_index entry is missing or wrong, or None."""
    (missing,) = conn.execute(
        "SELECT min(e.seq) FROM events e LEFT JOIN stream_index i "
        "ON i.stream = e.stream AND i.version = e.version AND i.seq = e.seq "
        "WHERE e.seq <= ? AND i.seq IS NULL",
        (indexed_seq,),
    ).fetchone()
    (stray,) = conn.execute(
        "SELECT min(i.seq) FROM stream_index i LEFT JOIN events e "
        "ON e.seq = i.seq AND e.stream = i.stream AND e.version = i.version "
        "WHERE e.seq IS NULL OR i.seq > ?",
        (indexed_seq,),
    ).fetchone()
    found = [s for s in (missing, stray) if s is not None]
    return min(found) if found else None
