-- Data keys: one per subject whose personal fields the log holds sealed (store.keys). Outside
-- the hash chain: erasing a subject nulls its key and changes no event.
CREATE TABLE data_keys (
    key_id     INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
    subject    TEXT    NOT NULL UNIQUE,
    wrapped    BYTEA,                -- the key, sealed with a master key; NULL once erased
    master_id  TEXT,                 -- which master key sealed it (a fingerprint)
    created_at TEXT    NOT NULL,     -- ISO 8601, UTC
    erased_at  TEXT
);

-- One row: what every writer of the database must agree on.
CREATE TABLE key_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    master_id    TEXT,
    erasures     INTEGER NOT NULL DEFAULT 0,  -- moves with each erasure: writers forget keys
    sealed_after BIGINT  NOT NULL             -- events up to here were written unsealed
);
INSERT INTO key_state (id, master_id, erasures, sealed_after)
    SELECT 1, NULL, 0, coalesce(max(seq), 0) FROM events;
