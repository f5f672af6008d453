-- Outgoing webhooks: the endpoints (a read table of the webhook.* events) and their
-- deliveries (operational state, not events: see loacl.domain.webhooks).
CREATE TABLE webhooks (
    webhook_id        TEXT PRIMARY KEY,
    owner_id          TEXT    NOT NULL,
    definition        TEXT    NOT NULL,  -- JSON, as the event holds it
    enabled           INTEGER NOT NULL,
    disabled_reason   TEXT,              -- set when LOACL turned it off
    secret_generation INTEGER NOT NULL,
    rotated_at        TEXT,              -- the previous secret still signs for a day after
    version           INTEGER NOT NULL,  -- stream version: the ETag
    created_seq       INTEGER NOT NULL,
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL
);
CREATE INDEX webhooks_owner ON webhooks (owner_id, created_seq);

-- One row per message an endpoint is to receive. ``message_id`` is the webhook-id header:
-- the same on every attempt and redelivery, so that the receiver can drop a repeat.
CREATE TABLE webhook_deliveries (
    delivery_id     INTEGER PRIMARY KEY,  -- order of enqueueing: order within a key
    message_id      TEXT    NOT NULL UNIQUE,
    webhook_id      TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    source_seq      INTEGER NOT NULL,     -- the log event it tells of (0: none)
    ordering_key    TEXT    NOT NULL,     -- one conversation: delivered one after another
    payload         TEXT,                 -- only for messages with no event (test, budget)
    status          TEXT    NOT NULL,     -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    retry_until     TEXT    NOT NULL,
    next_attempt_at TEXT    NOT NULL,
    last_attempt_at TEXT,
    response_status INTEGER,
    latency_ms      REAL,
    last_error      TEXT,
    delivered_at    TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_key ON webhook_deliveries (webhook_id, ordering_key, status);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, delivery_id);

CREATE TABLE webhook_health (
    webhook_id       TEXT PRIMARY KEY,
    failures_in_row  INTEGER NOT NULL DEFAULT 0,
    last_success_at  TEXT,
    last_failure_at  TEXT
);
