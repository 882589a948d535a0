//! Batches in the shape of the OpenAI Batch API: upload a JSONL file of scoring requests, poll
//! the batch, download the output and error files.
//!
//! The upload is read as a stream and handled a chunk of lines at a time: each line is validated
//! and tokenized like a `/v1/score/jobs` body, the chunk's jobs are recorded (one audit row per
//! line) and published at the bulk priority, and bad lines are recorded for the error file. So a
//! file of any length needs memory for one chunk only. Progress is counted from the jobs.
//!
//! - [`wire`]: the batch object and list as the API shows them;
//! - [`upload`]: `POST /v1/batches` (a raw JSONL body or a multipart form);
//! - `ingest`: reading the upload line by line, recording and publishing its chunks;
//! - [`lifecycle`]: `GET`, list and cancel, and the background sweep that moves batches as their
//!   jobs finish (the transitions themselves are `scorer_jobs::batches::lifecycle`; a `GET`
//!   reads, it never writes);
//! - [`download`]: the output and error files, streamed.
//!
//! Every store and broker call these routes make goes through [`call`], under
//! `--store-timeout`.

pub mod download;
mod ingest;
pub mod lifecycle;
pub mod upload;
pub mod wire;

use std::future::Future;

use axum::http::HeaderMap;
use scorer_jobs::{BatchRecord, StoreError};
use uuid::Uuid;

use crate::{ApiError, AppState, auth};

pub use ingest::{LineRequest, ParsedLine, RefusedLine, parse_line};
pub use wire::{BatchList, BatchObject, RequestCounts};

/// The endpoint of a line without `url` (a line may also name a rerank endpoint).
pub const ENDPOINT: &str = "/v1/score";

/// Runs one store or broker call of the batch routes under the store deadline (see
/// [`call_within`]).
pub(super) async fn call<T>(
    state: &AppState,
    service: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    call_within(state.config.store_timeout, service, call).await
}

/// The one place the batch routes (and the batch sweep) bound a store or broker call: past
/// `limit` it fails as `Unavailable` (503 when it reaches the caller).
pub(super) async fn call_within<T>(
    limit: std::time::Duration,
    service: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    crate::bounded(limit, service, call).await
}

/// The caller's batch, or 404 (also for another tenant's: ids are not secrets to probe).
pub(super) async fn find(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<BatchRecord, ApiError> {
    let tenant = auth::tenant(state, headers).await?;
    let not_found = || ApiError::NotFound(format!("no batch {id}"));
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    match call(state, "batches", state.stores.batches.get(id)).await? {
        Some(b) if b.tenant == tenant => Ok(b),
        _ => Err(not_found()),
    }
}
