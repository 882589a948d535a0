//! Async jobs: submit, fetch, cancel. The rerank job routes (`routes::rerank`) submit through
//! the same [`enqueue`].

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scorer_jobs::{CancelOutcome, Inserted};
use scorer_protocol::job::{JobKind, JobObject, JobPriority, JobRecord, now_millis};
use scorer_protocol::{ScoreJob, ScoreRequest};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::submit::{accept, body_bytes, check_model, parse_json, prepare};
use crate::{ApiError, AppState, auth, deadline};

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// A scoring request plus how to run it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct JobRequest {
    #[serde(flatten)]
    pub score: ScoreRequest,
    #[serde(flatten)]
    pub options: JobOptions,
}

/// How to run an async job (`/v1/score/jobs` and the rerank job routes alike).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct JobOptions {
    /// `async` (default) or `bulk`; `bulk` runs after everything else.
    #[serde(default)]
    pub priority: Option<JobPriority>,
    /// Seconds the job may wait in the queue; past them it is `expired` instead of run.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// URL that receives a POST of the final job object (retried with backoff).
    #[serde(default)]
    pub webhook: Option<String>,
}

/// [`JobOptions`] checked, with the request's `Idempotency-Key`.
pub(crate) struct JobSettings {
    priority: JobPriority,
    ttl: Option<u64>,
    webhook: Option<String>,
    key: Option<String>,
    /// The model name the answer echoes (`ServedNames`).
    served: String,
}

impl JobOptions {
    /// 400 for a `sync` priority, a zero or too long TTL, a webhook that is not http(s), or an
    /// Idempotency-Key that is not visible ASCII. `served`: the model name the answer echoes.
    pub(crate) fn check(
        self,
        state: &AppState,
        headers: &HeaderMap,
        served: String,
    ) -> Result<JobSettings, ApiError> {
        let priority = match self.priority.unwrap_or(JobPriority::Async) {
            JobPriority::Sync => {
                return Err(ApiError::BadRequest(
                    "priority must be \"async\" or \"bulk\"; \"sync\" is reserved for the \
                     synchronous routes"
                        .into(),
                ));
            }
            p => p,
        };
        let ttl = match self.ttl_seconds {
            Some(0) => return Err(ApiError::BadRequest("ttl_seconds must be positive".into())),
            Some(s) if Duration::from_secs(s) > state.config.max_job_ttl => {
                return Err(ApiError::BadRequest(format!(
                    "ttl_seconds must be at most {}",
                    state.config.max_job_ttl.as_secs()
                )));
            }
            other => other,
        };
        if let Some(url) = &self.webhook {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "webhook must be an http or https URL, got {url:?}"
                    )));
                }
            }
        }
        let key = headers
            .get(IDEMPOTENCY_HEADER)
            .map(|v| {
                v.to_str().map(str::to_string).map_err(|_| {
                    ApiError::BadRequest("Idempotency-Key must be visible ASCII".into())
                })
            })
            .transpose()?;
        Ok(JobSettings {
            priority,
            ttl,
            webhook: self.webhook,
            key,
            served,
        })
    }
}

