-- Handing a conversation to a person: its state (conversation.state_changed), who holds it
-- (conversation.assigned), members' messages (agent.message_posted) and how far each member
-- has read (conversation.read). The event types are new with this migration, so every
-- conversation starts as the assistant's and nothing needs filling from the log.
ALTER TABLE conversations ADD COLUMN state TEXT NOT NULL DEFAULT 'bot';  -- bot | waiting | human | closed
ALTER TABLE conversations ADD COLUMN assignee_id TEXT;     -- a member's account id
ALTER TABLE conversations ADD COLUMN assignee_name TEXT;   -- the member's display name then
ALTER TABLE conversations ADD COLUMN waiting_since TEXT;   -- ISO 8601, UTC, while waiting
ALTER TABLE conversations ADD COLUMN state_changed_at TEXT;
-- The inbox's filters by state and by assignee, in its order.
CREATE INDEX conversations_state ON conversations (owner_id, state, last_activity_seq);
CREATE INDEX conversations_assignee ON conversations (owner_id, assignee_id, last_activity_seq);

-- A member's message names its author (role 'agent').
ALTER TABLE messages ADD COLUMN author_id TEXT;
ALTER TABLE messages ADD COLUMN author_name TEXT;

-- How far each member has read each conversation (a message's created_seq): unread counts.
CREATE TABLE conversation_reads (
    conversation_id TEXT    NOT NULL,
    member_id       TEXT    NOT NULL,
    up_to           INTEGER NOT NULL,
    read_at         TEXT    NOT NULL,
    PRIMARY KEY (conversation_id, member_id)
) WITHOUT ROWID;
