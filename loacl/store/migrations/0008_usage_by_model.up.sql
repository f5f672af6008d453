-- Which assistant and model wrote each reply: usage is grouped and priced by them. Filled from
-- each reply's assistant.started event; `loacl replay` fills them the same way.
ALTER TABLE messages ADD COLUMN assistant_id TEXT;
ALTER TABLE messages ADD COLUMN model TEXT;
UPDATE messages SET
    assistant_id = (SELECT json_extract(e.payload, '$.assistant_id') FROM events AS e
                    WHERE e.stream = 'conversation-' || messages.conversation_id
                      AND e.type = 'assistant.started'
                      AND json_extract(e.payload, '$.message_id') = messages.message_id),
    model = (SELECT json_extract(e.payload, '$.model') FROM events AS e
             WHERE e.stream = 'conversation-' || messages.conversation_id
               AND e.type = 'assistant.started'
               AND json_extract(e.payload, '$.message_id') = messages.message_id)
WHERE role = 'assistant';

-- The `usage` roll-up keeps the assistant and the model too. It is derived from the log: the
-- subscriber starts again from position 0 and rebuilds it.
DROP TABLE usage_daily;
CREATE TABLE usage_daily (
    widget_id         TEXT    NOT NULL,
    day               TEXT    NOT NULL,  -- YYYY-MM-DD, UTC, of the reply's end event
    assistant_id      TEXT    NOT NULL,  -- '' when the reply's row is missing
    model             TEXT    NOT NULL,
    replies_completed INTEGER NOT NULL DEFAULT 0,
    replies_failed    INTEGER NOT NULL DEFAULT 0,
    input_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (widget_id, day, assistant_id, model)
) WITHOUT ROWID;
UPDATE subscriber_checkpoints
SET position = 0, updated_at = NULL, last_error = NULL, error_at = NULL, failures = 0
WHERE name = 'usage';

-- Budget mails sent: one per widget, period and threshold, whatever restarts. Not derived from
-- the log (it records mails that went out), so replay keeps it.
CREATE TABLE budget_alerts (
    widget_id TEXT    NOT NULL,
    period    TEXT    NOT NULL,  -- YYYY-MM-DD (a day) or YYYY-MM (a month), UTC
    threshold INTEGER NOT NULL,  -- percent: budget_warn_percent or 100
    sent_at   TEXT    NOT NULL,
    PRIMARY KEY (widget_id, period, threshold)
) WITHOUT ROWID;
