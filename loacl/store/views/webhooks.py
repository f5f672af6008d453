"""Reads and writes of webhook endpoints and their deliveries.

The endpoints are a read table of the log (``projections.webhooks``); the deliveries and each
endpoint's run of failures are operational tables this module alone writes in SQLite, always on
the store's writer (``run_on_writer``), never from another connection (``SqliteDeliveries``;
with the log in PostgreSQL they live there instead: ``store.postgres.operational``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from loacl.domain.webhooks import WebhookDefinition
from loacl.store.views import Page, first, page_by_creation

if TYPE_CHECKING:
    from loacl.store.eventstore import EventStore

_definition = msgspec.json.Decoder(WebhookDefinition)


@dataclass(frozen=True, slots=True)
class WebhookView:
    webhook_id: str
    owner_id: str
    definition: WebhookDefinition
    disabled_reason: str | None
    secret_generation: int
    rotated_at: str | None
    version: int
    created_seq: int
    created_at: str
    updated_at: str


_SELECT = (
    "SELECT webhook_id, owner_id, definition, disabled_reason, secret_generation, rotated_at, "
    "version, created_seq, created_at, updated_at FROM webhooks"
)


def _webhook(row: Sequence[Any]) -> WebhookView:
    return WebhookView(row[0], row[1], _definition.decode(row[2]), *row[3:])


async def webhook(store: EventStore, webhook_id: str) -> WebhookView | None:
    return await first(store, f"{_SELECT} WHERE webhook_id = ?", (webhook_id,), _webhook)


async def webhooks_of(
    store: EventStore, owner_id: str, after: int, limit: int
) -> Page[WebhookView]:
    return await page_by_creation(store, _SELECT, "owner_id = ?", (owner_id,), after, limit,
                                  _webhook)


# -- deliveries ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: int
    message_id: str
    webhook_id: str
    event_type: str
    source_seq: int
    ordering_key: str
    payload: str | None
    status: str
    attempts: int
    created_at: str
    retry_until: str
    next_attempt_at: str
    last_attempt_at: str | None
    response_status: int | None
    latency_ms: float | None
    last_error: str | None
    delivered_at: str | None


_DELIVERY = (
    "SELECT delivery_id, message_id, webhook_id, event_type, source_seq, ordering_key, "
    "payload, status, attempts, created_at, retry_until, next_attempt_at, last_attempt_at, "
    "response_status, latency_ms, last_error, delivered_at FROM webhook_deliveries"
)


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(*row)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    message_id: str
    webhook_id: str
    event_type: str
    source_seq: int
    ordering_key: str
    payload: str | None = None


def enqueue(
    conn: sqlite3.Connection, deliveries: Sequence[NewDelivery], now: str, retry_until: str
) -> int:
    """Add deliveries; one whose message id is there already is the same one (a batch handed
    over again after a crash) and is left as it is. Returns how many were new."""
    before = conn.total_changes
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT OR IGNORE INTO webhook_deliveries (message_id, webhook_id, event_type, "
            "source_seq, ordering_key, payload, status, created_at, retry_until, "
            "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            [(d.message_id, d.webhook_id, d.event_type, d.source_seq, d.ordering_key, d.payload,
              now, retry_until, now) for d in deliveries],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return conn.total_changes - before


async def due(store: EventStore, now: str, exclude: Sequence[int], limit: int) -> list[Delivery]:
    """Deliveries to attempt now: pending, due, of an enabled endpoint, and the oldest pending
    one of their endpoint and key (the next waits until it is delivered or given up)."""
    skip = ",".join("?" * len(exclude))
    rows = await store.query(
        f"{_DELIVERY} AS d WHERE d.status = 'pending' AND d.next_attempt_at <= ? "
        + (f"AND d.delivery_id NOT IN ({skip}) " if exclude else "")
        + "AND EXISTS (SELECT 1 FROM webhooks w WHERE w.webhook_id = d.webhook_id "
        "AND w.enabled = 1) AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e "
        "WHERE e.webhook_id = d.webhook_id AND e.ordering_key = d.ordering_key "
        "AND e.status = 'pending' AND e.delivery_id < d.delivery_id) "
        "ORDER BY d.delivery_id LIMIT ?",
        (now, *exclude, limit),
    )
    return [_delivery(r) for r in rows]


async def next_due(store: EventStore) -> str | None:
    """When the earliest pending delivery of an enabled endpoint is due."""
    rows = await store.query(
        "SELECT min(next_attempt_at) FROM webhook_deliveries AS d WHERE status = 'pending' "
        "AND EXISTS (SELECT 1 FROM webhooks w WHERE w.webhook_id = d.webhook_id "
        "AND w.enabled = 1)", ())
    return rows[0][0] if rows else None


async def delivery(store: EventStore, webhook_id: str, delivery_id: int) -> Delivery | None:
    return await first(store, f"{_DELIVERY} WHERE webhook_id = ? AND delivery_id = ?",
                       (webhook_id, delivery_id), _delivery)


async def by_message(store: EventStore, message_id: str) -> Delivery | None:
    return await first(store, f"{_DELIVERY} WHERE message_id = ?", (message_id,), _delivery)


async def deliveries_of(
    store: EventStore, webhook_id: str, after: int, limit: int
) -> Page[Delivery]:
    """An endpoint's delivery log, newest first; ``after`` is a cursor from a page before."""
    rows = await store.query(
        f"{_DELIVERY} WHERE webhook_id = ? AND delivery_id < ? ORDER BY delivery_id DESC "
        "LIMIT ?", (webhook_id, after or 2**62, limit + 1))
    items = [_delivery(r) for r in rows]
    if len(items) > limit:
        return Page(items[:limit], items[limit - 1].delivery_id)
    return Page(items, None)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # pending (to retry) | delivered | failed (given up)
    response_status: int | None
    latency_ms: float | None
    error: str | None
    next_attempt_at: str


