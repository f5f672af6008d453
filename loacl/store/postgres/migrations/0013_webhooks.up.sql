-- Webhook deliveries and each endpoint's run of failures, kept here (not in each instance's
-- copy) when the log is in PostgreSQL: every instance lists the same deliveries, and any may
-- send one that is due (store.postgres.operational). The same columns as SQLite's 0013, and a
-- claim: the instance sending a delivery now, and until when that claim holds.
CREATE TABLE webhook_deliveries (
    delivery_id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- order of enqueueing
    message_id      TEXT    NOT NULL UNIQUE,
    webhook_id      TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    source_seq      BIGINT  NOT NULL,     -- the log event it tells of (0: none)
    ordering_key    TEXT    NOT NULL,     -- one conversation: delivered one after another
    payload         TEXT,                 -- only for messages with no event (test, budget)
    status          TEXT    NOT NULL,     -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,     -- times as the log writes them (codec.format_time)
    retry_until     TEXT    NOT NULL,
    next_attempt_at TEXT    NOT NULL,
    last_attempt_at TEXT,
    response_status INTEGER,
    latency_ms      DOUBLE PRECISION,
    last_error      TEXT,
    delivered_at    TEXT,
    claimed_by      TEXT,                 -- the instance attempting it now
    claimed_until   TEXT                  -- past this, another instance may take it over
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
