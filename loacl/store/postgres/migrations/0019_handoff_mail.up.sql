-- Mails the handoff-mail subscriber has sent, as SQLite's 0019 keeps them, here when the log is
-- in PostgreSQL: whichever instance runs the subscriber next finds what went out before.
CREATE TABLE handoff_mails (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX handoff_mails_by_conversation ON handoff_mails (conversation_id, kind, sent_at);