def record_attempt(
    conn: sqlite3.Connection, delivery_id: int, webhook_id: str, outcome: Outcome, now: str
) -> int:
    """The attempt's outcome, and the endpoint's run of failures after it (0 on success)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, "
            "last_attempt_at = ?, response_status = ?, latency_ms = ?, last_error = ?, "
            "next_attempt_at = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? END "
            "WHERE delivery_id = ?",
            (outcome.status, now, outcome.response_status, outcome.latency_ms, outcome.error,
             outcome.next_attempt_at, outcome.status, now, delivery_id),
        )
        ok = outcome.status == "delivered"
        conn.execute(
            "INSERT INTO webhook_health (webhook_id, failures_in_row, last_success_at, "
            "last_failure_at) VALUES (?, ?, ?, ?) ON CONFLICT (webhook_id) DO UPDATE SET "
            "failures_in_row = CASE WHEN ? THEN 0 ELSE failures_in_row + 1 END, "
            "last_success_at = coalesce(excluded.last_success_at, last_success_at), "
            "last_failure_at = coalesce(excluded.last_failure_at, last_failure_at)",
            (webhook_id, 0 if ok else 1, now if ok else None, None if ok else now, ok),
        )
        (failures,) = conn.execute(
            "SELECT failures_in_row FROM webhook_health WHERE webhook_id = ?", (webhook_id,)
        ).fetchone()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(failures)


def redeliver(
    conn: sqlite3.Connection, delivery_id: int, now: str, retry_until: str
) -> None:
    """Send the delivery again, soon, with a fresh retry window; its message id stays."""
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, "
        "retry_until = ?, delivered_at = NULL WHERE delivery_id = ?",
        (now, retry_until, delivery_id),
    )


def forget_failures(conn: sqlite3.Connection, webhook_id: str) -> None:
    conn.execute("UPDATE webhook_health SET failures_in_row = 0 WHERE webhook_id = ?",
                 (webhook_id,))


async def failures_in_row(store: EventStore, webhook_id: str) -> int:
    rows = await store.query(
        "SELECT failures_in_row FROM webhook_health WHERE webhook_id = ?", (webhook_id,))
    return int(rows[0][0]) if rows else 0


class SqliteDeliveries:
    """The deliveries in the store's own file (``operational.DeliveryTable``): one server,
    one dispatcher, so what ``due`` gives needs no claim (the dispatcher passes what it is
    sending as ``exclude``)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def enqueue(self, deliveries: Sequence[NewDelivery], now: str, retry_until: str
                      ) -> int:
        return int(await self.store.run_on_writer(
            lambda c: enqueue(c, deliveries, now, retry_until)))

    async def due(self, now: str, exclude: Sequence[int], limit: int) -> list[Delivery]:
        return await due(self.store, now, exclude, limit)

    async def next_due(self, now: str) -> str | None:
        return await next_due(self.store)

    async def release(self, delivery_ids: Sequence[int], until: str | None = None) -> None:
        pass  # nothing was claimed: a delivery not attempted is pending still

    async def delivery(self, webhook_id: str, delivery_id: int) -> Delivery | None:
        return await delivery(self.store, webhook_id, delivery_id)

    async def by_message(self, message_id: str) -> Delivery | None:
        return await by_message(self.store, message_id)

    async def deliveries_of(self, webhook_id: str, after: int, limit: int) -> Page[Delivery]:
        return await deliveries_of(self.store, webhook_id, after, limit)

    async def record_attempt(self, delivery_id: int, webhook_id: str, outcome: Outcome,
                             now: str) -> int:
        return int(await self.store.run_on_writer(
            lambda c: record_attempt(c, delivery_id, webhook_id, outcome, now)))

    async def redeliver(self, delivery_id: int, now: str, retry_until: str) -> None:
        await self.store.run_on_writer(lambda c: redeliver(c, delivery_id, now, retry_until))

    async def forget_failures(self, webhook_id: str) -> None:
        await self.store.run_on_writer(lambda c: forget_failures(c, webhook_id))

    async def failures_in_row(self, webhook_id: str) -> int:
        return await failures_in_row(self.store, webhook_id)


