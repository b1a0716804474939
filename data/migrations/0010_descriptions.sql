-- /describe: the four prompts a member's picture was given, read by the buttons 1-4 under
-- them (after any restart) and by who may press them, as a result's buttons are.
CREATE TABLE descriptions (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    guild_id    INTEGER,
    channel_id  INTEGER,
    private     INTEGER NOT NULL DEFAULT 0,
    prompts     TEXT    NOT NULL,  -- a JSON list of the four prompts, in order
    created_at  REAL    NOT NULL
);
