//! `cargo bench --bench service_bench -- [flags]`: the embedded service (`scorer serve` with no
//! URLs, started in this process on a free port) against the engine it wraps, on the same rows.
//!
//! - (a) engine: `Engine::prepare` + `score_batch` of N rows (one query + one item each, like a
//!   bulk line) in one call: rows/s.
//! - (b) service: the same N rows as one JSONL upload to `POST /v1/batches`, polled until
//!   `completed`: rows/s; overhead = 1 - b/a.
//! - (c) sync `POST /v1/score` latency, sequential requests of one row, on the idle service and
//!   while a bulk batch backlog is running (cancelled afterwards).
//!
//! Each repeat runs (a), (b), (c) in turn; medians over repeats are reported. docs/BENCHMARKS.md
//! has the commands and the numbers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use scorer::roles::serve;
use scorer_api::ServiceConfig;
use scorer_engine::home;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::{ScoreBackend, ScoreRequest};
use scorer_worker::WorkerConfig;
use serde::Serialize;
use serde_json::{Value, json};

const SMOLLM: &str = "smollm2-135m-instruct-q4_1";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "service_bench",
    about = "Embedded service vs engine: bulk rows/s, sync latency under bulk load"
)]
struct Args {
    /// GGUF file (default: SmolLM2-135M under $SCORER_HOME; --qwen for Qwen2.5-0.5B).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Use the Qwen2.5-Coder-0.5B GGUF under $SCORER_HOME (about 5x slower per token here).
    #[arg(long)]
    qwen: bool,
    /// PJRT plugin (default: the CPU plugin under $SCORER_HOME).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Rows in the throughput runs (a) and (b).
    #[arg(long, default_value_t = 512)]
    rows: usize,
    /// Rows of the bulk backlog running under the loaded sync measurement (cancelled once the
    /// sync requests are done).
    #[arg(long = "backlog-rows", default_value_t = 4096)]
    backlog_rows: usize,
    /// Sequential sync requests per latency measurement.
    #[arg(long = "sync-requests", default_value_t = 50)]
    sync_requests: usize,
    /// Repeats of the whole sequence; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Words of benches/data/query.txt used as every row's query.
    #[arg(long = "query-words", default_value_t = 24)]
    query_words: usize,
    /// Tokens per forward pass (the engine's largest bucket; also the worker's batch budget, as
    /// `scorer serve` sets it).
    #[arg(long = "max-batch-tokens", default_value_t = 2048)]
    max_batch_tokens: usize,
    /// The worker's bulk batch cap (default: the service default).
    #[arg(long = "max-bulk-batch-tokens")]
    max_bulk_batch_tokens: Option<usize>,
    /// The worker's prefetch window (default: the service default).
    #[arg(long)]
    prefetch: Option<u16>,
    /// apply_softmax=true on every row (label-only head); default false, the API default.
    #[arg(long)]
    softmax: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Ignored: `cargo bench` passes `--bench` to harness-less benches.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Rows of one workload: every row is the same query with one product title.
struct Rows {
    query: String,
    items: Vec<String>,
    labels: Vec<u32>,
    softmax: bool,
}

impl Rows {
    fn load(engine: &Engine, args: &Args) -> Result<Rows> {
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/data");
        let query_text = std::fs::read_to_string(data.join("query.txt"))?;
        let query = query_text
            .split_whitespace()
            .take(args.query_words)
            .collect::<Vec<_>>()
            .join(" ");
        let items: Vec<String> = std::fs::read_to_string(data.join("items.txt"))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|title| format!("\nProduct: {title}\nRelevant:"))
            .collect();
        ensure!(!items.is_empty(), "benches/data/items.txt has no items");
        let mut labels = Vec::new();
        for word in [" Yes", " No"] {
            match engine.tokenizer().encode(word)?.as_slice() {
                [id] => labels.push(*id),
                ids => bail!("{word:?} is {} tokens in this vocabulary", ids.len()),
            }
        }
        Ok(Rows {
            query,
            items,
            labels,
            softmax: args.softmax,
        })
    }

