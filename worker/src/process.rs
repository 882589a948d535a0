//! One batch: decide per delivery (poison, expired, already finished, over-attempt, run), score
//! the runnable ones together, store every outcome, then acknowledge.

use std::future::Future;
use std::time::{Duration, Instant};

use scorer_jobs::{Delivery, StartOutcome, StoreError};
use scorer_protocol::ScoreResponse;
use scorer_protocol::job::{JobEnvelope, JobKind, JobRecord, JobStatus, now_millis};

use crate::{RUN_TIMEOUT_REQUEUES, Worker};

/// A delivery that passed the checks and is now `running` in the audit store.
struct Runnable {
    delivery: Delivery,
    envelope: JobEnvelope,
    record: JobRecord,
}

pub(crate) async fn run_batch(worker: &Worker, batch: Vec<Delivery>) {
    let mut runnable = Vec::with_capacity(batch.len());
    for delivery in batch {
        if let Some(r) = admit(worker, delivery).await {
            runnable.push(r);
        }
    }
    if runnable.is_empty() {
        return;
    }
    metrics::histogram!("scorer_worker_batch_jobs").record(runnable.len() as f64);
    let jobs: Vec<_> = runnable.iter().map(|r| r.envelope.score_job()).collect();
    let backend = worker.backend.clone();
    let started = Instant::now();
    let mut scoring = tokio::task::spawn_blocking(move || backend.score_batch(&jobs));
    let outputs = match tokio::time::timeout(worker.config.run_timeout, &mut scoring).await {
        Ok(joined) => joined,
        Err(_) => {
            metrics::counter!("scorer_worker_run_timeouts_total").increment(1);
            tracing::warn!(
                jobs = runnable.len(),
                limit = ?worker.config.run_timeout,
                "forward pass ran past the run time limit"
            );
            for r in runnable {
                ran_too_long(worker, r).await;
            }
            // A pass cannot be interrupted. Until it ends the engine can run nothing else, so
            // taking the next batch now would only start its clock while it waits.
            let _ = scoring.await;
            return;
        }
    };
    let inference_ms = started.elapsed().as_millis() as i64;
    metrics::histogram!("scorer_worker_inference_seconds").record(started.elapsed().as_secs_f64());
    let outputs = match outputs {
        Ok(outputs) if outputs.len() == runnable.len() => outputs,
        Ok(outputs) => {
            let msg = format!(
                "engine answered {} results for {} jobs",
                outputs.len(),
                runnable.len()
            );
            tracing::error!("{msg}");
            runnable.iter().map(|_| Err(msg.clone())).collect()
        }
        Err(panic) => {
            // The engine crashed on this batch. Each job goes back for another attempt; one that
            // keeps crashing the engine runs out of attempts and is dead-lettered.
            tracing::error!(error = %panic, "engine panicked; requeueing the batch");
            for r in runnable {
                requeue(&r.delivery).await;
            }
            return;
        }
    };
    for (r, output) in runnable.into_iter().zip(outputs) {
        let mut record = r.record;
        record.finished_at = Some(now_millis());
        record.inference_ms = Some(inference_ms);
        match output {
            Ok(out) => {
                record.status = JobStatus::Succeeded;
                record.prompt_tokens = Some(out.prompt_tokens as i64);
                record.result = Some(ScoreResponse::new(
                    out.scores,
                    r.envelope.model.clone(),
                    out.prompt_tokens,
                ));
            }
            Err(message) => {
                record.status = JobStatus::Failed;
                record.prompt_tokens = Some(r.envelope.prompt_tokens() as i64);
                record.error = Some(message);
            }
        }
        settle(worker, &r.delivery, &record, Ack::Ack).await;
    }
}

/// A job whose pass ran past the limit: published again (with its publication count raised,
/// then the original acknowledged) the first time, failed and dead-lettered after that. Whether
/// it was the job or its batch-mates that made the pass slow cannot be told apart, so every job
/// of the batch is charged.
async fn ran_too_long(worker: &Worker, r: Runnable) {
    let limit = worker.config.run_timeout;
    if r.envelope.attempt <= RUN_TIMEOUT_REQUEUES {
        let mut again = r.envelope;
        again.attempt += 1;
        match bounded(worker, "queue", worker.queue.publish(&again)).await {
            Ok(()) => {
                tracing::warn!(job = %again.job_id, ?limit, "ran past the run time limit; requeued");
                ack(&r.delivery).await;
            }
            // Not republished: the original goes back unchanged and the job gets this chance
            // again rather than none.
            Err(e) => {
                retry_later(&r.delivery, e).await;
            }
        }
        return;
    }
    let mut failed = r.record;
    failed.status = JobStatus::Failed;
    failed.finished_at = Some(now_millis());
    failed.prompt_tokens = Some(r.envelope.prompt_tokens() as i64);
    failed.error = Some(format!(
        "the forward pass ran past the run time limit of {limit:?} {} times",
        RUN_TIMEOUT_REQUEUES + 1
    ));
    settle(worker, &r.delivery, &failed, Ack::DeadLetter).await;
}

