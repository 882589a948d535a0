//! One batch: decide per delivery (poison, expired, already finished, over-attempt, run), score
//! the runnable ones together, store every outcome, then acknowledge.

use std::future::Future;
use std::time::{Duration, Instant};

use scorer_jobs::deadline::WORKER_TIMEOUTS;
use scorer_jobs::{Deadline, Delivery, StartOutcome, StoreError};
use scorer_protocol::job::{JobEnvelope, JobKind, JobRecord, JobStatus, now_millis};
use scorer_protocol::{EngineUnavailable, ScoreResponse};

use crate::{RUN_TIMEOUT_REQUEUES, Worker};

/// A delivery that passed the checks and is now `running` in the audit store.
struct Runnable {
    delivery: Delivery,
    envelope: JobEnvelope,
    record: JobRecord,
}

/// Runs one batch to the end: every delivery is settled (acknowledged, dead-lettered or given
/// back). `Err` when the engine is gone: the batch went back to the queue, and the worker must
/// stop, since every later batch would meet the same dead engine.
pub(crate) async fn run_batch(
    worker: &Worker,
    batch: Vec<Delivery>,
) -> Result<(), EngineUnavailable> {
    let mut runnable = Vec::with_capacity(batch.len());
    for delivery in batch {
        if let Some(r) = admit(worker, delivery).await {
            runnable.push(r);
        }
    }
    if runnable.is_empty() {
        return Ok(());
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
            return match scoring.await {
                Ok(Err(dead)) => Err(dead),
                _ => Ok(()),
            };
        }
    };
    let inference_ms = started.elapsed().as_millis() as i64;
    metrics::histogram!("scorer_worker_inference_seconds").record(started.elapsed().as_secs_f64());
    let outputs = match outputs {
        Ok(Ok(outputs)) if outputs.len() == runnable.len() => outputs,
        Ok(Ok(outputs)) => {
            let msg = format!(
                "engine answered {} results for {} jobs",
                outputs.len(),
                runnable.len()
            );
            tracing::error!("{msg}");
            runnable
                .iter()
                .map(|_| Err(scorer_protocol::JobFailure::new(msg.clone())))
                .collect()
        }
        Ok(Err(dead)) => {
            // Not the jobs' fault: they go back unchanged for a worker with a live engine.
            tracing::error!(error = %dead, jobs = runnable.len(), "engine unavailable; requeueing the batch");
            metrics::counter!("scorer_worker_engine_failures_total").increment(1);
            for r in runnable {
                requeue(&r.delivery).await;
            }
            return Err(dead);
        }
        Err(panic) => {
            // The backend panicked on this batch. Each job goes back for another attempt; one
            // that keeps crashing it runs out of attempts and is dead-lettered.
            tracing::error!(error = %panic, "backend panicked; requeueing the batch");
            for r in runnable {
                requeue(&r.delivery).await;
            }
            return Ok(());
        }
    };
    for (r, output) in runnable.into_iter().zip(outputs) {
        let mut record = r.record;
        record.inference_ms = Some(inference_ms);
        // A non-finite score is never stored: JSON would carry it as `null`, which no reader
        // (this worker included) decodes.
        match output.and_then(|out| out.check_finite().map(|()| out)) {
            Ok(out) => {
                record.status = JobStatus::Succeeded;
                record.finished_at = Some(now_millis());
                record.prompt_tokens = Some(out.prompt_tokens as i64);
                record.result = Some(ScoreResponse::from_output(out, r.envelope.answered_model()));
            }
            Err(failure) => {
                record.prompt_tokens = Some(r.envelope.prompt_tokens() as i64);
                record.fail(failure.message);
            }
        }
        settle(worker, &r.delivery, &record, Ack::Ack).await;
    }
    Ok(())
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
                retry_later::<()>(worker, &r.delivery, e).await;
            }
        }
        return;
    }
    let mut failed = r.record;
    failed.prompt_tokens = Some(r.envelope.prompt_tokens() as i64);
    failed.fail(format!(
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
            Err(e) => return retry_later(worker, &delivery, e).await,
        };
        if !record.status.is_terminal() {
            let mut expired = record;
            expired.expire("the job was not started before its ttl ran out");
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
                return retry_later(worker, &delivery, e).await;
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
                return retry_later(worker, &delivery, e).await;
            }
            ack(&delivery).await;
            return None;
        }
        Ok(StartOutcome::Missing) => {
            let e = StoreError::unavailable("audit", "job row missing right after insert");
            return retry_later(worker, &delivery, e).await;
        }
        Err(e) => return retry_later(worker, &delivery, e).await,
    };
    if record.attempts > worker.config.max_attempts {
        let mut failed = record;
        failed.fail(format!(
            "gave up after {} attempts",
            worker.config.max_attempts
        ));
        settle(worker, &delivery, &failed, Ack::DeadLetter).await;
        return None;
    }
    // A payload that decodes but cannot be scored (another producer, a hand-made message) would
    // fail the same way on every delivery: fail it now, its attempt counted, and keep the
    // message in the dead-letter queue.
    if let Err(invalid) = envelope.score_job().check() {
        tracing::error!(job = %record.id, error = %invalid, "invalid job payload");
        metrics::counter!("scorer_worker_poison_messages_total").increment(1);
        let mut failed = record;
        failed.prompt_tokens = Some(envelope.prompt_tokens() as i64);
        failed.fail(format!("the queued job is invalid: {invalid}"));
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
                retry_later::<()>(worker, delivery, e).await;
                return;
            }
        },
        None => None,
    };
    match existing {
        Some(mut record) if !record.status.is_terminal() => {
            record.fail(format!("the queued message could not be decoded: {why}"));
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
            retry_later::<()>(worker, delivery, e).await;
            return;
        }
    };
    let stored = finished.record;
    if let Err(e) = bounded(worker, "results", worker.results.put(&stored)).await {
        retry_later::<()>(worker, delivery, e).await;
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

async fn settle_message(
    delivery: &Delivery,
    what: &'static str,
    call: impl Future<Output = Result<(), StoreError>>,
) {
    match Deadline::new(ACK_TIMEOUT, WORKER_TIMEOUTS)
        .run("queue", call)
        .await
    {
        Ok(()) => {}
        Err(e) => tracing::warn!(job = ?delivery.job_id, error = %e, "{what} failed"),
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

/// A delivery never started goes back unmarked (see `DeliveryAcker::give_back`).
pub(crate) async fn give_back(delivery: &Delivery) {
    settle_message(delivery, "give-back", delivery.acker.give_back()).await;
}

/// Runs a Redis, Postgres or broker call under the worker's `store_timeout`: a connection that
/// stopped answering becomes `Unavailable` (the message is given back and retried) instead of a
/// wedged worker.
pub(crate) async fn bounded<T>(
    worker: &Worker,
    service: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    Deadline::new(worker.config.store_timeout, WORKER_TIMEOUTS)
        .run(service, call)
        .await
}

/// A store call failed. Only a transient failure (a service down or past its deadline) gives the
/// message back, after a pause so a dead dependency does not turn into a hot redelivery loop. A
/// permanent one (a stored record that does not decode) would fail the same way on every
/// delivery: the message goes to the dead-letter queue, and the result cache is told the job
/// failed, so pollers do not see it `running` for ever. Either way the delivery is settled and
/// nothing is left to run (`None`).
async fn retry_later<T>(worker: &Worker, delivery: &Delivery, e: StoreError) -> Option<T> {
    if e.is_transient() {
        tracing::warn!(job = ?delivery.job_id, error = %e, "store unavailable; requeueing");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        requeue(delivery).await;
        return None;
    }
    tracing::error!(job = ?delivery.job_id, error = %e, "permanent store failure; dead-lettering");
    metrics::counter!("scorer_worker_permanent_failures_total").increment(1);
    if let Ok(envelope) = &delivery.envelope {
        let mut failed = record_from_envelope(envelope);
        failed.fail(format!("the job's stored record is unusable: {e}"));
        if let Err(e) = bounded(worker, "results", worker.results.put(&failed)).await {
            tracing::warn!(job = %failed.id, error = %e, "could not cache the failure");
        }
    }
    dead_letter(delivery).await;
    None
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
