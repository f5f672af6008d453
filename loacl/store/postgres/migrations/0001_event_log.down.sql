-- refuse-if-rows: events
DROP TABLE event_log_head;
DROP TABLE append_keys;
DROP TABLE events;
DROP FUNCTION events_append_only();