/// Checks a delivery and marks it running; `None` when it was settled here instead.
async fn admit(worker: &Worker, delivery: Delivery) -> Option<Runnable> {
    let envelope = match &delivery.envelope {
        Ok(e) => e.clone(),
        Err(why) => {
            poison(worker, &delivery, why).await;
            return None;
        }
    };
    let now = now_millis();
    if let Some(deadline) = envelope.deadline_ms
        && now.timestamp_millis() > deadline
    {
        let record = match bounded(worker, "audit", worker.audit.get(envelope.job_id)).await {
            Ok(Some(r)) => r,
            Ok(None) => record_from_envelope(&envelope),
            Err(e) => return retry_later(&delivery, e).await.then_none(),
        };
        if !record.status.is_terminal() {
            let mut expired = record;
            expired.status = JobStatus::Expired;
            expired.finished_at = Some(now);
            expired.error = Some("the job was not started before its ttl ran out".into());
            settle(worker, &delivery, &expired, Ack::Ack).await;
            return None;
        }
    }
    let outcome = match start(worker, &envelope, now).await {
        Ok(StartOutcome::Missing) => {
            // Published without an audit row (another producer): create it, then start.
            if let Err(e) = bounded(
                worker,
                "audit",
                worker.audit.insert(&record_from_envelope(&envelope)),
            )
            .await
            {
                return retry_later(&delivery, e).await.then_none();
            }
            start(worker, &envelope, now).await
        }
        other => other,
    };
    let record = match outcome {
        Ok(StartOutcome::Started(r)) => r,
        Ok(StartOutcome::NotRunnable(r)) => {
            // Cancelled, or finished by an earlier delivery whose ack was lost: make sure the
            // result cache has it, and drop the message.
            tracing::info!(job = %r.id, status = r.status.as_str(), "not running a terminal job");
            if let Err(e) = bounded(worker, "results", worker.results.put(&r)).await {
                return retry_later(&delivery, e).await.then_none();
            }
            ack(&delivery).await;
            return None;
        }
        Ok(StartOutcome::Missing) => {
            let e = StoreError::unavailable("audit", "job row missing right after insert");
            return retry_later(&delivery, e).await.then_none();
        }
        Err(e) => return retry_later(&delivery, e).await.then_none(),
    };
    if record.attempts > worker.config.max_attempts {
        let mut failed = record;
        failed.status = JobStatus::Failed;
        failed.finished_at = Some(now_millis());
        failed.error = Some(format!(
            "gave up after {} attempts",
            worker.config.max_attempts
        ));
        settle(worker, &delivery, &failed, Ack::DeadLetter).await;
        return None;
    }
    // Best effort: pollers see `running`; the terminal write below is the one that matters.
    if let Err(e) = bounded(worker, "results", worker.results.put(&record)).await {
        tracing::warn!(job = %record.id, error = %e, "could not cache running state");
    }
    Some(Runnable {
        delivery,
        envelope,
        record,
    })
}

