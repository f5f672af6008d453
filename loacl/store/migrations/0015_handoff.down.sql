-- The states, assignments, members' messages and read marks stay in the log; `loacl replay`
-- after the next `migrate up` fills the columns again. Members' messages leave the messages
-- table with their columns: nothing but the new event type wrote role 'agent'.
DROP TABLE conversation_reads;
DELETE FROM messages WHERE role = 'agent';
ALTER TABLE messages DROP COLUMN author_name;
ALTER TABLE messages DROP COLUMN author_id;
DROP INDEX conversations_assignee;
DROP INDEX conversations_state;
ALTER TABLE conversations DROP COLUMN state_changed_at;
ALTER TABLE conversations DROP COLUMN waiting_since;
ALTER TABLE conversations DROP COLUMN assignee_name;
ALTER TABLE conversations DROP COLUMN assignee_id;
ALTER TABLE conversations DROP COLUMN state;
