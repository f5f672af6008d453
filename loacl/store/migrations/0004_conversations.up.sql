-- Read tables for messages and files; and the blob table, which is not a projection.
CREATE TABLE messages (
    message_id        TEXT PRIMARY KEY,
    conversation_id   TEXT    NOT NULL,
    role              TEXT    NOT NULL,  -- user | assistant
    text              TEXT    NOT NULL,
    status            TEXT    NOT NULL,  -- completed | streaming | failed | interrupted
    error_code        TEXT,
    reply_to          TEXT,
    file_ids          TEXT    NOT NULL,  -- JSON list
    client_message_id TEXT,
    input_tokens      INTEGER,
    output_tokens     INTEGER,
    created_seq       INTEGER NOT NULL,  -- order and pagination cursor
    created_at        TEXT    NOT NULL,
    finished_at       TEXT
);
CREATE INDEX messages_conversation ON messages (conversation_id, created_seq);

CREATE TABLE files (
    file_id          TEXT PRIMARY KEY,
    conversation_id  TEXT    NOT NULL,
    widget_id        TEXT    NOT NULL,
    visitor_id       TEXT    NOT NULL,
    filename         TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    size             INTEGER NOT NULL,
    sha256           TEXT    NOT NULL,
    provider         TEXT,
    provider_file_id TEXT,
    created_at       TEXT    NOT NULL
);

-- Uploaded bytes, content-addressed. Not a read table: the log holds only their hash, so replay
-- keeps this table as it is. Rows are written before the file.uploaded event that names them.
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    data   BLOB NOT NULL
) WITHOUT ROWID;
