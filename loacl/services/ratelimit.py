"""Sliding-window counters kept in memory (one process serves one database)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from loacl.domain.errors import LoaclError


class RateLimiter:
    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

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
        hits = self._recent(key)
        if len(hits) < self.limit:
            return 0
        return max(1, math.ceil(hits[0] + self.window - self.clock()))

    def hit(self, key: str) -> None:
        self._recent(key)
        self._hits.setdefault(key, deque()).append(self.clock())

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)

    def check(self, key: str, message: str = "too many attempts; try again later") -> None:
        """Count an attempt, or raise 429 ``rate_limited`` with the seconds to wait."""
        wait = self.retry_after(key)
        if wait:
            raise LoaclError("rate_limited", message, retry_after=wait)
        self.hit(key)
