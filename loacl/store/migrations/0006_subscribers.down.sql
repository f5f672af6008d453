-- Both tables are derived from the log: a later `migrate up` starts every subscriber from 0.
DROP TABLE usage_daily;
DROP TABLE subscriber_checkpoints;
