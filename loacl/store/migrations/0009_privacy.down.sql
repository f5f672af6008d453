-- Without its data keys the log's sealed fields could never be read again.
-- refuse-if-rows: data_keys
DROP INDEX conversations_activity;
DROP INDEX conversations_visitor;
DROP INDEX conversations_owner;
ALTER TABLE conversations DROP COLUMN erased_at;
ALTER TABLE conversations DROP COLUMN owner_id;
DROP TABLE key_state;
DROP TABLE data_keys;