/// Submit a scoring job.
///
/// Answers 202 with the job object and its URL in `Location`. With an `Idempotency-Key` header,
/// the same key and body return the same job; the same key with another body is 409.
#[utoipa::path(
    post, path = "/v1/score/jobs", tag = "jobs",
    request_body = JobRequest,
    params(("idempotency-key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 202, description = "Accepted", body = JobObject),
        (status = 400, description = "Invalid request", body = crate::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::ErrorBody),
        (status = 409, description = "Idempotency key reused with another body", body = crate::ErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = crate::ErrorBody),
        (status = 429, description = "Queue, tenant or API key over its bound; see Retry-After", body = crate::ErrorBody),
        (status = 503, description = "A dependency is down", body = crate::ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    let bytes = body_bytes(body, &state)?;
    let (req, raw): (JobRequest, serde_json::Value) = parse_json(&bytes)?;
    let served = check_model(&state, &req.score)?;
    let settings = req.options.check(&state, &headers, served)?;
    let job = prepare(&state, req.score).await?;
    enqueue(
        &state,
        tenant,
        settings,
        raw.clone(),
        &raw,
        job,
        "/v1/score/jobs",
    )
    .await
}

/// Records and queues an async job whose audit `request` is `request`; `hashed` (the body as
/// received) tells an idempotent replay from a conflicting reuse of its key. Answers 202 with
/// the job's URL under `jobs_path` in `Location`.
pub(crate) async fn enqueue(
    state: &AppState,
    tenant: String,
    settings: JobSettings,
    request: serde_json::Value,
    hashed: &serde_json::Value,
    job: ScoreJob,
    jobs_path: &str,
) -> Result<Response, ApiError> {
    let model = state.backend.model_id().to_string();
    let mut record = JobRecord::queued(
        Uuid::now_v7(),
        tenant,
        JobKind::Async,
        model,
        settings.priority,
    );
    record.expires_at = settings
        .ttl
        .map(|s| record.created_at + chrono::Duration::seconds(s as i64));
    record.webhook = settings.webhook;
    record.request_hash = Some(hex::encode(Sha256::digest(
        serde_json::to_vec(hashed).unwrap_or_default(),
    )));
    record.request = Some(request);
    record.idempotency_key = settings.key;
    match accept(state, &record, job, &settings.served).await? {
        Inserted::Created => Ok(accepted(&record, jobs_path)),
        Inserted::Existing(existing) => {
            if existing.request_hash == record.request_hash {
                // A replay: the same job, looked up fresh so the caller sees its progress.
                let current = deadline(
                    state.config.store_timeout,
                    "results",
                    state.stores.results.get(existing.id),
                )
                .await
                .ok()
                .flatten()
                .unwrap_or(existing);
                Ok(accepted(&current, jobs_path))
            } else {
                Err(ApiError::Conflict(format!(
                    "Idempotency-Key {:?} was already used for job {} with a different body",
                    existing.idempotency_key.unwrap_or_default(),
                    existing.id
                )))
            }
        }
    }
}

fn accepted(record: &JobRecord, jobs_path: &str) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(record.object())).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{jobs_path}/{}", record.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// Looks a job up (result store first, then the audit store); another tenant's job is 404, as
/// if it did not exist (ids are not secrets to probe).
pub(crate) async fn find(state: &AppState, tenant: &str, id: &str) -> Result<JobRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("no job {id}"));
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let limit = state.config.store_timeout;
    let cached = match deadline(limit, "results", state.stores.results.get(id)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "result store unavailable; reading the audit store");
            None
        }
    };
    let record = match cached {
        Some(r) => r,
        None => deadline(limit, "audit", state.stores.audit.get(id))
            .await?
            .ok_or_else(not_found)?,
    };
    if record.tenant != tenant {
        return Err(not_found());
    }
    Ok(record)
}

/// Fetch a job.
#[utoipa::path(
    get, path = "/v1/score/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobObject),
        (status = 401, description = "Missing or invalid API key", body = crate::ErrorBody),
        (status = 404, description = "No such job (or another tenant's)", body = crate::ErrorBody),
        (status = 503, description = "Stores unavailable", body = crate::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobObject>, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    Ok(Json(find(&state, &tenant, &id).await?.object()))
}

/// Cancel a job that has not started.
#[utoipa::path(
    post, path = "/v1/score/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled", body = JobObject),
        (status = 404, description = "No such job", body = crate::ErrorBody),
        (status = 409, description = "Already running or finished", body = crate::ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobObject>, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    let record = find(&state, &tenant, &id).await?;
    let limit = state.config.store_timeout;
    match deadline(
        limit,
        "audit",
        state.stores.audit.cancel(record.id, now_millis()),
    )
    .await?
    {
        CancelOutcome::Cancelled(cancelled) => {
            if let Err(e) = deadline(limit, "results", state.stores.results.put(&cancelled)).await {
                // The audit row decides; GET falls back to it.
                tracing::warn!(job = %cancelled.id, error = %e, "could not cache cancellation");
            }
            if let Some(url) = &cancelled.webhook {
                state.webhooks.spawn(url.clone(), cancelled.object());
            }
            metrics::counter!("scorer_jobs_cancelled_total").increment(1);
            Ok(Json(cancelled.object()))
        }
        CancelOutcome::TooLate(current) => Err(ApiError::Conflict(format!(
            "job {} is {} and can no longer be cancelled",
            current.id,
            current.status.as_str()
        ))),
        CancelOutcome::Missing => Err(ApiError::NotFound(format!("no job {id}"))),
    }
}
