-- Read tables for assistants, widgets and conversations.
CREATE TABLE assistants (
    assistant_id TEXT PRIMARY KEY,
    owner_id     TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    provider     TEXT    NOT NULL,
    model        TEXT    NOT NULL,
    definition   TEXT    NOT NULL,  -- JSON, the whole definition as the event holds it
    version      INTEGER NOT NULL,  -- stream version: the ETag
    created_seq  INTEGER NOT NULL,  -- list order and pagination cursor
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
);
CREATE INDEX assistants_owner ON assistants (owner_id, created_seq);

CREATE TABLE widgets (
    widget_id         TEXT PRIMARY KEY,
    owner_id          TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    assistant_id      TEXT    NOT NULL,
    enabled           INTEGER NOT NULL,
    definition        TEXT    NOT NULL,  -- JSON
    secret_generation INTEGER NOT NULL,
    version           INTEGER NOT NULL,
    created_seq       INTEGER NOT NULL,
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL
);
CREATE INDEX widgets_owner ON widgets (owner_id, created_seq);
CREATE INDEX widgets_assistant ON widgets (assistant_id);

CREATE TABLE conversations (
    conversation_id  TEXT PRIMARY KEY,
    widget_id        TEXT    NOT NULL,
    visitor_id       TEXT    NOT NULL,
    external_user_id TEXT,
    created_seq      INTEGER NOT NULL,
    created_at       TEXT    NOT NULL,
    last_activity_at TEXT    NOT NULL,
    message_count    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX conversations_widget ON conversations (widget_id, created_seq);
-- A signed-in site user has one conversation per widget, on every device.
CREATE UNIQUE INDEX conversations_user ON conversations (widget_id, external_user_id)
    WHERE external_user_id IS NOT NULL;
