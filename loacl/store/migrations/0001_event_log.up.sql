-- The event log: the source of truth. Append-only, hash-chained.
CREATE TABLE events (
    -- Global position. INTEGER PRIMARY KEY aliases the rowid; no AUTOINCREMENT because rows
    -- are never deleted, so the rowid never goes back.
    seq            INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,  -- JSON (msgspec)
    metadata       TEXT    NOT NULL,  -- JSON: actor, request id, client IP, causation
    recorded_at    TEXT    NOT NULL,  -- ISO 8601, UTC
    hash           TEXT    NOT NULL,  -- sha256(previous hash || canonical row), hex
    -- Optimistic concurrency: two appends at the same stream version cannot both commit.
    UNIQUE (stream, version)
);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE refused');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE refused');
END;

-- Idempotency keys: a retried append returns the events the first one wrote.
CREATE TABLE append_keys (
    key       TEXT    PRIMARY KEY,
    stream    TEXT    NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL
) WITHOUT ROWID;

-- The last position and hash, written with every commit, so that a truncated tail is seen.
CREATE TABLE event_log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
