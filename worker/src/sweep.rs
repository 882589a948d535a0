//! The acceptance sweeper: the end of the acceptance state machine that no request owns.
//!
//! A submission inserts its job `queued` without `published_at`, publishes it, then stamps
//! `published_at`; it answers 202 only after the publish was confirmed. When the insert commits
//! but its answer comes too late (a Postgres that stalls past `--store-timeout`), or the process
//! dies between insert and publish, the caller got an error and the row would stay `queued` for
//! ever, never run, counted against its tenant's bound. Every worker therefore fails such rows
//! once they are older than `unpublished_grace` (the update is conditional on `queued`, so
//! several workers sweeping at once, a start or a cancel cannot race it) and tells the result
//! cache. A replay of the job's idempotency key before that publishes it instead
//! (`scorer_api::submit::accept`).

use std::time::Duration;

use scorer_protocol::job::now_millis;
use tokio::sync::watch;

use crate::Worker;
use crate::process::bounded;

/// What a swept job's error says.
pub const UNPUBLISHED_MESSAGE: &str = "never queued: its submission did not complete (it was answered with an error); submit it again";

/// How often to sweep: a few times per grace period, between 1 s and 30 s.
fn period(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

pub(crate) async fn unpublished(worker: Worker, mut shutdown: watch::Receiver<bool>) {
    let grace = worker.config.unpublished_grace;
    let mut tick = tokio::time::interval(period(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::wait_for_shutdown(&mut shutdown) => return,
            _ = tick.tick() => sweep_once(&worker, grace).await,
        }
    }
}

async fn sweep_once(worker: &Worker, grace: Duration) {
    let Ok(grace) = chrono::Duration::from_std(grace) else {
        return;
    };
    let before = now_millis() - grace;
    let call = worker.audit.fail_unpublished(before, UNPUBLISHED_MESSAGE);
    let failed = match bounded(worker, "audit", call).await {
        Ok(failed) => failed,
        Err(e) => {
            tracing::warn!(error = %e, "acceptance sweep failed");
            return;
        }
    };
    for record in failed {
        tracing::warn!(job = %record.id, tenant = %record.tenant, "failed a job that was never queued");
        metrics::counter!("scorer_worker_unpublished_failed_total").increment(1);
        if let Err(e) = bounded(worker, "results", worker.results.put(&record)).await {
            // GET falls back to the audit row only when the cache has none; this one still
            // says `queued` there until its TTL. Logged, and tried again by nobody: rare.
            tracing::warn!(job = %record.id, error = %e, "could not cache the swept job");
        }
    }
}
