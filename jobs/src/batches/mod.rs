//! Batches (OpenAI Batch API style): a batch row per uploaded file, one job (and so one audit
//! row) per valid line linked to it by `batch_id` and the caller's `custom_id`, and the lines
//! rejected while the upload was read. Progress is counted from the jobs themselves.

pub mod lifecycle;
mod memory;
mod postgres;

pub use memory::MemoryBatchStore;
pub use postgres::PostgresBatchStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scorer_protocol::job::JobRecord;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::StoreError;

/// `validating -> in_progress -> finalizing -> completed`; `validating -> failed` (no valid
/// line); `in_progress -> cancelling -> cancelled`; `in_progress -> expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
    Expired,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
            BatchStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "validating" => BatchStatus::Validating,
            "in_progress" => BatchStatus::InProgress,
            "finalizing" => BatchStatus::Finalizing,
            "completed" => BatchStatus::Completed,
            "failed" => BatchStatus::Failed,
            "cancelling" => BatchStatus::Cancelling,
            "cancelled" => BatchStatus::Cancelled,
            "expired" => BatchStatus::Expired,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Completed
                | BatchStatus::Failed
                | BatchStatus::Cancelled
                | BatchStatus::Expired
        )
    }
}

/// The batch row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: Uuid,
    pub tenant: String,
    pub model: String,
    pub status: BatchStatus,
    /// As asked, e.g. `24h`.
    pub completion_window: String,
    pub metadata: Option<serde_json::Value>,
    /// Why the batch failed as a whole (e.g. no valid line).
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub finalizing_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub cancelling_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

impl BatchRecord {
    /// The timestamp column a transition into `status` sets.
    fn stamp(&mut self, status: BatchStatus, at: DateTime<Utc>) {
        let slot = match status {
            BatchStatus::Validating => return,
            BatchStatus::InProgress => &mut self.in_progress_at,
            BatchStatus::Finalizing => &mut self.finalizing_at,
            BatchStatus::Completed => &mut self.completed_at,
            BatchStatus::Failed => &mut self.failed_at,
            BatchStatus::Cancelling => &mut self.cancelling_at,
            BatchStatus::Cancelled => &mut self.cancelled_at,
            BatchStatus::Expired => &mut self.expired_at,
        };
        *slot = Some(at);
    }

    /// When the batch reached its terminal status; `None` while it is open. Retention counts
    /// from here (the Postgres store reads the same four columns).
    pub fn finished_at(&self) -> Option<DateTime<Utc>> {
        match self.status {
            BatchStatus::Completed => self.completed_at,
            BatchStatus::Failed => self.failed_at,
            BatchStatus::Cancelled => self.cancelled_at,
            BatchStatus::Expired => self.expired_at,
            _ => None,
        }
    }
}

/// What one [`BatchStore::prune`] call deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Batch rows (with their rejected lines).
    pub batches: u64,
    /// Jobs that were lines of those batches.
    pub jobs: u64,
}

/// One valid line: its job, already queued-state, carrying the batch's tenant, model and
/// deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchLine {
    pub custom_id: String,
    pub record: JobRecord,
}

/// A line rejected while the upload was read. `line` is 1-based in the uploaded file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineError {
    pub line: i64,
    pub custom_id: Option<String>,
    pub message: String,
}

/// A finished line: its custom_id and its job's terminal record.
#[derive(Debug, Clone, PartialEq)]
pub struct LineResult {
    pub custom_id: String,
    pub record: JobRecord,
}

/// How far a batch's lines have got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    /// Jobs that failed, were cancelled or expired.
    pub failed: u64,
    /// Lines rejected at upload (no job).
    pub invalid: u64,
}

impl BatchCounts {
    /// Every line of the file: jobs plus rejected lines.
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.succeeded + self.failed + self.invalid
    }

    pub fn pending(&self) -> u64 {
        self.queued + self.running
    }
}

#[async_trait]
pub trait BatchStore: Send + Sync + 'static {
    /// Bring the schema up to date.
    async fn migrate(&self) -> Result<(), StoreError>;

    async fn create(&self, batch: &BatchRecord) -> Result<(), StoreError>;

    async fn get(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError>;

    /// A tenant's batches, newest first, strictly older than `after` when given.
    async fn list(
        &self,
        tenant: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError>;

    /// Batches still open to moves their jobs decide ([`lifecycle::OPEN`]: in progress,
    /// finalizing, cancelling), oldest first, strictly after `after`.
    async fn open(&self, after: Option<Uuid>, limit: usize)
    -> Result<Vec<BatchRecord>, StoreError>;

    /// Moves the batch to `to` (stamping its timestamp, and `error` when given) if its status is
    /// one of `from`; `None` when it was not (someone else moved it first, or no such batch).
    async fn transition(
        &self,
        id: Uuid,
        from: &[BatchStatus],
        to: BatchStatus,
        at: DateTime<Utc>,
        error: Option<String>,
    ) -> Result<Option<BatchRecord>, StoreError>;

    /// Records the jobs of a chunk of valid lines (one audit row each). Returns the positions in
    /// `lines` of those whose custom_id the batch already had (a repeat within the chunk counts
    /// from its second occurrence): those lines were not recorded.
    async fn add_lines(&self, batch: Uuid, lines: &[BatchLine]) -> Result<Vec<usize>, StoreError>;

    async fn add_errors(&self, batch: Uuid, errors: &[LineError]) -> Result<(), StoreError>;

    async fn counts(&self, batch: Uuid) -> Result<BatchCounts, StoreError>;

    /// Cancels the batch's jobs that have not started; returns how many.
    async fn cancel_queued(&self, batch: Uuid, at: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Finished lines in custom_id order after `after`: the succeeded ones, or (with
    /// `succeeded = false`) the failed, cancelled and expired ones. A line whose stored job
    /// cannot be read back (a result that does not decode) is never a succeeded line: it comes
    /// with the others as `failed`, its error saying why, so one bad row cannot break a
    /// download or lose the lines after it.
    async fn results(
        &self,
        batch: Uuid,
        succeeded: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LineResult>, StoreError>;

    /// Rejected lines in file order after line `after`.
    async fn line_errors(
        &self,
        batch: Uuid,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LineError>, StoreError>;

    /// Retention (`scorer prune`): batches that finished ([`BatchRecord::finished_at`]) before
    /// `finished_before` go with their lines' jobs and rejected lines, at most `limit` jobs (and
    /// at most `limit` batch rows) per call, in one transaction. A line still queued or running
    /// (an expired batch's started line) is never deleted: it and its batch row stay until a
    /// later call finds it finished. Call until it returns [`Pruned::default`].
    async fn prune(
        &self,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Pruned, StoreError>;
}
