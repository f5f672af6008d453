"""Sliding-window counters kept in memory (one process serves one database)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from loacl.domain.errors import LoaclError

SWEEP_EVERY = 1024  # hits between sweeps of idle keys


class RateLimiter:
    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._hit_count = 0

    def _recent(self, key: str) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        cutoff = self.clock() - self.window
        while hits and hits[0] <= cutoff:
            hits.popleft()
        if not hits:
            # Forget idle keys so that the map does not grow without bound.
            del self._hits[key]
            hits = deque()
        return hits

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again; 0 when it may now."""
        return self.wait_for(key, self.limit)

    def wait_for(self, key: str, limit: int) -> int:
        """Seconds until ``key`` has fewer than ``limit`` hits in the window; 0 when it has."""
        hits = self._recent(key)
        if len(hits) < limit:
            return 0
        return max(1, math.ceil(hits[len(hits) - limit] + self.window - self.clock()))

    def count(self, key: str) -> int:
        """Hits of ``key`` within the window."""
        return len(self._recent(key))

    def hit(self, key: str) -> float:
        """Count a hit now; returns its time, for ``unhit``."""
        self._recent(key)
        at = self.clock()
        self._hits.setdefault(key, deque()).append(at)
        self._hit_count += 1
        if self._hit_count % SWEEP_EVERY == 0:
            self._sweep()
        return at

    def unhit(self, key: str, at: float) -> None:
        """Take back the hit made at ``at`` (an attempt that turned out not to count)."""
        hits = self._hits.get(key)
        if hits is not None and at in hits:
            hits.remove(at)
            if not hits:
                del self._hits[key]

    def _sweep(self) -> None:
        """Drop keys whose every hit is out of the window: keys nobody asks about again (a
        made-up e-mail address, an address gone quiet) must not pile up."""
        cutoff = self.clock() - self.window
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= cutoff]:
            del self._hits[key]

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)

    def check(self, key: str, message: str = "too many attempts; try again later") -> None:
        """Count an attempt, or raise 429 ``rate_limited`` with the seconds to wait."""
        wait = self.retry_after(key)
        if wait:
            raise LoaclError("rate_limited", message, retry_after=wait)
        self.hit(key)
