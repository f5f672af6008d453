-- How far the hash chain was verified when the server last started: the next start checks only
-- the events after it (and that this one still has its hash), so start-up stays cheap.
CREATE TABLE integrity_mark (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    hash        TEXT    NOT NULL,
    verified_at TEXT    NOT NULL  -- ISO 8601, UTC
);
