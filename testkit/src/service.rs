//! A service under test: the real engine (SmolLM2-135M), the API on a random port, workers
//! started and stopped (or killed) at will, over either the real RabbitMQ/Redis/Postgres (each
//! test in its own namespace) or the in-process queue and stores.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use scorer_api::{
    AppState, ServiceConfig, StoreUrls, Stores, build_app, connect_stores, serve_app,
};
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_jobs::webhook::WebhookSender;
use scorer_jobs::{AmqpQueue, AmqpTopology};
use scorer_worker::{Worker, WorkerConfig};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const MODEL: &str = "smollm2-135m-instruct-q4_1";

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// One engine per test binary: loading it is the slow part, and it is shared like a real
/// deployment shares it between the API (tokenizer) and the worker (device).
pub async fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    tokio::task::spawn_blocking(|| ENGINE.get_or_init(|| Arc::new(load_engine())).clone())
        .await
        .expect("engine loader")
}

/// A fresh engine of [`MODEL`] (blocking), for a test that must not share the binary's one.
pub fn load_engine() -> Engine {
    let path = scorer_engine::home::model_file(MODEL);
    Engine::load(EngineConfig::new(path, MODEL.to_string()))
        .expect("engine loads (run `scorer fetch` first)")
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backing {
    /// RabbitMQ, Redis and Postgres.
    Real,
    /// The embedded mode's in-process queue and stores.
    InProcess,
}

pub struct RunningWorker {
    pub id: String,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<Result<(), scorer_worker::WorkerError>>>,
}

/// The API's settings and the workers' (which the API crate does not know of); derefs to the
/// API's, so a test tweaks either as `c.max_queue_depth` or `c.worker.prefetch`.
#[derive(Clone)]
pub struct TestConfig {
    pub service: ServiceConfig,
    pub worker: WorkerConfig,
}

impl Deref for TestConfig {
    type Target = ServiceConfig;
    fn deref(&self) -> &ServiceConfig {
        &self.service
    }
}

impl DerefMut for TestConfig {
    fn deref_mut(&mut self) -> &mut ServiceConfig {
        &mut self.service
    }
}

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub stores: Stores,
    pub config: TestConfig,
    pub engine: Arc<Engine>,
    pub backing: Backing,
    server: JoinHandle<anyhow::Result<()>>,
    workers: Vec<RunningWorker>,
}

pub fn real_urls() -> StoreUrls {
    StoreUrls {
        amqp_url: Some(amqp_url()),
        redis_url: Some(redis_url()),
        database_url: Some(database_url()),
    }
}

impl Harness {
    pub async fn start(backing: Backing, tweak: impl FnOnce(&mut TestConfig)) -> Harness {
        Self::start_on(engine().await, backing, tweak).await
    }

    /// [`Harness::start`] over `engine` instead of the binary's shared one (an engine loaded with
    /// other settings, e.g. a rerank template); its model id must be [`MODEL`].
    pub async fn start_on(
        engine: Arc<Engine>,
        backing: Backing,
        tweak: impl FnOnce(&mut TestConfig),
    ) -> Harness {
        let service = ServiceConfig {
            namespace: format!("test-{}", uuid::Uuid::new_v4().simple()),
            stores: match backing {
                Backing::Real => real_urls(),
                Backing::InProcess => StoreUrls::default(),
            },
            ..ServiceConfig::default()
        };
        let mut config = TestConfig {
            service,
            worker: WorkerConfig::default(),
        };
        config.worker.heartbeat_interval = Duration::from_millis(200);
        config.worker_liveness = Duration::from_secs(2);
        config.webhook_backoff = Duration::from_millis(100);
        config.batches.sweep_interval = Duration::from_millis(100);
        tweak(&mut config);
        let stores = connect_stores(&config).await.expect("stores connect");
        stores.queue.declare(MODEL).await.expect("declare");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = build_app(AppState::new(
            engine.clone(),
            stores.clone(),
            config.service.clone(),
        ))
        .await;
        let server = tokio::spawn(serve_app(
            listener,
            app,
            config.http.clone(),
            std::future::pending(),
        ));
        Harness {
            base,
            http: reqwest::Client::new(),
            stores,
            config,
            engine,
            backing,
            server,
            workers: Vec::new(),
        }
    }

