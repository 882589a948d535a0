//! The rerank routes: Jina / vLLM `POST /v1/rerank`, Cohere `POST /v2/rerank`, TEI `POST /rerank`,
//! their async jobs (`POST /v1/rerank/jobs`, `/v2/rerank/jobs`, `/rerank/jobs`; fetched with
//! `GET /v1/rerank/jobs/{id}`), and the rendering the batch output file uses for rerank lines.
//!
//! Thin on purpose: a rerank request is read and checked here ([`RerankCall`]), the `Preparer`
//! turns it into an ordinary `/v1/score` job through the model's rerank template, and from there
//! it takes the one submit path of `/v1/score` (`crate::submit`): same queue, workers, limits and
//! audit. The job's audit `request` is the rerank call (`{"url", "body"}`), from which every
//! reader renders the stored score rows in the endpoint's shape (`RerankCall::render`).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use scorer_protocol::ScoreResponse;
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus};
use scorer_protocol::rerank::{
    RerankCall, RerankEndpoint, RerankJobObject, RerankOutput, RerankRequest, RerankResponse,
    TeiRank, TeiRerankRequest,
};
use serde_json::Value;
use uuid::Uuid;

use super::jobs::{self, JobOptions};
use super::score::request_timeout;
use crate::submit::{body_bytes, check_model_name, parse_json, prepare_rerank, run_sync};
use crate::{ApiError, AppState, Draining, auth, deadline};

/// Where a rerank job is fetched: `{JOBS_PATH}/{id}`, whatever endpoint it was submitted to.
pub const JOBS_PATH: &str = "/v1/rerank/jobs";

/// Rerank documents against a query (Jina / vLLM shape).
///
/// P(yes) of each document under the model's rerank template, best first. Runs as a
/// high-priority `/v1/score` job (see `POST /v1/score` for the deadline and the 504).
#[utoipa::path(
    post, path = "/v1/rerank", tag = "rerank",
    request_body = RerankRequest,
    params(("x-request-timeout" = Option<f64>, Header, description = "Seconds to wait for the result")),
    responses(
        (status = 200, description = "Results sorted by relevance_score; documents echoed unless return_documents is false", body = RerankResponse),
        (status = 400, description = "Invalid request, a document over the prompt limit, top_n <= 0, or a model without a rerank template", body = crate::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::ErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = crate::ErrorBody),
        (status = 429, description = "Queue, tenant or API key over its bound; see Retry-After", body = crate::ErrorBody),
        (status = 503, description = "A dependency is down", body = crate::ErrorBody),
        (status = 504, description = "Deadline passed; the job goes on (see Location)", body = crate::ErrorBody),
    )
)]
pub async fn v1(
    State(state): State<AppState>,
    headers: HeaderMap,
    draining: Option<Extension<Draining>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RerankOutput>, ApiError> {
    sync(state, headers, draining, body, RerankEndpoint::V1).await
}

/// Rerank documents against a query (Cohere shape).
///
/// As `POST /v1/rerank`, with documents not echoed by default and Cohere's `meta.billed_units`.
#[utoipa::path(
    post, path = "/v2/rerank", tag = "rerank",
    request_body = RerankRequest,
    params(("x-request-timeout" = Option<f64>, Header, description = "Seconds to wait for the result")),
    responses(
        (status = 200, description = "Results sorted by relevance_score, with meta.billed_units", body = RerankResponse),
        (status = 400, description = "Invalid request, a document over the prompt limit, top_n <= 0, or a model without a rerank template", body = crate::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::ErrorBody),
        (status = 504, description = "Deadline passed; the job goes on (see Location)", body = crate::ErrorBody),
    )
)]
pub async fn v2(
    State(state): State<AppState>,
    headers: HeaderMap,
    draining: Option<Extension<Draining>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RerankOutput>, ApiError> {
    sync(state, headers, draining, body, RerankEndpoint::V2).await
}

/// Rerank texts against a query (Text Embeddings Inference shape).
///
/// Every text, best first; `raw_scores` gives ln(P(yes)/P(no)); `truncate` cuts texts whose
/// prompt is over --max-prompt-tokens instead of refusing them (400).
#[utoipa::path(
    post, path = "/rerank", tag = "rerank",
    request_body = TeiRerankRequest,
    params(("x-request-timeout" = Option<f64>, Header, description = "Seconds to wait for the result")),
    responses(
        (status = 200, description = "One entry per text, sorted by score", body = Vec<TeiRank>),
        (status = 400, description = "Invalid request, a text over the prompt limit without truncate, or a model without a rerank template", body = crate::ErrorBody),
        (status = 504, description = "Deadline passed; the job goes on (see Location)", body = crate::ErrorBody),
    )
)]
pub async fn tei(
    State(state): State<AppState>,
    headers: HeaderMap,
    draining: Option<Extension<Draining>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RerankOutput>, ApiError> {
    sync(state, headers, draining, body, RerankEndpoint::Tei).await
}

/// Reads and checks a rerank body: the call, and the body as received (audit, idempotency).
fn read_call(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    endpoint: RerankEndpoint,
) -> Result<(RerankCall, Value, String), ApiError> {
    let bytes = body_bytes(body, state)?;
    let (raw, _): (Value, Value) = parse_json(&bytes)?;
    let call = RerankCall::parse(endpoint, &raw)?;
    let served = check_model_name(state, call.model())?;
    Ok((call, raw, served))
}

async fn sync(
    state: AppState,
    headers: HeaderMap,
    draining: Option<Extension<Draining>>,
    body: Result<Bytes, BytesRejection>,
    endpoint: RerankEndpoint,
) -> Result<Json<RerankOutput>, ApiError> {
    let started = Instant::now();
    let tenant = auth::tenant(&state, &headers).await?;
    let (call, raw, served) = read_call(&state, body, endpoint)?;
    let timeout = request_timeout(&state, &headers)?;
    let job = prepare_rerank(&state, call.input()?).await?;
    let mut record = JobRecord::queued(
        Uuid::now_v7(),
        tenant,
        JobKind::Sync,
        state.backend.model_id(),
        JobPriority::Sync,
    );
    record.request = Some(call.stored(raw));
    let draining = draining.as_ref().map(|Extension(d)| d);
    let scored = run_sync(&state, &record, job, &served, draining, timeout, started).await?;
    render(&call, &record, &scored).map(Json)
}

/// The answer of `call` from its job's stored result; the model echoed is the one the request
/// named (else the served one).
fn render(
    call: &RerankCall,
    record: &JobRecord,
    scored: &ScoreResponse,
) -> Result<RerankOutput, ApiError> {
    let model = call.model().unwrap_or(&record.model);
    call.render(
        &record.id.to_string(),
        model,
        &scored.scores,
        scored.usage.prompt_tokens,
    )
    .map_err(|e| ApiError::Internal(format!("job {}: {e}", record.id)))
}

/// A finished job's result in the rerank shape, when the job is a rerank job (its audit
/// `request` is a rerank call): for the batch output file. `None`: not a rerank job.
pub(crate) fn render_record(record: &JobRecord) -> Option<Result<Value, String>> {
    let call = record.request.as_ref().and_then(RerankCall::from_stored)?;
    let scored = record.result.as_ref()?;
    Some(
        render(&call, record, scored)
            .map(|out| serde_json::to_value(out).unwrap_or(Value::Null))
            .map_err(|e| e.to_string()),
    )
}

/// Submit a rerank job (Jina / vLLM body).
///
/// The body of `POST /v1/rerank` plus `priority`, `ttl_seconds` and `webhook` as for
/// `POST /v1/score/jobs`. Answers 202 with the job object; fetch the rerank-shaped result at
/// `GET /v1/rerank/jobs/{id}` (`Location`). The webhook receives the `/v1/score` job object.
#[utoipa::path(
    post, path = "/v1/rerank/jobs", tag = "rerank",
    request_body = RerankRequest,
    params(("idempotency-key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 202, description = "Accepted", body = scorer_protocol::job::JobObject),
        (status = 400, description = "Invalid request", body = crate::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::ErrorBody),
        (status = 409, description = "Idempotency key reused with another body", body = crate::ErrorBody),
        (status = 429, description = "Queue, tenant or API key over its bound", body = crate::ErrorBody),
    )
)]
pub async fn submit_v1(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    submit(state, headers, body, RerankEndpoint::V1).await
}

