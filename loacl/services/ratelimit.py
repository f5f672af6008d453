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

    def sweep(self) -> None:
        """Forget every key with no hit in the window (one asked again is forgotten anyway)."""
        for key in list(self._hits):
            self._recent(key)

    def check(self, key: str, message: str = "too many attempts; try again later") -> None:
        """Count an attempt, or raise 429 ``rate_limited`` with the seconds to wait."""
        wait = self.retry_after(key)
        if wait:
            raise LoaclError("rate_limited", message, retry_after=wait)
        self.hit(key)


class WeightedLimiter:
    """A sliding window over amounts (bytes, say): at most ``limit`` in total within any
    ``window_seconds``. ``check`` is atomic: nothing awaits between the look and the count."""

    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self._hits: dict[str, deque[tuple[float, int]]] = {}
        self._totals: dict[str, int] = {}

    def _recent(self, key: str) -> deque[tuple[float, int]]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        cutoff = self.clock() - self.window
        while hits and hits[0][0] <= cutoff:
            self._totals[key] -= hits.popleft()[1]
        if not hits:
            del self._hits[key], self._totals[key]
        return hits

    def retry_after(self, key: str, amount: int) -> int:
        """Seconds until ``amount`` more fits for ``key``; 0 when it fits now. An amount over
        the whole limit never fits: the answer is the window."""
        if amount > self.limit:
            return max(1, math.ceil(self.window))
        hits = self._recent(key)
        total = self._totals.get(key, 0)
        if total + amount <= self.limit:
            return 0
        for at, weight in hits:
            total -= weight
            if total + amount <= self.limit:
                return max(1, math.ceil(at + self.window - self.clock()))
        return max(1, math.ceil(self.window))  # unreachable: the empty window fits

    def hit(self, key: str, amount: int) -> None:
        self._recent(key)
        self._hits.setdefault(key, deque()).append((self.clock(), amount))
        self._totals[key] = self._totals.get(key, 0) + amount

    def sweep(self) -> None:
        for key in list(self._hits):
            self._recent(key)


class Slots:
    """Counts of things held open at once (sockets, replies) per key, each at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def full(self, key: str) -> bool:
        return self.held(key) >= self.limit

    def take(self, key: str) -> None:
        self._held[key] = self.held(key) + 1

    def give_back(self, key: str) -> None:
        left = self.held(key) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)  # forget idle keys: the map stays as small as what is open
