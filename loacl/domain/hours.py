"""Office hours: when a widget's people answer. A handoff asked for outside them (or with nobody
online) tells the visitor when to expect a reply instead of leaving them waiting.

Times are wall-clock times in the widget's own time zone (an IANA name), so that "9:00 to
17:30" stays 9:00 to 17:30 across daylight-saving changes. A window is one weekday's opening,
closing after it opens on the same day; "24:00" closes at midnight, and an overnight shift is
two windows (22:00-24:00 on one day, 00:00-06:00 on the next). Closed dates (holidays) are
local dates on which no window opens.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loacl.domain.errors import LoaclError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 28
MAX_CLOSED_DATES = 366
# How far ahead the next opening is looked for: past every closed date, with a week to spare.
_HORIZON_DAYS = MAX_CLOSED_DATES + 8
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    day: str  # mon .. sun
    opens: str  # "HH:MM", local time
    closes: str  # "HH:MM" after opens, or "24:00"


@dataclass(frozen=True, slots=True, kw_only=True)
class OfficeHours:
    timezone: str = "UTC"
    windows: tuple[Window, ...] = ()
    closed_dates: tuple[str, ...] = ()  # ISO dates, local


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _bad(field: str, message: str) -> LoaclError:
    return LoaclError("validation_error", f"{field}: {message}",
                      errors=[{"field": field, "message": message}])


def checked_hours(hours: OfficeHours, field: str = "office_hours") -> OfficeHours:
    """The hours with windows sorted and duplicate dates dropped, or a refusal naming the first
    bad field: an unknown time zone, day or clock, a window that closes before it opens, or
    two windows of one day that overlap."""
    try:
        ZoneInfo(hours.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _bad(f"{field}.timezone", f"not a known time zone: {hours.timezone!r} "
                   "(an IANA name such as Europe/Paris)") from None
    if len(hours.windows) > MAX_WINDOWS:
        raise _bad(f"{field}.windows", f"at most {MAX_WINDOWS} windows")
    for index, window in enumerate(hours.windows):
        where = f"{field}.windows.{index}"
        if window.day not in DAYS:
            raise _bad(f"{where}.day", f"one of {', '.join(DAYS)}")
        for name in ("opens", "closes"):
            if not _CLOCK.match(getattr(window, name)):
                raise _bad(f"{where}.{name}", "a time of day as HH:MM (00:00 to 24:00)")
        if _minutes(window.closes) <= _minutes(window.opens):
            raise _bad(f"{where}.closes", "after opens on the same day; an overnight shift "
                       "is two windows")
    windows = sorted(hours.windows, key=lambda w: (DAYS.index(w.day), _minutes(w.opens)))
    for before, after in itertools.pairwise(windows):
        if before.day == after.day and _minutes(after.opens) < _minutes(before.closes):
            raise _bad(f"{field}.windows", f"two windows of {before.day} overlap "
                       f"({before.opens}-{before.closes} and {after.opens}-{after.closes})")
    if len(hours.closed_dates) > MAX_CLOSED_DATES:
        raise _bad(f"{field}.closed_dates", f"at most {MAX_CLOSED_DATES} dates")
    dates: list[str] = []
    for index, value in enumerate(hours.closed_dates):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise _bad(f"{field}.closed_dates.{index}", "a date as YYYY-MM-DD") from None
        if day.isoformat() not in dates:
            dates.append(day.isoformat())
    return OfficeHours(timezone=hours.timezone, windows=tuple(windows),
                       closed_dates=tuple(sorted(dates)))


def _spans(hours: OfficeHours, day: date) -> list[tuple[datetime, datetime]]:
    """The day's windows as aware local datetimes, each [opens, closes)."""
    if day.isoformat() in hours.closed_dates:
        return []
    zone = ZoneInfo(hours.timezone)
    name = DAYS[day.weekday()]
    spans = []
    for window in hours.windows:
        if window.day != name:
            continue
        opens = datetime.combine(day, _clock(window.opens), zone)
        closes = (datetime.combine(day + timedelta(days=1), time(0), zone)
                  if window.closes == "24:00" else
                  datetime.combine(day, _clock(window.closes), zone))
        spans.append((opens, closes))
    return spans


def _clock(value: str) -> time:
    minutes = _minutes(value)
    return time(minutes // 60, minutes % 60)


def is_open(hours: OfficeHours, at: datetime) -> bool:
    """Whether ``at`` (an aware moment) falls in one of the windows."""
    # Compared in UTC: two datetimes of one zone compare by wall clock, folds ignored.
    at = at.astimezone(UTC)
    local = at.astimezone(ZoneInfo(hours.timezone))
    return any(opens <= at < closes for opens, closes in _spans(hours, local.date()))


def next_opening(hours: OfficeHours, at: datetime) -> datetime | None:
    """The first moment at or after ``at`` when the hours are open (``at`` itself when they
    are), in UTC; None when no window opens within a year (no windows, or every one closed)."""
    at = at.astimezone(UTC)
    if is_open(hours, at):
        return at
    start = at.astimezone(ZoneInfo(hours.timezone)).date()
    for offset in range(_HORIZON_DAYS):
        for opens, closes in sorted(_spans(hours, start + timedelta(days=offset))):
            # A window that opens in a skipped hour (spring forward) counts from when its
            # wall-clock time exists; a window already running was caught by is_open.
            if opens.astimezone(UTC) >= at and closes > opens:
                return opens.astimezone(UTC)
    return None


NOBODY, CLOSED = "nobody", "closed"


@dataclass(frozen=True, slots=True)
class Away:
    """Why nobody answers a handoff at once: outside the hours (``closed``: the reply comes
    from ``next_opening`` on, None when no window opens within a year), or within them with
    no member online (``nobody``)."""

    reason: str  # closed | nobody
    next_opening: datetime | None
    timezone: str | None


def away(hours: OfficeHours | None, someone_online: bool, at: datetime) -> Away | None:
    """Whether a visitor asking for a person now should be told that nobody is there, and
    when to expect a reply; None: someone can answer now."""
    if hours is not None and not is_open(hours, at):
        return Away(CLOSED, next_opening(hours, at), hours.timezone)
    if not someone_online:
        return Away(NOBODY, None, hours.timezone if hours is not None else None)
    return None
