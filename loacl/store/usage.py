"""The ``usage`` subscriber: replies and tokens per widget, UTC day, assistant and model, in
``usage_daily``; and the reads that budgets and the usage API make of it.

A table subscriber, so each reply's end event counts exactly once. A reply's widget, assistant
and model come from the read tables (its message row, then its conversation's), which the
append's own transaction filled long before this subscriber reads the event, and which replay
rebuilds the same.

:func:`ledger` reads the roll-up *and* the end events the subscriber has not reached yet, in one
statement (one snapshot): the roll-up and its checkpoint are written together, so the two parts
never overlap and never leave a gap. A budget checked right after a reply sees that reply.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any

from loacl.domain.conversations import AssistantCompleted, AssistantFailed
from loacl.domain.events import RecordedEvent
from loacl.store.eventstore import EventStore
from loacl.store.subscriptions import Table

NAME = "usage"
UNKNOWN = ""  # a reply whose message or conversation row is missing
_REPLY_OF = (
    "SELECT c.widget_id, coalesce(m.assistant_id, ''), coalesce(m.model, '') "
    "FROM messages AS m JOIN conversations AS c ON c.conversation_id = m.conversation_id "
    "WHERE m.message_id = ?"
)
_ADD = (
    "INSERT INTO usage_daily (widget_id, day, assistant_id, model, replies_completed, "
    "replies_failed, input_tokens, output_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (widget_id, day, assistant_id, model) DO UPDATE SET "
    "replies_completed = replies_completed + excluded.replies_completed, "
    "replies_failed = replies_failed + excluded.replies_failed, "
    "input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens"
)
_COLUMNS = (
    "widget_id, day, assistant_id, model, replies_completed, replies_failed, input_tokens, "
    "output_tokens"
)
# The roll-up, and the end events after the subscriber's checkpoint counted the same way.
# recorded_at is ISO 8601 in UTC, so its first ten characters are the UTC day.
_LEDGER = f"""
WITH ledger AS (
    SELECT {_COLUMNS} FROM usage_daily
    UNION ALL
    SELECT c.widget_id, substr(e.recorded_at, 1, 10), coalesce(m.assistant_id, ''),
           coalesce(m.model, ''), e.type = 'assistant.completed', e.type = 'assistant.failed',
           coalesce(json_extract(e.payload, '$.usage.input_tokens'), 0),
           coalesce(json_extract(e.payload, '$.usage.output_tokens'), 0)
    FROM events AS e
    JOIN messages AS m ON m.message_id = json_extract(e.payload, '$.message_id')
    JOIN conversations AS c ON c.conversation_id = m.conversation_id
    WHERE e.seq > coalesce(
        (SELECT position FROM subscriber_checkpoints WHERE name = '{NAME}'), 0)
      AND e.type IN ('{AssistantCompleted.event_type}', '{AssistantFailed.event_type}')
)
SELECT l.widget_id, l.day, l.assistant_id, l.model, sum(l.replies_completed),
       sum(l.replies_failed), sum(l.input_tokens), sum(l.output_tokens)
