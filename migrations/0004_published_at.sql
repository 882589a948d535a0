-- When the broker confirmed a job's message. Acceptance is insert (queued, published_at NULL),
-- publish, then this stamp; a sync or async job still queued without it past a grace period was
-- never handed to the queue (its submission answered an error) and the acceptance sweeper fails
-- it. Bulk work (batch lines, which their batch publishes at its own pace) is never swept.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS published_at timestamptz;
-- Rows from before this column were published by the code that wrote them.
UPDATE jobs SET published_at = created_at WHERE published_at IS NULL;
-- The sweeper's scan: the few unpublished interactive rows.
CREATE INDEX IF NOT EXISTS jobs_unpublished ON jobs (created_at)
    WHERE status = 'queued' AND published_at IS NULL AND priority <> 'bulk';
