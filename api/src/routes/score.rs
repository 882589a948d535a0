//! `POST /v1/score`: the synchronous, SGLang-compatible call.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord};
use scorer_protocol::{ScoreOutput, ScoreRequest, ScoreResponse};
use uuid::Uuid;

use crate::submit::{body_bytes, check_model, parse_json, prepare, run_sync};
use crate::{ApiError, AppState, Draining, auth};

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
        (status = 413, description = "Body over --max-body-bytes", body = crate::ErrorBody),
        (status = 429, description = "Queue, tenant or API key over its bound; see Retry-After", body = crate::ErrorBody),
        (status = 503, description = "A dependency is down", body = crate::ErrorBody),
        (status = 504, description = "Deadline passed; the job goes on (see Location)", body = crate::ErrorBody),
    )
)]
pub async fn score(
    State(state): State<AppState>,
    headers: HeaderMap,
    draining: Option<Extension<Draining>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ScoreResponse>, ApiError> {
    let started = Instant::now();
    let tenant = auth::tenant(&state, &headers).await?;
    let bytes = body_bytes(body, &state)?;
    let (req, raw): (ScoreRequest, _) = parse_json(&bytes)?;
    let served = check_model(&state, &req)?;
    let timeout = request_timeout(&state, &headers)?;
    let job = prepare(&state, req).await?;
    let model = state.backend.model_id().to_string();
    if job.prompts.is_empty() {
        // Nothing to score (`items: []` is valid): no need to go through the queue.
        let empty = ScoreOutput::empty(job.outputs);
        return Ok(Json(ScoreResponse::from_output(empty, served)));
    }
    let mut record = JobRecord::queued(
        Uuid::now_v7(),
        tenant,
        JobKind::Sync,
        model,
        JobPriority::Sync,
    );
    record.request = Some(raw);
    let draining = draining.as_ref().map(|Extension(d)| d);
    run_sync(&state, &record, job, &served, draining, timeout, started)
        .await
        .map(Json)
}

/// The caller's deadline: the server default without the header; a positive number of seconds
/// capped at the server's maximum; 400 for anything else. Never panics: a value too large for a
/// `Duration` (`1e20`) is over the maximum like any other large value.
pub(crate) fn request_timeout(state: &AppState, headers: &HeaderMap) -> Result<Duration, ApiError> {
    parse_timeout(
        headers.get(TIMEOUT_HEADER).map(|v| v.as_bytes()),
        state.config.sync_timeout,
        state.config.max_sync_timeout,
    )
}

fn parse_timeout(
    value: Option<&[u8]>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "{TIMEOUT_HEADER} must be a positive number of seconds (at most {} is used), got {:?}",
            max.as_secs_f64(),
            String::from_utf8_lossy(value)
        ))
    };
    let secs: f64 = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or_else(bad)?;
    Ok(match Duration::try_from_secs_f64(secs) {
        Ok(d) => d.min(max),
        // Finite and positive, so only too large to represent: over the maximum.
        Err(_) => max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(300);

    fn parse(v: &str) -> Result<Duration, ApiError> {
        parse_timeout(Some(v.as_bytes()), DEFAULT, MAX)
    }

    #[test]
    fn huge_tiny_and_bad_values_never_panic() {
        assert_eq!(parse_timeout(None, DEFAULT, MAX).ok(), Some(DEFAULT));
        assert_eq!(parse("1e20").ok(), Some(MAX));
        assert_eq!(parse("1.7976931348623157e308").ok(), Some(MAX));
        assert_eq!(parse(" 2.5 ").ok(), Some(Duration::from_millis(2500)));
        // Below a nanosecond rounds to zero: the answer is an immediate 504, not a panic.
        assert_eq!(parse("1e-300").ok(), Some(Duration::ZERO));
        for bad in ["0", "-1", "inf", "NaN", "", "abc", "1e400"] {
            assert!(
                matches!(parse(bad), Err(ApiError::BadRequest(_))),
                "{bad:?} must be a 400"
            );
        }
        assert!(matches!(
            parse_timeout(Some(&[0xff, 0xfe]), DEFAULT, MAX),
            Err(ApiError::BadRequest(_))
        ));
    }
}
