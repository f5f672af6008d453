-- Data keys: one per subject (a conversation, an owner account) whose personal fields the log
-- holds sealed (store.keys). Outside the hash chain: erasing a subject destroys its key here and
-- changes no event, so `loacl audit verify` still passes. Not a read table: replay keeps it.
CREATE TABLE data_keys (
    key_id     INTEGER PRIMARY KEY,  -- named in every value sealed with it; never reused
    subject    TEXT    NOT NULL UNIQUE,
    wrapped    BLOB,                 -- the key, sealed with a master key; NULL once erased
    master_id  TEXT,                 -- which master key sealed it (a fingerprint, not the key)
    created_at TEXT    NOT NULL,     -- ISO 8601, UTC
    erased_at  TEXT
);

-- One row: what every writer of the file must agree on.
CREATE TABLE key_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    master_id    TEXT,                       -- new data keys are sealed with this master key
    erasures     INTEGER NOT NULL DEFAULT 0, -- moves with each erasure: writers drop the keys
                                             -- they hold in memory and read them again
    sealed_after INTEGER NOT NULL            -- events up to this position were written before
                                             -- sealing existed: plaintext, read as they are
);
INSERT INTO key_state (id, master_id, erasures, sealed_after)
    SELECT 1, NULL, 0, coalesce(max(seq), 0) FROM events;

-- Conversations know their owner (the widget's, when it started), so that an account's
-- conversations are found after its widgets are deleted; erased ones say when.
ALTER TABLE conversations ADD COLUMN owner_id TEXT;
ALTER TABLE conversations ADD COLUMN erased_at TEXT;
-- From the log, as replay fills it: a deleted widget's owner is found there too.
UPDATE conversations SET owner_id = coalesce(
    (SELECT json_extract(e.payload, '$.owner_id') FROM stream_index i JOIN events e
        ON e.seq = i.seq WHERE i.stream = 'widget-' || conversations.widget_id AND i.version = 1),
    (SELECT json_extract(e.payload, '$.owner_id') FROM events e
        WHERE e.seq > (SELECT coalesce(max(indexed_seq), 0) FROM event_log_head)
        AND e.stream = 'widget-' || conversations.widget_id AND e.version = 1)
);
CREATE INDEX conversations_owner ON conversations (owner_id);
CREATE INDEX conversations_visitor ON conversations (visitor_id);
-- Retention finds a widget's idle conversations by their last activity.
CREATE INDEX conversations_activity ON conversations (widget_id, last_activity_at)
    WHERE erased_at IS NULL;
