"""Webhook deliveries and handoff mails' record in PostgreSQL, for several instances on one log
(``operational.DeliveryTable`` and ``MailRecord``; migrations 0013 and 0019 here).

Deliveries are enqueued by the instance running the webhook subscriber (one at a time,
``PgUpstream.exclusive``), and by any instance for a test message or a redelivery; every
instance's dispatcher sends what is due. A dispatcher *claims* what it is about to send, in
one statement: the rows due are locked with ``FOR UPDATE SKIP LOCKED`` (a row another
dispatcher is claiming at that moment is passed over, not waited for) and given this
instance's name and a lease (``claimed_until``); a claimed row is not due again before its
lease ends. Recording the attempt ends the claim. So two instances never send one delivery at
once, and a delivery whose instance stopped in the middle (or died with the claim) is sent by
another once the lease has run out (at least once, as on one machine: the same ``webhook-id``).
A dispatcher that stops gives back what it had not sent at once.

The endpoints themselves stay a read table of each instance's copy: which endpoints are on is
asked there, and passed along with the query. A ``NOTIFY`` on ``WAKE`` after an enqueue, a
redelivery, a retry scheduled or a claim given back wakes every instance's dispatcher.

Nothing here holds personal data (the payload of a conversation's event is built from the log
when it is sent), as in SQLite: an erasure has nothing to remove from these tables.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from loacl.store.codec import format_time, parse_time
from loacl.store.eventstore import EventStore
from loacl.store.postgres.upstream import PgUpstream
from loacl.store.views import Page
from loacl.store.views.webhooks import (
    Delivery,
    NewDelivery,
    Outcome,
    enabled_webhooks,
)

WAKE = "loacl_deliveries"

_COLUMNS = (
    "delivery_id, message_id, webhook_id, event_type, source_seq, ordering_key, payload, "
    "status, attempts, created_at, retry_until, next_attempt_at, last_attempt_at, "
    "response_status, latency_ms, last_error, delivered_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM webhook_deliveries"
_NOTIFY = "SELECT pg_notify($1, '')"
# In the order given: the identity column is the order within a key.
_ENQUEUE = (
    "WITH added AS (INSERT INTO webhook_deliveries (message_id, webhook_id, event_type, "
    "source_seq, ordering_key, payload, status, created_at, retry_until, next_attempt_at) "
    "SELECT m, w, t, s, k, p, 'pending', $7, $8, $7 FROM unnest($1::text[], $2::text[], "
    "$3::text[], $4::bigint[], $5::text[], $6::text[]) WITH ORDINALITY AS n(m, w, t, s, k, p, i) "
    "ORDER BY i ON CONFLICT (message_id) DO NOTHING RETURNING 1) SELECT count(*) FROM added"
)
# Not an earlier pending delivery of the same endpoint and key: one conversation in order.
_FIRST_OF_KEY = (
    "NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.webhook_id = d.webhook_id "
    "AND e.ordering_key = d.ordering_key AND e.status = 'pending' "
    "AND e.delivery_id < d.delivery_id)"
)
# Times are ISO 8601 text of one width: compared as bytes (COLLATE "C"), whatever the
# database's collation.
_CLAIM = (
    "WITH picked AS (SELECT d.delivery_id FROM webhook_deliveries d WHERE d.status = 'pending' "
    "AND d.next_attempt_at COLLATE \"C\" <= $1 "
    "AND (d.claimed_until IS NULL OR d.claimed_until COLLATE \"C\" <= $1) "
    "AND d.webhook_id = ANY($2::text[]) AND NOT d.delivery_id = ANY($3::bigint[]) "
    f"AND {_FIRST_OF_KEY} ORDER BY d.delivery_id LIMIT $4 FOR UPDATE SKIP LOCKED) "
    "UPDATE webhook_deliveries w SET claimed_by = $5, claimed_until = $6 FROM picked "
    "WHERE w.delivery_id = picked.delivery_id RETURNING "
    + ", ".join(f"w.{c.strip()}" for c in _COLUMNS.split(","))
)
_NEXT_DUE = (
    "SELECT min(greatest(d.next_attempt_at COLLATE \"C\", "
    "coalesce(d.claimed_until, d.next_attempt_at) COLLATE \"C\")) FROM webhook_deliveries d "
    f"WHERE d.status = 'pending' AND d.webhook_id = ANY($1::text[]) AND {_FIRST_OF_KEY}"
)
_RECORD = (
    "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, last_attempt_at = $2, "
    "response_status = $3, latency_ms = $4, last_error = $5, next_attempt_at = $6, "
    "delivered_at = CASE WHEN $1 = 'delivered' THEN $2 END, claimed_by = NULL, "
    "claimed_until = NULL WHERE delivery_id = $7"
)
_HEALTH = (
    "INSERT INTO webhook_health (webhook_id, failures_in_row, last_success_at, last_failure_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (webhook_id) DO UPDATE SET "
    "failures_in_row = CASE WHEN $5 THEN 0 ELSE webhook_health.failures_in_row + 1 END, "
    "last_success_at = coalesce(excluded.last_success_at, webhook_health.last_success_at), "
    "last_failure_at = coalesce(excluded.last_failure_at, webhook_health.last_failure_at) "
    "RETURNING failures_in_row"
)


def _delivery(row: Any) -> Delivery:
    return Delivery(*row)


class PgDeliveries:
    """``operational.DeliveryTable`` in PostgreSQL (module docstring)."""

    def __init__(self, store: EventStore, upstream: PgUpstream, lease_seconds: float) -> None:
        self.store = store  # this instance's copy: which endpoints are on
        self.upstream = upstream
        self.lease_seconds = lease_seconds

    async def enqueue(self, deliveries: Sequence[NewDelivery], now: str, retry_until: str
                      ) -> int:
        if not deliveries:
            return 0
        columns = ([d.message_id for d in deliveries], [d.webhook_id for d in deliveries],
                   [d.event_type for d in deliveries], [d.source_seq for d in deliveries],
                   [d.ordering_key for d in deliveries], [d.payload for d in deliveries])
        async with self.upstream.connection() as pg, pg.transaction():
            added = int(await pg.fetchval(_ENQUEUE, *columns, now, retry_until))
            if added:
                await pg.execute(_NOTIFY, WAKE)
        return added

    async def due(self, now: str, exclude: Sequence[int], limit: int) -> list[Delivery]:
        enabled = await enabled_webhooks(self.store)
        if not enabled:
            return []
        until = format_time(parse_time(now) + timedelta(seconds=self.lease_seconds))
        async with self.upstream.connection() as pg:
            rows = await pg.fetch(_CLAIM, now, enabled, list(exclude), limit,
                                  self.upstream.instance, until)
        return sorted((_delivery(r) for r in rows), key=lambda d: d.delivery_id)

    async def next_due(self, now: str) -> str | None:
        enabled = await enabled_webhooks(self.store)
        if not enabled:
            return None
        async with self.upstream.connection() as pg:
            found = await pg.fetchval(_NEXT_DUE, enabled)
        return None if found is None else str(found)

    async def release(self, delivery_ids: Sequence[int], until: str | None = None) -> None:
        if not delivery_ids:
            return
        async with self.upstream.connection() as pg, pg.transaction():
            await pg.execute(
                "UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = $1 "
                "WHERE delivery_id = ANY($2::bigint[]) AND claimed_by = $3",
                until, list(delivery_ids), self.upstream.instance)
            if until is None:  # another instance may send them now
                await pg.execute(_NOTIFY, WAKE)

    async def delivery(self, webhook_id: str, delivery_id: int) -> Delivery | None:
        async with self.upstream.connection() as pg:
            row = await pg.fetchrow(f"{_SELECT} WHERE webhook_id = $1 AND delivery_id = $2",
                                    webhook_id, delivery_id)
        return None if row is None else _delivery(row)

    async def by_message(self, message_id: str) -> Delivery | None:
        async with self.upstream.connection() as pg:
            row = await pg.fetchrow(f"{_SELECT} WHERE message_id = $1", message_id)
        return None if row is None else _delivery(row)

    async def deliveries_of(self, webhook_id: str, after: int, limit: int) -> Page[Delivery]:
        async with self.upstream.connection() as pg:
            rows = await pg.fetch(
                f"{_SELECT} WHERE webhook_id = $1 AND delivery_id < $2 "
                "ORDER BY delivery_id DESC LIMIT $3", webhook_id, after or 2**62, limit + 1)
        items = [_delivery(r) for r in rows]
        if len(items) > limit:
            return Page(items[:limit], items[limit - 1].delivery_id)
        return Page(items, None)

    async def record_attempt(self, delivery_id: int, webhook_id: str, outcome: Outcome,
                             now: str) -> int:
        ok = outcome.status == "delivered"
        async with self.upstream.connection() as pg, pg.transaction():
            await pg.execute(_RECORD, outcome.status, now, outcome.response_status,
                             outcome.latency_ms, outcome.error, outcome.next_attempt_at,
                             delivery_id)
            failures = await pg.fetchval(_HEALTH, webhook_id, 0 if ok else 1,
                                         now if ok else None, None if ok else now, ok)
            if outcome.status == "pending":  # a retry: whichever instance is there sends it
                await pg.execute(_NOTIFY, WAKE)
        return int(failures)

    async def redeliver(self, delivery_id: int, now: str, retry_until: str) -> None:
        async with self.upstream.connection() as pg, pg.transaction():
            await pg.execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, "
                "retry_until = $2, delivered_at = NULL WHERE delivery_id = $3",
                now, retry_until, delivery_id)
            await pg.execute(_NOTIFY, WAKE)

    async def forget_failures(self, webhook_id: str) -> None:
        async with self.upstream.connection() as pg, pg.transaction():
            await pg.execute(
                "UPDATE webhook_health SET failures_in_row = 0 WHERE webhook_id = $1",
                webhook_id)
            await pg.execute(_NOTIFY, WAKE)

    async def failures_in_row(self, webhook_id: str) -> int:
        async with self.upstream.connection() as pg:
            found = await pg.fetchval(
                "SELECT failures_in_row FROM webhook_health WHERE webhook_id = $1", webhook_id)
        return int(found or 0)


class PgHandoffMails:
    """``operational.MailRecord`` in PostgreSQL: whichever instance runs the ``handoff-mail``
    subscriber finds every mail sent before, from any instance."""

    def __init__(self, upstream: PgUpstream) -> None:
        self.upstream = upstream

    async def was_sent(self, kind: str, key: str) -> bool:
        async with self.upstream.connection() as pg:
            return bool(await pg.fetchval(
                "SELECT 1 FROM handoff_mails WHERE kind = $1 AND key = $2", kind, key))

    async def last_sent(self, conversation_id: str, kind: str) -> str | None:
        async with self.upstream.connection() as pg:
            found = await pg.fetchval(
                "SELECT max(sent_at COLLATE \"C\") FROM handoff_mails "
                "WHERE conversation_id = $1 AND kind = $2", conversation_id, kind)
        return None if found is None else str(found)

    async def record(self, kind: str, key: str, conversation_id: str, sent_at: str) -> None:
        async with self.upstream.connection() as pg:
            await pg.execute(
                "INSERT INTO handoff_mails (kind, key, conversation_id, sent_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                kind, key, conversation_id, sent_at)


# -- an instance's copy from before these tables were in PostgreSQL ------------------------------

_LOCAL_DELIVERIES = (
    "SELECT message_id, webhook_id, event_type, source_seq, ordering_key, payload, status, "
    "attempts, created_at, retry_until, next_attempt_at, last_attempt_at, response_status, "
    "latency_ms, last_error, delivered_at FROM webhook_deliveries ORDER BY delivery_id"
)
_ADOPT_DELIVERY = (
    "INSERT INTO webhook_deliveries (message_id, webhook_id, event_type, source_seq, "
    "ordering_key, payload, status, attempts, created_at, retry_until, next_attempt_at, "
    "last_attempt_at, response_status, latency_ms, last_error, delivered_at) VALUES ($1, $2, $3, "
    "$4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (message_id) "
    "DO NOTHING"
)
_OWN = {
    "webhook_deliveries": _LOCAL_DELIVERIES,
    "webhook_health": "SELECT webhook_id, failures_in_row, last_success_at, last_failure_at "
                      "FROM webhook_health",
    "handoff_mails": "SELECT kind, key, conversation_id, sent_at FROM handoff_mails",
}


async def adopt(store: EventStore, upstream: PgUpstream) -> dict[str, int]:
    """Move into PostgreSQL the deliveries and mails' record this instance's copy holds from
    before they were kept there (a copy that ran the subscribers then): a pending delivery is
    sent, a mail sent is not sent again. Rows PostgreSQL has already (by message id, by mail)
    stay as they are there, so that a move cut short is done again safely. How many rows of
    each table the copy held."""
    held = {table: await store.query(sql) for table, sql in _OWN.items()}
    if not any(held.values()):
        return {}
    async with upstream.connection() as pg, pg.transaction():
        await pg.executemany(_ADOPT_DELIVERY, held["webhook_deliveries"])
        await pg.executemany(
            "INSERT INTO webhook_health (webhook_id, failures_in_row, last_success_at, "
            "last_failure_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            held["webhook_health"])
        await pg.executemany(
            "INSERT INTO handoff_mails (kind, key, conversation_id, sent_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING", held["handoff_mails"])
        await pg.execute(_NOTIFY, WAKE)

    def forget(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in _OWN:
                conn.execute(f"DELETE FROM {table}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    await store.run_on_writer(forget)
    return {table: len(rows) for table, rows in held.items() if rows}
