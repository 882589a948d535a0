//! The audit trail: one row per accepted job, from acceptance to its final state. It is also the
//! arbiter of races (cancel against start, replays of an idempotency key, redeliveries).

mod memory;
mod postgres;

pub use memory::MemoryAuditStore;
pub use postgres::PostgresAuditStore;
pub(crate) use postgres::TERMINAL as TERMINAL_SQL;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scorer_protocol::job::JobRecord;
use uuid::Uuid;

use crate::StoreError;

// Short-lived return values: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    Created,
    /// A job with the same id, or the same tenant and idempotency key, already exists.
    Existing(JobRecord),
}

// Short-lived return values: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    /// Now `running`, with the attempt counted.
    Started(JobRecord),
    /// Already terminal (cancelled, finished by an earlier delivery, ...): do not run it.
    NotRunnable(JobRecord),
    Missing,
}

// Short-lived return values: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    Cancelled(JobRecord),
    /// It had started or finished already.
    TooLate(JobRecord),
    Missing,
}

/// The row after `finish`, and whether this call decided it (only that caller sends the
/// webhook).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub record: JobRecord,
    pub applied: bool,
}

#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Bring the schema up to date.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Record an accepted job (status `queued`).
    async fn insert(&self, record: &JobRecord) -> Result<Inserted, StoreError>;

    /// The job's message was confirmed by the broker: the acceptance sweeper leaves it alone.
    /// Idempotent; the first stamp stays.
    async fn mark_published(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// The acceptance sweeper: every sync or async job (not bulk: batch lines are published by
    /// their batch at its own pace) still `queued` and
    /// never published that was created before `created_before` becomes `failed` with
    /// `message`; those rows are returned so the result cache can be told. Such a job's
    /// submission answered an error (the insert committed but its answer came too late, or
    /// the publish failed), so it was never accepted; it must not stay queued for ever,
    /// counting against its tenant's bound.
    async fn fail_unpublished(
        &self,
        created_before: DateTime<Utc>,
        message: &str,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Move a job to `running` unless it is terminal, counting one more attempt and its queue
    /// time.
    async fn start(
        &self,
        id: Uuid,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<StartOutcome, StoreError>;

    /// Upsert a terminal state by job id. A job already terminal keeps its state, so a
    /// redelivered job finishing twice leaves one row with the first outcome.
    async fn finish(&self, record: &JobRecord) -> Result<Finished, StoreError>;

    /// Cancel a job that has not started.
    async fn cancel(&self, id: Uuid, at: DateTime<Utc>) -> Result<CancelOutcome, StoreError>;

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError>;

    /// A tenant's unfinished (queued or running) jobs at sync or async priority: what the
    /// per-tenant bound on queued work counts. Bulk work (batch lines, `priority: bulk`) is left
    /// out; batches pace themselves against the queue instead.
    async fn active_jobs(&self, tenant: &str) -> Result<u64, StoreError>;

    /// Retention (`scorer prune`): deletes at most `limit` finished jobs (succeeded, failed,
    /// cancelled, expired) whose `finished_at` is before `finished_before`, oldest first, in one
    /// statement, and returns how many went. A queued or running job is never deleted, nor is a
    /// batch's line: it goes with its batch ([`crate::BatchStore::prune`]), so a batch's output
    /// stays whole while the batch exists.
    async fn prune(&self, finished_before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

fn millis_between(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds().max(0)
}
