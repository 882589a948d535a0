-- Retention (`scorer prune`): the oldest finished jobs outside batches, found without scanning the
-- table. Batch lines are not in it: they go with their batch (by jobs_batch_status).
CREATE INDEX IF NOT EXISTS jobs_retention ON jobs (finished_at)
    WHERE batch_id IS NULL AND status IN ('succeeded', 'failed', 'cancelled', 'expired');
