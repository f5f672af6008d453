"""Budgets: what a widget may spend per UTC day and per UTC month, in tokens (input and output)
and in estimated US dollars (``model_prices``).

Checked before each call to the provider: a widget whose budget is used up refuses the message
with 429 ``budget_exhausted`` (nothing is written) until the period ends. The check counts every
reply that has ended (``usage.ledger`` reads the roll-up and what its subscriber has not reached
yet); replies streaming at that moment are counted when they end, so a budget can be passed by
at most what the replies already under way use.

The owner hears of it by mail, once per period and threshold, at ``budget_warn_percent`` and at
100%: the ``budget-mail`` subscriber reads each reply's end from the log, at least once (a mail
sent again after a crash keeps its Message-ID), and remembers what it sent in
``budget_alerts``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import structlog

from loacl.domain.conversations import AssistantCompleted
from loacl.domain.errors import LoaclError
from loacl.domain.events import RecordedEvent
from loacl.domain.widgets import WidgetBudget
from loacl.services.mail import Mailer
from loacl.settings import ModelPrice, Settings
from loacl.store import usage
from loacl.store.codec import format_time
from loacl.store.eventstore import Clock, EventStore, utc_now
from loacl.store.subscriptions import Effect
from loacl.store.views import widgets as widget_views
from loacl.store.views import workspaces as workspace_views

log = structlog.get_logger(__name__)

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
MAIL_SUBSCRIBER = "budget-mail"


@dataclass(frozen=True, slots=True)
class Limits:
    """A widget's budgets with the server's defaults filled in; 0: no limit."""

    daily_tokens: int
    monthly_tokens: int
    daily_cost: float
    monthly_cost: float


def limits_of(budget: WidgetBudget, settings: Settings) -> Limits:
    b, s = budget, settings
    return Limits(
        s.budget_daily_tokens if b.daily_tokens is None else b.daily_tokens,
        s.budget_monthly_tokens if b.monthly_tokens is None else b.monthly_tokens,
        s.budget_daily_cost if b.daily_cost is None else b.daily_cost,
        s.budget_monthly_cost if b.monthly_cost is None else b.monthly_cost,
    )


def price_of(model: str, prices: dict[str, ModelPrice]) -> ModelPrice | None:
    """The model's price; a dated snapshot (``gpt-4.1-2025-04-14``) has its model's."""
    return prices.get(model) or prices.get(_DATED.sub("", model))


def cost_of(row: usage.UsageRow, prices: dict[str, ModelPrice]) -> float | None:
    """Estimated US dollars of a usage row, or None when its model has no price."""
    price = price_of(row.model, prices)
    if price is None:
        return None
    return (row.input_tokens * price.input + row.output_tokens * price.output) / 1_000_000


@dataclass(frozen=True, slots=True)
class Spend:
    """What a widget has used on one UTC day and in its month, to that day."""

    day: date
    day_tokens: int
    month_tokens: int
    day_cost: float
    month_cost: float


@dataclass(frozen=True, slots=True)
class Use:
    """One measure of one period against its limit."""

    period: str  # "day" | "month"
    measure: str  # "tokens" | "cost"
    used: float
    limit: float

    @property
    def percent(self) -> float:
        return 100 * self.used / self.limit


def uses(spend: Spend, limits: Limits) -> list[Use]:
    """Each budget that is on (not 0), with what it has used."""
    found = [
        Use("day", "tokens", spend.day_tokens, limits.daily_tokens),
        Use("month", "tokens", spend.month_tokens, limits.monthly_tokens),
        Use("day", "cost", spend.day_cost, limits.daily_cost),
        Use("month", "cost", spend.month_cost, limits.monthly_cost),
    ]
    return [use for use in found if use.limit > 0]


def period_end(period: str, day: date) -> datetime:
    """When a day's or a month's budget starts again (UTC)."""
    if period == "day":
        return datetime.combine(day + timedelta(days=1), time(), UTC)
    first = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime.combine(first, time(), UTC)


def period_key(period: str, day: date) -> str:
    return day.isoformat() if period == "day" else day.isoformat()[:7]


class Budgets:
    def __init__(self, store: EventStore, settings: Settings, clock: Clock = utc_now) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    async def spend(self, widget_id: str, day: date) -> Spend:
        rows = await usage.ledger(
            self.store, widget_id=widget_id, since=day.replace(day=1).isoformat(),
            until=day.isoformat(),
        )
        prices = self.settings.model_prices
        today = day.isoformat()
        day_tokens = month_tokens = 0
        day_cost = month_cost = 0.0
        for row in rows:
            cost = cost_of(row, prices) or 0.0  # a model with no price counts as tokens only
            month_tokens += row.tokens
            month_cost += cost
            if row.day == today:
                day_tokens += row.tokens
                day_cost += cost
        return Spend(day, day_tokens, month_tokens, day_cost, month_cost)

    async def check(self, widget_id: str, budget: WidgetBudget) -> None:
        """Refuse with ``budget_exhausted`` when a budget of the widget is used up; the
        ``retry_after`` is when the longest of those periods ends."""
        limits = limits_of(budget, self.settings)
        if not any((limits.daily_tokens, limits.monthly_tokens, limits.daily_cost,
                    limits.monthly_cost)):
            return
        now = self.clock()
        spend = await self.spend(widget_id, now.astimezone(UTC).date())
        spent = [use for use in uses(spend, limits) if use.used >= use.limit]
        if not spent:
            return
        until = max(period_end(use.period, spend.day) for use in spent)
        log.info("budget.exhausted", widget_id=widget_id,
                 budgets=[f"{use.period}_{use.measure}" for use in spent])
        raise LoaclError(
            "budget_exhausted",
            "this assistant has reached its usage limit for now; try again later",
            retry_after=max(1, int((until - now).total_seconds())),
        )


# Told when a widget used up a budget: owner, widget, period (day, month), its key, measures.
BudgetReached = Callable[[str, str, str, str, list[str]], Awaitable[None]]


class BudgetMail:
    """The owner's mail at ``budget_warn_percent`` and at 100% of a budget, once per widget,
    period and threshold."""

    def __init__(
        self, budgets: Budgets, mailer: Mailer, reached: BudgetReached | None = None
    ) -> None:
        self.budgets = budgets
        self.reached = reached
        self.store = budgets.store
        self.settings = budgets.settings
        self.mailer = mailer

    def subscriber(self) -> Effect:
        return Effect(MAIL_SUBSCRIBER, self.handle,
                      types=frozenset({AssistantCompleted.event_type}))

    async def handle(self, events: Sequence[RecordedEvent]) -> None:
        widgets = await usage.reply_widgets(
            self.store, [r.event.message_id for r in events
                         if isinstance(r.event, AssistantCompleted)]
        )
        # Each widget once per UTC day its replies ended on, in order.
        seen: dict[tuple[str, date], None] = {}
        for recorded in events:
            event = recorded.event
            if isinstance(event, AssistantCompleted) and event.message_id in widgets:
                day = recorded.recorded_at.astimezone(UTC).date()
                seen[(widgets[event.message_id], day)] = None
        for widget_id, day in seen:
            await self._check(widget_id, day)

    async def _check(self, widget_id: str, day: date) -> None:
        widget = await widget_views.widget(self.store, widget_id)
        if widget is None:
            return
        limits = limits_of(widget.definition.budget, self.settings)
        spend = await self.budgets.spend(widget_id, day)
        warn = self.settings.budget_warn_percent
        periods = {period: period_key(period, day) for period in ("day", "month")}
        sent = await usage.alerts_sent(self.store, widget_id, list(periods.values()))
        for period, key in periods.items():
            reached = [use for use in uses(spend, limits) if use.period == period]
            thresholds = sorted({t for use in reached for t in (warn, 100) if use.percent >= t})
            new = [t for t in thresholds if (key, t) not in sent]
            if not new:
                continue
            # One mail for the highest threshold reached; a lower one not sent yet never will.
            await self._mail(widget, period, key, max(new), reached)
            if 100 in new and self.reached is not None:
                # Webhooks: sent once, whatever repeats (the deliveries' ids are stable).
                await self.reached(widget.owner_id, widget.widget_id, period, key,
                                   [f"{use.period}_{use.measure}" for use in reached
                                    if use.percent >= 100])
            await usage.record_alerts(self.store, widget_id, key, new,
                                      format_time(self.budgets.clock()))

    async def _mail(
        self, widget: widget_views.WidgetView, period: str, key: str, threshold: int,
        reached: list[Use],
    ) -> None:
        # The workspace's owners (owner_id is the workspace's id).
        addresses = await workspace_views.owner_emails(self.store, widget.owner_id)
        if not addresses:  # the demo's built-in owner has no mailbox
            log.info("budget.alert_without_owner", widget_id=widget.widget_id, period=key,
                     threshold=threshold)
            return
        name = widget.definition.name
        which = "daily" if period == "day" else "monthly"
        subject = (f"LOACL: widget “{name}” has used up its {which} budget" if threshold >= 100
                   else f"LOACL: widget “{name}” has used {threshold}% of its {which} budget")
        lines = [f"Your widget “{name}” ({widget.widget_id}) has used, in {key} (UTC):", ""]
        for use in reached:
            if use.measure == "tokens":
                lines.append(f"- {use.used:,.0f} of {use.limit:,.0f} tokens "
                             f"({use.percent:.0f}%)")
            else:
                lines.append(f"- an estimated ${use.used:,.4f} of ${use.limit:,.2f} "
                             f"({use.percent:.0f}%)")
        ends = period_end(period, date.fromisoformat(key + ("" if period == "day" else "-01")))
        lines += [
            "",
            "Once a budget is used up, visitors are told that the assistant has reached its "
            f"usage limit, until {ends:%Y-%m-%d %H:%M} UTC.",
            "To change the budget, edit the widget's \"budget\" (PUT /api/v1/widgets/"
            f"{widget.widget_id}); GET /api/v1/usage shows the usage per day.",
        ]
        message_id = f"<budget.{widget.widget_id}.{key}.{threshold}@loacl>"
        for address in addresses:
            await self.mailer.deliver(address, subject, "\n".join(lines) + "\n", message_id)
        log.info("budget.alert_sent", widget_id=widget.widget_id, period=key,
                 threshold=threshold)