/// Marks the job running in the audit store (the record of truth decides whether it may run).
async fn start(
    worker: &Worker,
    envelope: &JobEnvelope,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StartOutcome, StoreError> {
    let call = worker
        .audit
        .start(envelope.job_id, &worker.config.worker_id, now);
    bounded(worker, "audit", call).await
}

/// A message whose body does not decode: the job (if its id travelled beside the body) fails,
/// and the message goes to the dead-letter queue for inspection.
async fn poison(worker: &Worker, delivery: &Delivery, why: &str) {
    tracing::error!(job = ?delivery.job_id, error = %why, "undecodable message");
    metrics::counter!("scorer_worker_poison_messages_total").increment(1);
    let existing = match delivery.job_id {
        Some(id) => match bounded(worker, "audit", worker.audit.get(id)).await {
            Ok(r) => r,
            Err(e) => {
                retry_later(delivery, e).await;
                return;
            }
        },
        None => None,
    };
    match existing {
        Some(mut record) if !record.status.is_terminal() => {
            record.status = JobStatus::Failed;
            record.finished_at = Some(now_millis());
            record.error = Some(format!("the queued message could not be decoded: {why}"));
            settle(worker, delivery, &record, Ack::DeadLetter).await;
        }
        _ => dead_letter(delivery).await,
    }
}

enum Ack {
    Ack,
    DeadLetter,
}

/// Stores a terminal record (audit first: it is the record of truth; then the cache, which
/// wakes sync waiters), sends the webhook, and only then settles the message. If storing
/// fails the message is requeued, so the outcome is not lost.
async fn settle(worker: &Worker, delivery: &Delivery, record: &JobRecord, how: Ack) {
    let finished = match bounded(worker, "audit", worker.audit.finish(record)).await {
        Ok(finished) => finished,
        Err(e) => {
            retry_later(delivery, e).await;
            return;
        }
    };
    let stored = finished.record;
    if let Err(e) = bounded(worker, "results", worker.results.put(&stored)).await {
        retry_later(delivery, e).await;
        return;
    }
    metrics::counter!("scorer_worker_jobs_total", "status" => stored.status.as_str()).increment(1);
    // Only the delivery that actually decided the outcome notifies the webhook.
    if finished.applied
        && let Some(url) = &stored.webhook
    {
        worker.webhooks.spawn(url.clone(), stored.object());
    }
    match how {
        Ack::Ack => ack(delivery).await,
        Ack::DeadLetter => dead_letter(delivery).await,
    }
}

/// Broker acknowledgements get a deadline too; one that does not answer is treated like a failed
/// one (the message comes back when the channel is dropped, and is recognised as finished).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

async fn settle_message<E: std::fmt::Display>(
    delivery: &Delivery,
    what: &'static str,
    call: impl Future<Output = Result<(), E>>,
) {
    match tokio::time::timeout(ACK_TIMEOUT, call).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(job = ?delivery.job_id, error = %e, "{what} failed"),
        Err(_) => {
            metrics::counter!("scorer_worker_store_timeouts_total", "service" => "queue")
                .increment(1);
            tracing::warn!(job = ?delivery.job_id, timeout = ?ACK_TIMEOUT, "{what} timed out");
        }
    }
}

async fn ack(delivery: &Delivery) {
    // The channel died after the outcome was stored: the message comes back and is recognised
    // as finished.
    settle_message(delivery, "ack", delivery.acker.ack()).await;
}

async fn dead_letter(delivery: &Delivery) {
    settle_message(delivery, "dead-letter", delivery.acker.dead_letter()).await;
}

async fn requeue(delivery: &Delivery) {
    settle_message(delivery, "requeue", delivery.acker.requeue()).await;
}

/// Runs a Redis, Postgres or broker call under the worker's `store_timeout`: a connection that
/// stopped answering becomes `Unavailable` (the message is given back and retried) instead of a
/// wedged worker.
async fn bounded<T>(
    worker: &Worker,
    service: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let limit = worker.config.store_timeout;
    match tokio::time::timeout(limit, call).await {
        Ok(outcome) => outcome,
        Err(_) => {
            metrics::counter!("scorer_worker_store_timeouts_total", "service" => service)
                .increment(1);
            Err(StoreError::unavailable(
                service,
                format!("no answer within {limit:?}"),
            ))
        }
    }
}

/// A store is down: give the message back and pause briefly so a dead dependency does not turn
/// into a hot redelivery loop.
async fn retry_later(delivery: &Delivery, e: StoreError) -> Settled {
    tracing::warn!(job = ?delivery.job_id, error = %e, "store unavailable; requeueing");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    requeue(delivery).await;
    Settled
}

/// The delivery was dealt with (here: given back); nothing is left to run.
struct Settled;

impl Settled {
    fn then_none<T>(self) -> Option<T> {
        None
    }
}

fn record_from_envelope(e: &JobEnvelope) -> JobRecord {
    let mut r = JobRecord::queued(
        e.job_id,
        e.tenant.clone(),
        JobKind::Async,
        e.model.clone(),
        e.priority,
    );
    r.created_at =
        chrono::DateTime::from_timestamp_millis(e.enqueued_at_ms).unwrap_or(r.created_at);
    r.expires_at = e
        .deadline_ms
        .and_then(chrono::DateTime::from_timestamp_millis);
    r
}
