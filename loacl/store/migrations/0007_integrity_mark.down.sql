-- Only a record of past checks: the next start verifies the whole chain again.
DROP TABLE integrity_mark;
