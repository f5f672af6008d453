-- The address a visitor left for the team's replies by mail (visitor.reply_address_left; sealed
-- in the log) and the log position it was left at: members' messages after it are mailed.
ALTER TABLE conversations ADD COLUMN reply_email TEXT;
ALTER TABLE conversations ADD COLUMN reply_email_seq INTEGER;
-- Mails the handoff-mail subscriber has sent (kind "waiting": the team told that a conversation
-- waits, keyed by the event's position; kind "reply": a member's message mailed to the visitor,
-- keyed by the message id). Not rebuilt from the log: the record of effects that took place, so
-- that a restart or a replay never sends one twice.
CREATE TABLE handoff_mails (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX handoff_mails_by_conversation ON handoff_mails (conversation_id, kind, sent_at);
