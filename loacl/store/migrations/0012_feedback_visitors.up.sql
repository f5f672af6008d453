-- A visitor's rating of a reply (feedback.given: the newest one counts), and the visitor's
-- answers to a widget's pre-chat form (visitor.introduced). Both event types are new with this
-- migration, so there is nothing in the log to fill the columns from.
ALTER TABLE messages ADD COLUMN feedback_rating TEXT;   -- up | down
ALTER TABLE messages ADD COLUMN feedback_comment TEXT;  -- '' when none; personal: erased
ALTER TABLE messages ADD COLUMN feedback_at TEXT;       -- ISO 8601, UTC
-- Usage counts ratings by the day they were given.
CREATE INDEX messages_feedback ON messages (feedback_at) WHERE feedback_at IS NOT NULL;
ALTER TABLE conversations ADD COLUMN visitor_name TEXT;   -- personal: erased with it
ALTER TABLE conversations ADD COLUMN visitor_email TEXT;  -- personal: erased with it
