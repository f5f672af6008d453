-- The (stream, version) index leaves the events table for stream_index, which the writer fills
-- in bulk a little behind the log (eventstore.py, INDEX_LAG). Kept inside the events table, a
-- commit of events from N streams dirtied N index pages: a group commit of 100 events spread
-- over 100 conversations wrote about 400 KB of WAL, ten times its events, and replication
-- shipped all of it. Written behind the log, each index page takes many entries at once.
-- Uniqueness of (stream, version) is kept by the one writer, which checks each append's
-- version under the write lock; `loacl audit verify` checks it, and the index, afterwards.
CREATE TABLE events_unindexed (
    seq            INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,  -- JSON (msgspec)
    metadata       TEXT    NOT NULL,  -- JSON: actor, request id, client IP, causation
    recorded_at    TEXT    NOT NULL,  -- ISO 8601, UTC
    hash           TEXT    NOT NULL   -- sha256(previous hash || canonical row), hex
);
INSERT INTO events_unindexed SELECT * FROM events ORDER BY seq;
-- DROP TABLE empties the table without firing the DELETE trigger, and drops both triggers.
DROP TABLE events;
ALTER TABLE events_unindexed RENAME TO events;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE refused');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE refused');
END;

-- Where each stream's events are, for every event up to event_log_head.indexed_seq; the
-- events after it (at most INDEX_LAG) are found by scanning the tail of the log.
CREATE TABLE stream_index (
    stream  TEXT    NOT NULL,
    version INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;
INSERT INTO stream_index SELECT stream, version, seq FROM events ORDER BY stream, version;

ALTER TABLE event_log_head ADD COLUMN indexed_seq INTEGER NOT NULL DEFAULT 0;
UPDATE event_log_head SET indexed_seq = seq;