FROM ledger AS l
"""
_GROUP = " GROUP BY l.widget_id, l.day, l.assistant_id, l.model ORDER BY l.day, l.widget_id"


@dataclass(frozen=True, slots=True)
class UsageDay:
    """Replies and tokens of one widget on one UTC day (every assistant and model)."""

    widget_id: str
    day: str
    replies_completed: int
    replies_failed: int
    input_tokens: int
    output_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Replies and tokens of one widget, UTC day, assistant and model."""

    widget_id: str
    day: str
    assistant_id: str
    model: str
    replies_completed: int
    replies_failed: int
    input_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def apply(conn: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
    for recorded in events:
        event = recorded.event
        if isinstance(event, AssistantCompleted):
            counts = (1, 0, event.usage.input_tokens, event.usage.output_tokens)
        elif isinstance(event, AssistantFailed):
            counts = (0, 1, 0, 0)
        else:
            continue
        row = conn.execute(_REPLY_OF, (event.message_id,)).fetchone()
        widget, assistant, model = (UNKNOWN, UNKNOWN, UNKNOWN) if row is None else row
        day = recorded.recorded_at.astimezone(UTC).date().isoformat()
        conn.execute(_ADD, (widget, day, assistant, model, *counts))


subscriber = Table(
    NAME,
    apply,
    types=frozenset({AssistantCompleted.event_type, AssistantFailed.event_type}),
    tables=("usage_daily",),
)


def daily(conn: sqlite3.Connection, widget_id: str | None = None) -> list[UsageDay]:
    """The roll-up as it stands, per widget and day (for ``loacl usage``)."""
    sql = (
        "SELECT widget_id, day, sum(replies_completed), sum(replies_failed), "
        "sum(input_tokens), sum(output_tokens) FROM usage_daily"
    )
    params: tuple[str, ...] = ()
    if widget_id is not None:
        sql, params = f"{sql} WHERE widget_id = ?", (widget_id,)
    sql += " GROUP BY widget_id, day ORDER BY day, widget_id"
    return [UsageDay(*row) for row in conn.execute(sql, params)]


async def ledger(
    store: EventStore, *, since: str, until: str, widget_id: str | None = None,
    owner_id: str | None = None,
) -> list[UsageRow]:
    """Usage from day ``since`` to day ``until`` (both included, YYYY-MM-DD), up to the last
    reply that ended: of one widget, or of the widgets one owner has now."""
    where = ["l.day >= ?", "l.day <= ?"]
    params: list[str] = [since, until]
    sql = _LEDGER
    if owner_id is not None:
        sql += " JOIN widgets AS w ON w.widget_id = l.widget_id"
        where.append("w.owner_id = ?")
        params.append(owner_id)
    if widget_id is not None:
        where.append("l.widget_id = ?")
        params.append(widget_id)
    rows = await store.query(f"{sql} WHERE {' AND '.join(where)}{_GROUP}", params)
    return [UsageRow(*row) for row in rows]


async def reply_widgets(store: EventStore, message_ids: Sequence[str]) -> dict[str, str]:
    """The widget of each reply, by its message id (replies whose rows are gone are left out)."""
    found: dict[str, str] = {}
    # In chunks: SQLite caps the parameters of one statement.
    for start in range(0, len(message_ids), 500):
        chunk = list(message_ids[start:start + 500])
        rows = await store.query(
            "SELECT m.message_id, c.widget_id FROM messages AS m JOIN conversations AS c "
            "ON c.conversation_id = m.conversation_id "
            f"WHERE m.message_id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        found.update((message_id, widget_id) for message_id, widget_id in rows)
    return found


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """Ratings given on one UTC day to replies of one widget and assistant."""

    widget_id: str
    day: str
    assistant_id: str
    up: int
    down: int


async def feedback(
    store: EventStore, *, since: str, until: str, owner_id: str, widget_id: str | None = None
) -> list[FeedbackRow]:
    """Visitors' ratings of replies from day ``since`` to ``until`` (the day each was last
    given), of one widget or of the widgets one owner has now; from the messages read table,
    which holds each reply's newest rating."""
    sql = (
        "SELECT c.widget_id, substr(m.feedback_at, 1, 10) AS day, coalesce(m.assistant_id, ''), "
        "sum(m.feedback_rating = 'up'), sum(m.feedback_rating = 'down') "
        "FROM messages AS m JOIN conversations AS c ON c.conversation_id = m.conversation_id "
        "JOIN widgets AS w ON w.widget_id = c.widget_id "
        "WHERE m.feedback_at IS NOT NULL AND m.feedback_at >= ? AND m.feedback_at < ? "
        "AND w.owner_id = ?"
    )
    # feedback_at is ISO 8601 in UTC: the day after `until` bounds it.
    params: list[str] = [since, until + "~", owner_id]
    if widget_id is not None:
        sql += " AND c.widget_id = ?"
        params.append(widget_id)
    sql += " GROUP BY c.widget_id, day, m.assistant_id ORDER BY day"
    return [FeedbackRow(*row) for row in await store.query(sql, params)]


# -- budget mails: which went out -------------------------------------------------------------


async def alerts_sent(store: EventStore, widget_id: str, periods: Sequence[str]) -> set[
    tuple[str, int]
]:
    """``(period, threshold)`` of the budget mails already sent for the widget."""
    rows = await store.query(
        "SELECT period, threshold FROM budget_alerts WHERE widget_id = ? "
        f"AND period IN ({','.join('?' * len(periods))})",
        (widget_id, *periods),
    )
    return {(period, threshold) for period, threshold in rows}


async def record_alerts(
    store: EventStore, widget_id: str, period: str, thresholds: Sequence[int], sent_at: str
) -> None:
    def write(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO budget_alerts (widget_id, period, threshold, sent_at) "
            "VALUES (?, ?, ?, ?)",
            [(widget_id, period, threshold, sent_at) for threshold in thresholds],
        )

    await store.run_on_writer(write)


async def names(store: EventStore, owner_id: str) -> dict[str, str]:
    """The names of an owner's widgets and assistants, by id."""
    rows = await store.query(
        "SELECT widget_id, name FROM widgets WHERE owner_id = ? "
        "UNION ALL SELECT assistant_id, name FROM assistants WHERE owner_id = ?",
        (owner_id, owner_id),
    )
    return dict(rows)
