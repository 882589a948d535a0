//! Phase 2 of the test plan (`TestOpenAIV1Score`): `POST /v1/score` over HTTP against a real
//! server — `scorer::roles::serve`, what `scorer serve` runs — on a random port, over the real
//! RabbitMQ, Redis and Postgres (each server in its own namespace), scoring with the default
//! Qwen model. The engine is loaded once for the binary and shared by every server.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use scorer_api::{ServiceConfig, StoreUrls};
use scorer_engine::runtime::Engine;
use scorer_jobs::{AmqpQueue, AmqpTopology};
use scorer_protocol::ScoreBackend;
use scorer_worker::WorkerConfig;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn real_services() -> StoreUrls {
    StoreUrls {
        amqp_url: Some(env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
        redis_url: Some(env_or("REDIS_URL", "redis://127.0.0.1:6379")),
        database_url: Some(env_or(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        )),
    }
}

async fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    tokio::task::spawn_blocking(|| ENGINE.get_or_init(|| Arc::new(load(QWEN, |_| {}))).clone())
        .await
        .expect("engine loader")
}

struct Server {
    base: String,
    http: reqwest::Client,
    engine: Arc<Engine>,
    namespace: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// `serve` (API + worker) on a free port. The port is found by binding port 0 and is handed
    /// to `serve`; if another process takes it in between, `serve` fails and we try another.
    async fn start() -> Server {
        let engine = engine().await;
        for _ in 0..5 {
            let addr: SocketAddr = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                probe.local_addr().expect("addr")
            };
            let namespace = format!("tp-{}", uuid::Uuid::new_v4().simple());
            let config = ServiceConfig {
                listen: addr,
                stores: real_services(),
                namespace: namespace.clone(),
                ..ServiceConfig::default()
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(scorer::roles::serve(
                config,
                WorkerConfig::default(),
                engine.clone(),
                async {
                    let _ = stopped.await;
                },
            ));
            let server = Server {
                base: format!("http://{addr}"),
                http: reqwest::Client::new(),
                engine: engine.clone(),
                namespace,
                stop: Some(stop),
                task,
            };
            if server.wait_healthy().await {
                return server;
            }
            let _ = server.task.await;
        }
        panic!("the server did not come up on any of 5 ports");
    }

    async fn wait_healthy(&self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            if self.task.is_finished() {
                return false;
            }
            let health = self.http.get(format!("{}/health", self.base)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not answer /health within 60 s");
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request");
        read(resp).await
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        read(resp).await
    }

    /// What the engine itself answers for `body`.
    async fn direct(&self, body: &Value) -> Value {
        let engine = self.engine.clone();
        let request = req(body.clone());
        let resp = tokio::task::spawn_blocking(move || engine.score(&request))
            .await
            .expect("join")
            .expect("engine scores");
        serde_json::to_value(resp).expect("json")
    }

    /// Stops the server (the worker drains) and deletes this namespace's queues and exchanges.
    async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("server task").expect("server ran");
        let queue = AmqpQueue::connect(
            &real_services().amqp_url.expect("amqp url"),
            AmqpTopology {
                prefix: self.namespace.clone(),
            },
        )
        .await
        .expect("connect for cleanup");
        queue.delete_model(QWEN).await.expect("delete queues");
        queue.delete_exchanges().await.expect("delete exchanges");
    }
}

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// An OpenAI-style error body with this status code.
fn assert_error_body(body: &Value, code: u16, kind: &str) {
    assert_eq!(body["object"], "error", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["param"], Value::Null, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Plan 2.1, the plan's own request: text query, three text items, Yes/No labels, softmax.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_v1_score_text_input() {
    let server = Server::start().await;
    let body = json!({
        "model": QWEN,
        "query": "The capital of France is",
        "items": ["Paris", "London", "Berlin"],
        "label_token_ids": [QWEN_YES, QWEN_NO],
        "apply_softmax": true,
    });
    let (status, data) = server.post("/v1/score", &body).await;
    assert_eq!(status, StatusCode::OK, "{data}");
    assert_eq!(data["object"], "scoring");
    assert_eq!(data["model"], QWEN);
    let scores = matrix(&data["scores"]);
    assert_well_formed(&scores, 3, 2, true);
    assert_eq!(
        data,
        server.direct(&body).await,
        "the server answers what the engine says"
    );

    // `model` may be omitted or "default".
    for model in [json!(null), json!("default")] {
        let mut b = body.clone();
        b["model"] = model;
        let (status, again) = server.post("/v1/score", &b).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["scores"], data["scores"]);
    }
    server.finish().await;
}

/// Plan 2.1: pre-tokenized query and items over HTTP give what the same text gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_v1_score_token_input() {
    let server = Server::start().await;
    let tok = server.engine.tokenizer();
    let query = tok.encode("The capital of France is").expect("encode");
    let items: Vec<Vec<u32>> = [" Paris", " Rome"]
        .iter()
        .map(|s| tok.encode(s).expect("encode"))
        .collect();
    let by_ids = json!({"query": query, "items": items,
        "label_token_ids": [QWEN_YES, QWEN_NO], "apply_softmax": false});
    let (status, data) = server.post("/v1/score", &by_ids).await;
    assert_eq!(status, StatusCode::OK, "{data}");
    assert_well_formed(&matrix(&data["scores"]), 2, 2, false);
    let by_text = json!({"query": "The capital of France is", "items": [" Paris", " Rome"],
        "label_token_ids": [QWEN_YES, QWEN_NO], "apply_softmax": false});
    let (_, text) = server.post("/v1/score", &by_text).await;
    assert!(max_diff(&matrix(&data["scores"]), &matrix(&text["scores"])) <= 1e-6);
    assert_eq!(data["usage"], text["usage"]);
    server.finish().await;
}

