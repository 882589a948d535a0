//! The path shared by sync and async submissions: parse, check the model and the limits, prepare
//! (validate and tokenize), check the queue bound, record the job, publish it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use scorer_jobs::{Inserted, StoreError};
use scorer_protocol::job::{JobEnvelope, JobRecord, JobStatus, locality_key, now_millis};
use scorer_protocol::{DEFAULT_MODEL_NAME, Items, ScoreJob, ScoreRequest};
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState, deadline};

/// The body, or 413 when it is over the limit (the limit layer reports it as a read error).
pub fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "request body is larger than the limit of {} bytes",
                state.config.limits.max_body_bytes
            ))
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, serde_json::Value), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let parsed = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))?;
    Ok((parsed, value))
}

/// 404 unless the request names this server's model (or none, or `default`).
pub fn check_model(state: &AppState, req: &ScoreRequest) -> Result<(), ApiError> {
    match req.model.as_deref() {
        None | Some(DEFAULT_MODEL_NAME) => Ok(()),
        Some(m) if m == state.backend.model_id() => Ok(()),
        Some(m) => Err(ApiError::NotFound(format!(
            "The model `{m}` does not exist. This server serves `{}`.",
            state.backend.model_id()
        ))),
    }
}

/// Validates and tokenizes on a blocking thread, with the size limits around it.
pub async fn prepare(state: &AppState, req: ScoreRequest) -> Result<ScoreJob, ApiError> {
    let limits = &state.config.limits;
    let items = match &req.items {
        None => 0,
        Some(Items::One(_)) => 1,
        Some(Items::Texts(v)) => v.len(),
        Some(Items::Tokens(v)) => v.len(),
    };
    if items > limits.max_items {
        return Err(ApiError::TooLarge(format!(
            "{items} items is over the limit of {} items per request",
            limits.max_items
        )));
    }
    let backend = state.backend.clone();
    let job = tokio::task::spawn_blocking(move || backend.prepare(&req))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer crashed: {e}")))??;
    if let Some(longest) = job.prompts.iter().map(Vec::len).max()
        && longest > limits.max_prompt_tokens
    {
        return Err(ApiError::TooLarge(format!(
            "a prompt of {longest} tokens is over the limit of {} tokens per prompt",
            limits.max_prompt_tokens
        )));
    }
    let total = job.prompt_tokens();
    if total > limits.max_request_tokens {
        return Err(ApiError::TooLarge(format!(
            "{total} prompt tokens is over the limit of {} tokens per request",
            limits.max_request_tokens
        )));
    }
    Ok(job)
}

/// 429 when the model's queue already holds as much as it may (global bound), or when `tenant`
/// already has as many unfinished jobs as it may (per-tenant bound).
pub async fn check_bounds(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    let limit = state.config.store_timeout;
    let depth = deadline(
        limit,
        "queue",
        state.stores.queue.depth(state.backend.model_id()),
    )
    .await?;
    metrics::gauge!("scorer_queue_depth").set(depth as f64);
    let secs = state.config.retry_after.as_secs().max(1);
    if depth >= state.config.max_queue_depth {
        metrics::counter!("scorer_overloaded_total", "bound" => "queue").increment(1);
        return Err(ApiError::Overloaded {
            message: format!(
                "the queue holds {depth} jobs, at its bound of {}; retry after {secs} s",
                state.config.max_queue_depth
            ),
            retry_after_secs: secs,
        });
    }
    let per_tenant = state.config.max_tenant_active;
    if per_tenant > 0 {
        let active = deadline(limit, "audit", state.stores.audit.active_jobs(tenant)).await?;
        if active >= per_tenant {
            metrics::counter!("scorer_overloaded_total", "bound" => "tenant").increment(1);
            return Err(ApiError::Overloaded {
                message: format!(
                    "this tenant has {active} unfinished jobs, at its bound of {per_tenant}; \
                     retry after {secs} s"
                ),
                retry_after_secs: secs,
            });
        }
    }
    Ok(())
}

pub fn envelope(record: &JobRecord, job: ScoreJob) -> JobEnvelope {
    let locality = locality_key(&job);
    JobEnvelope {
        job_id: record.id,
        tenant: record.tenant.clone(),
        priority: record.priority,
        deadline_ms: record.expires_at.map(|t| t.timestamp_millis()),
        model: record.model.clone(),
        prompts: job.prompts,
        labels: job.labels,
        apply_softmax: job.apply_softmax,
        temperature: job.temperature,
        attempt: 1,
        enqueued_at_ms: record.created_at.timestamp_millis(),
        locality,
    }
}

/// Publishes to the worker the job's locality key picks, else to the model's shared queue.
pub async fn publish(state: &AppState, envelope: &JobEnvelope) -> Result<(), StoreError> {
    crate::locality::publish(&state.locality, state.stores.queue.as_ref(), envelope).await
}

/// Records the job (its audit row exists before anyone is told it was accepted), caches the
/// queued state, and publishes with a broker confirm. `Inserted::Existing` is handed back
/// untouched for the caller to judge (idempotent replay).
pub async fn accept(
    state: &AppState,
    record: &JobRecord,
    job: ScoreJob,
) -> Result<Inserted, ApiError> {
    let limit = state.config.store_timeout;
    let inserted = deadline(limit, "audit", state.stores.audit.insert(record)).await?;
    if let Inserted::Existing(_) = inserted {
        return Ok(inserted);
    }
    if let Err(e) = deadline(limit, "results", state.stores.results.put(record)).await {
        // Not fatal: GET falls back to Postgres, and the worker writes the outcome here later.
        tracing::warn!(job = %record.id, error = %e, "could not cache queued state");
    }
    let envelope = envelope(record, job);
    if let Err(e) = deadline(limit, "queue", publish(state, &envelope)).await {
        // Never queued: say so in the record rather than leave a job queued forever.
        let mut failed = record.clone();
        failed.status = JobStatus::Failed;
        failed.finished_at = Some(now_millis());
        failed.error = Some(format!("could not be queued: {e}"));
        if let Ok(finished) = deadline(limit, "audit", state.stores.audit.finish(&failed)).await {
            let _ = deadline(limit, "results", state.stores.results.put(&finished.record)).await;
        }
        return Err(e);
    }
    metrics::counter!("scorer_jobs_accepted_total", "kind" => record.kind.as_str()).increment(1);
    Ok(Inserted::Created)
}
