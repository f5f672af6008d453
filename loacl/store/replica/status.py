"""Where the replica has got to, and how far behind the database it is.

Three places say it, each read as it is: the replica's files (``litestream ltx``: the newest
transaction on it and when it was made), Litestream's local state beside the database
(``.<name>-litestream/ltx/0/``: each transaction it has taken from the WAL, one file each, made
when it took them), and the event log (when each event was recorded).

The lag is the age of the oldest change not yet on the replica: a transaction Litestream took
but has not shipped, or, when Litestream has not run since, the first event recorded after the
last transaction it took. Nothing pending: the replica is caught up, lag 0. (A commit that
lands while Litestream reads the WAL may be counted as taken one sync early; the next sync,
a second later, ships it.)
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loacl.store import codec
from loacl.store.replica import litestream


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    url: str
    replica_txid: int | None  # the newest transaction on the replica; None: nothing yet
    last_sync: datetime | None  # when the replica's newest file was made
    local_txid: int | None  # the newest transaction Litestream took from the WAL
    local_at: datetime | None  # when it took it
    behind: int  # transactions taken but not yet on the replica
    pending_since: datetime | None  # the oldest change not yet on the replica
    lag_seconds: float
    events: int  # the log's last position

    @property
    def caught_up(self) -> bool:
        return self.pending_since is None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        for key in ("replica_txid", "local_txid"):
            if out[key] is not None:
                out[key] = litestream.txid(out[key])
        out["lag_seconds"] = round(self.lag_seconds, 3)
        out["caught_up"] = self.caught_up
        return out


@dataclass(frozen=True, slots=True)
class LocalTx:
    min_txid: int
    max_txid: int
    made: datetime


def meta_folder(db_path: Path) -> Path:
    """Where Litestream keeps its local state for ``db_path`` (its default)."""
    return db_path.parent / f".{db_path.name}-litestream"


def local_transactions(db_path: Path) -> list[LocalTx]:
    """Litestream's level-0 files beside the database, oldest first."""
    found: list[LocalTx] = []
    level0 = meta_folder(db_path) / "ltx" / "0"
    try:
        entries = list(level0.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        low, _, high = entry.name.removesuffix(".ltx").partition("-")
        if not entry.name.endswith(".ltx") or not high:
            continue
        try:
            made = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
            found.append(LocalTx(int(low, 16), int(high, 16), made))
        except (ValueError, FileNotFoundError):
            continue  # not one of its files, or removed meanwhile
    return sorted(found, key=lambda tx: tx.max_txid)


def first_event_after(conn: sqlite3.Connection, moment: datetime) -> tuple[int, datetime] | None:
    """The first event recorded after ``moment`` (position, time), by a binary search over
    positions: the log's times rise with its positions."""
    (head,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    mark = codec.format_time(moment)

    def at(seq: int) -> str:
        row = conn.execute("SELECT recorded_at FROM events WHERE seq = ?", (seq,)).fetchone()
        return str(row[0]) if row else ""

    if head == 0 or at(head) <= mark:
        return None
    low, high = 1, head
    while low < high:
        middle = (low + high) // 2
        if at(middle) > mark:
            high = middle
        else:
            low = middle + 1
    return low, codec.parse_time(at(low))


def replica_position(
    config: Path, db_path: Path, *, timeout: float = litestream.COMMAND_SECONDS
) -> tuple[int | None, datetime | None]:
    """The replica's newest transaction and when it was made. Level 0 holds the newest while
    it is kept (five minutes); after a quiet spell only the compacted levels do."""
    files = litestream.replica_files(config, db_path, level="0", timeout=timeout)
    if not files:
        files = litestream.replica_files(config, db_path, timeout=timeout)
    if not files:
        return None, None
    newest = max(files, key=lambda f: (f.max_txid, f.created))
    return newest.max_txid, max(f.created for f in files)


def status(
    url: str, db_path: Path, conn: sqlite3.Connection | None,
    replica: tuple[int | None, datetime | None], now: datetime,
) -> ReplicaStatus:
    """Put the three together; ``replica`` is ``replica_position``'s answer."""
    replica_txid, last_sync = replica
    local = local_transactions(db_path)
    newest = local[-1] if local else None
    shipped = replica_txid or 0
    unshipped = [tx for tx in local if tx.max_txid > shipped]
    pending = [tx.made for tx in unshipped[:1]]
    events = 0
    if conn is not None:
        (events,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        since = newest.made if newest else datetime.min.replace(tzinfo=UTC)
        unseen = first_event_after(conn, since)
        if unseen is not None:
            pending.append(unseen[1])
    pending_since = min(pending) if pending else None
    lag = max(0.0, (now - pending_since).total_seconds()) if pending_since else 0.0
    return ReplicaStatus(
        url=url, replica_txid=replica_txid, last_sync=last_sync,
        local_txid=newest.max_txid if newest else None,
        local_at=newest.made if newest else None,
        behind=max(0, (newest.max_txid if newest else 0) - shipped),
        pending_since=pending_since, lag_seconds=lag, events=int(events),
    )
