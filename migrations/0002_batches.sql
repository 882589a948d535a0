-- Batches (OpenAI Batch API style): one row per uploaded JSONL file. Each valid line is one job
-- row in `jobs` (its audit row), linked by batch_id and named by the caller's custom_id.
CREATE TABLE IF NOT EXISTS batches (
    id                uuid        PRIMARY KEY,
    tenant            text        NOT NULL,
    model             text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('validating', 'in_progress', 'finalizing',
                                      'completed', 'failed', 'cancelling', 'cancelled', 'expired')),
    completion_window text        NOT NULL,
    metadata          jsonb,
    error             text,
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    in_progress_at    timestamptz,
    finalizing_at     timestamptz,
    completed_at      timestamptz,
    failed_at         timestamptz,
    expired_at        timestamptz,
    cancelling_at     timestamptz,
    cancelled_at      timestamptz
);

-- A tenant's batches, newest first (ids are UUIDv7, so id order is creation order).
CREATE INDEX IF NOT EXISTS batches_tenant_id ON batches (tenant, id DESC);

ALTER TABLE jobs ADD COLUMN IF NOT EXISTS batch_id uuid;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS custom_id text;

-- Rejects a custom_id used twice in one batch, and pages a batch's lines in custom_id order.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_batch_custom_id
    ON jobs (batch_id, custom_id) WHERE batch_id IS NOT NULL;
-- Progress counts by state.
CREATE INDEX IF NOT EXISTS jobs_batch_status ON jobs (batch_id, status) WHERE batch_id IS NOT NULL;

-- Lines rejected while the upload was read (no job exists for them).
CREATE TABLE IF NOT EXISTS batch_errors (
    batch_id  uuid   NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line      bigint NOT NULL,
    custom_id text,
    message   text   NOT NULL,
    PRIMARY KEY (batch_id, line)
);
