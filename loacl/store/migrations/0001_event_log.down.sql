-- refuse-if-rows: events
DROP TABLE event_log_head;
DROP TABLE append_keys;
DROP TRIGGER events_no_delete;
DROP TRIGGER events_no_update;
DROP TABLE events;
