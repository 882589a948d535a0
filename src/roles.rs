//! Process roles, composed here in the binary so that the API crate knows nothing of workers:
//! - [`serve`]: the API and a worker in one process over one engine; with no broker or store URL
//!   configured everything is in-process (embedded mode);
//! - [`run_api`]: the HTTP API alone over RabbitMQ, Redis and Postgres. It holds a
//!   [`Preparer`] (tokenizer and model metadata; `scorer api` loads no weights);
//! - [`run_worker`]: workers alone, one per device, each holding that device's engine.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
pub use scorer_api::shutdown_signal;
use scorer_api::{
    AppState, ServiceConfig, Stores, announce_auth, build_app, connect_stores, serve_app,
};
use scorer_jobs::webhook::WebhookSender;
use scorer_protocol::{Preparer, ScoreBackend};
use scorer_worker::{Worker, WorkerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn worker(
    config: &ServiceConfig,
    worker: WorkerConfig,
    stores: &Stores,
    backend: Arc<dyn ScoreBackend>,
) -> Worker {
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
        config: worker,
    }
}

/// `scorer serve`: the API and a worker in one process. With no URLs configured the queue and
/// stores are in-process (embedded mode); each configured URL swaps in the real service. On
/// shutdown the HTTP server stops first, then the worker drains its batch.
pub async fn serve<B: ScoreBackend>(
    config: ServiceConfig,
    worker_config: WorkerConfig,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stores = connect_stores(&config).await?;
    announce_auth(&config);
    stores
        .queue
        .declare(ScoreBackend::model_id(&*backend))
        .await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // A worker that ends on its own has failed (its engine died): stop serving too, so the
    // process exits non-zero and its supervisor restarts it, instead of accepting jobs that
    // nothing will run.
    let (died_tx, died_rx) = tokio::sync::oneshot::channel::<()>();
    let running = worker(&config, worker_config, &stores, backend.clone());
    let worker = tokio::spawn(async move {
        let result = running.run(stop_rx).await;
        if result.is_err() {
            let _ = died_tx.send(());
        }
        result
    });
    let http = config.http.clone();
    let app = build_app(AppState::new(backend, stores, config)).await;
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            Ok(()) = died_rx => tracing::error!("the worker stopped: shutting the API down"),
        }
    };
    let served = serve_app(listener, app, http, stop).await;
    let _ = stop_tx.send(true);
    match worker.await {
        Ok(Ok(())) => served,
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("worker failed")),
        Err(e) => Err(anyhow::Error::new(e).context("worker task failed")),
    }
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
/// and the model's metadata (`preparer`), so workers receive token ids; no weights.
pub async fn run_api(
    config: ServiceConfig,
    backend: Arc<dyn Preparer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    require_all(&config, "api")?;
    let stores = connect_stores(&config).await?;
    announce_auth(&config);
    stores.queue.declare(backend.model_id()).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let http = config.http.clone();
    let app = build_app(AppState::new(backend, stores, config)).await;
    serve_app(listener, app, http, shutdown).await
}

/// One device's backend for [`run_worker`].
pub struct DeviceBackend {
    /// The device's index among the plugin's addressable devices (names the worker).
    pub device: usize,
    pub backend: Arc<dyn ScoreBackend>,
}

/// `scorer worker`: one worker per backend (one per device with `--devices`), each consuming the
/// model's queue until `shutdown`, then draining. With several backends each worker is named
/// `<worker id>-dev<device>`, so each has its own queue and entry in the live set, and the API
/// steers a prefix to the device whose cache holds it. A worker that stops on its own (its
/// engine died) stops the others too, and the process fails, so its supervisor restarts it
/// whole.
pub async fn run_worker(
    config: ServiceConfig,
    worker_config: WorkerConfig,
    backends: Vec<DeviceBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    require_all(&config, "worker")?;
    anyhow::ensure!(!backends.is_empty(), "a worker needs at least one device");
    let stores = connect_stores(&config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stop = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let several = backends.len() > 1;
    let mut running = tokio::task::JoinSet::new();
    for DeviceBackend { device, backend } in backends {
        let mut one = worker_config.clone();
        if several {
            one.worker_id = format!("{}-dev{device}", worker_config.worker_id);
        }
        running.spawn(worker(&config, one, &stores, backend).run(stop_rx.clone()));
    }
    let mut failed = None;
    while let Some(done) = running.join_next().await {
        let result = match done {
            Ok(result) => result.map_err(|e| anyhow::Error::new(e).context("worker failed")),
            Err(e) => Err(anyhow::Error::new(e).context("worker task failed")),
        };
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "a worker stopped: stopping the others");
            let _ = stop_tx.send(true);
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(()), Err)
}