    /// Starts a worker; returns its index.
    pub fn start_worker(&mut self) -> usize {
        let id = format!("worker-{}", self.workers.len());
        let mut config = self.config.worker.clone();
        config.worker_id = id.clone();
        let worker = Worker {
            queue: self.stores.queue.clone(),
            results: self.stores.results.clone(),
            registry: self.stores.workers.clone(),
            audit: self.stores.audit.clone(),
            backend: self.engine.clone(),
            webhooks: WebhookSender::new(3, Duration::from_millis(100), Duration::from_secs(5)),
            config,
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(worker.run(rx));
        self.workers.push(RunningWorker {
            id,
            stop: Some(stop),
            task: Some(task),
        });
        self.workers.len() - 1
    }

    /// Graceful stop: the worker drains what it holds.
    pub async fn stop_worker(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if let Some(stop) = w.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = w.task.take() {
            task.await.expect("worker task").expect("worker ran");
        }
    }

    /// A crash: the worker vanishes mid-whatever, its connection with it.
    pub async fn kill_worker(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if let Some(task) = w.task.take() {
            task.abort();
            let _ = task.await;
        }
        w.stop.take();
    }

    pub fn worker_id(&self, i: usize) -> &str {
        &self.workers[i].id
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, HeaderMap, Value) {
        self.post_with(path, body, &[]).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        answer(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        answer(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// Polls a job until `done` says so (or panics after `within`).
    pub async fn wait_job(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, _, job) = self.get(&format!("/v1/score/jobs/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if done(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not get there in {within:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_job(id, Duration::from_secs(120), |j| {
            matches!(
                j["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "expired")
            )
        })
        .await
    }

    /// The locality key the API computes for `body` (the engine's tokenizer, as the API uses
    /// it); `None` when its shared prefix is too short to be steered.
    pub fn locality_key(&self, body: &Value) -> Option<u64> {
        let req: scorer_protocol::ScoreRequest =
            serde_json::from_value(body.clone()).expect("request");
        let job =
            scorer_protocol::ScoreBackend::prepare(self.engine.as_ref(), &req).expect("prepares");
        scorer_protocol::job::locality_key(&job)
    }

    /// Submits `body` as an async job (`202`); returns its id.
    pub async fn submit(&self, body: &Value) -> uuid::Uuid {
        let (status, _, job) = self.post("/v1/score/jobs", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        uuid::Uuid::parse_str(job["id"].as_str().expect("id")).expect("uuid")
    }

    /// The workers of [`MODEL`] heard from within the liveness window.
    pub async fn live_workers(&self) -> Vec<String> {
        self.stores
            .workers
            .live_model_workers(MODEL, self.config.worker_liveness)
            .await
            .expect("live workers")
    }

    /// Waits until `n` workers of [`MODEL`] beat, and the API's cached live set (refreshed every
    /// `locality.refresh`) has had time to see them; returns their ids. Workers started from
    /// another process count too.
    pub async fn wait_live(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let live = self.live_workers().await;
            if live.len() == n {
                tokio::time::sleep(self.config.locality.refresh * 3).await;
                return live;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} live workers not seen in {within:?}: {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker recorded in the audit row of a job once it succeeded, and its attempts.
    pub async fn ran_on(&self, id: uuid::Uuid) -> (String, i32) {
        let job = self.wait_terminal(&id.to_string()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let row = self
            .stores
            .audit
            .get(id)
            .await
            .expect("audit")
            .expect("row");
        (row.worker.expect("a worker ran it"), row.attempts)
    }

    /// Stops everything and removes this test's broker objects.
    pub async fn finish(mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i).await;
        }
        self.server.abort();
        if self.backing == Backing::Real {
            let q = AmqpQueue::connect(
                &amqp_url(),
                AmqpTopology {
                    prefix: self.config.namespace.clone(),
                },
            )
            .await
            .expect("connect for cleanup");
            for w in &self.workers {
                q.delete_worker_queue(MODEL, &w.id)
                    .await
                    .expect("cleanup worker queue");
            }
            q.delete_model(MODEL).await.expect("cleanup queues");
            q.delete_exchanges().await.expect("cleanup exchanges");
        }
    }
}

async fn answer(resp: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

/// A query with items whose scores are easy to tell apart, Yes/No-style labels of this vocabulary.
pub fn score_body() -> Value {
    serde_json::json!({
        "query": "Is the following a fruit? Answer yes or no.",
        "items": [" apple", " truck", " pear"],
        "label_token_ids": [10539, 5230],
        "apply_softmax": true
    })
}

/// What the engine says for `body`, called directly (no service in between).
pub async fn direct(engine: &Arc<Engine>, body: &Value) -> Value {
    let engine = engine.clone();
    let req = serde_json::from_value(body.clone()).expect("request");
    let resp = tokio::task::spawn_blocking(move || engine.score(&req))
        .await
        .expect("join")
        .expect("engine scores");
    serde_json::to_value(resp).expect("json")
}

/// Two scoring responses agree: same shape, model and usage, scores within 1e-6 (the engine may
/// batch a job with others, which can move the last bits).
pub fn assert_same_scores(got: &Value, want: &Value) {
    assert_same_scores_of(got, want, "response");
}

/// [`assert_same_scores`], naming what is compared in the failure message.
pub fn assert_same_scores_of(got: &Value, want: &Value, what: &str) {
    assert_eq!(got["model"], want["model"], "{what}: {got} vs {want}");
    assert_eq!(got["usage"], want["usage"], "{what}: {got} vs {want}");
    assert_eq!(got["object"], want["object"], "{what}: {got} vs {want}");
    let rows = |v: &Value| -> Vec<Vec<f64>> {
        serde_json::from_value(v["scores"].clone()).expect("scores")
    };
    let (g, w) = (rows(got), rows(want));
    assert_eq!(g.len(), w.len(), "{what}: {got} vs {want}");
    for (gr, wr) in g.iter().zip(&w) {
        assert_eq!(gr.len(), wr.len(), "{what}: {got} vs {want}");
        for (a, b) in gr.iter().zip(wr) {
            // The worker may batch this job with others: the packed pass changes f32 summation
            // order (~2e-6 seen). 1e-4 is the project's packed-vs-per-item bar.
            assert!((a - b).abs() <= 1e-4, "{what}: {got} vs {want}");
        }
    }
}
