//! The worker: consume a model's queue (and its own queue, where the API steers jobs that share a
//! prefix with earlier ones), gather ready jobs into a batch, score them with the engine, store
//! each result (Postgres audit row, then Redis with a completion notice), then acknowledge.
//!
//! On shutdown the worker stops consuming, gives back what it has not started (as new
//! messages, so nothing counts as a redelivery), finishes the pass it is running within a grace
//! period, and leaves; docs/OPERATIONS.md, "Graceful shutdown".
//!
//! Ordering is what makes redelivery safe: a message is acknowledged only after its outcome is
//! stored, and storing is idempotent on the job id, so a crash anywhere means the job runs again
//! (or is recognised as finished) and never that it is lost or recorded twice.

mod batch;
mod config;
mod process;
mod sweep;

pub use config::{DEFAULT_MAX_BULK_BATCH_TOKENS, RUN_TIMEOUT_REQUEUES, WorkerConfig};

use std::sync::Arc;

use scorer_jobs::{
    AuditStore, Delivery, JobConsumer, JobQueue, ResultStore, StoreError, WorkerRegistry,
    webhook::WebhookSender,
};
use scorer_protocol::{EngineUnavailable, ScoreBackend};
use tokio::sync::watch;

/// Why a worker stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue could not be declared or consumed at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine died. The worker handed back every message it held and left the live set;
    /// the process should exit non-zero so its supervisor starts a fresh one.
    #[error(transparent)]
    Engine(#[from] EngineUnavailable),
    /// Told to stop, the worker gave up waiting for its pass: the pass's messages went back to
    /// the queue unacknowledged (they run again elsewhere, their attempt spent).
    #[error(
        "the pass in progress ({jobs} jobs) did not end within the shutdown grace period of \
         {grace:?}; its jobs went back to the queue"
    )]
    ShutdownGrace {
        grace: std::time::Duration,
        jobs: usize,
    },
}

/// Everything a worker talks to.
#[derive(Clone)]
pub struct Worker {
    pub queue: Arc<dyn JobQueue>,
    pub results: Arc<dyn ResultStore>,
    /// Where the worker beats (and says it left).
    pub registry: Arc<dyn WorkerRegistry>,
    pub audit: Arc<dyn AuditStore>,
    pub backend: Arc<dyn ScoreBackend>,
    pub webhooks: WebhookSender,
    pub config: WorkerConfig,
}

impl Worker {
    /// The model queue this worker consumes: the backend's model.
    pub fn model(&self) -> &str {
        self.backend.model_id()
    }

    /// Runs until `shutdown` turns true; then stops consuming (the broker's consumers are
    /// cancelled, so nothing new arrives), hands back every delivery taken but not started
    /// (unmarked, no attempt spent: [`scorer_jobs::DeliveryAcker::give_back`]), lets the pass in
    /// progress finish within `shutdown_grace` (its jobs stored and acknowledged), and returns.
    /// If the engine dies it stops the same way, at once, with the batch in hand given back
    /// too, and returns [`WorkerError::Engine`].
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let model = self.model().to_string();
        self.queue.declare(&model).await?;
        let mut consumer = self
            .queue
            .consume_as(&model, &self.config.worker_id, self.config.prefetch)
            .await?;
        // Beats start once the worker's own queue is consumed: a beat is what makes the API
        // steer jobs to it. Dropped with this future, so a worker that is torn down (aborted)
        // falls silent like a crashed process would.
        let mut heartbeat = AbortOnDrop(tokio::spawn(heartbeats(
            self.registry.clone(),
            self.config.worker_id.clone(),
            model.clone(),
            self.config.heartbeat_interval,
            shutdown.clone(),
        )));
        // Fails jobs whose submission never got them onto the queue (see `sweep`).
        let _sweeper = AbortOnDrop(tokio::spawn(sweep::unpublished(
            self.clone(),
            shutdown.clone(),
        )));
        tracing::info!(worker = %self.config.worker_id, %model, "worker started");
        // Deliveries in hand, not yet started; each batch is picked from them by priority.
        let mut pending = Vec::new();
        let mut died = None;
        let mut overran = None;
        // Set once the deliveries not started have been handed back.
        let mut handed_back = false;
        loop {
            let batch = tokio::select! {
                biased;
                _ = wait_for_shutdown(&mut shutdown) => break,
                batch = batch::gather(consumer.as_mut(), &self.config, &mut pending) => batch,
            };
            match batch {
                Ok(Some(batch)) => {
                    let jobs = batch.len();
                    let pass = process::run_batch(&self, batch);
                    tokio::pin!(pass);
                    let ran = tokio::select! {
                        ran = &mut pass => Some(ran),
                        _ = wait_for_shutdown(&mut shutdown) => {
                            // Told to stop mid-pass: take nothing new, and give back what is in
                            // hand now, while the pass finishes within the grace period.
                            handed_back = true;
                            let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
                            let (ran, ()) = tokio::join!(
                                tokio::time::timeout_at(deadline, &mut pass),
                                give_back(consumer.as_mut(), &mut pending),
                            );
                            ran.ok()
                        }
                    };
                    match ran {
                        Some(Ok(())) => {}
                        Some(Err(dead)) => {
                            // Every later batch would meet the same dead engine: stop consuming.
                            tracing::error!(worker = %self.config.worker_id, error = %dead,
                                "engine unavailable; stopping the worker");
                            died = Some(dead);
                            break;
                        }
                        None => {
                            tracing::error!(worker = %self.config.worker_id, jobs,
                                grace = ?self.config.shutdown_grace,
                                "the pass did not end within the shutdown grace period; its \
                                 jobs return to the queue when the connection closes");
                            overran = Some(jobs);
                            break;
                        }
                    }
                    if handed_back {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        if !handed_back {
            give_back(consumer.as_mut(), &mut pending).await;
        }
        // Leave the live set first, so the API stops steering jobs here; what is already in this
        // worker's queue moves to the shared queue when its TTL runs out.
        heartbeat.stop().await;
        let forget = self.registry.forget_worker(&self.config.worker_id, &model);
        if let Err(e) = process::bounded(&self, "results", forget).await {
            tracing::warn!(error = %e, "could not leave the live worker set");
        }
        consumer.close().await;
        tracing::info!(worker = %self.config.worker_id, "worker stopped");
        if let Some(dead) = died {
            return Err(WorkerError::Engine(dead));
        }
        if let Some(jobs) = overran {
            return Err(WorkerError::ShutdownGrace {
                grace: self.config.shutdown_grace,
                jobs,
            });
        }
        Ok(())
    }
}

/// Stops consuming, and hands back every delivery taken but not started: those in `pending`
/// and those the broker had already pushed to the consumer.
async fn give_back(consumer: &mut dyn JobConsumer, pending: &mut Vec<Delivery>) {
    let mut unstarted: Vec<Delivery> = std::mem::take(pending);
    unstarted.extend(consumer.stop().await);
    if !unstarted.is_empty() {
        tracing::info!(
            deliveries = unstarted.len(),
            "handing back deliveries not started"
        );
    }
    for d in &unstarted {
        process::give_back(d).await;
    }
}

pub(crate) async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means shut down.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Aborts and waits, so no beat lands after this returns.
    async fn stop(&mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn heartbeats(
    registry: Arc<dyn WorkerRegistry>,
    worker_id: String,
    model: String,
    every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = wait_for_shutdown(&mut shutdown) => return,
            _ = tick.tick() => {
                if let Err(e) = registry.heartbeat(&worker_id, &model).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        }
    }
}
