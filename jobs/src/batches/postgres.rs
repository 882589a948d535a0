//! Postgres batch store (sqlx). A batch's lines are rows of the `jobs` audit table (with
//! `batch_id` and `custom_id`), written a chunk per statement; the unique index on
//! `(batch_id, custom_id)` is what rejects a repeated custom_id, so no process holds the set of
//! ids seen.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

use super::{
    BatchCounts, BatchLine, BatchRecord, BatchStatus, BatchStore, LineError, LineResult, Pruned,
};
use crate::StoreError;
use crate::audit::TERMINAL_SQL;

const SERVICE: &str = "postgres";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

const COLUMNS: &str = "id, tenant, model, status, completion_window, metadata, error, created_at, \
    expires_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at, \
    cancelling_at, cancelled_at";

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::unavailable(SERVICE, e)
}

#[derive(Clone)]
pub struct PostgresBatchStore {
    pool: PgPool,
}

impl PostgresBatchStore {
    /// Shares a pool (the audit store's: the jobs rows are the same table).
    pub fn new(pool: PgPool) -> Self {
        PostgresBatchStore { pool }
    }
}

fn from_row(row: &PgRow) -> Result<BatchRecord, StoreError> {
    let bad = |e: sqlx::Error| StoreError::corrupt("batches row", e);
    let status: String = row.try_get("status").map_err(bad)?;
    Ok(BatchRecord {
        id: row.try_get("id").map_err(bad)?,
        tenant: row.try_get("tenant").map_err(bad)?,
        model: row.try_get("model").map_err(bad)?,
        status: BatchStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt("batch status", &status))?,
        completion_window: row.try_get("completion_window").map_err(bad)?,
        metadata: row.try_get("metadata").map_err(bad)?,
        error: row.try_get("error").map_err(bad)?,
        created_at: row.try_get("created_at").map_err(bad)?,
        expires_at: row.try_get("expires_at").map_err(bad)?,
        in_progress_at: row.try_get("in_progress_at").map_err(bad)?,
        finalizing_at: row.try_get("finalizing_at").map_err(bad)?,
        completed_at: row.try_get("completed_at").map_err(bad)?,
        failed_at: row.try_get("failed_at").map_err(bad)?,
        expired_at: row.try_get("expired_at").map_err(bad)?,
        cancelling_at: row.try_get("cancelling_at").map_err(bad)?,
        cancelled_at: row.try_get("cancelled_at").map_err(bad)?,
    })
}

/// The timestamp column a transition into `status` stamps.
fn stamp_column(status: BatchStatus) -> Option<&'static str> {
    Some(match status {
        BatchStatus::Validating => return None,
        BatchStatus::InProgress => "in_progress_at",
        BatchStatus::Finalizing => "finalizing_at",
        BatchStatus::Completed => "completed_at",
        BatchStatus::Failed => "failed_at",
        BatchStatus::Cancelling => "cancelling_at",
        BatchStatus::Cancelled => "cancelled_at",
        BatchStatus::Expired => "expired_at",
    })
}

