//! Connecting the queue and the stores a deployment names (each one not named is in-process),
//! and the start-up checks that go with them. Shared by every process role.

use std::sync::Arc;

use anyhow::Context;
use scorer_jobs::{
    AmqpQueue, AmqpTopology, AuditStore, BatchStore, MemoryAuditStore, MemoryBatchStore,
    MemoryQueue, MemoryResultStore, PostgresAuditStore, PostgresBatchStore, PostgresKeyStore,
    RedisResultStore,
};

use crate::{ServiceConfig, Stores};

/// Connects each configured service, and uses the in-process implementation for each one that
/// is not. Postgres migrations are applied on connect.
pub async fn connect_stores(config: &ServiceConfig) -> anyhow::Result<Stores> {
    let urls = &config.stores;
    let queue: Arc<dyn scorer_jobs::JobQueue> = match &urls.amqp_url {
        Some(url) => Arc::new(
            AmqpQueue::connect(
                url,
                AmqpTopology {
                    prefix: config.namespace.clone(),
                },
            )
            .await
            .context("connecting to RabbitMQ")?
            .with_worker_queue_ttl(config.locality.worker_queue_ttl)
            .with_queue_type(config.queue_type, config.queue_delivery_limit),
        ),
        None => Arc::new(MemoryQueue::new()),
    };
    type Results = (
        Arc<dyn scorer_jobs::ResultStore>,
        Arc<dyn scorer_jobs::WorkerRegistry>,
    );
    let (results, workers): Results = match &urls.redis_url {
        Some(url) => {
            let redis = Arc::new(
                RedisResultStore::connect(url, &config.namespace, config.result_ttl)
                    .await
                    .context("connecting to Redis")?,
            );
            (redis.clone(), redis)
        }
        None => {
            let memory = Arc::new(MemoryResultStore::new(config.result_ttl));
            (memory.clone(), memory)
        }
    };
    type Postgres = (
        Arc<dyn AuditStore>,
        Arc<dyn BatchStore>,
        Option<PostgresKeyStore>,
    );
    let (audit, batches, keys): Postgres = match &urls.database_url {
        Some(url) => {
            let store = PostgresAuditStore::connect(url)
                .await
                .context("connecting to Postgres")?;
            store.migrate().await.context("applying migrations")?;
            let batches = PostgresBatchStore::new(store.pool().clone());
            let keys = PostgresKeyStore::new(store.pool().clone());
            (Arc::new(store), Arc::new(batches), Some(keys))
        }
        None => {
            let audit = Arc::new(MemoryAuditStore::new());
            let batches = MemoryBatchStore::new(audit.clone());
            (audit, Arc::new(batches), None)
        }
    };
    anyhow::ensure!(
        !config.auth_required() || keys.is_some() || !config.api_keys.is_empty(),
        "authentication is required but there is nowhere to find keys: give --database-url \
         (keys made with `scorer keys create`) or --api-keys"
    );
    Ok(Stores {
        queue,
        results,
        workers,
        audit,
        batches,
        keys,
    })
}

/// Says at start-up whether callers need keys, so an open deployment is never open by accident.
pub fn announce_auth(config: &ServiceConfig) {
    if config.auth_required() {
        tracing::info!(
            static_keys = config.api_keys.len(),
            postgres_keys = config.stores.database_url.is_some(),
            "authentication required: every /v1 request needs Authorization: Bearer <key>"
        );
    } else {
        tracing::warn!(
            "authentication is off: no API key is asked for and every caller is tenant \
             `default` (set SCORER_AUTH=required to require keys)"
        );
    }
}

/// `scorer migrate`: apply the migrations and exit.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let store = PostgresAuditStore::connect(database_url)
        .await
        .context("connecting to Postgres")?;
    store.migrate().await.context("applying migrations")?;
    Ok(())
}
