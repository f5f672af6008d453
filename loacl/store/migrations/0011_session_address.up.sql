-- The address a session was started from, as its owner's session list shows it (from the
-- session.started event's metadata; sessions started before this migration get it at the next
-- replay). Blanked when the account is erased.
ALTER TABLE sessions ADD COLUMN client_ip TEXT;
