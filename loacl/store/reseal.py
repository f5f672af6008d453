"""``loacl privacy reseal NEW_FILE``: the whole history again, every personal field sealed.

Events written before sealing existed keep their personal fields in plaintext (they are read
as they are); erasing their subject cannot reach that text. Resealing copies the log into a new
file with every personal field, and every client address, sealed with its subject's key (keys
made for subjects that had none), and an erased subject's old plaintext replaced by a value
that names its destroyed key. Positions, streams, versions, times and metadata stay; the
payloads change, so the hash chain is computed again from the first event. Every other table
the log does not derive (keys, uploaded bytes, subscriber positions, idempotency keys) is
copied, the read tables are built again, and the new file is audited. The old file is only
read; putting the new one in its place is ``loacl restore --force NEW_FILE``, the server
stopped.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from loacl.domain.accounts import SessionStarted
from loacl.domain.assistants import AssistantCreated
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, RecordedEvent
from loacl.domain.privacy import OWNER, subject, subject_of_stream
from loacl.domain.widgets import WidgetCreated
from loacl.store import audit, codec, migrations
from loacl.store.keys import ErasedKey, Keyring, Sealer
from loacl.store.projections import default_projections
from loacl.store.records import EVENT_COLUMNS, decode_rows
from loacl.store.replay import apply_all
from loacl.store.search import is_search_table
from loacl.store.sqlite import connect

# Built from the log, or tied to the old chain's hashes: never copied.
_NOT_COPIED = frozenset([
    "events", "stream_index", "event_log_head", "integrity_mark", "schema_migrations",
    "key_state",
])
_INSERT = (
    f"INSERT INTO main.events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Resealed:
    events: int
    plain: int  # events that held plaintext (written before sealing)
    keys_made: int
    audit: audit.AuditResult


def reseal(db_path: Path, out: Path, keys: Keyring, *, chunk: int = 2000) -> Resealed:
    if not db_path.exists():
        raise LoaclError("database_not_found", f"no database at {db_path}")
    if out.exists():
        raise LoaclError("file_exists", f"{out} exists: name a new file")
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn = connect(out)
    try:
        if migrations.current(src) != migrations.LATEST:
            raise LoaclError(
                "schema_out_of_date", "migrate the database first: `loacl migrate up`"
            )
        migrations.up(conn)
        keys.attach(src)
        _copy_tables(conn, db_path)
        before = int(conn.execute("SELECT count(*) FROM data_keys").fetchone()[0])
        sealer = Keyring(keys.masters).attach(conn)
        count, plain = _copy_events(src, conn, keys, sealer, chunk)
        made = int(conn.execute("SELECT count(*) FROM data_keys").fetchone()[0]) - before
        apply_all(conn, default_projections(), None, chunk, count, sealer.attach(conn))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        result = audit.verify(conn)
    except BaseException:
        conn.close()
        src.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
        raise
    conn.close()
    src.close()
    return Resealed(count, plain, made, result)


def _copy_tables(conn: sqlite3.Connection, db_path: Path) -> None:
    conn.execute("ATTACH DATABASE ? AS src", (f"file:{db_path}?mode=ro",))
    try:
        conn.execute("BEGIN IMMEDIATE")
        projected = set(default_projections().tables)
        names = [str(n) for (n,) in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%'"
        )]
        in_source = {str(n) for (n,) in conn.execute(
            "SELECT name FROM src.sqlite_master WHERE type = 'table'"
        )}
        for table in names:
            if (table in projected or table in _NOT_COPIED or table not in in_source
                    or is_search_table(table)):
                continue
            cols = ", ".join(
                f'"{r[1]}"' for r in conn.execute(f'PRAGMA main.table_info("{table}")')
            )
            conn.execute(f'INSERT INTO main."{table}" ({cols}) SELECT {cols} FROM src."{table}"')
        # Every event is sealed now: none is read as written before sealing.
        conn.execute(
            "UPDATE main.key_state SET sealed_after = 0, erasures = "
            "(SELECT erasures FROM src.key_state), master_id = "
            "(SELECT master_id FROM src.key_state)"
        )
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute("DETACH DATABASE src")


class _Subjects:
    """Whose each stream's events are: a conversation's and an account's by their names, a
    session's, a widget's and an assistant's by the owner their first event names."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def of(self, recorded: RecordedEvent) -> str | None:
        event = recorded.event
        if isinstance(event, SessionStarted):
            self.owners[recorded.stream] = event.user_id
        elif isinstance(event, WidgetCreated | AssistantCreated):
            self.owners[recorded.stream] = event.owner_id
        owner = self.owners.get(recorded.stream)
        if owner is not None:
            return subject(OWNER, owner)
        return subject_of_stream(recorded.stream)


def _needs_key(recorded: RecordedEvent) -> bool:
    event = recorded.event
    return bool(recorded.metadata.client_ip) or any(
        getattr(event, name) for name in type(event).personal
    )


def _copy_events(
    src: sqlite3.Connection, conn: sqlite3.Connection, keys: Keyring, sealer: Keyring,
    chunk: int,
) -> tuple[int, int]:
    sealed_after = keys.sealed_after
    subjects = _Subjects()
    prev, count, plain, after = codec.GENESIS_HASH, 0, 0, 0
    while True:
        rows = src.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, chunk),
        ).fetchall()
        if not rows:
            break
        events = decode_rows(rows, keys)
        owners = [subjects.of(r) for r in events]
        sealer.prepare(conn, [
            s for s, r in zip(owners, events, strict=True) if s is not None and _needs_key(r)
        ])
        conn.execute("BEGIN IMMEDIATE")
        try:
            for recorded, owner in zip(events, owners, strict=True):
                key = _sealer_for(conn, sealer, owner, recorded)
                payload, metadata = _encode(recorded, key, sealer)
                prev = codec.chain_hash(
                    prev, recorded.seq, recorded.stream, recorded.version,
                    recorded.event.event_type, recorded.event.schema_version, payload, metadata,
                    codec.format_time(recorded.recorded_at),
                )
                conn.execute(_INSERT, (
                    recorded.seq, recorded.stream, recorded.version, recorded.event.event_type,
                    recorded.event.schema_version, payload, metadata,
                    codec.format_time(recorded.recorded_at), prev,
                ))
                count += 1
                plain += recorded.seq <= sealed_after
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        after = events[-1].seq
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO main.event_log_head (id, seq, hash, indexed_seq) VALUES (1, ?, ?, ?)",
        (count, prev, count),
    )
    conn.execute(
        "INSERT INTO main.stream_index (stream, version, seq) "
        "SELECT stream, version, seq FROM main.events ORDER BY stream, version"
    )
    conn.execute("COMMIT")
    return count, plain


def _sealer_for(
    conn: sqlite3.Connection, sealer: Keyring, owner: str | None, recorded: RecordedEvent
) -> Sealer | None:
    if owner is None:
        return None
    try:
        return sealer.for_sealing(conn, owner, required=_needs_key(recorded))
    except LoaclError as exc:
        if exc.code != "subject_erased":
            raise
    (key_id,) = conn.execute(
        "SELECT key_id FROM data_keys WHERE subject = ?", (owner,)
    ).fetchone()
    return ErasedKey(int(key_id))


def _encode(
    recorded: RecordedEvent, key: Sealer | None, sealer: Keyring
) -> tuple[str, str]:
    event: Event = recorded.event
    payload = codec.encode_payload(event, key)
    if key is not None and recorded.metadata.client_ip:
        return payload, sealer.seal_metadata(key, recorded.metadata, codec.encode_sealed_metadata)
    return payload, codec.encode_metadata(recorded.metadata)
