//! What every handler shares.

use std::sync::Arc;

use scorer_jobs::webhook::WebhookSender;
use scorer_jobs::{
    AuditStore, BatchStore, JobQueue, PostgresKeyStore, ResultStore, WorkerRegistry,
};
use scorer_protocol::Preparer;

use crate::auth::Authenticator;
use crate::submit::QueueSlots;
use crate::{Locality, ServedNames, ServiceConfig};

/// The queue and the stores, real or in-process.
#[derive(Clone)]
pub struct Stores {
    pub queue: Arc<dyn JobQueue>,
    pub results: Arc<dyn ResultStore>,
    /// Which workers are alive (the same Redis as `results`, or in-process).
    pub workers: Arc<dyn WorkerRegistry>,
    pub audit: Arc<dyn AuditStore>,
    /// Batches; their lines are jobs in `audit`.
    pub batches: Arc<dyn BatchStore>,
    /// API keys made with `scorer keys`; only with Postgres.
    pub keys: Option<PostgresKeyStore>,
}

#[derive(Clone)]
pub struct AppState {
    /// Validation and tokenization (the API never scores).
    pub backend: Arc<dyn Preparer>,
    pub stores: Stores,
    pub config: Arc<ServiceConfig>,
    pub webhooks: WebhookSender,
    /// Which worker a keyed job goes to.
    pub locality: Arc<Locality>,
    pub auth: Arc<Authenticator>,
    /// Places under the queue bound held by submissions not yet published.
    pub queue_slots: Arc<QueueSlots>,
    /// The model names requests may use (`ServedNames::served_name`).
    pub served: Arc<ServedNames>,
}

impl AppState {
    pub fn new(backend: Arc<dyn Preparer>, stores: Stores, config: ServiceConfig) -> Self {
        let webhooks = WebhookSender::new(
            config.webhook_attempts,
            config.webhook_backoff,
            std::time::Duration::from_secs(10),
        );
        let locality = Arc::new(Locality::new(
            &config.locality,
            stores.queue.as_ref(),
            stores.workers.clone(),
            backend.model_id(),
            config.worker_liveness,
        ));
        let auth = Arc::new(Authenticator::new(&config, stores.keys.clone()));
        let served = Arc::new(ServedNames::new(
            backend.model_id(),
            &config.served_model_names,
            config.accept_any_model_name,
        ));
        AppState {
            backend,
            stores,
            config: Arc::new(config),
            webhooks,
            locality,
            auth,
            queue_slots: Arc::default(),
            served,
        }
    }
}
