//! What every handler shares.

use std::sync::Arc;

use scorer_jobs::webhook::WebhookSender;
use scorer_jobs::{AuditStore, BatchStore, JobQueue, PostgresKeyStore, ResultStore};
use scorer_protocol::ScoreBackend;

use crate::ServiceConfig;
use crate::auth::Authenticator;

/// The queue and the stores, real or in-process.
#[derive(Clone)]
pub struct Stores {
    pub queue: Arc<dyn JobQueue>,
    pub results: Arc<dyn ResultStore>,
    pub audit: Arc<dyn AuditStore>,
    /// Batches; their lines are jobs in `audit`.
    pub batches: Arc<dyn BatchStore>,
    /// API keys made with `scorer keys`; only with Postgres.
    pub keys: Option<PostgresKeyStore>,
}

#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn ScoreBackend>,
    pub stores: Stores,
    pub config: Arc<ServiceConfig>,
    pub webhooks: WebhookSender,
    pub auth: Arc<Authenticator>,
}

impl AppState {
    pub fn new(backend: Arc<dyn ScoreBackend>, stores: Stores, config: ServiceConfig) -> Self {
        let webhooks = WebhookSender::new(
            config.webhook_attempts,
            config.webhook_backoff,
            std::time::Duration::from_secs(10),
        );
        let auth = Arc::new(Authenticator::new(&config, stores.keys.clone()));
        AppState {
            backend,
            stores,
            config: Arc::new(config),
            webhooks,
            auth,
        }
    }
}
