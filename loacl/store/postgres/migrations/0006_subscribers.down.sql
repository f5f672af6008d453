DROP TABLE subscriber_checkpoints;
