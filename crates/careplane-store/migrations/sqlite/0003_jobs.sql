-- Durable background jobs (exports, notifications, reindex, scheduling hooks). A job is
-- enqueued in the same transaction as the write that causes it, so a rolled-back write leaves
-- no job behind. Times are unix milliseconds. `fence` grows by one on every claim: a worker
-- may finish or extend a job only with the fence it claimed it with, so a worker whose lease
-- expired (paused, partitioned) cannot complete a job another worker now owns.
-- Same numbering, tables and columns on both backends; only the integer type differs.
CREATE TABLE jobs (
    id           TEXT    PRIMARY KEY,
    tenant       TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,  -- JSON, read by the job's handler
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       INTEGER NOT NULL,  -- not claimed before this (retry backoff, scheduled jobs)
    lease_until  INTEGER,           -- a running job whose lease passed is claimed again
    fence        INTEGER NOT NULL DEFAULT 0,
    worker       TEXT,
    progress     TEXT,              -- JSON reported by the running handler
    result       TEXT,              -- JSON once succeeded
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX jobs_ready ON jobs (run_at) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_by_tenant ON jobs (tenant, kind, created_at);
