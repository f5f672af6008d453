DROP TABLE handoff_mails;
