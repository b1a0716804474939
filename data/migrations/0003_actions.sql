-- Result actions (buttons, reactions) are jobs made from an earlier job's result.
ALTER TABLE jobs ADD COLUMN parent_id INTEGER REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN action TEXT;
-- What a click asks for, e.g. 'upscale:12:0'. A double click must start one job, not two:
-- one pending job per member and action key.
ALTER TABLE jobs ADD COLUMN action_key TEXT;
-- Set when the requester or an admin deletes the result (message and files).
ALTER TABLE jobs ADD COLUMN deleted_at REAL;

CREATE UNIQUE INDEX jobs_pending_action ON jobs (user_id, action_key)
    WHERE action_key IS NOT NULL AND status IN ('queued', 'running');
-- Reactions and buttons find their job by the message that shows it.
CREATE INDEX jobs_message ON jobs (message_id);

-- Per-server settings, one row per key; a missing key means the bot's own setting.
CREATE TABLE guild_settings (
    guild_id    INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    updated_by  INTEGER,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (guild_id, key)
);
