//! `cargo bench --bench sync_overhead -- [flags]`: what the distributed path adds to a tiny sync
//! `/v1/score` request. Two services run in this process over ONE engine:
//!
//! - embedded: `scorer serve` with no URLs (in-process queue and stores);
//! - distributed: the same roles over RabbitMQ, Redis and PostgreSQL (`AMQP_URL`, `REDIS_URL`,
//!   `DATABASE_URL`): acceptance row, broker publish with confirm, worker consume, Redis result
//!   and pub/sub answer, exactly the path of `scorer api` + `scorer worker`.
//!
//! Requests alternate between the two (so load and thermal noise fall on both alike); p50/p99 of
//! each and the per-pair difference are reported. The engine time is the same on both sides, so
//! the difference is the service's overhead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use scorer::roles::serve;
use scorer_api::{ServiceConfig, StoreUrls};
use scorer_engine::home;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_worker::WorkerConfig;
use serde_json::{Value, json};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "sync_overhead",
    about = "Tiny sync requests: distributed minus embedded"
)]
struct Args {
    /// Model under $SCORER_HOME.
    #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
    model: String,
    /// Request pairs (one embedded, one distributed each).
    #[arg(long, default_value_t = 60)]
    requests: usize,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut ecfg = EngineConfig::new(home::model_file(&args.model), "bench".into());
    ecfg.compile_cache = Some(home::executable_cache());
    eprintln!("loading {} ...", ecfg.model_path.display());
    let engine = Arc::new(Engine::load(ecfg)?);
    tokio::runtime::Runtime::new()?.block_on(run(args, engine))
}

async fn run(args: Args, engine: Arc<Engine>) -> Result<()> {
    ensure!(args.requests > 0, "--requests must be at least 1");
    let embedded = ServiceConfig {
        listen: ([127, 0, 0, 1], free_port()?).into(),
        ..ServiceConfig::default()
    };
    let port = free_port()?;
    let distributed = ServiceConfig {
        listen: ([127, 0, 0, 1], port).into(),
        namespace: format!("bench-sync-{port}"),
        stores: StoreUrls {
            amqp_url: Some(env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
            redis_url: Some(env("REDIS_URL", "redis://127.0.0.1:6379")),
            database_url: Some(env(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            )),
        },
        ..ServiceConfig::default()
    };
    let http = reqwest::Client::new();
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    for cfg in [&embedded, &distributed] {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        servers.push(tokio::spawn(serve(
            cfg.clone(),
            WorkerConfig::default(),
            engine.clone(),
            async {
                let _ = rx.await;
            },
        )));
        wait_ready(&http, cfg).await?;
    }
    let body = json!({
        "query": "Is the following a fruit? Answer yes or no.",
        "items": [" Banana"],
        "label_token_ids": [9, 10],
        "apply_softmax": true,
    });
    // Warm-up: compiles the bucket, opens every connection.
    for _ in 0..5 {
        time(&http, &embedded, &body).await?;
        time(&http, &distributed, &body).await?;
    }
    let (mut e, mut d, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.requests {
        // Alternate which side goes first so neither always runs right after the other.
        let (a, b) = if i % 2 == 0 {
            let a = time(&http, &embedded, &body).await?;
            (a, time(&http, &distributed, &body).await?)
        } else {
            let b = time(&http, &distributed, &body).await?;
            (time(&http, &embedded, &body).await?, b)
        };
        e.push(a);
        d.push(b);
        diff.push(b - a);
    }
    for tx in stops {
        let _ = tx.send(());
    }
    for s in servers {
        s.await??;
    }
    let (pe, pd, pdiff) = (pct(&mut e, 0.5), pct(&mut d, 0.5), pct(&mut diff, 0.5));
    println!(
        "sync /v1/score, {} pairs: embedded p50 {pe:.2} ms p99 {:.2} ms | distributed p50 {pd:.2} ms \
         p99 {:.2} ms | distributed - embedded: p50 of pair differences {pdiff:.2} ms, \
         difference of p50s {:.2} ms",
        args.requests,
        pct(&mut e, 0.99),
        pct(&mut d, 0.99),
        pd - pe
    );
    Ok(())
}

async fn time(http: &reqwest::Client, cfg: &ServiceConfig, body: &Value) -> Result<f64> {
    let t = Instant::now();
    let resp = http
        .post(format!("http://{}/v1/score", cfg.listen))
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    let value: Value = resp.json().await.context("decoding the answer")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(
        status.is_success() && value["scores"].is_array(),
        "{status}: {value}"
    );
    Ok(ms)
}

async fn wait_ready(http: &reqwest::Client, cfg: &ServiceConfig) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("http://{}/ready", cfg.listen))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} did not become ready within 60 s", cfg.listen)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len().saturating_sub(1)) as f64 * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}
