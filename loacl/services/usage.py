"""An owner's usage: replies, tokens and estimated cost of their widgets, per UTC day, widget or
assistant, from the ``usage`` roll-up and the replies that ended since it last ran."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta

from loacl.domain.errors import LoaclError
from loacl.services.budgets import cost_of
from loacl.settings import Settings
from loacl.store import usage
from loacl.store.eventstore import EventStore

GROUPS = ("day", "widget", "assistant")
MAX_DAYS = 366


@dataclass
class UsageLine:
    """One group's totals; ``key`` is the day, widget id or assistant id."""

    key: str
    name: str | None = None
    replies_completed: int = 0
    replies_failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_cost: float = 0.0
    unpriced_tokens: int = 0  # tokens of models with no price in model_prices
    models: set[str] = field(default_factory=set)
    feedback_up: int = 0  # visitors' ratings of replies, by the day each was given
    feedback_down: int = 0

    def rated(self, row: usage.FeedbackRow) -> None:
        self.feedback_up += row.up
        self.feedback_down += row.down

    def add(self, row: usage.UsageRow, cost: float | None) -> None:
        self.replies_completed += row.replies_completed
        self.replies_failed += row.replies_failed
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        if cost is None:
            self.unpriced_tokens += row.tokens
        else:
            self.estimated_cost += cost
        if row.model:
            self.models.add(row.model)


@dataclass(frozen=True)
class UsageReport:
    since: date
    until: date
    group_by: str
    lines: list[UsageLine]
    total: UsageLine


_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(value: str, name: str) -> date:
    try:
        if not _FULL_DATE.fullmatch(value):  # fromisoformat also takes 20300517 and 2030-W20
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise LoaclError(
            "validation_error", f"{name}: a day as YYYY-MM-DD (UTC)",
            errors=[{"field": name, "message": "expected YYYY-MM-DD"}],
        ) from None


def period(since: str | None, until: str | None, today: date) -> tuple[date, date]:
    """The days asked for: ``until`` defaults to today, ``since`` to 29 days before it."""
    end = _day(until, "to") if until is not None else today
    start = _day(since, "from") if since is not None else end - timedelta(days=29)
    if start > end:
        raise LoaclError("validation_error", "from: on or before to",
                         errors=[{"field": "from", "message": "after to"}])
    if (end - start).days >= MAX_DAYS:
        raise LoaclError("validation_error", f"from, to: at most {MAX_DAYS} days",
                         errors=[{"field": "from", "message": f"more than {MAX_DAYS} days"}])
    return start, end


async def report(
    store: EventStore, settings: Settings, owner_id: str, *, since: date, until: date,
    group_by: str, widget_id: str | None = None,
) -> UsageReport:
    if group_by not in GROUPS:
        raise LoaclError(
            "validation_error", f"group_by: one of {', '.join(GROUPS)}",
            errors=[{"field": "group_by", "message": f"one of {', '.join(GROUPS)}",
                     "accepted": list(GROUPS)}],
        )
    rows = await usage.ledger(store, owner_id=owner_id, widget_id=widget_id,
                              since=since.isoformat(), until=until.isoformat())
    known = await usage.names(store, owner_id) if group_by != "day" else {}
    lines: dict[str, UsageLine] = {}
    total = UsageLine("total")
    for row in rows:
        key = {"day": row.day, "widget": row.widget_id, "assistant": row.assistant_id}[group_by]
        line = lines.get(key)
        if line is None:
            line = lines[key] = UsageLine(key, known.get(key))
        cost = cost_of(row, settings.model_prices)
        line.add(row, cost)
        total.add(row, cost)
    ratings = await usage.feedback(store, owner_id=owner_id, widget_id=widget_id,
                                   since=since.isoformat(), until=until.isoformat())
    for rating in ratings:
        key = {"day": rating.day, "widget": rating.widget_id,
               "assistant": rating.assistant_id}[group_by]
        line = lines.get(key)
        if line is None:
            line = lines[key] = UsageLine(key, known.get(key))
        line.rated(rating)
        total.rated(rating)
    return UsageReport(since, until, group_by, sorted(lines.values(), key=lambda x: x.key),
                       total)
