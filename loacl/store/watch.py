"""The integrity check, again while the server runs: damage that appears after start-up (a disk
that goes bad, a tool that writes into the file) is found within ``integrity_check_minutes``,
logged, and shown by ``/readyz``, instead of at the next start.

Each round opens a read-only connection in a thread: SQLite's quick check of the whole file, and
the hash chain from the position the previous round verified (the start-up mark at first) to
the head, so that a round costs the events appended since the last one. It competes with the
server only for disk reads: readers do not block the writer in WAL mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import structlog

from loacl.domain.errors import LoaclError
from loacl.store import integrity
from loacl.store.eventstore import Clock, utc_now
from loacl.store.sqlite import connect

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked_at: str
    events: int = 0
    code: str = ""
    error: str = ""


class Watch:
    def __init__(self, db_path: Path, every_seconds: float, clock: Clock = utc_now) -> None:
        self.db_path = db_path
        self.every = every_seconds
        self.clock = clock
        self.verdict: Verdict | None = None  # None until the first round
        self._mark: tuple[int, str] | None = None
        self._task: asyncio.Task[None] | None = None

    def check_now(self) -> Verdict:
        """One round (blocking: run it in a thread)."""
        at = self.clock().isoformat(timespec="seconds")
        try:
            conn = connect(self.db_path, readonly=True)
        except sqlite3.Error as exc:
            return self._judge(Verdict(False, at, code="database_unavailable", error=str(exc)))
        try:
            mark = self._mark or integrity.last_mark(conn)
            result = integrity.examine(conn, *mark)
        except LoaclError as exc:
            return self._judge(Verdict(False, at, code=exc.code, error=exc.message))
        except sqlite3.Error as exc:  # a page so damaged that the check itself fails
            return self._judge(Verdict(False, at, code="log_damaged", error=str(exc)))
        finally:
            conn.close()
        self._mark = (result.events, result.last_hash)
        return self._judge(Verdict(True, at, events=result.events))

    def _judge(self, verdict: Verdict) -> Verdict:
        if not verdict.ok:
            log.error("integrity.damaged", code=verdict.code, error=verdict.error)
        elif self.verdict is not None and not self.verdict.ok:
            log.info("integrity.ok_again", events=verdict.events)
        self.verdict = verdict
        return verdict

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await asyncio.to_thread(self.check_now)
            except Exception:  # a round that fails in an unforeseen way: said, and tried again
                log.exception("integrity.check_failed")

    def start(self) -> None:
        if self.every > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="integrity-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
