"""Visitor abuse limits: what one visitor, and one client address, may start, send, upload and
hold open at once. Every refusal is a 429 ``rate_limited`` with the seconds to wait.

A visitor token names one visitor, and anyone may script ``POST /sessions`` for more, so each
per-visitor limit has a per-address twin that new sessions do not reset. The address is the one
``loacl.http.common.client_ip`` finds (the event metadata's ``client_ip``). Counts live in
memory: one process serves one database, and a restart forgetting them costs little next to
the budgets (``loacl.services.budgets``), which are counted from the log.

Each check looks at every counter first and counts only when all allow it, with no await in
between: parallel requests cannot slip past a limit together, and a refused request costs
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loacl.domain.errors import LoaclError
from loacl.services.ratelimit import RateLimiter, Slots, WeightedLimiter
from loacl.settings import Settings

DAY = 24 * 3600.0
# Keys are forgotten when asked again after their window; those never asked again are swept
# this often, so that a day of passing addresses does not stay in memory.
SWEEP_SECONDS = 600.0
# No clock says when a slot frees up: a short wait, then the client tries again.
REPLY_RETRY = 2
SOCKET_RETRY = 10


def _ip(ip: str | None) -> str:
    return f"ip:{ip or 'unknown'}"


def _visitor(visitor_id: str) -> str:
    return f"visitor:{visitor_id}"


class Lease:
    """Slots taken together and given back together, once (``release`` may be called again)."""

    def __init__(self) -> None:
        self._held: list[tuple[Slots, str]] = []

    def add(self, slots: Slots, key: str) -> None:
        slots.take(key)
        self._held.append((slots, key))

    def release(self) -> None:
        held, self._held = self._held, []
        for slots, key in held:
            slots.give_back(key)


class VisitorLimits:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        s = self.settings = settings
        self.clock = clock
        self.sessions = RateLimiter(s.sessions_per_ip_hour, 3600, clock)
        self._per_minute: dict[int, RateLimiter] = {}  # by the widget's messages_per_minute
        self.ip_minute = RateLimiter(s.messages_per_ip_minute, 60, clock)
        self.visitor_day = RateLimiter(s.messages_per_visitor_day, DAY, clock)
        self.ip_day = RateLimiter(s.messages_per_ip_day, DAY, clock)
        self.uploads_visitor = RateLimiter(s.uploads_per_visitor_day, DAY, clock)
        self.uploads_ip = RateLimiter(s.uploads_per_ip_day, DAY, clock)
        self.bytes_visitor = WeightedLimiter(s.upload_bytes_per_visitor_day, DAY, clock)
        self.bytes_ip = WeightedLimiter(s.upload_bytes_per_ip_day, DAY, clock)
        self.sockets_visitor = Slots(s.sockets_per_visitor)
        self.sockets_ip = Slots(s.sockets_per_ip)
        self.replies_widget = Slots(s.provider_concurrency)
        self.replies_ip = Slots(s.replies_per_ip)
        self._swept = clock()

    def _windows(self) -> list[RateLimiter | WeightedLimiter]:
        return [self.sessions, self.ip_minute, self.visitor_day, self.ip_day,
                self.uploads_visitor, self.uploads_ip, self.bytes_visitor, self.bytes_ip,
                *self._per_minute.values()]

    def _sweep_if_due(self) -> None:
        now = self.clock()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            for window in self._windows():
                window.sweep()

    @staticmethod
    def _counted(*groups: tuple[list[tuple[RateLimiter, str]], str]) -> None:
        """Count one hit on each (limiter, key) of every group, or refuse with the message of
        the first group that has a full limiter (the longest wait in it), counting none."""
        for checks, message in groups:
            wait = max((lim.retry_after(key) for lim, key in checks if lim.limit), default=0)
            if wait:
                raise LoaclError("rate_limited", message, retry_after=wait)
        for checks, _ in groups:
            for limiter, key in checks:
                if limiter.limit:
                    limiter.hit(key)

    def new_session(self, ip: str | None) -> None:
        """A new anonymous session from ``ip`` (a returning visitor's token is not one)."""
        self._sweep_if_due()
        self._counted(([(self.sessions, _ip(ip))],
                       "too many new chats from your network; try again later"))

    def message(self, visitor_id: str, ip: str | None, per_minute: int) -> None:
        """A message from a visitor: the widget's rate per visitor, and the server's per
        address and per day."""
        self._sweep_if_due()
        limiter = self._per_minute.get(per_minute)
        if limiter is None:
            limiter = self._per_minute[per_minute] = RateLimiter(per_minute, 60, self.clock)
        visitor, address = _visitor(visitor_id), _ip(ip)
        # The minute first: a burst is told to wait seconds, not until tomorrow.
        self._counted(
            ([(limiter, visitor), (self.ip_minute, address)],
             "you are sending messages too fast; wait a moment"),
            ([(self.visitor_day, visitor), (self.ip_day, address)],
             "you have sent as many messages as allowed for today; try again later"),
        )

    def upload(self, visitor_id: str, ip: str | None, size: int) -> None:
        """A file of ``size`` bytes, before it is stored."""
        self._sweep_if_due()
        visitor, address = _visitor(visitor_id), _ip(ip)
        weighed = [(lim, key) for lim, key in ((self.bytes_visitor, visitor),
                                               (self.bytes_ip, address)) if lim.limit]
        counted = [(lim, key) for lim, key in ((self.uploads_visitor, visitor),
                                               (self.uploads_ip, address)) if lim.limit]
        wait = max([lim.retry_after(key, size) for lim, key in weighed]
                   + [lim.retry_after(key) for lim, key in counted], default=0)
        if wait:
            raise LoaclError("rate_limited", "you have uploaded as many files as allowed for "
                             "now; try again later", retry_after=wait)
        for weighted, key in weighed:
            weighted.hit(key, size)
        for limiter, key in counted:
            limiter.hit(key)

    def socket(self, ip: str | None, visitor_id: str | None = None) -> Lease:
        """A streaming socket from ``ip`` (and, once known, its visitor): held until
        ``release``."""
        lease = Lease()
        self._hold(lease, self.sockets_ip, _ip(ip))
        if visitor_id is not None:
            self.socket_visitor(lease, visitor_id)
        return lease

    def socket_visitor(self, lease: Lease, visitor_id: str) -> None:
        """The socket's visitor, known from its first frame: counted, or the lease given back
        and the socket refused."""
        try:
            self._hold(lease, self.sockets_visitor, _visitor(visitor_id))
        except LoaclError:
            lease.release()
            raise

    def _hold(self, lease: Lease, slots: Slots, key: str) -> None:
        if slots.limit and slots.full(key):
            raise LoaclError(
                "rate_limited", "too many open chat connections; close another tab or try "
                "again shortly", retry_after=SOCKET_RETRY,
            )
        lease.add(slots, key)

    def reply(self, widget_id: str, ip: str | None) -> Lease:
        """A reply slot of the widget (``provider_concurrency``), of which one address holds
        at most ``replies_per_ip``: a few sessions cannot lock real visitors out."""
        widget, address = widget_id, f"{widget_id}:{_ip(ip)}"
        if self.replies_widget.full(widget):
            raise LoaclError(
                "rate_limited", "this assistant is answering many visitors; try again shortly",
                retry_after=REPLY_RETRY,
            )
        if self.replies_ip.limit and self.replies_ip.full(address):
            raise LoaclError(
                "rate_limited", "too many answers at once for your network; try again shortly",
                retry_after=REPLY_RETRY,
            )
        lease = Lease()
        lease.add(self.replies_widget, widget)
        if self.replies_ip.limit:
            lease.add(self.replies_ip, address)
        return lease

