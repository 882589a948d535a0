//! Jobs as the service sees them: the queue envelope a worker consumes, the record kept in the
//! result and audit stores, and the job object the HTTP API answers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::score::{Outputs, ScoreJob, ScoreResponse};

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
    /// `locality_key` of the job: jobs that share it go to the same worker while it lives, so
    /// that worker's prefix cache serves them. Absent in messages from older producers.
    #[serde(default)]
    pub locality: Option<u64>,
    /// What the job answers besides scores; absent in older messages (scores only).
    #[serde(default)]
    pub outputs: Outputs,
    /// The model name the request used, echoed as the result's `model` (`model` above is the
    /// queue, the model the server runs). Absent in older messages: `model` is answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_as: Option<String>,
}

impl JobEnvelope {
    pub fn score_job(&self) -> ScoreJob {
        ScoreJob {
            prompts: self.prompts.clone(),
            labels: self.labels.clone(),
            apply_softmax: self.apply_softmax,
            temperature: self.temperature,
            outputs: self.outputs,
        }
    }

    /// The name the result answers in `model`.
    pub fn answered_model(&self) -> &str {
        self.served_as.as_deref().unwrap_or(&self.model)
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }
}

/// Shorter shared prefixes are not worth steering for: they are cheap to recompute and would
/// pin unrelated jobs to one worker.
pub const LOCALITY_MIN_TOKENS: usize = 32;
/// Only this much of the shared prefix is hashed, so jobs that share a long system prompt but
/// differ further on still meet on one worker.
pub const LOCALITY_MAX_TOKENS: usize = 128;

/// The worker-affinity key of a job: a hash of the first `min(LCP, 128)` tokens, where LCP is
/// the longest token prefix common to all its prompts (for a single prompt, the prompt less its
/// last token, which is always computed afresh). `None` when that prefix is shorter than 32
/// tokens. FNV-1a over the little-endian ids: stable across processes and releases, unlike
/// std's randomly seeded hasher, because the API and every worker must agree on it.
pub fn locality_key(job: &ScoreJob) -> Option<u64> {
    let (first, rest) = job.prompts.split_first()?;
    let mut common = if rest.is_empty() {
        first.len().saturating_sub(1)
    } else {
        first.len()
    };
    for prompt in rest {
        common = first[..common]
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
    }
    if common < LOCALITY_MIN_TOKENS {
        return None;
    }
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = first[..common.min(LOCALITY_MAX_TOKENS)]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .fold(FNV_OFFSET, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        });
    Some(hash)
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
    /// When the broker confirmed the job's message. A sync or async job still `queued` without
    /// it past a grace period was never handed to the queue (its submission answered an error)
    /// and is failed by the acceptance sweeper; a replay of its idempotency key publishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
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
            published_at: None,
        }
    }

    /// The job ends `failed` now with `message` (the caller stores it; the store keeps the
    /// first terminal state if another delivery got there first).
    pub fn fail(&mut self, message: impl Into<String>) {
        self.finish_as(JobStatus::Failed, message);
    }

    /// The job ends `expired` now: it was not started before its deadline.
    pub fn expire(&mut self, message: impl Into<String>) {
        self.finish_as(JobStatus::Expired, message);
    }

    fn finish_as(&mut self, status: JobStatus, message: impl Into<String>) {
        self.status = status;
        self.finished_at = Some(now_millis());
        self.error = Some(message.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(prompts: Vec<Vec<u32>>) -> ScoreJob {
        ScoreJob {
            labels: vec![vec![1]; prompts.len()],
            prompts,
            apply_softmax: true,
            temperature: 1.0,
            outputs: Outputs::default(),
        }
    }

    fn seq(from: u32, n: u32) -> Vec<u32> {
        (from..from + n).collect()
    }

    #[test]
    fn key_is_the_shared_prefix_only() {
        let query = seq(1000, 40);
        let with = |tail: &[u32]| [query.as_slice(), tail].concat();
        let a = job(vec![with(&[1, 2]), with(&[3])]);
        let b = job(vec![with(&[7]), with(&[8, 9]), with(&[10])]);
        assert!(locality_key(&a).is_some());
        assert_eq!(
            locality_key(&a),
            locality_key(&b),
            "same query, other items"
        );
        // One prompt: everything but its last token is the prefix.
        assert_eq!(locality_key(&job(vec![with(&[5])])), locality_key(&a));
        let other = job(vec![[seq(2000, 40), vec![1]].concat(), seq(2000, 41)]);
        assert_ne!(locality_key(&other), locality_key(&a));
    }

    #[test]
    fn short_prefixes_have_no_key() {
        let n = LOCALITY_MIN_TOKENS as u32;
        assert_eq!(locality_key(&job(vec![])), None);
        assert_eq!(locality_key(&job(vec![seq(0, n)])), None, "31 + last");
        assert!(locality_key(&job(vec![seq(0, n + 1)])).is_some());
        let diverge = job(vec![seq(0, 100), [seq(0, n - 1), vec![0]].concat()]);
        assert_eq!(locality_key(&diverge), None);
    }

    #[test]
    fn only_the_first_128_tokens_count() {
        let long = seq(0, 400);
        let a = job(vec![long.clone(), [&long[..200], &[1, 2]].concat()]);
        let b = job(vec![[&long[..LOCALITY_MAX_TOKENS], &[9, 9, 9]].concat()]);
        assert_eq!(locality_key(&a), locality_key(&b));
        // Fixed value: the key must not change between builds or processes.
        assert_eq!(locality_key(&job(vec![seq(0, 33)])), Some(FNV_0_TO_31));
    }

    /// FNV-1a 64 of the little-endian bytes of 0..32 (computed independently in Python).
    const FNV_0_TO_31: u64 = 0xf77b_12af_4e26_bfa5;
}
