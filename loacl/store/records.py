"""The log's rows: their columns, the SQL that finds a stream's events (in the stream index and
the log's tail after it), and decoding rows into records. The store, replay, audit and the CLI
all read the log through these."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Container, Iterable, Sequence
from datetime import datetime
from typing import Any

from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.store import codec

# A row of the log, in the order decode_rows reads it (the CLI and audit read the same).
EVENT_COLUMNS = "seq, stream, version, type, schema_version, payload, metadata, recorded_at, hash"
SELECT_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events"
READ_ALL = f"{SELECT_EVENTS} WHERE seq > ? ORDER BY seq LIMIT ?"
_INDEXED_SEQ = "(SELECT coalesce(max(indexed_seq), 0) FROM event_log_head)"
# The events of one stream, its two parameters both the stream's name: those in the index and
# those in the log's tail after it. In one statement (one snapshot) the two never overlap;
# SQLite answers each side from a primary key (a multi-index OR).
IN_STREAM = (
    "(seq IN (SELECT seq FROM stream_index WHERE stream = ?) "
    f"OR (seq > {_INDEXED_SEQ} AND stream = ?))"
)
# One statement, so one snapshot: the indexed part and the tail after it never overlap.
STREAM_VERSION = (
    f"SELECT coalesce((SELECT max(version) FROM events WHERE seq > {_INDEXED_SEQ} "
    "AND stream = ?1), (SELECT max(version) FROM stream_index WHERE stream = ?1), 0)"
)
READ_STREAM = f"{SELECT_EVENTS} WHERE {IN_STREAM} AND version > ? ORDER BY version"


new_record = tuple.__new__  # positional, without NamedTuple's keyword handling: replay's hot path


def decode_rows(
    rows: Iterable[Sequence[Any]], keys: codec.Opener | None = None, *,
    unopened: Container[int] | None = None, opened_types: Container[str] | None = None,
) -> list[RecordedEvent]:
    """Rows of the events table as records, sealed fields opened with ``keys``. Replay decodes
    every event through here, so the look-ups are hoisted out of the loop and a record is built
    as a plain tuple. The events of one append share their metadata and those of one commit
    their time: each is decoded once per run of equal values. Events written before sealing
    existed (up to ``keys.sealed_after``) are read as they are, and so are those whose position
    is in ``unopened`` (replay's, see ``replay.superseded``), and, when ``opened_types`` is
    given, those of every other type (replay's: the types no projection reads personal fields
    of, ``Projections.opened``)."""
    # Keyed by type alone (a tuple key costs more than the rest of the loop): an event of an
    # older schema version than the one cached takes the slow path.
    decoders: dict[str, tuple[int, Callable[[str | bytes], Event], Callable[..., Event]]] = {}
    new, record = new_record, RecordedEvent
    sealed_after = keys.sealed_after if keys is not None else 0
    skip: Container[int] = unopened if unopened is not None else ()
    metadata_raw: Any = None
    time_raw: Any = None
    metadata = Metadata()
    # Opened metadata of this read, by its text: the appends of many streams interleave, and a
    # sealed address is opened once per read, not once per event.
    opened: dict[Any, Metadata] = {}
    when = datetime.min
    out: list[RecordedEvent] = []
    append = out.append
    for seq, stream, version, type_, schema_version, payload, raw_md, raw_at, hash_ in rows:
        found = decoders.get(type_)
        if found is None or found[0] != schema_version:
            plain = codec.plain_decoder(type_, schema_version)
            found = decoders[type_] = (
                schema_version,
                codec.payload_decoder(type_, schema_version, keys)
                if opened_types is None or type_ in opened_types else plain,
                plain,
            )
        if raw_md != metadata_raw:
            found_md = opened.get(raw_md)
            if found_md is None:
                found_md = opened[raw_md] = codec.decode_metadata(raw_md, keys)
            metadata, metadata_raw = found_md, raw_md
        if raw_at != time_raw:
            when, time_raw = codec.parse_time(raw_at), raw_at
        event = found[2](payload) if seq <= sealed_after or seq in skip else found[1](payload)
        append(new(record, (seq, stream, version, event, metadata, when, hash_)))
    return out


def stream_version(conn: sqlite3.Connection, stream: str) -> int:
    return int(conn.execute(STREAM_VERSION, (stream,)).fetchone()[0])


def read_all_sync(
    conn: sqlite3.Connection, after: int = 0, limit: int | None = None,
    keys: codec.Opener | None = None,
    unopened: Callable[[list[Any]], Container[int]] | None = None,
    opened_types: Container[str] | None = None,
) -> list[RecordedEvent]:
    """``unopened`` picks, from the rows read, the positions whose sealed fields are left as
    they are (replay's superseded deltas); with ``opened_types``, only events of those types
    have them opened."""
    rows = conn.execute(READ_ALL, (after, -1 if limit is None else limit)).fetchall()
    return decode_rows(rows, keys, unopened=unopened(rows) if unopened is not None else None,
                       opened_types=opened_types)

