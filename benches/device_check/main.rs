//! The engine half of `scripts/device-check.sh`: probe a PJRT plugin, score token-id cases,
//! and time the bench scenarios, each printing one JSON object on stdout.
//!
//! Why a separate binary: the device check runs on a lent machine with no network and no
//! Rust toolchain, from a carried release build; it needs the plugin's version, devices
//! and options (not reachable through `scorer serve`) and exact token-id inputs shared
//! with the transformers side (`scripts/device_check_hf.py`), so the two sides score and
//! time the same requests.
//!
//! ```text
//! device_check probe [--plugin SPEC] [--gpu-memory-fraction F] [--gpu-preallocate B]
//!                    [--gpu-allocator A] [--pjrt-option name:type=value]...
//! device_check score --model DIR --dtype f32|bf16 --cases cases.json [--plugin SPEC]
//! device_check bench --model DIR --dtype bf16 --inputs inputs.json [--iters N] ...
//! ```
//! `SPEC` is a path or a plugin name (`cpu`, `cuda13`, `cuda12`, `tpu`), resolved by
//! `scorer_engine::pjrt::discover::resolve_plugin`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use scorer_engine::model::DType;
use scorer_engine::pjrt::discover::{self, Env};
use scorer_engine::pjrt::{self, Client, ClientOptions, Plugin};
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::{Items, LabelIds, ScoreBackend, ScoreRequest, TextOrTokens};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "device_check",
    about = "Engine side of scripts/device-check.sh"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Ignored: `cargo bench` passes `--bench` to harness-less benches.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// PJRT plugin: a path or cpu, cuda13, cuda12, tpu.
    #[arg(long, default_value = "cpu")]
    plugin: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Find and load the plugin, create a client, list its devices.
    Probe {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        gpu_memory_fraction: Option<f32>,
        #[arg(long)]
        gpu_preallocate: Option<bool>,
        #[arg(long)]
        gpu_allocator: Option<pjrt::GpuAllocator>,
        /// Extra client option, `name:type=value` (repeatable).
        #[arg(long = "pjrt-option")]
        pjrt_option: Vec<String>,
    },
    /// Score every case of a JSON file (a list of token-id /v1/score requests).
    Score {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long)]
        cases: PathBuf,
    },
    /// Latency at concurrency 1 and throughput at saturation on the requests of a file.
    Bench {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long)]
        inputs: PathBuf,
        /// Timed requests at concurrency 1.
        #[arg(long, default_value_t = 30)]
        iters: usize,
        /// Untimed requests first (compiles the buckets).
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Requests in the saturation run (0: skip it).
        #[arg(long, default_value_t = 256)]
        sat_requests: usize,
        /// Requests per engine call in the saturation run.
        #[arg(long, default_value_t = 8)]
        sat_batch: usize,
        /// Caller threads in the saturation run.
        #[arg(long, default_value_t = 2)]
        sat_threads: usize,
        #[arg(long, default_value_t = 2048)]
        max_batch_tokens: usize,
        /// Keep the cross-request prefix cache on. Off by default: the bench cycles over a
        /// few requests, and a cached query would time a cache hit, not a request.
        #[arg(long)]
        prefix_cache: bool,
    },
}

/// One token-id request, as `scripts/device_check_hf.py` writes it.
#[derive(Debug, Clone, Deserialize)]
struct Case {
    #[serde(default)]
    name: String,
    query: Vec<i64>,
    items: Vec<Vec<i64>>,
    labels: Vec<i64>,
    #[serde(default)]
    apply_softmax: bool,
}

impl Case {
    fn request(&self) -> ScoreRequest {
        ScoreRequest {
            model: None,
            query: Some(TextOrTokens::Tokens(self.query.clone())),
            items: Some(Items::Tokens(self.items.clone())),
            label_token_ids: Some(LabelIds::Shared(self.labels.clone())),
            apply_softmax: self.apply_softmax,
            item_first: false,
            temperature: None,
            ..Default::default()
        }
    }
}

fn read_cases(path: &Path) -> Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)?;
    let list = v.get("cases").or_else(|| v.get("requests")).unwrap_or(&v);
    Ok(serde_json::from_value(list.clone())?)
}

