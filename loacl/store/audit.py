"""Walk the hash chain and find the first position where the log was edited."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from loacl.store import codec

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
    (total,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    prev = codec.GENESIS_HASH
    expected_seq = 1
    versions: dict[str, int] = {}
    count = 0
    while True:
        rows = conn.execute(
            "SELECT seq, stream, version, type, schema_version, payload, metadata, recorded_at, "
            "hash FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
            (expected_seq, chunk),
        ).fetchall()
        if not rows:
            break
        for seq, stream, version, type_, schema, payload, metadata, at, stored in rows:
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
            if version != versions.get(stream, 0) + 1:
                return AuditResult(
                    False, count, prev, seq, f"event {seq} breaks the version order of {stream}"
                )
            versions[stream] = version
            prev = stored
            expected_seq += 1
            count += 1
        if progress:
            progress(expected_seq - 1, total)
    head = conn.execute("SELECT seq, hash FROM event_log_head WHERE id = 1").fetchone()
    if head is not None and (head[0], head[1]) != (count, prev):
        return AuditResult(
            False, count, prev, count + 1,
            f"the log ends at {count} but its head records event {head[0]}: events were removed",
        )
    if head is None and count:
        return AuditResult(False, count, prev, 1, "the log head record is missing")
    return AuditResult(True, count, prev)
