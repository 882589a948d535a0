//! The batch object and the list page, in the OpenAI Batch API's shape.

use chrono::{DateTime, Utc};
use scorer_jobs::{BatchCounts, BatchRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ENDPOINT;

/// A batch as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchObject {
    pub id: Uuid,
    /// Always `"batch"`.
    pub object: String,
    /// Always `"/v1/score"`.
    pub endpoint: String,
    pub model: String,
    /// `validating`, `in_progress`, `finalizing`, `completed`, `failed`, `cancelling`,
    /// `cancelled` or `expired`.
    pub status: String,
    /// Why the batch failed as a whole (`{object: "list", data: [{code, message}]}`), or null.
    #[schema(value_type = Object)]
    pub errors: Option<Value>,
    pub completion_window: String,
    /// Where the output file (succeeded lines) is streamed from.
    pub output_url: String,
    /// Where the error file (rejected, failed, cancelled and expired lines) is streamed from.
    pub error_url: String,
    /// Unix seconds, like every timestamp here.
    pub created_at: i64,
    pub expires_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
}

/// `total` counts every line of the file; `completed + failed == total` once the batch is done
/// (lines rejected at upload count as failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

impl From<BatchCounts> for RequestCounts {
    fn from(c: BatchCounts) -> Self {
        RequestCounts {
            total: c.total(),
            completed: c.succeeded,
            failed: c.failed + c.invalid,
        }
    }
}

/// A page of batches, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchList {
    /// Always `"list"`.
    pub object: String,
    pub data: Vec<BatchObject>,
    pub first_id: Option<Uuid>,
    pub last_id: Option<Uuid>,
    pub has_more: bool,
}

fn secs(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

pub(super) fn object(b: &BatchRecord, counts: BatchCounts) -> BatchObject {
    BatchObject {
        id: b.id,
        object: "batch".into(),
        endpoint: ENDPOINT.into(),
        model: b.model.clone(),
        status: b.status.as_str().into(),
        errors: b.error.as_ref().map(|message| {
            json!({"object": "list", "data": [{"code": "batch_failed", "message": message}]})
        }),
        completion_window: b.completion_window.clone(),
        output_url: format!("/v1/batches/{}/output", b.id),
        error_url: format!("/v1/batches/{}/errors", b.id),
        created_at: secs(b.created_at),
        expires_at: secs(b.expires_at),
        in_progress_at: b.in_progress_at.map(secs),
        finalizing_at: b.finalizing_at.map(secs),
        completed_at: b.completed_at.map(secs),
        failed_at: b.failed_at.map(secs),
        expired_at: b.expired_at.map(secs),
        cancelling_at: b.cancelling_at.map(secs),
        cancelled_at: b.cancelled_at.map(secs),
        request_counts: counts.into(),
        metadata: b.metadata.clone(),
    }
}
