//! Jobs as the service sees them: the queue envelope a worker consumes, the record kept in the
//! result and audit stores, and the job object the HTTP API answers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::score::{ScoreJob, ScoreResponse};

/// Lifecycle of a job. `queued -> running -> succeeded | failed`; `queued -> cancelled | expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }
}

/// How the job entered the service: a synchronous `/v1/score` call or an async job submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Sync,
    Async,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Sync => "sync",
            JobKind::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sync" => Some(JobKind::Sync),
            "async" => Some(JobKind::Async),
            _ => None,
        }
    }
}

/// Queue priority classes: a caller waiting on the connection goes before a polled job, which goes
/// before bulk work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobPriority {
    Bulk,
    Async,
    Sync,
}

impl JobPriority {
    /// The highest AMQP priority used; queues are declared with this `x-max-priority`.
    pub const MAX_AMQP: u8 = 9;

    pub fn amqp(self) -> u8 {
        match self {
            JobPriority::Sync => 9,
            JobPriority::Async => 5,
            JobPriority::Bulk => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobPriority::Sync => "sync",
            JobPriority::Async => "async",
            JobPriority::Bulk => "bulk",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sync" => Some(JobPriority::Sync),
            "async" => Some(JobPriority::Async),
            "bulk" => Some(JobPriority::Bulk),
            _ => None,
        }
    }
}

/// What travels on the queue (MessagePack): everything a worker needs to score without reading a
/// store, already tokenized by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub job_id: Uuid,
    pub tenant: String,
    pub priority: JobPriority,
    /// Unix milliseconds after which the job must not start any more (it becomes `expired`).
    pub deadline_ms: Option<i64>,
    pub model: String,
    pub prompts: Vec<Vec<u32>>,
    pub labels: Vec<Vec<u32>>,
    pub apply_softmax: bool,
    pub temperature: f64,
    /// Which publication of the job this is: 1 from the API, raised when a worker publishes it
    /// again after its pass ran past the run time limit. Redeliveries after crashes keep it; the
    /// authoritative count of starts is the audit row's.
    pub attempt: u32,
    pub enqueued_at_ms: i64,
}

impl JobEnvelope {
    pub fn score_job(&self) -> ScoreJob {
        ScoreJob {
            prompts: self.prompts.clone(),
            labels: self.labels.clone(),
            apply_softmax: self.apply_softmax,
            temperature: self.temperature,
        }
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }
}

/// The full state of one job, as stored in Redis and in the Postgres audit table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub model: String,
    pub priority: JobPriority,
    /// The request body as received (audit); not copied into the result cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    #[serde(default)]
    pub result: Option<ScoreResponse>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub prompt_tokens: Option<i64>,
    #[serde(default)]
    pub attempts: i32,
    #[serde(default)]
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub queue_ms: Option<i64>,
    #[serde(default)]
    pub inference_ms: Option<i64>,
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Hash of the request body, to tell a replay from a conflicting reuse of an idempotency key.
    #[serde(default)]
    pub request_hash: Option<String>,
    /// Past this instant a job that has not started is `expired` instead of run.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// A freshly accepted job.
    pub fn queued(
        id: Uuid,
        tenant: impl Into<String>,
        kind: JobKind,
        model: impl Into<String>,
        priority: JobPriority,
    ) -> Self {
        JobRecord {
            id,
            tenant: tenant.into(),
            kind,
            status: JobStatus::Queued,
            model: model.into(),
            priority,
            request: None,
            result: None,
            error: None,
            prompt_tokens: None,
            attempts: 0,
            worker: None,
            created_at: now_millis(),
            started_at: None,
            finished_at: None,
            queue_ms: None,
            inference_ms: None,
            webhook: None,
            idempotency_key: None,
            request_hash: None,
            expires_at: None,
        }
    }

    pub fn object(&self) -> JobObject {
        JobObject {
            id: self.id,
            object: "score.job".to_string(),
            status: self.status,
            model: self.model.clone(),
            kind: self.kind,
            priority: self.priority,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            expires_at: self.expires_at,
            attempts: self.attempts,
            result: self.result.clone(),
            error: self.error.clone().map(|message| JobError { message }),
            timings: JobTimings {
                queue_ms: self.queue_ms,
                inference_ms: self.inference_ms,
            },
        }
    }
}

/// Now, truncated to what Postgres `timestamptz` keeps (microseconds would also do; milliseconds
/// keep Redis and Postgres copies equal after a round trip through either).
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// The job as the HTTP API shows it (`GET /v1/score/jobs/{id}`, webhooks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobObject {
    pub id: Uuid,
    /// Always `"score.job"`.
    pub object: String,
    pub status: JobStatus,
    pub model: String,
    pub kind: JobKind,
    pub priority: JobPriority,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ScoreResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub timings: JobTimings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobTimings {
    /// From acceptance to the start of inference.
    pub queue_ms: Option<i64>,
    /// Time spent in the engine for the batch that held this job.
    pub inference_ms: Option<i64>,
}
