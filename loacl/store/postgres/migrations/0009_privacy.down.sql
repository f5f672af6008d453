-- refuse-if-rows: data_keys
DROP TABLE key_state;
DROP TABLE data_keys;
