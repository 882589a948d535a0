use std::time::Duration;

/// See `WorkerConfig::max_bulk_batch_tokens`; docs/BENCHMARKS.md (service bench) has the
/// measurements behind the value.
pub const DEFAULT_MAX_BULK_BATCH_TOKENS: usize = 512;

/// How a worker batches and retries.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Shown in the audit row and in heartbeats.
    pub worker_id: String,
    /// Unacknowledged messages the broker may hand this worker from each queue it consumes (the
    /// shared one and its own); bounds the batch size too. Each batch is picked by priority from
    /// all of them, so a larger window does not delay sync jobs.
    pub prefetch: u16,
    /// A batch closes once its prompts hold this many tokens (a single larger job runs alone).
    pub max_batch_tokens: usize,
    /// Bulk jobs join a batch only while it stays within this many tokens, and never a batch
    /// holding a sync job. The engine runs one batch at a time, so this bounds how long a sync
    /// job waits behind bulk work already on the engine.
    pub max_bulk_batch_tokens: usize,
    /// How long to wait for more jobs after the first one of a batch arrived (not waited once a
    /// sync job is in hand).
    pub max_wait: Duration,
    /// Starts allowed per job (redeliveries after crashes count); past it the job fails and its
    /// message goes to the dead-letter queue.
    pub max_attempts: i32,
    /// Longest a batch's forward pass may run. Past it every job of the batch is published
    /// again once ([`RUN_TIMEOUT_REQUEUES`]); a job that runs past it again fails.
    pub run_timeout: Duration,
    /// Deadline of each Redis, Postgres and broker call; past it the call counts as failed (the
    /// message is given back and retried later).
    pub store_timeout: Duration,
    /// How often the worker says it is alive (Redis); the API counts a worker live for three of
    /// these and steers jobs only to live workers.
    pub heartbeat_interval: Duration,
    /// A sync or async job still `queued` and never published this long after it was created
    /// is failed by the acceptance sweeper: its submission answered an error, so nobody was
    /// told it was accepted (a replay of its idempotency key within this time publishes it
    /// instead). Longer than the submission's own store calls can take.
    pub unpublished_grace: Duration,
    /// Once told to stop, how long the pass in progress may take to finish (its jobs are then
    /// stored and acknowledged). Past it the worker stops waiting: the pass's messages return
    /// to the queue when the connection closes, and run again elsewhere (their attempt spent).
    pub shutdown_grace: Duration,
}

/// How many times a job that ran past `run_timeout` is published again before it fails.
pub const RUN_TIMEOUT_REQUEUES: u32 = 1;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_id: format!(
                "worker-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            prefetch: 32,
            max_batch_tokens: 8192,
            max_bulk_batch_tokens: DEFAULT_MAX_BULK_BATCH_TOKENS,
            max_wait: Duration::from_millis(5),
            max_attempts: 3,
            // A full 8,192-token batch of the default model takes about a minute on a 2-core
            // CPU; five leaves room for a busy machine while still catching a wedged pass.
            run_timeout: Duration::from_secs(300),
            store_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            unpublished_grace: Duration::from_secs(120),
            shutdown_grace: scorer_jobs::deadline::DEFAULT_SHUTDOWN_GRACE,
        }
    }
}
