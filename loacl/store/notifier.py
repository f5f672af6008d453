"""Tells waiters that the log has grown past a position; holds no events.

The store calls ``advance(seq)`` after each commit. A subscriber that has read the log up to
``position`` and found nothing more calls ``await wait_past(position)``: it returns at once if
a commit past it has been seen, otherwise when the next one is. Nothing is queued per waiter, so
a slow subscriber costs neither memory nor the writer's time: it reads the log at its own pace.
"""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._head = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def head(self) -> int:
        """The highest position committed in this process that was announced; a hint only
        (another process may have appended since), never a reason to skip reading the log."""
        return self._head

    def advance(self, head: int) -> None:
        if head <= self._head:
            return
        self._head = head
        self._wake()

    def close(self) -> None:
        """Wake every waiter: the store is closing, and nobody should stay parked on it (a
        woken subscriber then finds the store closed and ends)."""
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_past(self, position: int) -> int:
        """Wait until a commit past ``position`` is announced or the store closes; returns
        the head. Callers bound the wait (``asyncio.timeout``) and then read the log anyway: an
        append by another process, such as a CLI command, announces nothing here."""
        if self._head > position:
            return self._head
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return self._head