#[async_trait]
impl BatchStore for PostgresBatchStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::unavailable(SERVICE, e))
    }

    async fn create(&self, b: &BatchRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO batches ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16) ON CONFLICT (id) DO NOTHING"
        );
        sqlx::query(&sql)
            .bind(b.id)
            .bind(&b.tenant)
            .bind(&b.model)
            .bind(b.status.as_str())
            .bind(&b.completion_window)
            .bind(&b.metadata)
            .bind(&b.error)
            .bind(b.created_at)
            .bind(b.expires_at)
            .bind(b.in_progress_at)
            .bind(b.finalizing_at)
            .bind(b.completed_at)
            .bind(b.failed_at)
            .bind(b.expired_at)
            .bind(b.cancelling_at)
            .bind(b.cancelled_at)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM batches WHERE id = $1");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn list(
        &self,
        tenant: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM batches WHERE tenant = $1 AND ($2::uuid IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3"
        );
        sqlx::query(&sql)
            .bind(tenant)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(from_row)
            .collect()
    }

    async fn open(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM batches WHERE status = ANY($1) \
             AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let open: Vec<&str> = super::lifecycle::OPEN.iter().map(|s| s.as_str()).collect();
        sqlx::query(&sql)
            .bind(open)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(from_row)
            .collect()
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[BatchStatus],
        to: BatchStatus,
        at: DateTime<Utc>,
        error: Option<String>,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let stamp = stamp_column(to)
            .map(|c| format!(", {c} = $3"))
            .unwrap_or_default();
        let sql = format!(
            "UPDATE batches SET status = $2{stamp}, error = COALESCE($4, error) \
             WHERE id = $1 AND status = ANY($5) RETURNING {COLUMNS}"
        );
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        sqlx::query(&sql)
            .bind(id)
            .bind(to.as_str())
            .bind(at)
            .bind(error)
            .bind(from)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn add_lines(&self, batch: Uuid, lines: &[BatchLine]) -> Result<Vec<usize>, StoreError> {
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let n = lines.len();
        let mut ids = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut models = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut expires = Vec::with_capacity(n);
        let mut custom_ids = Vec::with_capacity(n);
        for l in lines {
            let r = &l.record;
            ids.push(r.id);
            tenants.push(r.tenant.as_str());
            kinds.push(r.kind.as_str());
            models.push(r.model.as_str());
            priorities.push(r.priority.as_str());
            requests.push(r.request.clone().unwrap_or(serde_json::Value::Null));
            tokens.push(r.prompt_tokens);
            created.push(r.created_at);
            expires.push(r.expires_at);
            custom_ids.push(l.custom_id.as_str());
        }
        // One statement per chunk; a custom_id the batch already has (or that repeats inside
        // the chunk) conflicts on the unique index and is left out of RETURNING.
        let inserted: Vec<String> = sqlx::query(
            "INSERT INTO jobs (id, tenant, kind, status, model, priority, request, \
               prompt_tokens, created_at, expires_at, batch_id, custom_id) \
             SELECT u.id, u.tenant, u.kind, 'queued', u.model, u.priority, u.request, \
               u.tokens, u.created_at, u.expires_at, $11, u.custom_id \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
               $6::jsonb[], $7::bigint[], $8::timestamptz[], $9::timestamptz[], $10::text[]) \
               AS u(id, tenant, kind, model, priority, request, tokens, created_at, expires_at, \
                    custom_id) \
             ON CONFLICT DO NOTHING RETURNING custom_id",
        )
        .bind(&ids)
        .bind(&tenants)
        .bind(&kinds)
        .bind(&models)
        .bind(&priorities)
        .bind(&requests)
        .bind(&tokens)
        .bind(&created)
        .bind(&expires)
        .bind(&custom_ids)
        .bind(batch)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| row.try_get::<String, _>("custom_id"))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::corrupt("jobs row", e))?;
        // RETURNING names each inserted custom_id once; every other line is a repeat.
        let mut inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        Ok(lines
            .iter()
            .enumerate()
            .filter(|(_, l)| !inserted.remove(&l.custom_id))
            .map(|(i, _)| i)
            .collect())
    }

    async fn add_errors(&self, batch: Uuid, errors: &[LineError]) -> Result<(), StoreError> {
        if errors.is_empty() {
            return Ok(());
        }
        let lines: Vec<i64> = errors.iter().map(|e| e.line).collect();
        let custom_ids: Vec<Option<&str>> = errors.iter().map(|e| e.custom_id.as_deref()).collect();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        sqlx::query(
            "INSERT INTO batch_errors (batch_id, line, custom_id, message) \
             SELECT $1, u.line, u.custom_id, u.message \
             FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS u(line, custom_id, message) \
             ON CONFLICT DO NOTHING",
        )
        .bind(batch)
        .bind(&lines)
        .bind(&custom_ids)
        .bind(&messages)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn counts(&self, batch: Uuid) -> Result<BatchCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT status, count(*) AS n FROM jobs WHERE batch_id = $1 GROUP BY status",
        )
        .bind(batch)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let bad = |e: sqlx::Error| StoreError::corrupt("batch counts", e);
        let mut counts = BatchCounts::default();
        for row in rows {
            let status: String = row.try_get("status").map_err(bad)?;
            let n = row.try_get::<i64, _>("n").map_err(bad)? as u64;
            match status.as_str() {
                "queued" => counts.queued += n,
                "running" => counts.running += n,
                "succeeded" => counts.succeeded += n,
                _ => counts.failed += n,
            }
        }
        let invalid: i64 =
            sqlx::query_scalar("SELECT count(*) FROM batch_errors WHERE batch_id = $1")
                .bind(batch)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        counts.invalid = invalid as u64;
        Ok(counts)
    }

    async fn cancel_queued(&self, batch: Uuid, at: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'cancelled', finished_at = $2 \
             WHERE batch_id = $1 AND status = 'queued'",
        )
        .bind(batch)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn results(
        &self,
        batch: Uuid,
        succeeded: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LineResult>, StoreError> {
        // Every finished line is read, and the ones wanted kept: whether a succeeded line's
        // row decodes is only known here, and one that does not belongs to the error side.
        // The whole row as JSON decodes straight into a JobRecord (same field names and
        // lowercase enums), so this store needs no copy of the audit store's row mapping.
        let sql = "SELECT j.custom_id, j.id, j.tenant, j.model, j.status, \
             to_jsonb(j) - 'batch_id' - 'custom_id' AS job FROM jobs j \
             WHERE j.batch_id = $1 AND j.status IN ('succeeded', 'failed', 'cancelled', 'expired') \
             AND ($2::text IS NULL OR j.custom_id > $2) ORDER BY j.custom_id LIMIT $3";
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let mut cursor = after.map(str::to_string);
        loop {
            let rows = sqlx::query(sql)
                .bind(batch)
                .bind(cursor.as_deref())
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            let exhausted = rows.len() < limit;
            for row in &rows {
                let line = finished_line(row)?;
                cursor = Some(line.custom_id.clone());
                if (line.record.status == JobStatus::Succeeded) == succeeded {
                    found.push(line);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            if exhausted {
                return Ok(found);
            }
        }
    }

    async fn line_errors(
        &self,
        batch: Uuid,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LineError>, StoreError> {
        let rows = sqlx::query(
            "SELECT line, custom_id, message FROM batch_errors \
             WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3",
        )
        .bind(batch)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let bad = |e: sqlx::Error| StoreError::corrupt("batch_errors row", e);
                Ok(LineError {
                    line: row.try_get("line").map_err(bad)?,
                    custom_id: row.try_get("custom_id").map_err(bad)?,
                    message: row.try_get("message").map_err(bad)?,
                })
            })
            .collect()
    }

    async fn prune(
        &self,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The finished lines of due batches (index jobs_batch_status), then the due batches
        // left with no line at all (their rejected lines go by ON DELETE CASCADE); one
        // transaction, each statement bounded by `limit`.
        let statements = [
            format!(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
                 WHERE batch_id IN ({DUE_BATCHES}) AND status IN {TERMINAL_SQL} LIMIT $2)"
            ),
            format!(
                "DELETE FROM batches WHERE id IN ({DUE_BATCHES} \
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id) LIMIT $2)"
            ),
        ];
        let mut deleted = [0; 2];
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        for (n, sql) in deleted.iter_mut().zip(&statements) {
            *n = sqlx::query(sql)
                .bind(finished_before)
                .bind(limit)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
        }
        tx.commit().await.map_err(unavailable)?;
        let [jobs, batches] = deleted;
        Ok(Pruned { batches, jobs })
    }
}

