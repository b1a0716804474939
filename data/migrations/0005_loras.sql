-- What members trained with /train: LoRAs and textual-inversion embeddings. The files live
-- under DATA_DIR/loras/<owner>/; the row says who may use them.
CREATE TABLE loras (
    id          INTEGER PRIMARY KEY,
    owner_id    INTEGER NOT NULL,
    guild_id    INTEGER,
    -- Sanitised (lowercase letters, digits, - and _): it is also the file's name.
    name        TEXT    NOT NULL,
    method      TEXT    NOT NULL CHECK (method IN ('lora', 'embedding')),
    token       TEXT    NOT NULL,
    class_word  TEXT    NOT NULL,
    base_model  TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    -- Shared: every member of guild_id may use and list it; otherwise its owner alone.
    shared      INTEGER NOT NULL DEFAULT 0,
    job_id      INTEGER REFERENCES jobs (id),
    metadata    TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE INDEX loras_guild ON loras (guild_id, shared);
