DROP TRIGGER messages_fts_delete;
DROP TRIGGER messages_fts_update;
DROP TRIGGER messages_fts_insert;
DROP TABLE messages_fts;
DROP INDEX messages_seq;
DROP INDEX conversations_inbox_widget;
DROP INDEX conversations_inbox;
ALTER TABLE conversations DROP COLUMN last_activity_seq;