/// Batches past retention: terminal, and finished (the stamp of their terminal status, as
/// [`BatchRecord::finished_at`] reads it) before `$1`.
const DUE_BATCHES: &str = "SELECT id FROM batches \
    WHERE status IN ('completed', 'failed', 'cancelled', 'expired') \
    AND COALESCE(completed_at, failed_at, cancelled_at, expired_at) < $1";

/// One finished line from its row. A row whose job does not decode becomes a failed line that
/// says so (its id, tenant and model are plain columns, always readable).
fn finished_line(row: &PgRow) -> Result<LineResult, StoreError> {
    let bad = |e: sqlx::Error| StoreError::corrupt("jobs row", e);
    let custom_id: String = row.try_get("custom_id").map_err(bad)?;
    let job: serde_json::Value = row.try_get("job").map_err(bad)?;
    let record = match serde_json::from_value::<JobRecord>(job) {
        Ok(record) => record,
        Err(e) => {
            let id: Uuid = row.try_get("id").map_err(bad)?;
            let status: String = row.try_get("status").map_err(bad)?;
            tracing::warn!(job = %id, %custom_id, error = %e, "stored job does not decode");
            let mut record = JobRecord::queued(
                id,
                row.try_get::<String, _>("tenant").map_err(bad)?,
                JobKind::Async,
                row.try_get::<String, _>("model").map_err(bad)?,
                JobPriority::Bulk,
            );
            record.status = JobStatus::Failed;
            record.error = Some(format!(
                "the stored {status} job could not be read back: {e}"
            ));
            record
        }
    };
    Ok(LineResult { custom_id, record })
}
