//! Postgres audit store (sqlx). Every write is a single statement keyed by job id, so concurrent
//! API and worker processes need no locks of their own.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use uuid::Uuid;

use super::{AuditStore, CancelOutcome, Finished, Inserted, StartOutcome};
use crate::StoreError;

const SERVICE: &str = "postgres";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

const COLUMNS: &str = "id, tenant, kind, status, model, priority, request, result, error, \
    prompt_tokens, attempts, worker, webhook, idempotency_key, request_hash, created_at, \
    started_at, finished_at, expires_at, queue_ms, inference_ms, published_at";

#[derive(Clone)]
pub struct PostgresAuditStore {
    pool: PgPool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::unavailable(SERVICE, e)
}

impl PostgresAuditStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // Fail fast while the database is down instead of queueing requests behind it.
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(unavailable)?;
        Ok(PostgresAuditStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn fetch(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|row| from_row(&row))
            .transpose()
    }
}

fn from_row(row: &PgRow) -> Result<JobRecord, StoreError> {
    let bad = |e: sqlx::Error| StoreError::corrupt("jobs row", e);
    let text = |col: &str| -> Result<String, StoreError> { row.try_get(col).map_err(bad) };
    let kind = text("kind")?;
    let status = text("status")?;
    let priority = text("priority")?;
    let result: Option<serde_json::Value> = row.try_get("result").map_err(bad)?;
    Ok(JobRecord {
        id: row.try_get("id").map_err(bad)?,
        tenant: text("tenant")?,
        kind: JobKind::parse(&kind).ok_or_else(|| StoreError::corrupt("job kind", &kind))?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt("job status", &status))?,
        model: text("model")?,
        priority: JobPriority::parse(&priority)
            .ok_or_else(|| StoreError::corrupt("job priority", &priority))?,
        request: row.try_get("request").map_err(bad)?,
        result: result
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::corrupt("job result", e))?,
        error: row.try_get("error").map_err(bad)?,
        prompt_tokens: row.try_get("prompt_tokens").map_err(bad)?,
        attempts: row.try_get("attempts").map_err(bad)?,
        worker: row.try_get("worker").map_err(bad)?,
        created_at: row.try_get("created_at").map_err(bad)?,
        started_at: row.try_get("started_at").map_err(bad)?,
        finished_at: row.try_get("finished_at").map_err(bad)?,
        queue_ms: row.try_get("queue_ms").map_err(bad)?,
        inference_ms: row.try_get("inference_ms").map_err(bad)?,
        webhook: row.try_get("webhook").map_err(bad)?,
        idempotency_key: row.try_get("idempotency_key").map_err(bad)?,
        request_hash: row.try_get("request_hash").map_err(bad)?,
        expires_at: row.try_get("expires_at").map_err(bad)?,
        published_at: row.try_get("published_at").map_err(bad)?,
    })
}

/// Binds every column of `COLUMNS`, in order, as `$1..$22`.
fn bind_all<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    r: &'q JobRecord,
) -> Result<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>, StoreError> {
    let result = r
        .result
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| StoreError::corrupt("job result", e))?;
    Ok(query
        .bind(r.id)
        .bind(&r.tenant)
        .bind(r.kind.as_str())
        .bind(r.status.as_str())
        .bind(&r.model)
        .bind(r.priority.as_str())
        .bind(&r.request)
        .bind(result)
        .bind(&r.error)
        .bind(r.prompt_tokens)
        .bind(r.attempts)
        .bind(&r.worker)
        .bind(&r.webhook)
        .bind(&r.idempotency_key)
        .bind(&r.request_hash)
        .bind(r.created_at)
        .bind(r.started_at)
        .bind(r.finished_at)
        .bind(r.expires_at)
        .bind(r.queue_ms)
        .bind(r.inference_ms)
        .bind(r.published_at))
}

const PLACEHOLDERS: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
    $16, $17, $18, $19, $20, $21, $22";

/// The finished job states, as SQL (one definition for every statement here and in the batch
/// store).
pub(crate) const TERMINAL: &str = "('succeeded', 'failed', 'cancelled', 'expired')";

