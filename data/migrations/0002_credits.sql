-- Credits: an account per member and an append-only ledger. The balance is a cache of the
-- ledger's sum, updated in the same transaction as every ledger row.
CREATE TABLE accounts (
    user_id       INTEGER PRIMARY KEY,
    balance       INTEGER NOT NULL CHECK (balance >= 0),
    created_at    REAL    NOT NULL,
    topped_up_at  REAL    NOT NULL
);

CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES accounts (user_id),
    delta       INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('grant', 'topup', 'charge', 'refund', 'adjust')),
    job_id      INTEGER REFERENCES jobs (id),
    reason      TEXT,
    actor_id    INTEGER,
    created_at  REAL    NOT NULL
);

CREATE INDEX ledger_user ON ledger (user_id, id);
-- A job is charged at most once and refunded at most once, whatever retries happen.
CREATE UNIQUE INDEX ledger_one_charge ON ledger (job_id) WHERE kind = 'charge';
CREATE UNIQUE INDEX ledger_one_refund ON ledger (job_id) WHERE kind = 'refund';

ALTER TABLE jobs ADD COLUMN cost INTEGER NOT NULL DEFAULT 0;
-- How many times a run was started: a job left running by a crash is retried once.
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
