-- Back to usage per widget and day; the roll-up is rebuilt from the log by its subscriber.
DROP TABLE budget_alerts;
DROP TABLE usage_daily;
CREATE TABLE usage_daily (
    widget_id         TEXT    NOT NULL,
    day               TEXT    NOT NULL,
    replies_completed INTEGER NOT NULL DEFAULT 0,
    replies_failed    INTEGER NOT NULL DEFAULT 0,
    input_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (widget_id, day)
) WITHOUT ROWID;
UPDATE subscriber_checkpoints
SET position = 0, updated_at = NULL, last_error = NULL, error_at = NULL, failures = 0
WHERE name = 'usage';
ALTER TABLE messages DROP COLUMN model;
ALTER TABLE messages DROP COLUMN assistant_id;
