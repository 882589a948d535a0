//! Where job state and results are kept for retrieval, with a completion notice for callers
//! waiting on a job. Worker liveness is a separate concern ([`WorkerRegistry`]) that the same
//! Redis (or in-process) backing happens to implement.

mod memory;
mod redis_store;
mod redis_waiters;

pub use memory::MemoryResultStore;
pub use redis_store::RedisResultStore;

use std::time::Duration;

use async_trait::async_trait;
use scorer_protocol::job::JobRecord;
use uuid::Uuid;

use crate::StoreError;

#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Store the job's current state (with the store's TTL). A terminal state also notifies
    /// everyone waiting on the job.
    async fn put(&self, record: &JobRecord) -> Result<(), StoreError>;

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError>;

    /// Wait until the job is terminal, at most `timeout`. `Ok(None)` when it is not terminal by
    /// then. Subscribes before looking, so a completion between the look and the wait is seen.
    async fn wait_terminal(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

/// Which workers are alive: each beats every `heartbeat_interval`; the API steers jobs only to
/// workers heard from recently and `/ready` needs one. Its own trait, not part of
/// [`ResultStore`]: a worker's liveness is not a job's result, and a registry could live
/// elsewhere.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + 'static {
    /// Record that `worker`, serving `model`, is alive now.
    async fn heartbeat(&self, worker: &str, model: &str) -> Result<(), StoreError>;

    /// Workers heard from within `within`.
    async fn live_workers(&self, within: Duration) -> Result<Vec<String>, StoreError>;

    /// Workers of `model` heard from within `within`, sorted (the candidates for locality
    /// routing).
    async fn live_model_workers(
        &self,
        model: &str,
        within: Duration,
    ) -> Result<Vec<String>, StoreError>;

    /// `worker` stopped (on purpose, or because its engine died): it is no longer live, so no
    /// more jobs are steered to it.
    async fn forget_worker(&self, worker: &str, model: &str) -> Result<(), StoreError>;
}
