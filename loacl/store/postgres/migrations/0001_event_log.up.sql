-- The event log: the source of truth. Append-only, hash-chained; the same rows, and so the same
-- hashes, as SQLite's (store.codec.chain_hash), so a log can move between the two and verify.
CREATE TABLE events (
    -- Global position, given by the appender from event_log_head under its row lock: never a
    -- sequence (a sequence hands out numbers in one order and commits them in another).
    seq            BIGINT  PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,  -- JSON text (msgspec), byte for byte what was hashed
    metadata       TEXT    NOT NULL,  -- JSON: actor, request id, client IP, causation
    recorded_at    TEXT    NOT NULL,  -- ISO 8601, UTC, as hashed
    hash           TEXT    NOT NULL,  -- sha256(previous hash || canonical row), hex
    -- Optimistic concurrency, and the index that reads a stream.
    UNIQUE (stream, version)
);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Idempotency keys: a retried append returns the events the first one wrote.
CREATE TABLE append_keys (
    key       TEXT   PRIMARY KEY,
    stream    TEXT   NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL
);

-- The last position and hash. Every append locks this row (SELECT ... FOR UPDATE) until it
-- commits: appends are serialized on the head, so positions become visible in order and a
-- reader tailing by position never passes one that commits later. The chain needs the
-- previous hash anyway.
CREATE TABLE event_log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO event_log_head (id, seq, hash) VALUES (1, 0, repeat('0', 64));
