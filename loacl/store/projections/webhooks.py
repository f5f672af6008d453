"""The ``webhooks`` read table: each endpoint as its ``webhook.*`` events leave it."""

from __future__ import annotations

import sqlite3

import msgspec

from loacl.domain.events import RecordedEvent
from loacl.domain.webhooks import (
    FAILURES,
    WebhookCreated,
    WebhookDeleted,
    WebhookDisabled,
    WebhookSecretRotated,
    WebhookUpdated,
)
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(tables=["webhooks"])
_encoder = msgspec.json.Encoder()


@projections.on
def webhook_created(
    conn: sqlite3.Connection, event: WebhookCreated, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    d = event.definition
    conn.execute(
        "INSERT INTO webhooks (webhook_id, owner_id, definition, enabled, secret_generation, "
        "version, created_seq, created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)",
        (event.webhook_id, event.owner_id, _encoder.encode(d).decode(), d.enabled,
         recorded.version, recorded.seq, at, at),
    )


@projections.on
def webhook_updated(
    conn: sqlite3.Connection, event: WebhookUpdated, recorded: RecordedEvent
) -> None:
    d = event.definition
    # Turned on again by its owner: the failures that turned it off are forgotten.
    conn.execute(
        "UPDATE webhooks SET definition = ?, enabled = ?, disabled_reason = CASE WHEN ? THEN "
        "NULL ELSE disabled_reason END, version = ?, updated_at = ? WHERE webhook_id = ?",
        (_encoder.encode(d).decode(), d.enabled, d.enabled, recorded.version,
         format_time(recorded.recorded_at), event.webhook_id),
    )


@projections.on
def webhook_secret_rotated(
    conn: sqlite3.Connection, event: WebhookSecretRotated, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "UPDATE webhooks SET secret_generation = ?, rotated_at = ?, version = ?, updated_at = ? "
        "WHERE webhook_id = ?",
        (event.generation, at, recorded.version, at, event.webhook_id),
    )


@projections.on
def webhook_disabled(
    conn: sqlite3.Connection, event: WebhookDisabled, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE webhooks SET enabled = 0, disabled_reason = ?, version = ?, updated_at = ?, "
        "definition = json_set(definition, '$.enabled', json('false')) WHERE webhook_id = ?",
        (event.reason or FAILURES, recorded.version, format_time(recorded.recorded_at),
         event.webhook_id),
    )


@projections.on
def webhook_deleted(
    conn: sqlite3.Connection, event: WebhookDeleted, recorded: RecordedEvent
) -> None:
    conn.execute("DELETE FROM webhooks WHERE webhook_id = ?", (event.webhook_id,))
