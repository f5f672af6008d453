-- The owner's inbox: conversations by their last activity, and text search over messages.

-- The position of the conversation's latest event that the inbox shows (its start, a message,
-- a reply starting): the inbox's order and its cursor, unique, where times may tie.
ALTER TABLE conversations ADD COLUMN last_activity_seq INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET last_activity_seq = max(created_seq, coalesce(
    (SELECT max(m.created_seq) FROM messages m
     WHERE m.conversation_id = conversations.conversation_id), 0));
CREATE INDEX conversations_inbox ON conversations (owner_id, last_activity_seq);
CREATE INDEX conversations_inbox_widget ON conversations (owner_id, widget_id, last_activity_seq);

-- A search hit names a message by its position (its created_seq, the index's rowid).
CREATE INDEX messages_seq ON messages (created_seq);

-- Contentless: the index holds no copy of the text (the messages table has it), and an erased
-- message's words leave it (the triggers below, then an 'optimize' that rewrites the index
-- without them: services.privacy). Kept by triggers, so that replay, rebuild and cut fill it
-- as they fill the messages table. A reply is indexed once it ends, not at each delta.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    text, content = '', tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO messages_fts (rowid, text)
    SELECT created_seq, text FROM messages WHERE status != 'streaming' AND text != '[erased]';

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.status != 'streaming' AND new.text != '[erased]' BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.created_seq, new.text);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF text, status ON messages
WHEN (old.status != 'streaming' AND old.text != '[erased]')
    OR (new.status != 'streaming' AND new.text != '[erased]') BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text)
        SELECT 'delete', old.created_seq, old.text
        WHERE old.status != 'streaming' AND old.text != '[erased]';
    INSERT INTO messages_fts (rowid, text)
        SELECT new.created_seq, new.text
        WHERE new.status != 'streaming' AND new.text != '[erased]';
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.status != 'streaming' AND old.text != '[erased]' BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text)
        VALUES ('delete', old.created_seq, old.text);
END;