#[async_trait]
impl AuditStore for PostgresAuditStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::unavailable(SERVICE, e))
    }

    async fn insert(&self, record: &JobRecord) -> Result<Inserted, StoreError> {
        // No conflict target: a clash on the id or on (tenant, idempotency key) both mean
        // "already there"; which one is read back below.
        let sql = format!(
            "INSERT INTO jobs ({COLUMNS}) VALUES ({PLACEHOLDERS}) ON CONFLICT DO NOTHING RETURNING id"
        );
        let inserted = bind_all(sqlx::query(&sql), record)?
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        if inserted.is_some() {
            return Ok(Inserted::Created);
        }
        if let Some(key) = &record.idempotency_key {
            let sql =
                format!("SELECT {COLUMNS} FROM jobs WHERE tenant = $1 AND idempotency_key = $2");
            if let Some(row) = sqlx::query(&sql)
                .bind(&record.tenant)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?
            {
                return Ok(Inserted::Existing(from_row(&row)?));
            }
        }
        match self.fetch(record.id).await? {
            Some(existing) => Ok(Inserted::Existing(existing)),
            // Conflicted, then vanished: only a concurrent delete does that.
            None => Err(StoreError::unavailable(
                SERVICE,
                "job row conflicted and vanished",
            )),
        }
    }

    async fn mark_published(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET published_at = $2 WHERE id = $1 AND published_at IS NULL")
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn fail_unpublished(
        &self,
        created_before: DateTime<Utc>,
        message: &str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        // Matches the partial index jobs_unpublished (migration 0004). `status = 'queued'` in
        // the UPDATE makes it race-free against a worker starting the job or a cancel.
        let sql = format!(
            "UPDATE jobs SET status = 'failed', finished_at = $3, error = $2 \
             WHERE status = 'queued' AND published_at IS NULL AND priority <> 'bulk' \
               AND created_at < $1 RETURNING {COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(created_before)
            .bind(message)
            .bind(scorer_protocol::job::now_millis())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        // The rows are failed whatever happens next; one that does not decode only costs the
        // caller its cache update, not the others'.
        Ok(rows
            .iter()
            .filter_map(|row| match from_row(row) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "a swept job's row does not decode");
                    None
                }
            })
            .collect())
    }

    async fn start(
        &self,
        id: Uuid,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<StartOutcome, StoreError> {
        let sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = $2, \
             started_at = $3, \
             queue_ms = GREATEST(0, (EXTRACT(EPOCH FROM ($3 - created_at)) * 1000)::bigint) \
             WHERE id = $1 AND status IN ('queued', 'running') RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(worker)
            .bind(at)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match row {
            Some(row) => Ok(StartOutcome::Started(from_row(&row)?)),
            None => Ok(match self.fetch(id).await? {
                Some(r) => StartOutcome::NotRunnable(r),
                None => StartOutcome::Missing,
            }),
        }
    }

    async fn finish(&self, record: &JobRecord) -> Result<Finished, StoreError> {
        let sql = format!(
            "INSERT INTO jobs ({COLUMNS}) VALUES ({PLACEHOLDERS}) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, result = EXCLUDED.result, \
               error = EXCLUDED.error, prompt_tokens = EXCLUDED.prompt_tokens, \
               attempts = GREATEST(jobs.attempts, EXCLUDED.attempts), \
               worker = COALESCE(EXCLUDED.worker, jobs.worker), \
               started_at = COALESCE(EXCLUDED.started_at, jobs.started_at), \
               finished_at = EXCLUDED.finished_at, \
               queue_ms = COALESCE(EXCLUDED.queue_ms, jobs.queue_ms), \
               inference_ms = EXCLUDED.inference_ms, \
               published_at = COALESCE(jobs.published_at, EXCLUDED.published_at) \
             WHERE jobs.status NOT IN {TERMINAL} \
             RETURNING {COLUMNS}"
        );
        let row = bind_all(sqlx::query(&sql), record)?
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match row {
            Some(row) => Ok(Finished {
                record: from_row(&row)?,
                applied: true,
            }),
            None => Ok(Finished {
                record: self.fetch(record.id).await?.ok_or_else(|| {
                    StoreError::unavailable(SERVICE, "job row vanished during finish")
                })?,
                applied: false,
            }),
        }
    }

    async fn cancel(&self, id: Uuid, at: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
        let sql = format!(
            "UPDATE jobs SET status = 'cancelled', finished_at = $2 \
             WHERE id = $1 AND status = 'queued' RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(at)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match row {
            Some(row) => Ok(CancelOutcome::Cancelled(from_row(&row)?)),
            None => Ok(match self.fetch(id).await? {
                Some(r) => CancelOutcome::TooLate(r),
                None => CancelOutcome::Missing,
            }),
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        self.fetch(id).await
    }

    async fn active_jobs(&self, tenant: &str) -> Result<u64, StoreError> {
        // Matches the partial index jobs_tenant_active (migration 0003).
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE tenant = $1 \
             AND status IN ('queued', 'running') AND priority <> 'bulk'",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }

    async fn prune(&self, finished_before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        // Matches the partial index jobs_retention (migration 0005); one bounded statement is
        // one short transaction, so a large backlog never holds locks for long.
        let sql = format!(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
             WHERE batch_id IS NULL AND status IN {TERMINAL} AND finished_at < $1 \
             ORDER BY finished_at LIMIT $2)"
        );
        let done = sqlx::query(&sql)
            .bind(finished_before)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(unavailable)
    }
}