/// Submit a rerank job (Cohere body); see `POST /v1/rerank/jobs`.
#[utoipa::path(
    post, path = "/v2/rerank/jobs", tag = "rerank",
    request_body = RerankRequest,
    params(("idempotency-key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 202, description = "Accepted", body = scorer_protocol::job::JobObject),
        (status = 400, description = "Invalid request", body = crate::ErrorBody),
    )
)]
pub async fn submit_v2(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    submit(state, headers, body, RerankEndpoint::V2).await
}

/// Submit a rerank job (TEI body); see `POST /v1/rerank/jobs`.
#[utoipa::path(
    post, path = "/rerank/jobs", tag = "rerank",
    request_body = TeiRerankRequest,
    params(("idempotency-key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 202, description = "Accepted", body = scorer_protocol::job::JobObject),
        (status = 400, description = "Invalid request", body = crate::ErrorBody),
    )
)]
pub async fn submit_tei(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    submit(state, headers, body, RerankEndpoint::Tei).await
}

async fn submit(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: RerankEndpoint,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    let (call, raw, served) = read_call(&state, body, endpoint)?;
    let options: JobOptions = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))?;
    let settings = options.check(&state, &headers, served)?;
    let job = prepare_rerank(&state, call.input()?).await?;
    let request = call.stored(raw);
    jobs::enqueue(
        &state,
        tenant,
        settings,
        request.clone(),
        &request,
        job,
        JOBS_PATH,
    )
    .await
}

/// Fetch a rerank job, its result in the shape of the endpoint it was submitted to.
///
/// A `/v1/score` job is 404 here (it is at `GET /v1/score/jobs/{id}`, as rerank jobs are too,
/// with their raw score rows). Cancel with `POST /v1/score/jobs/{id}/cancel`.
#[utoipa::path(
    get, path = "/v1/rerank/jobs/{id}", tag = "rerank",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = RerankJobObject),
        (status = 404, description = "No such rerank job (or another tenant's)", body = crate::ErrorBody),
        (status = 503, description = "Stores unavailable", body = crate::ErrorBody),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RerankJobObject>, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    let mut record = jobs::find(&state, &tenant, &id).await?;
    if record.request.is_none() {
        // The result cache keeps no request body; the audit row does.
        let limit = state.config.store_timeout;
        if let Some(full) = deadline(limit, "audit", state.stores.audit.get(record.id)).await? {
            record.request = full.request;
        }
    }
    let call = record
        .request
        .as_ref()
        .and_then(RerankCall::from_stored)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "job {id} is not a rerank job: GET /v1/score/jobs/{id} shows it"
            ))
        })?;
    let result = match (&record.result, record.status) {
        (Some(scored), JobStatus::Succeeded) => Some(render(&call, &record, scored)?),
        _ => None,
    };
    let mut job = record.object();
    job.result = None;
    Ok(Json(RerankJobObject { job, result }))
}
