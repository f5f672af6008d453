"""Litestream beside ``loacl serve``: started with the server (unless Litestream runs the server
itself, ``under_litestream``), restarted with backoff when it dies, stopped after the store
closes so that its last sync ships the last commits; and the replica's status, read every few
seconds, for /readyz.

A replica that fails is logged and reported, never a reason to stop serving: visitors chat on
while it is down, and what they write is shipped once it is back (Litestream resumes from its
position). While Litestream is down the writer checkpoints again itself, so the WAL does not
grow without bound; it stops again before Litestream restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from loacl.domain.errors import LoaclError
from loacl.store.eventstore import EventStore
from loacl.store.replica import litestream, status, urls
from loacl.store.sqlite import connect

log = structlog.get_logger(__name__)

BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
HEALTHY_RUN = 60.0  # a run this long resets the backoff
STOP_SECONDS = 5.0  # Litestream's last sync on SIGTERM, before it is killed
POLL_SECONDS = 15.0  # each poll lists the replica once (one LIST request on S3)
FIRST_POLL = 3.0
POLL_TIMEOUT = 10.0
LAG_LIMIT = 60.0  # behind by more than this: reported (the sync interval is 1 s)
ERROR_WINDOW = 60.0  # an error Litestream logged is reported this long
SQLITE_AUTOCHECKPOINT = 1000  # SQLite's default, for while Litestream is down
LINE_LIMIT = 1024 * 1024  # the longest log line of Litestream's that is relayed
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: Litestream gets SIGTERM (and ships what is outstanding) if the server dies
    without stopping it, even by SIGKILL; otherwise it would replicate on, unsupervised, and a
    restarted server would start a second one."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Process:
    """What the supervisor knows of its Litestream (monotonic times)."""

    pid: int | None = None
    started: float | None = None
    restarts: int = 0
    last_exit: int | None = None
    error: str | None = None
    error_at: float | None = None


class Replication:
    def __init__(
        self, url: str, db_path: Path, data_dir: Path, store: EventStore, *, supervise: bool,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.url = url
        self.db_path = db_path
        self.data_dir = data_dir
        self.store = store
        self.supervise = supervise
        self.poll_seconds = poll_seconds
        self.config: Path | None = None
        self.process = Process()
        self.status: status.ReplicaStatus | None = None
        self.status_error: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Write the config; start Litestream (when supervising) and the status poll. A
        missing binary stops the start (a set-up error); a replica that cannot be reached
        does not."""
        self.config = await asyncio.to_thread(
            urls.write_config, self.data_dir, self.db_path, self.url
        )
        if self.supervise:
            litestream.binary()
            self._tasks.append(asyncio.create_task(self._supervise(), name="litestream"))
        self._tasks.append(asyncio.create_task(self._poll(), name="replica-status"))
        log.info("replica.configured", url=self.url, config=str(self.config),
                 supervised=self.supervise)

    async def stop(self, within: float = STOP_SECONDS) -> None:
        """Stop Litestream with SIGTERM (it ships what is outstanding), killing it after
        ``within`` seconds; then the tasks."""
        self._stopping.set()
        supervisor = self._tasks[0] if self.supervise and self._tasks else None
        if supervisor is not None:
            # The first SIGTERM: Litestream ships what is outstanding (retrying for up to 30 s
            # when the replica fails); a second one ends the retries; then SIGKILL.
            for signum, wait in ((signal.SIGTERM, within), (signal.SIGTERM, 1.0),
                                 (signal.SIGKILL, 1.0)):
                if supervisor.done():
                    break
                if signum == signal.SIGKILL:
                    log.warning("replica.killed", pid=self.process.pid, waited=within)
                self._signal(signum)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(supervisor), wait)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _signal(self, signum: int) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    # -- the supervisor --------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF_START
        while not self._stopping.is_set():
            await self._autocheckpoint(0)
            if self._stopping.is_set():
                return
            started = time.monotonic()
            try:
                await self._run_once()
            except OSError as exc:
                self._error(f"litestream could not start: {exc}")
            except Exception as exc:  # supervision goes on whatever happened to one run
                log.exception("replica.supervisor_error")
                self._error(f"supervising litestream failed: {exc}")
            if self._stopping.is_set():
                return
            self.process.restarts += 1
            await self._autocheckpoint(SQLITE_AUTOCHECKPOINT)
            if time.monotonic() - started > HEALTHY_RUN:
                delay = BACKOFF_START
            log.error("replica.exited", code=self.process.last_exit, error=self.process.error,
                      restart_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, BACKOFF_CAP)

    async def _run_once(self) -> None:
        assert self.config is not None
        proc = await asyncio.create_subprocess_exec(
            str(litestream.binary()), "replicate", "-config", str(self.config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=litestream.environment(),
            preexec_fn=_die_with_parent, limit=LINE_LIMIT,
        )
        self._proc = proc
        self.process.pid, self.process.started = proc.pid, time.monotonic()
        log.info("replica.started", pid=proc.pid, url=self.url)
        try:
            assert proc.stdout is not None
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:
                    continue  # a line past the limit: asyncio drops it, the next ones follow
                if not raw:
                    break
                self._relay(raw.decode(errors="replace").strip())
        finally:
            self.process.last_exit = await proc.wait()
            self.process.pid = self.process.started = None
            self._proc = None

    def _relay(self, line: str) -> None:
        """Litestream's log line into ours: errors and warnings as such, the rest as debug."""
        if not line:
            return
        try:
            fields: dict[str, Any] = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError(line)
        except ValueError:
            fields = {"level": "ERROR" if line.startswith("Error") else "INFO", "msg": line}
        level = str(fields.pop("level", "INFO")).upper()
        message = str(fields.pop("msg", ""))
        fields.pop("time", None)
        extra = {k: v for k, v in fields.items() if isinstance(v, str | int | float | bool)}
        if level == "ERROR":
            detail = extra.get("error") or extra.get("err")
            self._error(f"{message}: {detail}" if detail else message)
            log.error("litestream", message=message, **extra)
        elif level.startswith("WARN"):
            log.warning("litestream", message=message, **extra)
        else:
            log.debug("litestream", message=message, **extra)

    def _error(self, text: str) -> None:
        self.process.error, self.process.error_at = text, time.monotonic()

    async def _autocheckpoint(self, pages: int) -> None:
        with contextlib.suppress(LoaclError, sqlite3.Error):
            await self.store.run_on_writer(
                lambda conn: conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            )

    # -- status ----------------------------------------------------------------------------

    async def _poll(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), FIRST_POLL)
        while not self._stopping.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_seconds)

    async def refresh(self) -> None:
        try:
            self.status = await asyncio.to_thread(self._read_status)
            self.status_error = None
        except (LoaclError, sqlite3.Error, OSError) as exc:
            message = exc.message if isinstance(exc, LoaclError) else str(exc)
            if message != self.status_error:
                log.warning("replica.status_failed", error=message)
            self.status_error = message

    def _read_status(self) -> status.ReplicaStatus:
        assert self.config is not None
        position = status.replica_position(self.config, self.db_path, timeout=POLL_TIMEOUT)
        conn = connect(self.db_path, readonly=True)
        try:
            return status.status(self.url, self.db_path, conn, position, datetime.now(UTC))
        finally:
            conn.close()

    def check(self) -> dict[str, Any]:
        """/readyz's ``replica`` entry: what is known, and ``ok`` false with the problems."""
        now = time.monotonic()
        found: dict[str, Any] = {"url": self.url, "supervised": self.supervise}
        problems: list[str] = []
        if self.supervise:
            found["running"] = self.process.pid is not None
            found["restarts"] = self.process.restarts
            if self.process.pid is None:
                problems.append(f"litestream is not running (last exit {self.process.last_exit})")
        current = self.status
        if current is not None:
            found["replica_txid"] = current.as_dict()["replica_txid"]
            found["last_sync"] = current.last_sync.isoformat() if current.last_sync else None
            found["lag_seconds"] = round(current.lag_seconds, 1)
            if current.lag_seconds > LAG_LIMIT:
                problems.append(f"the replica is {current.lag_seconds:.0f} s behind")
        if self.status_error is not None:
            problems.append(f"cannot read the replica: {self.status_error}")
        error_at = self.process.error_at
        if error_at is not None and now - error_at < ERROR_WINDOW:
            problems.append(f"litestream: {self.process.error}")
        found["ok"] = not problems
        if problems:
            found["error"] = "; ".join(problems)
        return found
