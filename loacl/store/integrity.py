"""SQLite's own integrity check, said in LOACL's terms (which table or index is damaged and what
repairs it), and the start-up check that refuses to serve a damaged database or a broken chain."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loacl.domain.errors import LoaclError
from loacl.store import audit, codec
from loacl.store.projections import default_projections

_PAGE = re.compile(r"\bpage (\d+)\b")
_INDEX = re.compile(r"\bindex (\w+)")
# Tables replay rebuilds from the events alone: damage there loses nothing.
REBUILT = frozenset([*default_projections().tables, "stream_index"])


@dataclass(frozen=True)
class Damage:
    """What an integrity check found: the damaged objects as ``name`` -> its table, and
    SQLite's messages (duplicates of one page's cells folded into one line)."""

    objects: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.messages

    @property
    def tables(self) -> list[str]:
        return sorted(set(self.objects.values()))

    @property
    def rebuildable(self) -> bool:
        """Every damaged object belongs to a table replay rebuilds from the log."""
        return bool(self.objects) and set(self.tables) <= REBUILT

    def names(self) -> str:
        if not self.objects:
            return "an unknown place"
        return ", ".join(
            f"table {name}" if name == table else f"index {name} of table {table}"
            for name, table in sorted(self.objects.items())
        )

    def remedy(self) -> str:
        if self.rebuildable:
            return ("stop the server and run `loacl replay`: it rebuilds these tables from the "
                    "event log into a fresh file")
        return ("stop the server and run `loacl repair NEW_FILE`: it copies every readable "
                "event into a new file and says what was lost (or restore a backup)")


def check(conn: sqlite3.Connection, *, quick: bool = False, limit: int = 100) -> Damage:
    """``PRAGMA integrity_check`` (or ``quick_check``), its pages mapped to tables and indexes."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        found = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}({limit})").fetchall()]
    except sqlite3.DatabaseError as exc:
        if not audit.damaged(exc):
            raise
        return Damage({}, [str(exc)])  # the schema itself cannot be read
    lines: list[str] = []
    seen_pages: set[str] = set()
    for line in (part for row in found for part in row.splitlines()):
        if line == "ok" or line.startswith("*** in database"):
            continue
        page = _PAGE.search(line)
        if page and line.startswith("On tree page"):
            if page[1] in seen_pages:
                continue  # one line for each damaged page, not one for each of its cells
            seen_pages.add(page[1])
        lines.append(line)
    if not lines:
        return Damage()
    if len(lines) > 1 and lines[-1] == "database disk image is malformed":
        lines.pop()  # SQLite's closing word on the lines before it
    return Damage(_owners(conn, lines), lines)


def _owners(conn: sqlite3.Connection, lines: list[str]) -> dict[str, str]:
    """The tables and indexes the messages point at: by page (through ``dbstat``, which reads
    the b-trees and names the owner of a damaged page) and by the index names they give."""
    schema = dict(
        conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')")
    )
    owners: dict[str, str] = {}
    for line in lines:
        for name in _INDEX.findall(line):
            if name in schema:
                owners[name] = schema[name]
    pages = sorted({int(p) for line in lines for p in _PAGE.findall(line)})
    if pages:
        marks = ",".join("?" * len(pages))
        try:
            rows = conn.execute(
                f"SELECT DISTINCT name FROM dbstat WHERE pageno IN ({marks})", pages
            ).fetchall()
        except sqlite3.Error:  # no dbstat in this SQLite, or it cannot walk the file
            rows = []
        for (name,) in rows:
            owners[str(name)] = schema.get(str(name), str(name))
    return owners


def _mark(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM integrity_mark WHERE id = 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, codec.GENESIS_HASH)


def examine(conn: sqlite3.Connection, seq: int, hash_: str) -> audit.AuditResult:
    """A quick integrity check of the whole file, and the hash chain from a position verified
    before (``seq``, which had ``hash_``) to the head. Raises ``LoaclError`` naming the damage
    and the command that repairs it: ``database_damaged`` (a read table), ``log_damaged`` or
    ``chain_broken``."""
    damage = check(conn, quick=True, limit=20)
    if not damage.ok:
        raise LoaclError(
            "database_damaged" if damage.rebuildable else "log_damaged",
            f"the database file is damaged in {damage.names()} ({damage.messages[0]}); "
            f"`loacl audit verify` gives the whole report; {damage.remedy()}",
        )
    result = audit.verify_from(conn, seq, hash_)
    if not result.ok:
        raise LoaclError(
            "chain_broken",
            f"the event log fails its check at event {result.bad_seq}: {result.reason}. "
            "Serving it would chain new events to an edited log. `loacl audit verify` gives "
            "the whole report; restore a backup, or run `loacl repair NEW_FILE`",
        )
    return result


def check_at_start(conn: sqlite3.Connection) -> audit.AuditResult:
    """:func:`examine` from the position the last start verified; then the mark moves to the
    head."""
    result = examine(conn, *_mark(conn))
    conn.execute(
        "INSERT INTO integrity_mark (id, seq, hash, verified_at) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
        "verified_at = excluded.verified_at",
        (result.events, result.last_hash, datetime.now(UTC).isoformat(timespec="seconds")),
    )
    return result


def last_mark(conn: sqlite3.Connection) -> tuple[int, str]:
    """The position (and its hash) the last start verified."""
    return _mark(conn)
