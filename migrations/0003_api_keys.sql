-- API keys: the secret itself is never stored, only its SHA-256 (keys are 244 random bits, so a
-- fast hash is enough: there is nothing to brute-force). `prefix` is the first characters of the
-- key, shown by `scorer keys list` so an operator can tell keys apart.
CREATE TABLE IF NOT EXISTS api_keys (
    id                    uuid        PRIMARY KEY,
    tenant                text        NOT NULL,
    name                  text,
    prefix                text        NOT NULL,
    key_hash              text        NOT NULL UNIQUE,
    rate_limit_per_minute integer     CHECK (rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0),
    created_at            timestamptz NOT NULL,
    revoked_at            timestamptz
);

CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant, created_at);

-- The per-tenant bound on queued work counts a tenant's unfinished sync and async jobs on every
-- submission; this keeps that count to the few rows it is about.
CREATE INDEX IF NOT EXISTS jobs_tenant_active ON jobs (tenant)
    WHERE status IN ('queued', 'running') AND priority <> 'bulk';
