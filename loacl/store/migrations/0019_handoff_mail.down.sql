DROP TABLE handoff_mails;
ALTER TABLE conversations DROP COLUMN reply_email_seq;
ALTER TABLE conversations DROP COLUMN reply_email;
