"""``loacl repair``: when the event log itself is damaged, copy every event SQLite can still
read into a new file, chain them again, rebuild the read tables, and say exactly what was lost.
The damaged file is only read, never written.

The events after the first loss move down to close the gap (positions and stream versions must
count up without one for the chain and the stores' version checks), so their hashes are
computed again from there; the report names where that starts."""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loacl.domain.errors import LoaclError
from loacl.store import audit, codec, migrations
from loacl.store.keys import Keyring
from loacl.store.projections import Projections
from loacl.store.records import EVENT_COLUMNS
from loacl.store.replay import apply_all
from loacl.store.sqlite import connect

_SELECT = f"SELECT {EVENT_COLUMNS} FROM events"


@dataclass
class RepairResult:
    copied: int = 0
    lost: list[tuple[int, int]] = field(default_factory=list)  # seq ranges of the old file
    edited: list[int] = field(default_factory=list)  # events that failed their hash check
    rechained_from: int | None = None  # the first position whose hash was computed again
    notes: list[str] = field(default_factory=list)

    @property
    def lost_count(self) -> int:
        return sum(b - a + 1 for a, b in self.lost)


def _readable(conn: sqlite3.Connection, top: int, chunk: int) -> Iterator[Sequence[Any]]:
    """Every event SQLite can read, in order: a chunk that fails is read one event at a time."""
    start = 1
    while start <= top:
        try:
            rows = conn.execute(
                f"{_SELECT} WHERE seq BETWEEN ? AND ? ORDER BY seq", (start, start + chunk - 1)
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            if not audit.damaged(exc):
                raise
            rows = []
            for seq in range(start, min(start + chunk, top + 1)):
                try:
                    row = conn.execute(f"{_SELECT} WHERE seq = ?", (seq,)).fetchone()
                except sqlite3.DatabaseError:
                    continue
                if row is not None:
                    rows.append(row)
        yield from rows
        start += chunk


def _top(src: sqlite3.Connection) -> int:
    """The last position the old file knew of: the log's or its head record's, whichever reads
    and is higher."""
    found = [0]
    for sql in ("SELECT max(seq) FROM events", "SELECT seq FROM event_log_head"):
        try:
            row = src.execute(sql).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row and row[0] is not None:
            found.append(int(row[0]))
    return max(found)


def _copy_events(
    src: sqlite3.Connection, conn: sqlite3.Connection, result: RepairResult, chunk: int
) -> list[int]:
    """The readable events, renumbered without gaps; the old seq of each, in order."""
    top = _top(src)
    prev_old = prev_new = codec.GENESIS_HASH
    versions: dict[str, int] = {}
    kept: list[int] = []
    expected = 1
    for seq, stream, version, type_, schema, payload, metadata, at, stored in _readable(
        src, top, chunk
    ):
        follows = seq == expected  # after a gap, the hash before it is unknown: no check
        if not follows:
            result.lost.append((expected, seq - 1))
        expected = seq + 1
        if follows and codec.chain_hash(
            prev_old, seq, stream, version, type_, schema, payload, metadata, at
        ) != stored:
            result.edited.append(seq)
        prev_old = stored
        new_seq = len(kept) + 1
        new_version = versions.get(stream, 0) + 1
        versions[stream] = new_version
        hash_ = codec.chain_hash(prev_new, new_seq, stream, new_version, type_, schema, payload,
                                 metadata, at)
        if hash_ != stored and result.rechained_from is None:
            result.rechained_from = new_seq
        conn.execute(
            f"INSERT INTO main.events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (new_seq, stream, new_version, type_, schema, payload, metadata, at, hash_),
        )
        prev_new = hash_
        kept.append(seq)
    if expected <= top:
        result.lost.append((expected, top))
    count = len(kept)
    conn.execute(
        "INSERT INTO main.event_log_head (id, seq, hash, indexed_seq) VALUES (1, ?, ?, ?)",
        (count, prev_new, count),
    )
    conn.execute(
        "INSERT INTO main.stream_index (stream, version, seq) "
        "SELECT stream, version, seq FROM main.events ORDER BY stream, version"
    )
    result.copied = count
    return kept


def _copy_rows(
    src: sqlite3.Connection, conn: sqlite3.Connection, table: str, result: RepairResult
) -> None:
    """Row by row, so that one damaged page loses only its own rows."""
    cols = ", ".join(f'"{r[1]}"' for r in conn.execute(f'PRAGMA main.table_info("{table}")'))
    marks = ", ".join("?" * len(cols.split(", ")))
    copied = 0
    try:
        for row in src.execute(f'SELECT {cols} FROM "{table}"'):
            conn.execute(f'INSERT INTO main."{table}" ({cols}) VALUES ({marks})', row)
            copied += 1
    except sqlite3.DatabaseError as exc:
        if not audit.damaged(exc):
            raise
        result.notes.append(f"table {table}: {copied} rows copied, the rest cannot be read")


def _copy_positions(
    src: sqlite3.Connection, conn: sqlite3.Connection, kept: list[int], result: RepairResult
) -> None:
    """Idempotency keys and subscriber positions, moved to the new numbering."""
    moved = {old: new for new, old in enumerate(kept, start=1)}
    try:
        keys = src.execute("SELECT key, stream, first_seq, last_seq FROM append_keys")
        for key, stream, first, last in keys.fetchall():
            if first in moved and last in moved:
                conn.execute("INSERT INTO main.append_keys VALUES (?, ?, ?, ?)",
                             (key, stream, moved[first], moved[last]))
        marks = src.execute("SELECT name, position FROM subscriber_checkpoints")
        for name, position in marks.fetchall():
            conn.execute(
                "INSERT INTO main.subscriber_checkpoints (name, position) VALUES (?, ?)",
                (name, bisect.bisect_right(kept, position)),
            )
    except sqlite3.DatabaseError as exc:
        if not audit.damaged(exc):
            raise
        result.notes.append(f"idempotency keys or subscriber positions cannot be read ({exc})")


def _copy_webhook_deliveries(
    src: sqlite3.Connection, conn: sqlite3.Connection, kept: list[int], result: RepairResult
) -> None:
    """The webhook outbox (an operational table, not a projection: what was sent, what is
    still to send) and each endpoint's run of failures. The endpoints themselves are events,
    rebuilt with the read tables. A delivery's event moves to its new position; one that
    tells of an event now lost cannot be built again and is left out. A message id names the
    event's position (``msg_<seq>_<webhook>``): where that position moved, the id moves with
    it, so that the outbox's later events cannot take an id already used."""
    moved = {old: new for new, old in enumerate(kept, start=1)}
    table = "webhook_deliveries"
    cols = [r[1] for r in conn.execute(f'PRAGMA main.table_info("{table}")')]
    at_seq, at_id, at_hook = (cols.index(c) for c in ("source_seq", "message_id", "webhook_id"))
    names = ", ".join(f'"{c}"' for c in cols)
    marks = ", ".join("?" * len(cols))
    copied = dropped = renamed = 0
    try:
        for found in src.execute(f'SELECT {names} FROM "{table}" ORDER BY delivery_id'):
            row = list(found)
            old = int(row[at_seq])
            if old:
                if old not in moved:
                    dropped += 1
                    continue
                row[at_seq] = moved[old]
                if moved[old] != old and row[at_id] == f"msg_{old}_{row[at_hook]}":
                    row[at_id] = f"msg_{moved[old]}_{row[at_hook]}"
                    renamed += 1
            conn.execute(f'INSERT INTO main."{table}" ({names}) VALUES ({marks})', row)
            copied += 1
    except sqlite3.DatabaseError as exc:
        if not audit.damaged(exc):
            raise
        result.notes.append(f"table {table}: {copied} rows copied, the rest cannot be read")
    if dropped:
        result.notes.append(f"{dropped} webhook deliveries told of lost events and are left out")
    if renamed:
        result.notes.append(f"{renamed} webhook deliveries of moved events have new message ids "
                            "(a receiver that had them may see them again under the new id)")
    _copy_rows(src, conn, "webhook_health", result)


def _copy_key_state(
    src: sqlite3.Connection, conn: sqlite3.Connection, kept: list[int], result: RepairResult
) -> None:
    """Which master key seals, the erasure count, and where sealing began, in the new
    numbering."""
    try:
        row = src.execute(
            "SELECT master_id, erasures, sealed_after FROM key_state WHERE id = 1"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        if not audit.damaged(exc):
            raise
        result.notes.append(f"the key state cannot be read ({exc}): every event after the "
                            "first is taken for sealed")
        return
    if row is not None:
        master_id, erasures, sealed_after = row
        conn.execute(
            "UPDATE main.key_state SET master_id = ?, erasures = ?, sealed_after = ? "
            "WHERE id = 1",
            (master_id, erasures, bisect.bisect_right(kept, sealed_after)),
        )


def repair(
    db_path: Path, out: Path, projections: Projections, *, chunk: int = 5000,
    keys: Keyring | None = None,
) -> RepairResult:
    if not db_path.exists():
        raise LoaclError("database_not_found", f"no database at {db_path}")
    if out.exists():
        raise LoaclError("file_exists", f"{out} exists: name a new file (repair never "
                                        "overwrites one)")
    result = RepairResult()
    # Two connections, not ATTACH: an error reading a damaged page must not touch the write.
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn = connect(out)
    try:
        migrations.up(conn)
        conn.execute("BEGIN IMMEDIATE")
        kept = _copy_events(src, conn, result, chunk)
        present = {str(n) for (n,) in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in ("blobs", "usage_daily", "budget_alerts", "data_keys", "knowledge_vectors",
                      "handoff_mails"):
            if table in present:  # a file from before the table's migration has none
                _copy_rows(src, conn, table, result)
        _copy_positions(src, conn, kept, result)
        _copy_webhook_deliveries(src, conn, kept, result)
        _copy_key_state(src, conn, kept, result)
        conn.execute("COMMIT")
        apply_all(conn, projections, None, chunk, result.copied,
                  keys.attach(conn) if keys is not None else None)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
        raise
    finally:
        src.close()
    conn.close()
    return result