    /// Row `i`'s request body (items cycle through the catalogue).
    fn body(&self, i: usize) -> Value {
        json!({
            "query": self.query,
            "items": [self.items[i % self.items.len()]],
            "label_token_ids": self.labels,
            "apply_softmax": self.softmax,
        })
    }

    fn jsonl(&self, n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| json!({"custom_id": format!("{tag}-{i}"), "body": self.body(i)}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Debug, Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
}

/// Nearest-rank percentile of sorted samples.
fn rank(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

impl Latency {
    fn of(samples_ms: &[f64]) -> Latency {
        let mut v = samples_ms.to_vec();
        v.sort_by(f64::total_cmp);
        Latency {
            p50_ms: rank(&v, 0.5),
            p99_ms: rank(&v, 0.99),
            mean_ms: v.iter().sum::<f64>() / v.len().max(1) as f64,
            max_ms: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians over the repeats (each field on its own: the ratios are medians of per-repeat ratios).
#[derive(Debug, Serialize)]
struct Summary {
    engine_rows_per_s: f64,
    service_rows_per_s: f64,
    overhead: f64,
    sync_idle_p50_ms: f64,
    sync_idle_p99_ms: f64,
    sync_loaded_p50_ms: f64,
    sync_loaded_p99_ms: f64,
    p50_ratio: f64,
    p99_ratio: f64,
    backlog_rows_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Repeat {
    engine_rows_per_s: f64,
    service_rows_per_s: f64,
    overhead: f64,
    sync_idle: Latency,
    sync_loaded: Latency,
    p50_ratio: f64,
    p99_ratio: f64,
    /// Backlog rows completed while the loaded sync requests ran, and their rate.
    backlog_rows_done: u64,
    backlog_rows_per_s: f64,
}

/// The service under test, reached over HTTP.
struct Service {
    base: String,
    http: reqwest::Client,
}

impl Service {
    async fn post(&self, path: &str, body: reqwest::Body, json_body: bool) -> Result<Value> {
        let ctype = if json_body {
            "application/json"
        } else {
            "application/jsonl"
        };
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status.is_success(), "POST {path}: {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status.is_success(), "GET {path}: {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    async fn submit_batch(&self, jsonl: String) -> Result<String> {
        let batch = self.post("/v1/batches", jsonl.into(), false).await?;
        batch["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no batch id in {batch}"))
    }

    /// Polls until the batch is in a final state; returns it.
    async fn wait_batch(&self, id: &str) -> Result<Value> {
        loop {
            let b = self.get(&format!("/v1/batches/{id}")).await?;
            match b["status"].as_str() {
                Some("completed" | "failed" | "cancelled" | "expired") => return Ok(b),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Sequential sync requests; latency of each in ms.
    async fn sync_latencies(&self, rows: &Rows, n: usize, offset: usize) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let body = rows.body(offset + i).to_string();
            let t = Instant::now();
            let resp = self.post("/v1/score", body.into(), true).await?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(resp["scores"].is_array(), "unexpected answer {resp}");
        }
        Ok(out)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(resp) = self.http.get(format!("{}/ready", self.base)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the service did not become ready within 60 s")
    }
}

/// (a): prepare and score every row on the engine in one call.
async fn direct(engine: &Arc<Engine>, rows: &Rows, n: usize) -> Result<f64> {
    let requests: Vec<ScoreRequest> = (0..n)
        .map(|i| serde_json::from_value(rows.body(i)))
        .collect::<Result<_, _>>()?;
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || -> Result<f64> {
        let t = Instant::now();
        let jobs = requests
            .iter()
            .map(|r| engine.prepare(r))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = engine.score_batch(&jobs)?;
        let elapsed = t.elapsed().as_secs_f64();
        for o in outputs {
            o?;
        }
        Ok(n as f64 / elapsed)
    })
    .await?
}

/// (b): the same rows through the batches API, upload to `completed`.
async fn through_batches(service: &Service, rows: &Rows, n: usize, tag: &str) -> Result<f64> {
    let jsonl = rows.jsonl(n, tag);
    let t = Instant::now();
    let id = service.submit_batch(jsonl).await?;
    let done = service.wait_batch(&id).await?;
    let elapsed = t.elapsed().as_secs_f64();
    ensure!(
        done["status"] == "completed" && done["request_counts"]["completed"] == n,
        "batch did not complete every row: {done}"
    );
    Ok(n as f64 / elapsed)
}

/// (c) under load: sync requests while a backlog batch runs; then the backlog is cancelled.
async fn loaded_sync(
    service: &Service,
    rows: &Rows,
    args: &Args,
    tag: &str,
) -> Result<(Vec<f64>, u64, f64)> {
    let id = service
        .submit_batch(rows.jsonl(args.backlog_rows, tag))
        .await?;
    let t = Instant::now();
    let latencies = service
        .sync_latencies(rows, args.sync_requests, 1000)
        .await?;
    let elapsed = t.elapsed().as_secs_f64();
    let b = service.get(&format!("/v1/batches/{id}")).await?;
    let done = b["request_counts"]["completed"].as_u64().unwrap_or(0);
    if b["status"] != "completed" {
        service
            .post(&format!("/v1/batches/{id}/cancel"), "".into(), true)
            .await?;
    } else {
        eprintln!(
            "    warning: the backlog finished before the sync requests; raise --backlog-rows"
        );
    }
    service.wait_batch(&id).await?;
    Ok((latencies, done, done as f64 / elapsed))
}

fn engine_config(args: &Args) -> EngineConfig {
    let path = args
        .model
        .clone()
        .unwrap_or_else(|| home::model_file(if args.qwen { QWEN } else { SMOLLM }));
    let mut cfg = EngineConfig::new(path, "bench".into());
    if let Some(p) = &args.plugin {
        cfg.plugin_path = p.clone();
    }
    cfg.max_batch_tokens = args.max_batch_tokens;
    // Compiled programs are reused across runs; the bench measures serving, not compiling.
    cfg.compile_cache = Some(home::executable_cache());
    cfg
}

fn service_config(args: &Args) -> Result<(ServiceConfig, WorkerConfig)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cfg = ServiceConfig {
        listen: ([127, 0, 0, 1], port).into(),
        namespace: format!("bench-{port}"),
        ..ServiceConfig::default()
    };
    // As `scorer serve` sets it: a worker batch is at most one forward pass.
    let mut worker = WorkerConfig {
        max_batch_tokens: args.max_batch_tokens,
        ..WorkerConfig::default()
    };
    if let Some(t) = args.max_bulk_batch_tokens {
        worker.max_bulk_batch_tokens = t;
    }
    if let Some(p) = args.prefetch {
        worker.prefetch = p;
    }
    // Backlog lines wait in the queue; the default 5,000 already lets the whole backlog in.
    cfg.batches.queue_high_water = cfg.batches.queue_high_water.max(args.backlog_rows as u64);
    Ok((cfg, worker))
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let ecfg = engine_config(&args);
    eprintln!("loading {} ...", ecfg.model_path.display());
    let engine = Arc::new(Engine::load(ecfg.clone())?);
    let rows = Rows::load(&engine, &args)?;
    let (config, worker) = service_config(&args)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args, ecfg, engine, rows, config, worker))
}

async fn run(
    args: Args,
    ecfg: EngineConfig,
    engine: Arc<Engine>,
    rows: Rows,
    config: ServiceConfig,
    worker: WorkerConfig,
) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        config.clone(),
        worker.clone(),
        engine.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let service = Service {
        base: format!("http://{}", config.listen),
        http: reqwest::Client::new(),
    };
    service.wait_ready().await?;

    eprintln!("warm-up (compiles the buckets the runs use, cached on disk) ...");
    direct(&engine, &rows, args.rows).await?;
    through_batches(&service, &rows, args.rows.min(256), "warm").await?;
    service.sync_latencies(&rows, 3, 0).await?;

    let mut repeats = Vec::new();
    for r in 0..args.repeats {
        eprintln!("repeat {} of {}", r + 1, args.repeats);
        let a = direct(&engine, &rows, args.rows).await?;
        eprintln!("  (a) engine        {a:8.1} rows/s");
        let b = through_batches(&service, &rows, args.rows, &format!("r{r}")).await?;
        eprintln!(
            "  (b) /v1/batches   {b:8.1} rows/s  overhead {:5.1} %",
            (1.0 - b / a) * 100.0
        );
        let idle = Latency::of(&service.sync_latencies(&rows, args.sync_requests, 0).await?);
        eprintln!(
            "  (c) sync idle     p50 {:7.1} ms  p99 {:7.1} ms",
            idle.p50_ms, idle.p99_ms
        );
        let (loaded, done, rate) = loaded_sync(&service, &rows, &args, &format!("bl{r}")).await?;
        let loaded = Latency::of(&loaded);
        eprintln!(
            "  (c) sync loaded   p50 {:7.1} ms  p99 {:7.1} ms  (backlog {done} rows done, {rate:.1} rows/s)",
            loaded.p50_ms, loaded.p99_ms
        );
        repeats.push(Repeat {
            engine_rows_per_s: a,
            service_rows_per_s: b,
            overhead: 1.0 - b / a,
            p50_ratio: loaded.p50_ms / idle.p50_ms,
            p99_ratio: loaded.p99_ms / idle.p99_ms,
            sync_idle: idle,
            sync_loaded: loaded,
            backlog_rows_done: done,
            backlog_rows_per_s: rate,
        });
    }
    let _ = stop_tx.send(());
    server.await??;

    let med = |f: fn(&Repeat) -> f64| median(&repeats.iter().map(f).collect::<Vec<_>>());
    let summary = Summary {
        engine_rows_per_s: med(|r| r.engine_rows_per_s),
        service_rows_per_s: med(|r| r.service_rows_per_s),
        overhead: med(|r| r.overhead),
        sync_idle_p50_ms: med(|r| r.sync_idle.p50_ms),
        sync_idle_p99_ms: med(|r| r.sync_idle.p99_ms),
        sync_loaded_p50_ms: med(|r| r.sync_loaded.p50_ms),
        sync_loaded_p99_ms: med(|r| r.sync_loaded.p99_ms),
        p50_ratio: med(|r| r.p50_ratio),
        p99_ratio: med(|r| r.p99_ratio),
        backlog_rows_per_s: med(|r| r.backlog_rows_per_s),
    };
    let s = &summary;
    println!("\nmedians over {} repeats:", repeats.len());
    println!(
        "  (a) engine {:.1} rows/s | (b) /v1/batches {:.1} rows/s | overhead {:.1} %",
        s.engine_rows_per_s,
        s.service_rows_per_s,
        s.overhead * 100.0
    );
    println!(
        "  (c) sync p50 {:.1} -> {:.1} ms ({:.2}x), p99 {:.1} -> {:.1} ms ({:.2}x) under a bulk \
         backlog ({:.1} rows/s)",
        s.sync_idle_p50_ms,
        s.sync_loaded_p50_ms,
        s.p50_ratio,
        s.sync_idle_p99_ms,
        s.sync_loaded_p99_ms,
        s.p99_ratio,
        s.backlog_rows_per_s
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "bench": "service_bench",
            "unix_time": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
            "model": ecfg.model_path,
            "rows": args.rows,
            "backlog_rows": args.backlog_rows,
            "sync_requests": args.sync_requests,
            "query_words": args.query_words,
            "apply_softmax": args.softmax,
            "max_batch_tokens": args.max_batch_tokens,
            "worker_prefetch": worker.prefetch,
            "worker_max_batch_tokens": worker.max_batch_tokens,
            "worker_max_bulk_batch_tokens": worker.max_bulk_batch_tokens,
            "worker_max_wait_ms": worker.max_wait.as_millis() as u64,
            "summary": summary,
            "repeats": repeats,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