/// Plan 2.1: invalid requests get 400 with SGLang's message in an OpenAI-style body (the plan's
/// "422 for validation errors" is FastAPI's status for a body of the wrong shape; SGLang answers
/// its own validation with 400, and so do we for both); an unknown model 404; an empty `items` 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_v1_score_error_handling() {
    let server = Server::start().await;
    for (body, message) in [
        (
            json!({"query": "q", "items": ["a"]}),
            "label_token_ids must be provided",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": []}),
            "must not be empty",
        ),
        (
            json!({"query": "q", "label_token_ids": [1]}),
            "items must be provided",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [-1]}),
            "Token ID -1 is negative",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [999_999]}),
            "Token ID 999999 is out of vocabulary",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [5, 5]}),
            "must be unique",
        ),
        (
            json!({"query": "q", "items": [[1, 2]], "label_token_ids": [1]}),
            "Invalid combination of query/items types",
        ),
        (
            json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1]]}),
            "one list per item",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [1], "temperature": 0}),
            "temperature",
        ),
        (
            json!({"query": 5, "items": ["a"], "label_token_ids": [1]}),
            "invalid request",
        ),
    ] {
        let (status, err) = server.post("/v1/score", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_error_body(&err, 400, "BadRequestError");
        let got = err["message"].as_str().unwrap_or_default();
        assert!(got.contains(message), "{body}: {got}");
    }
    let (status, err) = server.post_raw("/v1/score", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_error_body(&err, 400, "BadRequestError");

    let (status, err) = server
        .post(
            "/v1/score",
            &json!({"model": "no-such-model", "query": "q", "items": ["a"], "label_token_ids": [1]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_error_body(&err, 404, "NotFoundError");

    let (status, ok) = server
        .post(
            "/v1/score",
            &json!({"query": "q", "items": [], "label_token_ids": [1]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    assert_eq!(ok["scores"], json!([]));
    server.finish().await;
}

/// Plan 2.1: `usage` is the prompt tokens actually scored (the sum of each item's query+item
/// token count), no completion tokens, total = prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_v1_score_usage_info() {
    let server = Server::start().await;
    let body = json!({"query": "Is this a fruit? ", "items": ["apple", "a red truck", ""],
        "label_token_ids": [QWEN_YES, QWEN_NO]});
    let (status, data) = server.post("/v1/score", &body).await;
    assert_eq!(status, StatusCode::OK, "{data}");
    let job = server.engine.prepare(&req(body.clone())).expect("prepare");
    let expected: usize = job.prompts.iter().map(Vec::len).sum();
    let tok = server.engine.tokenizer();
    let by_hand: usize = ["apple", "a red truck", ""]
        .iter()
        .map(|i| {
            tok.encode(&format!("Is this a fruit? {i}"))
                .expect("encode")
                .len()
        })
        .sum();
    assert_eq!(expected, by_hand);
    assert_eq!(
        data["usage"],
        json!({"prompt_tokens": expected, "completion_tokens": 0, "total_tokens": expected})
    );
    server.finish().await;
}

/// Plan 2.2: the official OpenAI Python client reaches `/v1/score` through its generic `post`
/// (examples/openai_client.py), gets the same scores the engine gives, and sees a refused request
/// as its own `BadRequestError` carrying our error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_score_with_openai_client() {
    let python = tokio::task::spawn_blocking(|| venv("openai-venv", &["openai"], "import openai"))
        .await
        .expect("venv");
    let server = Server::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/openai_client.py");
    let base_url = format!("{}/v1", server.base);
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--base-url", &base_url, "--model", QWEN])
        .output()
        .await
        .expect("the example runs");
    assert!(
        output.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).expect("the example prints JSON");
    let expected = server
        .direct(&json!({"model": QWEN, "query": "The capital of France is",
            "items": [" Paris", " London", " Berlin"],
            "label_token_ids": [QWEN_YES, QWEN_NO], "apply_softmax": true}))
        .await;
    assert_eq!(out["scored"], expected);
    let chat = server
        .direct(&json!({"model": QWEN, "query_messages": [{"role": "user",
                "content": "Is Paris the capital of France? Answer Yes or No."}],
            "items": [""], "label_token_ids": [QWEN_YES, QWEN_NO], "apply_softmax": true,
            "return_token_logprobs": true}))
        .await;
    assert_eq!(out["chat"]["model"], QWEN, "{out}");
    assert_eq!(out["chat"]["usage"], chat["usage"], "{out}");
    for key in ["scores", "token_logprobs"] {
        let got: Vec<Vec<f64>> = serde_json::from_value(out["chat"][key].clone()).expect(key);
        let want: Vec<Vec<f64>> = serde_json::from_value(chat[key].clone()).expect(key);
        assert_eq!(got.len(), 1, "{out}");
        for (a, b) in got[0].iter().zip(&want[0]) {
            assert!((a - b).abs() <= 1e-6, "{key}: {a} vs {b}");
        }
    }
    assert_eq!(out["refused"]["status"], 400, "{out}");
    assert_eq!(out["refused"]["type"], "BadRequestError", "{out}");
    assert_error_body(&out["refused"]["body"], 400, "BadRequestError");
    server.finish().await;
}
