//! Process roles: what `scorer serve`, `scorer api`, `scorer worker` and `scorer migrate` run.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use scorer_jobs::webhook::WebhookSender;
use scorer_jobs::{
    AmqpQueue, AmqpTopology, AuditStore, BatchStore, MemoryAuditStore, MemoryBatchStore,
    MemoryQueue, MemoryResultStore, PostgresAuditStore, PostgresBatchStore, PostgresKeyStore,
    RedisResultStore,
};
use scorer_protocol::ScoreBackend;
use scorer_worker::Worker;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{AppState, ServiceConfig, Stores, build_app};

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
            .with_worker_queue_ttl(config.locality.worker_queue_ttl),
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
            let audit: Arc<dyn AuditStore> = Arc::new(MemoryAuditStore::new());
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
fn announce_auth(config: &ServiceConfig) {
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

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server")
}

fn worker(config: &ServiceConfig, stores: &Stores, backend: Arc<dyn ScoreBackend>) -> Worker {
    Worker {
        queue: stores.queue.clone(),
        results: stores.results.clone(),
        registry: stores.workers.clone(),
        audit: stores.audit.clone(),
        backend,
        webhooks: WebhookSender::new(
            config.webhook_attempts,
            config.webhook_backoff,
            std::time::Duration::from_secs(10),
        ),
        config: config.worker.clone(),
    }
}

/// `scorer serve`: the API and a worker in one process. With no URLs configured the queue and
/// stores are in-process (embedded mode); each configured URL swaps in the real service. On
/// shutdown the HTTP server stops first, then the worker drains its batch.
pub async fn serve(
    config: ServiceConfig,
    backend: Arc<dyn ScoreBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stores = connect_stores(&config).await?;
    announce_auth(&config);
    stores.queue.declare(backend.model_id()).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(worker(&config, &stores, backend.clone()).run(stop_rx));
    let app = build_app(AppState::new(backend, stores, config)).await;
    let served = serve_app(listener, app, shutdown).await;
    let _ = stop_tx.send(true);
    match worker.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "worker failed"),
        Err(e) => tracing::error!(error = %e, "worker task failed"),
    }
    served
}

fn require_all(config: &ServiceConfig, role: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.stores.all(),
        "`scorer {role}` is the distributed deployment: it needs --amqp-url, --redis-url and \
         --database-url (use `scorer serve` for the embedded mode)"
    );
    Ok(())
}

/// `scorer api`: the HTTP API alone, over RabbitMQ, Redis and Postgres. It holds the tokenizer
/// (through the backend's `prepare`), so workers receive token ids.
pub async fn run_api(
    config: ServiceConfig,
    backend: Arc<dyn ScoreBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    require_all(&config, "api")?;
    let stores = connect_stores(&config).await?;
    announce_auth(&config);
    stores.queue.declare(backend.model_id()).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let app = build_app(AppState::new(backend, stores, config)).await;
    serve_app(listener, app, shutdown).await
}

/// `scorer worker`: consume the backend's model queue until `shutdown`, then drain.
pub async fn run_worker(
    config: ServiceConfig,
    backend: Arc<dyn ScoreBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    require_all(&config, "worker")?;
    let stores = connect_stores(&config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    worker(&config, &stores, backend).run(stop_rx).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
