"""Cut the log at a position: a new file holding the events up to it, and everything else as it
stood then, so that a point-in-time restore gives exactly the events recorded up to a moment.

The events up to the position are copied as they are (the hash chain of a prefix still holds),
the read tables are built again from them, and the tables the log does not derive are cut to
match: idempotency keys of later appends go, a table subscriber starts again from 0 with its
tables empty (it rebuilds them on start, exactly once), an effect subscriber's position goes
back to the cut at most (it never repeats what it did before the cut; what it did after has
no event left to stand for it, and its own record of it, such as the budget mails sent, is
kept). Uploaded bytes are all kept, as replay keeps them: nothing stored is lost by a cut, and
bytes no file names are never served.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from loacl.domain.errors import LoaclError
from loacl.store import audit, migrations
from loacl.store.keys import Keyring
from loacl.store.projections import Projections
from loacl.store.rebuild import remove_file
from loacl.store.records import EVENT_COLUMNS
from loacl.store.replay import apply_all
from loacl.store.search import is_search_table
from loacl.store.sqlite import connect
from loacl.store.subscriptions import Subscriber, Table

# Copied whole: uploaded bytes, the record of effects that took place (budget and handoff
# mails sent: sending one again after a cut would mail the owner twice), and the data keys as
# they are now (a subject erased after the moment stays erased: a restore must not bring its
# text back).
# The tables of a table subscriber and the projections' are not copied at all: they are built
# again. A new table must be named
# here or below, or the cut refuses to run (a test cuts a database with every migration).
# Each webhook endpoint's run of failures is kept too (its deliveries are cut below).
# The knowledge passages' embeddings are the provider's answers, not in the log: kept too.
_KEPT = ("blobs", "budget_alerts", "data_keys", "webhook_health", "knowledge_vectors",
         "handoff_mails")
# Handled one by one below.
_CUT = frozenset([
    "events", "event_log_head", "stream_index", "append_keys", "subscriber_checkpoints",
    "integrity_mark", "schema_migrations", "key_state", "webhook_deliveries",
])


def first_after(conn: sqlite3.Connection, moment: str) -> int | None:
    """The position of the first event recorded after ``moment`` (codec.format_time), by a
    scan in log order: the cut keeps the log up to it, even were a clock to have stepped back."""
    row = conn.execute(
        "SELECT seq FROM events WHERE recorded_at > ? ORDER BY seq LIMIT 1", (moment,)
    ).fetchone()
    return None if row is None else int(row[0])


def cut(
    source: Path, out: Path, last: int, projections: Projections,
    subscribers: Sequence[Subscriber], keys: Keyring | None = None,
) -> int:
    """Write ``out`` (a new file) with the events of ``source`` up to position ``last``; the
    number of events in it."""
    remove_file(out)
    src = connect(source, readonly=True)
    try:
        version = migrations.current(src)
    finally:
        src.close()
    conn = connect(out)
    try:
        migrations.up(conn, to=version)
        conn.execute("ATTACH DATABASE ? AS src", (f"file:{source}?mode=ro",))
        _refuse_unknown_tables(conn, projections, subscribers)
        conn.execute("BEGIN IMMEDIATE")
        count = _copy(conn, last, subscribers)
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
        apply_all(conn, projections, None, 5000, count,
                  keys.attach(conn) if keys is not None else None)
        chain = audit.verify(conn)
        if not chain.ok:
            raise LoaclError("chain_broken", f"the cut log fails its check at event "
                                             f"{chain.bad_seq}: {chain.reason}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        remove_file(out)
        raise
    conn.close()
    return count


def _tables(conn: sqlite3.Connection, schema: str) -> set[str]:
    return {str(name) for (name,) in conn.execute(
        f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_litestream\\_%' ESCAPE '\\'"
    )}


def _refuse_unknown_tables(
    conn: sqlite3.Connection, projections: Projections, subscribers: Sequence[Subscriber]
) -> None:
    """A table this module does not know how to cut would be copied wrong or left behind."""
    known = _CUT | set(_KEPT) | set(projections.tables)
    for subscriber in subscribers:
        if isinstance(subscriber, Table):
            known |= set(subscriber.tables)
    unknown = sorted(
        name for name in (_tables(conn, "main") | _tables(conn, "src")) - known
        if not is_search_table(name)  # built by the triggers as the messages are
    )
    if unknown:
        raise LoaclError("log_damaged", f"cannot cut the log: table {unknown[0]} is not one "
                                        "LOACL knows how to cut")


def _copy(conn: sqlite3.Connection, last: int, subscribers: Sequence[Subscriber]) -> int:
    conn.execute(f"INSERT INTO main.events ({EVENT_COLUMNS}) SELECT {EVENT_COLUMNS} "
                 "FROM src.events WHERE seq <= ? ORDER BY seq", (last,))
    row = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM main.events").fetchone()
    count, top = int(row[0]), int(row[1])
    head = conn.execute("SELECT hash FROM main.events WHERE seq = ?", (top,)).fetchone()
    (indexed,) = conn.execute(
        "SELECT coalesce(min(indexed_seq, ?), 0) FROM src.event_log_head", (top,)
    ).fetchone() or (0,)
    conn.execute("DELETE FROM main.event_log_head")
    if head is not None:
        conn.execute("INSERT INTO main.event_log_head (id, seq, hash, indexed_seq) "
                     "VALUES (1, ?, ?, ?)", (top, head[0], indexed or 0))
    conn.execute("INSERT INTO main.stream_index (stream, version, seq) SELECT stream, version, "
                 "seq FROM main.events WHERE seq <= ? ORDER BY stream, version", (indexed or 0,))
    conn.execute("INSERT INTO main.append_keys SELECT * FROM src.append_keys "
                 "WHERE last_seq <= ?", (top,))
    conn.execute("INSERT INTO main.integrity_mark SELECT * FROM src.integrity_mark "
                 "WHERE seq <= ?", (top,))
    for table in _KEPT:
        conn.execute(f'INSERT INTO main."{table}" SELECT * FROM src."{table}"')
    # Deliveries of events the cut keeps (and of none: tests, budgets), as they stood: one of
    # a later event has nothing left to send.
    conn.execute("INSERT INTO main.webhook_deliveries SELECT * FROM src.webhook_deliveries "
                 "WHERE source_seq <= ?", (top,))
    rebuilt = [s.name for s in subscribers if isinstance(s, Table)]
    marks = ",".join("?" * len(rebuilt)) or "NULL"
    conn.execute(
        "INSERT INTO main.subscriber_checkpoints SELECT * FROM src.subscriber_checkpoints "
        f"WHERE name NOT IN ({marks})", rebuilt,
    )
    conn.execute("UPDATE main.subscriber_checkpoints SET position = ? WHERE position > ?",
                 (top, top))
    # Which master key seals and the erasure count as they are; sealing began no later than
    # the cut (events appended after it are sealed, whatever the source's mark said).
    conn.execute(
        "UPDATE main.key_state SET (master_id, erasures, sealed_after) = (SELECT master_id, "
        "erasures, min(sealed_after, ?) FROM src.key_state WHERE id = 1) WHERE id = 1 "
        "AND EXISTS (SELECT 1 FROM src.key_state WHERE id = 1)", (top,),
    )
    conn.execute("DELETE FROM main.schema_migrations")
    conn.execute("INSERT INTO main.schema_migrations SELECT * FROM src.schema_migrations")
    return count
