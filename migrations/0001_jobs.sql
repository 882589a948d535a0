-- One row per accepted job: the audit trail of what was asked, by whom, and what came of it.
CREATE TABLE IF NOT EXISTS jobs (
    id              uuid        PRIMARY KEY,
    tenant          text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('sync', 'async')),
    status          text        NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')),
    model           text        NOT NULL,
    priority        text        NOT NULL CHECK (priority IN ('sync', 'async', 'bulk')),
    request         jsonb,
    result          jsonb,
    error           text,
    prompt_tokens   bigint,
    attempts        integer     NOT NULL DEFAULT 0,
    worker          text,
    webhook         text,
    idempotency_key text,
    request_hash    text,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    expires_at      timestamptz,
    queue_ms        bigint,
    inference_ms    bigint
);

-- Idempotency-Key lookups; also makes a replayed submission race-free.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_idempotency_key
    ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- A tenant's recent jobs, and operational queries by state.
CREATE INDEX IF NOT EXISTS jobs_tenant_created_at ON jobs (tenant, created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_status_created_at ON jobs (status, created_at);
