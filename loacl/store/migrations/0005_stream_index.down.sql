-- Back to the index inside the events table; the rows are copied, none is lost.
CREATE TABLE events_indexed (
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
INSERT INTO events_indexed SELECT * FROM events ORDER BY seq;
DROP TABLE events;
ALTER TABLE events_indexed RENAME TO events;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE refused');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE refused');
END;

DROP TABLE stream_index;
ALTER TABLE event_log_head DROP COLUMN indexed_seq;
