"""Typed reads for erasure, retention and export: widgets that keep conversations for a while,
the conversations due, what the key table holds."""

from __future__ import annotations

from dataclasses import dataclass

from loacl.store.eventstore import EventStore
from loacl.store.records import IN_STREAM


@dataclass(frozen=True, slots=True)
class RetainedWidget:
    widget_id: str
    name: str
    owner_id: str
    retention_days: int


@dataclass(frozen=True, slots=True)
class Due:
    """A widget's conversations idle since before ``before``."""

    count: int
    oldest_activity: str | None


@dataclass(frozen=True, slots=True)
class KeyCounts:
    live: int
    erased: int
    by_master: dict[str, int]
    sealed_after: int  # events up to here were written before sealing: plaintext
    master_id: str | None  # the master key new data keys are sealed with


async def widgets_with_retention(store: EventStore) -> list[RetainedWidget]:
    rows = await store.query(
        "SELECT widget_id, name, owner_id, json_extract(definition, '$.retention_days') AS days "
        "FROM widgets WHERE days IS NOT NULL ORDER BY created_seq"
    )
    return [RetainedWidget(str(w), str(n), str(o), int(d)) for w, n, o, d in rows]


async def idle_conversations(
    store: EventStore, widget_id: str, before: str, limit: int
) -> list[str]:
    """The widget's conversations not erased whose last activity is older than ``before`` (an
    ISO 8601 UTC time, as the read tables write them), the oldest first."""
    rows = await store.query(
        "SELECT conversation_id FROM conversations WHERE widget_id = ? AND erased_at IS NULL "
        "AND last_activity_at < ? ORDER BY last_activity_at LIMIT ?",
        (widget_id, before, limit),
    )
    return [str(c) for (c,) in rows]


async def due(store: EventStore, widget_id: str, before: str) -> Due:
    rows = await store.query(
        "SELECT count(*), min(last_activity_at) FROM conversations WHERE widget_id = ? "
        "AND erased_at IS NULL AND last_activity_at < ?",
        (widget_id, before),
    )
    count, oldest = rows[0]
    return Due(int(count), oldest)


async def conversations_without_widget(store: EventStore) -> int:
    """Conversations not erased whose widget was deleted: retention no longer reaches them."""
    rows = await store.query(
        "SELECT count(*) FROM conversations c WHERE c.erased_at IS NULL AND NOT EXISTS "
        "(SELECT 1 FROM widgets w WHERE w.widget_id = c.widget_id)"
    )
    return int(rows[0][0])


async def erased_conversations(store: EventStore) -> int:
    rows = await store.query("SELECT count(*) FROM conversations WHERE erased_at IS NOT NULL")
    return int(rows[0][0])


async def key_counts(store: EventStore) -> KeyCounts:
    live, erased = (await store.query(
        "SELECT coalesce(sum(wrapped IS NOT NULL), 0), coalesce(sum(wrapped IS NULL), 0) "
        "FROM data_keys"
    ))[0]
    by_master = dict(await store.query(
        "SELECT master_id, count(*) FROM data_keys WHERE wrapped IS NOT NULL GROUP BY master_id"
    ))
    sealed_after, master_id = (await store.query(
        "SELECT sealed_after, master_id FROM key_state WHERE id = 1"
    ))[0]
    return KeyCounts(int(live), int(erased), by_master, int(sealed_after), master_id)


async def plain_events(store: EventStore, stream: str) -> int:
    """The stream's events written before sealing existed: their personal fields stay in the
    log as plaintext until the history is resealed (``loacl privacy reseal``)."""
    rows = await store.query(
        f"SELECT count(*) FROM events WHERE {IN_STREAM} AND seq <= "
        "(SELECT sealed_after FROM key_state WHERE id = 1)",
        (stream, stream),
    )
    return int(rows[0][0])


async def erasures(store: EventStore) -> int:
    """How many erasures the database has seen (``key_state``, moved by each)."""
    rows = await store.query("SELECT erasures FROM key_state WHERE id = 1")
    return int(rows[0][0]) if rows else 0
