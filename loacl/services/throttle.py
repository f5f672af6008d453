"""Login throttling that holds under concurrency and cannot lock an owner out.

Three sliding-window counters of failed logins (docs/security.md gives the reasoning):

- per source address, over all accounts (``login_ip_failures``): one address guessing widely;
- per account *and* source (``login_account_failures``): one address guessing one account. Only
  that address is refused: the owner, elsewhere, logs in as usual;
- per account, over all sources (``login_account_alarm``): many addresses guessing one account.
  Past it, each address gets one try on that account per window instead of
  ``login_account_failures``; an address with no failure on it is still heard, so the owner's
  right password from a new address goes through.

An attempt is counted when it starts, before the password hash is checked, in one step with no
await between the checks and the counts: parallel tries cannot all pass the check before any of
them is counted. A successful login takes its own counts back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from loacl.domain.errors import LoaclError
from loacl.services.ratelimit import RateLimiter


def source_key(address: str) -> str:
    """The rate-limit key of a client address: IPv6 by its /64 (one host's usual share, which
    it may fill with addresses at will), IPv4 as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Attempt:
    """A login attempt in flight: the counts it made, given back if it succeeds."""

    account: str
    source: str
    at_source: float
    at_pair: float
    at_account: float


class LoginThrottle:
    def __init__(
        self,
        *,
        per_source: int,
        per_account_source: int,
        account_alarm: int,
        window_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.per_account_source = per_account_source
        self.account_alarm = account_alarm
        self.sources = RateLimiter(per_source, window_seconds, clock)
        self.pairs = RateLimiter(per_account_source, window_seconds, clock)
        self.accounts = RateLimiter(account_alarm, window_seconds, clock)

    def begin(self, account: str, address: str) -> Attempt:
        """Count an attempt on ``account`` from ``address``, or raise 429 ``rate_limited``
        with the seconds to wait. Synchronous on purpose: nothing else runs between the checks
        and the counts."""
        source = source_key(address)
        pair = f"{account}\n{source}"
        waits = [self.sources.retry_after(source)]
        allowed = self.per_account_source
        if self.accounts.count(account) >= self.account_alarm:
            allowed = 1  # under attack from many addresses: one try per address
        if self.pairs.count(pair) >= allowed:
            waits.append(self.pairs.wait_for(pair, allowed))
        wait = max(waits)
        if wait:
            raise LoaclError(
                "rate_limited", "too many failed logins; try again later", retry_after=wait
            )
        return Attempt(
            account, source, self.sources.hit(source), self.pairs.hit(pair),
            self.accounts.hit(account),
        )

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the attempt was no failure, and its address starts afresh
        on the account."""
        self.sources.unhit(attempt.source, attempt.at_source)
        self.accounts.unhit(attempt.account, attempt.at_account)
        self.pairs.reset(f"{attempt.account}\n{attempt.source}")