fn engine(
    common: &Common,
    model: &Path,
    dtype: &str,
    max_batch_tokens: usize,
    prefix_cache: bool,
) -> Result<(Engine, f64)> {
    let mut cfg = EngineConfig::new(model.to_path_buf(), "device-check".into());
    if !prefix_cache {
        cfg.prefix_cache_bytes = 0;
    }
    cfg.plugin_path = discover::resolve_plugin(&common.plugin)?;
    cfg.dtype = DType::parse(dtype)?;
    cfg.max_batch_tokens = max_batch_tokens;
    let t = Instant::now();
    let engine = Engine::load(cfg)?;
    Ok((engine, t.elapsed().as_secs_f64()))
}

fn percentile(sorted_ms: &[f64], q: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_ms.len() as f64).ceil() as usize).clamp(1, sorted_ms.len());
    sorted_ms[rank - 1]
}

fn latency_summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "n": ms.len(),
        "p50_ms": percentile(&ms, 0.5),
        "p90_ms": percentile(&ms, 0.9),
        "p99_ms": percentile(&ms, 0.99),
        "min_ms": ms.first(),
        "max_ms": ms.last(),
    })
}

fn probe(common: &Common, options: &ClientOptions) -> Result<Value> {
    let env = Env::from_process();
    let found: Vec<Value> = discover::discover_all(&env)
        .into_iter()
        .map(|l| json!({"name": l.name.map(|n| n.to_string()), "path": l.path, "origin": format!("{:?}", l.origin)}))
        .collect();
    let path = discover::resolve_plugin(&common.plugin)?;
    let preloaded = discover::preload_list(&path)?;
    let t = Instant::now();
    let plugin = Plugin::load(&path)?;
    let load_s = t.elapsed().as_secs_f64();
    let (major, minor) = plugin.api_version();
    let attributes: Vec<Value> = plugin
        .attributes()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| json!([k, format!("{v:?}")]))
        .collect();
    let mut out = json!({
        "plugin": path,
        "discovered": found,
        "preloaded": preloaded,
        "api_version": format!("{major}.{minor}"),
        "header_version": format!("{}.{}", pjrt::HEADER_API_VERSION.0, pjrt::HEADER_API_VERSION.1),
        "api_struct_size": plugin.api_struct_size(),
        "attributes": attributes,
        "load_s": load_s,
        "client_options": options.to_string(),
    });
    let t = Instant::now();
    match Client::with_client_options(&plugin, options) {
        Ok(client) => {
            out["client_s"] = json!(t.elapsed().as_secs_f64());
            out["platform"] = json!(client.platform_name()?);
            out["platform_version"] = json!(client.platform_version()?);
            out["devices"] = json!(client
                .devices()
                .iter()
                .map(|d| json!({"index": d.index(), "id": d.id(), "kind": d.kind(), "debug": d.debug_string()}))
                .collect::<Vec<_>>());
        }
        Err(e) => out["client_error"] = json!(e.to_string()),
    }
    Ok(out)
}

fn score(common: &Common, model: &Path, dtype: &str, cases: &Path) -> Result<Value> {
    let cases = read_cases(cases)?;
    let (engine, load_s) = engine(common, model, dtype, 4096, true)?;
    let t = Instant::now();
    let mut results = Vec::new();
    for c in &cases {
        let r = engine
            .score(&c.request())
            .map_err(|e| anyhow::anyhow!("case {}: {e}", c.name))?;
        results.push(json!({"name": c.name, "scores": r.scores}));
    }
    Ok(
        json!({"dtype": dtype, "load_s": load_s, "score_s": t.elapsed().as_secs_f64(), "results": results}),
    )
}

