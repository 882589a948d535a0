//! `POST /v1/score`: the synchronous, SGLang-compatible call.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus};
use scorer_protocol::{ScoreRequest, ScoreResponse};
use uuid::Uuid;

use crate::submit::{accept, body_bytes, check_model, parse_json, prepare};
use crate::{ApiError, AppState, auth, deadline};

/// Header: seconds this call may wait for its result (capped by the server's maximum).
pub const TIMEOUT_HEADER: &str = "x-request-timeout";

/// Score items against a query (SGLang `/v1/score`).
///
/// Runs as a high-priority job. If the result is not ready by the deadline (the
/// `X-Request-Timeout` header in seconds, else the server default) the answer is 504 with the job
/// id in `Location` and `X-Job-Id`; the job still completes and can be fetched there.
#[utoipa::path(
    post, path = "/v1/score", tag = "scoring",
    request_body = ScoreRequest,
    params(("x-request-timeout" = Option<f64>, Header, description = "Seconds to wait for the result")),
    responses(
        (status = 200, description = "Scores, one row per item", body = ScoreResponse),
        (status = 400, description = "Invalid request (SGLang's messages)", body = crate::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::ErrorBody),
        (status = 413, description = "Body, items or tokens over the limits", body = crate::ErrorBody),
        (status = 429, description = "Queue, tenant or API key over its bound; see Retry-After", body = crate::ErrorBody),
        (status = 503, description = "A dependency is down", body = crate::ErrorBody),
        (status = 504, description = "Deadline passed; the job goes on (see Location)", body = crate::ErrorBody),
    )
)]
pub async fn score(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ScoreResponse>, ApiError> {
    let started = Instant::now();
    let tenant = auth::tenant(&state, &headers).await?;
    let bytes = body_bytes(body, &state)?;
    let (req, raw): (ScoreRequest, _) = parse_json(&bytes)?;
    check_model(&state, &req)?;
    let timeout = request_timeout(&state, &headers)?;
    let job = prepare(&state, req).await?;
    let model = state.backend.model_id().to_string();
    if job.prompts.is_empty() {
        // Nothing to score (`items: []` is valid): no need to go through the queue.
        return Ok(Json(ScoreResponse::new(Vec::new(), model, 0)));
    }
    let mut record = JobRecord::queued(
        Uuid::now_v7(),
        tenant,
        JobKind::Sync,
        model,
        JobPriority::Sync,
    );
    record.request = Some(raw);
    accept(&state, &record, job).await?;
    // The wait itself is bounded by `timeout`; the extra deadline covers a Redis that stops
    // answering mid-wait.
    let outcome = deadline(
        timeout + state.config.store_timeout,
        "results",
        state.stores.results.wait_terminal(record.id, timeout),
    )
    .await;
    let answer = match outcome {
        Ok(Some(done)) => finished(done),
        Ok(None) => Err(ApiError::Timeout {
            message: format!(
                "no result within {:.3} s; job {} is still running: GET /v1/score/jobs/{}",
                timeout.as_secs_f64(),
                record.id,
                record.id
            ),
            job_id: record.id,
        }),
        Err(e) => Err(e),
    };
    let outcome = if answer.is_ok() { "ok" } else { "error" };
    metrics::histogram!("scorer_score_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    answer.map(Json)
}

fn finished(done: JobRecord) -> Result<ScoreResponse, ApiError> {
    match (done.status, done.result) {
        (JobStatus::Succeeded, Some(result)) => Ok(result),
        (status, _) => Err(ApiError::Internal(format!(
            "job {} {}: {}",
            done.id,
            status.as_str(),
            done.error.unwrap_or_else(|| "no result".into())
        ))),
    }
}

fn request_timeout(state: &AppState, headers: &HeaderMap) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(state.config.sync_timeout);
    };
    let secs: f64 = value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{TIMEOUT_HEADER} must be a positive number of seconds"
            ))
        })?;
    Ok(Duration::from_secs_f64(secs).min(state.config.max_sync_timeout))
}
