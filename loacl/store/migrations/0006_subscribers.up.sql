-- Where each named subscriber has got to in the log, and how its last attempt went. Not a read
-- table: it says what a subscriber has done (sent a webhook, written its own rows), which the
-- log does not record, so replay leaves it as it is.
CREATE TABLE subscriber_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL DEFAULT 0,  -- the last seq it processed
    updated_at TEXT,                        -- when position last moved, ISO 8601 UTC
    last_error TEXT,
    error_at   TEXT,
    failures   INTEGER NOT NULL DEFAULT 0   -- failed attempts since the last success
) WITHOUT ROWID;

-- The `usage` subscriber's roll-up: replies and tokens per widget and UTC day. Written with its
-- checkpoint in one transaction (exactly once); `loacl subscribers reset usage` rebuilds it.
CREATE TABLE usage_daily (
    widget_id         TEXT    NOT NULL,
    day               TEXT    NOT NULL,  -- YYYY-MM-DD, UTC, of the reply's end event
    replies_completed INTEGER NOT NULL DEFAULT 0,
    replies_failed    INTEGER NOT NULL DEFAULT 0,
    input_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (widget_id, day)
) WITHOUT ROWID;