#[allow(clippy::too_many_arguments)]
fn bench(
    common: &Common,
    model: &Path,
    dtype: &str,
    inputs: &Path,
    iters: usize,
    warmup: usize,
    sat: (usize, usize, usize),
    max_batch_tokens: usize,
    prefix_cache: bool,
) -> Result<Value> {
    let cases = read_cases(inputs)?;
    if cases.is_empty() {
        bail!("{} holds no requests", inputs.display());
    }
    let (engine, load_s) = engine(common, model, dtype, max_batch_tokens, prefix_cache)?;
    let items_per_request = cases[0].items.len();
    let mut warmup_ms = Vec::new();
    for c in cases.iter().cycle().take(warmup) {
        let t = Instant::now();
        engine.score(&c.request())?;
        warmup_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut ms = Vec::new();
    let started = Instant::now();
    for c in cases.iter().cycle().take(iters) {
        let t = Instant::now();
        engine.score(&c.request())?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let c1_wall = started.elapsed().as_secs_f64();
    let mut out = json!({
        "dtype": dtype, "load_s": load_s, "warmup_ms": warmup_ms,
        "items_per_request": items_per_request,
        "concurrency1": latency_summary(ms),
        "concurrency1_items_per_s": (iters * items_per_request) as f64 / c1_wall,
    });
    let (sat_requests, sat_batch, sat_threads) = sat;
    if sat_requests > 0 {
        let jobs = cases
            .iter()
            .map(|c| engine.prepare(&c.request()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // One untimed call at the saturation batch size compiles its buckets.
        let first: Vec<_> = jobs.iter().cycle().take(sat_batch).cloned().collect();
        if let Err(e) = engine.score_batch(&first) {
            out["saturation"] = json!({ "error": e.to_string() });
            return Ok(out);
        }
        let next = AtomicUsize::new(0);
        let calls_ms = Mutex::new(Vec::new());
        let items = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..sat_threads.max(1) {
                s.spawn(|| {
                    loop {
                        let start = next.fetch_add(sat_batch, Ordering::SeqCst);
                        if start >= sat_requests {
                            break;
                        }
                        let n = sat_batch.min(sat_requests - start);
                        let batch: Vec<_> =
                            jobs.iter().cycle().skip(start).take(n).cloned().collect();
                        let c = Instant::now();
                        let res = engine.score_batch(&batch).unwrap_or_default();
                        let elapsed = c.elapsed().as_secs_f64() * 1e3;
                        let ok: usize = res
                            .iter()
                            .filter_map(|r| r.as_ref().ok())
                            .map(|o| o.scores.len())
                            .sum();
                        items.fetch_add(ok, Ordering::SeqCst);
                        if let Ok(mut v) = calls_ms.lock() {
                            v.push(elapsed);
                        }
                    }
                });
            }
        });
        let wall = t.elapsed().as_secs_f64();
        let scored = items.load(Ordering::SeqCst);
        out["saturation"] = json!({
            "requests": sat_requests, "batch": sat_batch, "threads": sat_threads,
            "items": scored, "wall_s": wall, "items_per_s": scored as f64 / wall,
            "call_latency": latency_summary(calls_ms.into_inner().unwrap_or_default()),
        });
        if scored != sat_requests * items_per_request {
            out["saturation"]["error"] = json!(format!(
                "{scored} of {} items scored",
                sat_requests * items_per_request
            ));
        }
    }
    if let Ok(stats) = engine.stats() {
        out["engine_stats"] = json!(format!("{stats:?}"));
    }
    Ok(out)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let out = match &cli.command {
        Cmd::Probe {
            common,
            gpu_memory_fraction,
            gpu_preallocate,
            gpu_allocator,
            pjrt_option,
        } => {
            let mut o = ClientOptions::default();
            if let Some(f) = gpu_memory_fraction {
                o.set_gpu_memory_fraction(*f)?;
            }
            o.gpu_preallocate = *gpu_preallocate;
            o.gpu_allocator = *gpu_allocator;
            for flag in pjrt_option {
                o.push_flag(flag)?;
            }
            probe(common, &o)?
        }
        Cmd::Score {
            common,
            model,
            dtype,
            cases,
        } => score(common, model, dtype, cases)?,
        Cmd::Bench {
            common,
            model,
            dtype,
            inputs,
            iters,
            warmup,
            sat_requests,
            sat_batch,
            sat_threads,
            max_batch_tokens,
            prefix_cache,
        } => bench(
            common,
            model,
            dtype,
            inputs,
            *iters,
            *warmup,
            (*sat_requests, *sat_batch, *sat_threads),
            *max_batch_tokens,
            *prefix_cache,
        )?,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
