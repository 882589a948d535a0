//! Locality routing: jobs that share a token prefix go to the same worker, whose prefix cache
//! then holds it. The worker is chosen by rendezvous (highest-random-weight) hashing of the
//! job's locality key against the live workers of the model, so each key has one home while the
//! set of workers is stable, and only the keys of a worker that comes or goes move.
//!
//! Publishing never depends on it: no key, no live worker, or a failed publish to the chosen
//! worker's queue all mean the shared queue, which every worker consumes.

use std::sync::Arc;
use std::time::Duration;

use scorer_jobs::{JobQueue, StoreError, WorkerRegistry};
use scorer_protocol::job::JobEnvelope;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Locality settings of the API.
#[derive(Debug, Clone)]
pub struct LocalityConfig {
    /// Steer keyed jobs to a worker (default on). Off: every job goes to the shared queue.
    pub enabled: bool,
    /// How long a job waits in its worker's queue before any worker may take it (default 5 s);
    /// declared by workers on their own queue.
    pub worker_queue_ttl: Duration,
    /// How often the API re-reads the live workers (default 1 s).
    pub refresh: Duration,
}

impl Default for LocalityConfig {
    fn default() -> Self {
        LocalityConfig {
            enabled: true,
            worker_queue_ttl: scorer_jobs::DEFAULT_WORKER_QUEUE_TTL,
            refresh: Duration::from_secs(1),
        }
    }
}

/// A Redis read that takes longer than this is not waited for: the job goes to the shared
/// queue instead.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

pub struct Locality {
    enabled: bool,
    workers: Arc<dyn WorkerRegistry>,
    model: String,
    liveness: Duration,
    refresh: Duration,
    live: Mutex<LiveSet>,
}

#[derive(Default)]
struct LiveSet {
    read_at: Option<Instant>,
    workers: Vec<String>,
}

impl Locality {
    /// `enabled` is false where the queue has no per-worker queues (the in-process one, with
    /// its single worker), whatever the configuration says.
    pub fn new(
        config: &LocalityConfig,
        queue: &dyn JobQueue,
        workers: Arc<dyn WorkerRegistry>,
        model: &str,
        liveness: Duration,
    ) -> Self {
        Locality {
            enabled: config.enabled && queue.has_worker_queues(),
            workers,
            model: model.to_string(),
            liveness,
            refresh: config.refresh,
            live: Mutex::new(LiveSet::default()),
        }
    }

    /// The worker a job with this key should go to, if any.
    pub async fn pick(&self, key: Option<u64>) -> Option<String> {
        let key = key.filter(|_| self.enabled)?;
        let workers = self.live_workers().await;
        rendezvous(key, &workers).map(str::to_string)
    }

    /// The live workers, read at most once per `refresh`. A failed read keeps the last answer
    /// until the next refresh: a worker that died meanwhile costs its jobs one queue TTL.
    async fn live_workers(&self) -> Vec<String> {
        let mut live = self.live.lock().await;
        if live.read_at.is_none_or(|at| at.elapsed() >= self.refresh) {
            let read = crate::bounded(
                LOOKUP_TIMEOUT,
                "results",
                self.workers.live_model_workers(&self.model, self.liveness),
            )
            .await;
            match read {
                Ok(workers) => live.workers = workers,
                Err(e) => tracing::warn!(error = %e, "reading live workers failed"),
            }
            live.read_at = Some(Instant::now());
        }
        live.workers.clone()
    }
}

/// The worker with the highest weight for `key`. Stable across processes (every API replica
/// picks the same worker) and independent of the order of `workers`.
pub fn rendezvous(key: u64, workers: &[String]) -> Option<&str> {
    workers
        .iter()
        .max_by_key(|w| (weight(key, w), w.as_str()))
        .map(String::as_str)
}

fn weight(key: u64, worker: &str) -> u64 {
    // FNV-1a over the worker id seeded with the key, then a SplitMix64 finaliser: FNV alone
    // leaves ids that differ only in their last byte with correlated weights.
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = worker.bytes().fold(key ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Publishes a job: to the worker its key picks when there is one, else (or when that fails)
/// to the model's shared queue.
pub async fn publish(
    locality: &Locality,
    queue: &dyn JobQueue,
    envelope: &JobEnvelope,
) -> Result<(), StoreError> {
    if let Some(worker) = locality.pick(envelope.locality).await {
        match queue.publish_to_worker(envelope, &worker).await {
            Ok(()) => {
                metrics::counter!("scorer_jobs_routed_total", "route" => "worker").increment(1);
                return Ok(());
            }
            Err(e) => {
                // Its queue is gone (expired after the worker died) or the broker hiccuped:
                // the shared queue still gets the job to some worker.
                tracing::warn!(job = %envelope.job_id, %worker, error = %e,
                    "publishing to the worker's queue failed; using the shared queue");
            }
        }
    }
    queue.publish(envelope).await?;
    metrics::counter!("scorer_jobs_routed_total", "route" => "shared").increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn same_key_same_worker_whatever_the_order() {
        let workers = ids(5);
        let mut reversed = workers.clone();
        reversed.reverse();
        for key in 0..100u64 {
            assert_eq!(rendezvous(key, &workers), rendezvous(key, &reversed));
        }
        assert_eq!(rendezvous(7, &[]), None);
    }

    #[test]
    fn keys_spread_and_only_a_leaving_workers_keys_move() {
        let workers = ids(4);
        let keys: Vec<u64> = (0..4000u64)
            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut per_worker = std::collections::HashMap::new();
        for &k in &keys {
            *per_worker.entry(rendezvous(k, &workers)).or_insert(0) += 1;
        }
        for w in &workers {
            let n = per_worker[&Some(w.as_str())];
            assert!((800..1200).contains(&n), "{w} got {n} of 4000 keys");
        }
        let without: Vec<String> = workers[1..].to_vec();
        for &k in &keys {
            let before = rendezvous(k, &workers);
            let after = rendezvous(k, &without);
            if before != Some("worker-0") {
                assert_eq!(before, after, "key {k} moved although its worker stayed");
            }
        }
    }
}
