-- Jobs are rows before they are queued; the row is the source of truth for a job.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    user_id         INTEGER NOT NULL,
    guild_id        INTEGER,
    channel_id      INTEGER,
    -- The interaction id doubles as an idempotency key: a retried interaction finds its job.
    interaction_id  INTEGER UNIQUE,
    params          TEXT    NOT NULL,
    error           TEXT,
    message_id      INTEGER,
    created_at      REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL
);

CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_user ON jobs (user_id, id);

CREATE TABLE images (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    path        TEXT    NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    infotext    TEXT    NOT NULL,
    UNIQUE (job_id, idx)
);
