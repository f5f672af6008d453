-- The ratings and the pre-chat answers stay in the log (sealed); `loacl replay` after the next
-- `migrate up` fills the columns again.
ALTER TABLE conversations DROP COLUMN visitor_email;
ALTER TABLE conversations DROP COLUMN visitor_name;
DROP INDEX messages_feedback;
ALTER TABLE messages DROP COLUMN feedback_at;
ALTER TABLE messages DROP COLUMN feedback_comment;
ALTER TABLE messages DROP COLUMN feedback_rating;
