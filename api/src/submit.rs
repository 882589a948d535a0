//! The path shared by sync and async submissions (of `/v1/score` and of the rerank routes alike):
//! parse, check the model and the limits, prepare (validate and tokenize), then accept: reserve a place under the queue bound, record the job,
//! publish it, stamp it published.
//!
//! Acceptance is a small state machine whose every state is safe to stop in:
//!
//! | state | how it got there | what ends it |
//! |---|---|---|
//! | no row | bound refused, insert failed | nothing to end (the caller got 429/503) |
//! | `queued`, not published | insert committed, publish failed or never ran, or its answer came too late | the publish failing marks it `failed` here; otherwise a replay of its idempotency key publishes it, or the worker's acceptance sweeper fails it after `unpublished_grace` |
//! | `queued`, published | publish confirmed (answered 202) | a worker runs it |
//!
//! A 202 is answered only from the last state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use scorer_jobs::{Inserted, StoreError};
use scorer_protocol::job::{JobEnvelope, JobRecord, JobStatus, locality_key, now_millis};
use scorer_protocol::rerank::RerankInput;
use scorer_protocol::{ScoreJob, ScoreRequest, ScoreResponse, refuse_nul_in_json};
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState, Draining, deadline};

/// The body, or 413 when it is over the limit (the limit layer reports it as a read error).
pub fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "request body is larger than the limit of {} bytes",
                state.config.max_body_bytes
            ))
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, serde_json::Value), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    // Anywhere in the body, since the body is kept (audit) as it came: see `refuse_nul`.
    refuse_nul_in_json(&value)?;
    let parsed = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))?;
    Ok((parsed, value))
}

/// The name a request's answer carries in `model`, or 404 when this server does not serve the
/// model it names: [`crate::ServedNames::served_name`], the one rule for every route.
pub fn served_name(state: &AppState, requested: Option<&str>) -> Result<String, ApiError> {
    state.served.served_name(requested)
}

/// [`served_name`] of a `/v1/score` body.
pub fn check_model(state: &AppState, req: &ScoreRequest) -> Result<String, ApiError> {
    served_name(state, req.model.as_deref())
}

/// [`served_name`] for rerank bodies, whose `model` is not `/v1/score`'s.
pub fn check_model_name(state: &AppState, model: Option<&str>) -> Result<String, ApiError> {
    served_name(state, model)
}

/// Validates and tokenizes on a blocking thread. The limits on items and tokens are checked by
/// that validation (`scorer_protocol::Limits`: 400 naming the limit), not here.
pub async fn prepare(state: &AppState, req: ScoreRequest) -> Result<ScoreJob, ApiError> {
    let backend = state.backend.clone();
    let job = tokio::task::spawn_blocking(move || backend.prepare(&req))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer crashed: {e}")))??;
    Ok(job)
}

/// [`prepare`] for a rerank request: the model's rerank template writes the `/v1/score` job.
pub async fn prepare_rerank(state: &AppState, input: RerankInput) -> Result<ScoreJob, ApiError> {
    let backend = state.backend.clone();
    let job = tokio::task::spawn_blocking(move || backend.prepare_rerank(&input))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer crashed: {e}")))??;
    Ok(job)
}

