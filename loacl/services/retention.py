"""Retention: conversations idle for longer than their widget's ``retention_days`` are erased.

A job of the running server, not a subscriber of the log: what makes a conversation due is the
clock, not an event. Every ``retention_check_minutes`` it asks the read tables which
conversations are due and erases at most ``retention_batch`` of them, each with an erasure of
its own (one small write, queued with the visitors'), and goes on at once while more are due.
Its time is the app's clock, so a test can move it forward.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.services.privacy import Privacy
from loacl.store.codec import format_time
from loacl.store.eventstore import Clock
from loacl.store.views import privacy as views

log = structlog.get_logger(__name__)

ACTOR = "loacl:retention"
META = Metadata(actor=ACTOR)


@dataclass(frozen=True)
class DueWidget:
    widget_id: str
    name: str
    retention_days: int
    due: int
    oldest_activity: str | None


class Retention:
    def __init__(
        self, privacy: Privacy, clock: Clock, *, every_seconds: float, batch: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.privacy = privacy
        self.store = privacy.store
        self.clock = clock
        self.every_seconds = every_seconds
        self.batch = batch
        self.sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._erasures: int | None = None  # the count the WAL was last cut at

    async def due(self) -> list[DueWidget]:
        """Every widget with a retention period, and how many of its conversations are due."""
        now = self.clock()
        found = []
        for widget in await views.widgets_with_retention(self.store):
            cutoff = format_time(now - timedelta(days=widget.retention_days))
            due = await views.due(self.store, widget.widget_id, cutoff)
            found.append(DueWidget(widget.widget_id, widget.name, widget.retention_days,
                                   due.count, due.oldest_activity))
        return found

    async def run_once(self) -> int:
        """Erase at most ``batch`` conversations that are due; how many were erased."""
        if self._erasures is None:
            self._erasures = await views.erasures(self.store)
        now = self.clock()
        erased = 0
        for widget in await views.widgets_with_retention(self.store):
            cutoff = format_time(now - timedelta(days=widget.retention_days))
            for conversation_id in await views.idle_conversations(
                self.store, widget.widget_id, cutoff, self.batch - erased
            ):
                try:
                    done = await self.privacy.erase_idle(conversation_id, cutoff, meta=META)
                except LoaclError as exc:
                    if exc.code != "subject_erased":  # another process erased it first
                        raise
                    done = False
                if not done:  # a visitor wrote meanwhile
                    log.info("retention.kept", conversation_id=conversation_id)
                    continue
                erased += 1
                await asyncio.sleep(0)  # let the visitors' work in between
            if erased >= self.batch:
                break
        if erased:
            log.info("retention.erased", conversations=erased)
        await self._cut_after_erasures()
        return erased

    async def _cut_after_erasures(self) -> None:
        """Cut the WAL when anything was erased since the last round: this server's erasures
        cut it themselves, but one made by ``loacl privacy erase`` beside it leaves the cut to
        the server (two parties checkpointing at once is what SQLite's WAL-reset bug needs)."""
        count = await views.erasures(self.store)
        if count != self._erasures:
            await self.privacy.cut_wal()
        self._erasures = count

    async def run(self) -> None:
        while True:
            try:
                erased = await self.run_once()
            except LoaclError as exc:
                if exc.code == "store_closed":
                    return
                log.warning("retention.failed", code=exc.code, error=exc.message)
                erased = 0
            except Exception:
                log.exception("retention.failed")
                erased = 0
            await self.sleep(0 if erased >= self.batch else self.every_seconds)

    def start(self) -> None:
        if self.every_seconds > 0 and self._task is None:
            self._task = asyncio.create_task(self.run(), name="retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