async def enabled_webhooks(store: EventStore) -> list[str]:
    """The ids of the endpoints that are on (a delivery to another waits)."""
    return [str(r[0]) for r in await store.query(
        "SELECT webhook_id FROM webhooks WHERE enabled = 1", ())]


# -- who hears of a conversation ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Listener:
    webhook_id: str
    event_types: tuple[str, ...]


async def listeners(store: EventStore, owner_ids: Sequence[str]) -> dict[str, list[Listener]]:
    """The enabled endpoints of each owner."""
    if not owner_ids:
        return {}
    marks = ",".join("?" * len(owner_ids))
    rows = await store.query(
        f"SELECT owner_id, webhook_id, definition FROM webhooks WHERE enabled = 1 "
        f"AND owner_id IN ({marks}) ORDER BY created_seq", tuple(owner_ids))
    found: dict[str, list[Listener]] = {}
    for owner_id, webhook_id, definition in rows:
        found.setdefault(owner_id, []).append(
            Listener(webhook_id, _definition.decode(definition).event_types))
    return found


@dataclass(frozen=True, slots=True)
class ConversationOwner:
    conversation_id: str
    widget_id: str
    visitor_id: str
    owner_id: str | None


async def conversation_owners(
    store: EventStore, conversation_ids: Sequence[str]
) -> dict[str, ConversationOwner]:
    if not conversation_ids:
        return {}
    marks = ",".join("?" * len(conversation_ids))
    rows = await store.query(
        "SELECT c.conversation_id, c.widget_id, c.visitor_id, coalesce(c.owner_id, "
        "(SELECT owner_id FROM widgets w WHERE w.widget_id = c.widget_id)) FROM conversations c "
        f"WHERE c.conversation_id IN ({marks})", tuple(conversation_ids))
    return {r[0]: ConversationOwner(*r) for r in rows}
