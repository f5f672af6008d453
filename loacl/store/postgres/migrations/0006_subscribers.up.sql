-- Where each named subscriber has got to in the log, and how its last attempt went
-- (store.checkpoints). Not a read table: replay leaves it as it is.
CREATE TABLE subscriber_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   BIGINT  NOT NULL DEFAULT 0,  -- the last seq it processed
    updated_at TEXT,                        -- when position last moved, ISO 8601 UTC
    last_error TEXT,
    error_at   TEXT,
    failures   INTEGER NOT NULL DEFAULT 0   -- failed attempts since the last success
);
