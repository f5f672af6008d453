"""The ``usage`` subscriber: replies and tokens per widget and UTC day, in ``usage_daily``.

A table subscriber, so each reply's end event counts exactly once. A reply's widget comes from
the read tables (its message row, then its conversation's), which the append's own transaction
filled long before this subscriber reads the event, and which replay rebuilds the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any

from loacl.domain.conversations import AssistantCompleted, AssistantFailed
from loacl.domain.events import RecordedEvent
from loacl.store.subscriptions import Table

UNKNOWN_WIDGET = ""  # a reply whose message or conversation row is missing
_WIDGET_OF = (
    "SELECT c.widget_id FROM messages AS m JOIN conversations AS c "
    "ON c.conversation_id = m.conversation_id WHERE m.message_id = ?"
)
_ADD = (
    "INSERT INTO usage_daily (widget_id, day, replies_completed, replies_failed, input_tokens, "
    "output_tokens) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (widget_id, day) DO UPDATE SET "
    "replies_completed = replies_completed + excluded.replies_completed, "
    "replies_failed = replies_failed + excluded.replies_failed, "
    "input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens"
)


@dataclass(frozen=True, slots=True)
class UsageDay:
    widget_id: str
    day: str
    replies_completed: int
    replies_failed: int
    input_tokens: int
    output_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply(conn: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
    for recorded in events:
        event = recorded.event
        if isinstance(event, AssistantCompleted):
            counts = (1, 0, event.usage.input_tokens, event.usage.output_tokens)
        elif isinstance(event, AssistantFailed):
            counts = (0, 1, 0, 0)
        else:
            continue
        row = conn.execute(_WIDGET_OF, (event.message_id,)).fetchone()
        widget = UNKNOWN_WIDGET if row is None else row[0]
        day = recorded.recorded_at.astimezone(UTC).date().isoformat()
        conn.execute(_ADD, (widget, day, *counts))


subscriber = Table(
    "usage",
    apply,
    types=frozenset({AssistantCompleted.event_type, AssistantFailed.event_type}),
    tables=("usage_daily",),
)


def daily(conn: sqlite3.Connection, widget_id: str | None = None) -> list[UsageDay]:
    sql = (
        "SELECT widget_id, day, replies_completed, replies_failed, input_tokens, output_tokens "
        "FROM usage_daily"
    )
    params: tuple[str, ...] = ()
    if widget_id is not None:
        sql, params = f"{sql} WHERE widget_id = ?", (widget_id,)
    return [UsageDay(*row) for row in conn.execute(f"{sql} ORDER BY day, widget_id", params)]