/// The synchronous call (`/v1/score`, the rerank routes): accepts `record` at the sync priority
/// and waits up to `timeout` for its result. Past it the answer is 504 naming the job, which
/// goes on. Records `scorer_score_seconds` from `started`.
pub async fn run_sync(
    state: &AppState,
    record: &JobRecord,
    job: ScoreJob,
    served: &str,
    draining: Option<&Draining>,
    timeout: Duration,
    started: Instant,
) -> Result<ScoreResponse, ApiError> {
    accept(state, record, job, served).await?;
    // The wait itself is bounded by `timeout`; the extra deadline covers a Redis that stops
    // answering mid-wait.
    let wait = deadline(
        timeout + state.config.store_timeout,
        "results",
        state.stores.results.wait_terminal(record.id, timeout),
    );
    // A server shutting down answers before its drain ends (docs/OPERATIONS.md, "Graceful
    // shutdown"); the job goes on and can be fetched.
    let shutting_down = async {
        match draining {
            Some(draining) => draining.must_answer().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        biased;
        outcome = wait => outcome,
        () = shutting_down => {
            return Err(ApiError::Timeout {
                message: format!(
                    "the server is shutting down and job {} has no result yet; it goes on: \
                     GET /v1/score/jobs/{}",
                    record.id, record.id
                ),
                job_id: record.id,
            });
        }
    };
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
    answer
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

/// Places under the global queue bound taken by this process's submissions that are between
/// their depth check and their confirmed publish. The broker's depth does not count them yet, so
/// without them a burst of concurrent submissions would all read the same depth and all pass.
#[derive(Debug, Default)]
pub struct QueueSlots {
    reserved: Arc<AtomicU64>,
}

/// One reserved place; given back when dropped (after the publish was confirmed, the broker's
/// depth counts the job instead).
pub struct QueueSlot {
    reserved: Arc<AtomicU64>,
    /// Reservations held when this one was taken, itself included.
    held: u64,
}

impl QueueSlots {
    fn reserve(&self) -> QueueSlot {
        let held = self.reserved.fetch_add(1, Ordering::SeqCst) + 1;
        QueueSlot {
            reserved: self.reserved.clone(),
            held,
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.reserved.fetch_sub(1, Ordering::SeqCst);
    }
}

/// 429 when the model's queue already holds as much as it may (global bound), or when `tenant`
/// already has as many unfinished jobs as it may (per-tenant bound). The global bound counts
/// the broker's depth plus every submission of this process already past this check and not
/// yet published (the reservation is taken before the depth is read, so of two concurrent
/// submissions the later one always counts the earlier), which makes it exact for one API
/// process; API replicas do not see each other's reservations, so N of them may overshoot it by
/// their concurrent submissions.
async fn check_bounds(state: &AppState, tenant: &str) -> Result<QueueSlot, ApiError> {
    let limit = state.config.store_timeout;
    let slot = state.queue_slots.reserve();
    let per_tenant = state.config.max_tenant_active;
    // The two reads are independent: one round trip's wait instead of two.
    let tenant_jobs = async {
        if per_tenant == 0 {
            return Ok(0);
        }
        deadline(limit, "audit", state.stores.audit.active_jobs(tenant)).await
    };
    let (depth, active) = tokio::join!(
        deadline(
            limit,
            "queue",
            state.stores.queue.depth(state.backend.model_id()),
        ),
        tenant_jobs
    );
    let depth = depth?;
    metrics::gauge!("scorer_queue_depth").set(depth as f64);
    let secs = state.config.retry_after.as_secs().max(1);
    // `held` counts this submission too: with `depth + held - 1` already queued or on the way,
    // this one is admitted only if that is under the bound.
    let queued = depth + slot.held - 1;
    if queued >= state.config.max_queue_depth {
        metrics::counter!("scorer_overloaded_total", "bound" => "queue").increment(1);
        return Err(ApiError::Overloaded {
            message: format!(
                "the queue holds {queued} jobs (with those being submitted), at its bound of {}; \
                 retry after {secs} s",
                state.config.max_queue_depth
            ),
            retry_after_secs: secs,
        });
    }
    if per_tenant > 0 {
        let active = active?;
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
    Ok(slot)
}

/// The queue message of an accepted job; `served_as` is the name its result answers in `model`
/// (the record's `model` is the queue: the model the server runs).
pub fn envelope(record: &JobRecord, job: ScoreJob, served_as: &str) -> JobEnvelope {
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
        outputs: job.outputs,
        served_as: Some(served_as.to_string()),
    }
}

/// Publishes to the worker the job's locality key picks, else to the model's shared queue.
pub async fn publish(state: &AppState, envelope: &JobEnvelope) -> Result<(), StoreError> {
    crate::locality::publish(&state.locality, state.stores.queue.as_ref(), envelope).await
}

/// Accepts a job: checks the bounds (holding a place under the queue bound until the publish is
/// confirmed), records the job (its audit row exists before anyone is told it was accepted),
/// caches the queued state, publishes with a broker confirm, and stamps the row published.
/// `Inserted::Existing` is handed back for the caller to judge (idempotent replay); a replay of
/// the same body whose job was never published (an earlier submission answered an error after
/// its insert had committed) publishes it now.
pub async fn accept(
    state: &AppState,
    record: &JobRecord,
    job: ScoreJob,
    served_as: &str,
) -> Result<Inserted, ApiError> {
    let _slot = check_bounds(state, &record.tenant).await?;
    let limit = state.config.store_timeout;
    let inserted = deadline(limit, "audit", state.stores.audit.insert(record)).await?;
    if let Inserted::Existing(existing) = &inserted {
        if existing.request_hash == record.request_hash
            && existing.status == JobStatus::Queued
            && existing.published_at.is_none()
        {
            tracing::info!(job = %existing.id, "replay of a job never published; publishing it");
            let envelope = envelope(existing, job, served_as);
            deadline(limit, "queue", publish(state, &envelope)).await?;
            mark_published(state, existing.id).await;
        }
        return Ok(inserted);
    }
    if let Err(e) = deadline(limit, "results", state.stores.results.put(record)).await {
        // Not fatal: GET falls back to Postgres, and the worker writes the outcome here later.
        tracing::warn!(job = %record.id, error = %e, "could not cache queued state");
    }
    let envelope = envelope(record, job, served_as);
    if let Err(e) = deadline(limit, "queue", publish(state, &envelope)).await {
        // Never queued: say so in the record rather than leave a job queued forever (if this
        // write fails too, the acceptance sweeper does it later).
        let mut failed = record.clone();
        failed.fail(format!("could not be queued: {e}"));
        if let Ok(finished) = deadline(limit, "audit", state.stores.audit.finish(&failed)).await {
            let _ = deadline(limit, "results", state.stores.results.put(&finished.record)).await;
        }
        return Err(e);
    }
    mark_published(state, record.id).await;
    metrics::counter!("scorer_jobs_accepted_total", "kind" => record.kind.as_str()).increment(1);
    Ok(Inserted::Created)
}

/// Stamps the row published. The job is on the queue whatever this answers, so a failure is
/// only logged: the job runs; if it is still queued after the sweeper's grace period it is
/// failed then (rare: it needs Postgres to fail right after it accepted the insert).
async fn mark_published(state: &AppState, id: uuid::Uuid) {
    let limit = state.config.store_timeout;
    let call = state.stores.audit.mark_published(id, now_millis());
    if let Err(e) = deadline(limit, "audit", call).await {
        tracing::warn!(job = %id, error = %e, "could not stamp the job published");
    }
}
