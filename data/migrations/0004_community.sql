-- Running the bot in a community (issue 8).

-- A member's own defaults (preset '') and named presets, as JSON of the options they set.
-- Per member, not per server: a member's taste travels with them.
CREATE TABLE member_presets (
    user_id     INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    options     TEXT    NOT NULL,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (user_id, name)
);

-- Members a server has barred from the bot.
CREATE TABLE guild_blocks (
    guild_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    reason      TEXT,
    blocked_by  INTEGER,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- Higher caps or other prices for the members of a role; NULL leaves the server's own.
CREATE TABLE role_limits (
    guild_id      INTEGER NOT NULL,
    role_id       INTEGER NOT NULL,
    max_steps     INTEGER,
    max_pixels    INTEGER,
    max_count     INTEGER,
    max_pending   INTEGER,
    price_factor  REAL,
    updated_by    INTEGER,
    updated_at    REAL    NOT NULL,
    PRIMARY KEY (guild_id, role_id)
);

-- Images the safety classifier flagged, and what was done with them where they were asked
-- for: 'posted' (age-restricted channel), 'blur', 'spoiler' or 'refuse'.
CREATE TABLE flagged_images (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    action      TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (job_id, idx)
);

-- Cooldowns read a member's last job of a kind here; /stats reads a server's jobs by time.
CREATE INDEX jobs_member_kind ON jobs (user_id, guild_id, kind, created_at);
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
