//! `cargo bench --bench score_bench -- [flags]`: throughput and latency of /v1/score on the engine,
//! the matmul ceiling of the same plugin in the same run, cold and warm start, peak RSS.
//! docs/BENCHMARKS.md has the commands, the formulas and the numbers; benches/run.sh runs this
//! and the Hugging Face baseline together.

mod args;
mod ceiling;
mod flops;
mod report;
mod workload;

use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use scorer_engine::packing::Packing;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_engine::tokenizer::Tokenizer;
use serde::Serialize;
use serde_json::json;

use crate::args::Args;
use crate::ceiling::Ceiling;
use crate::report::{Latency, Memory, gib};
use crate::workload::{Scenario, Workload};

#[derive(Debug, Serialize)]
struct ScenarioResult {
    name: String,
    query_tokens: usize,
    items: usize,
    labels: usize,
    apply_softmax: bool,
    iters: usize,
    /// Prompt tokens per request as the API counts them (query repeated per item).
    prompt_tokens: usize,
    /// Tokens the packing needs per request (shared prefix once), from the FLOP model.
    needed_tokens: usize,
    /// Tokens the engine computed per request, before and after padding to buckets.
    computed_tokens: f64,
    padded_tokens: f64,
    /// Computed (padded) over needed tokens: what the buckets cost on top of the packing.
    padding_ratio: f64,
    forward_passes: f64,
    /// Compiles during the timed requests (0 when the warm-up covered every bucket).
    timed_compiles: u64,
    /// The untimed requests before timing; the first one compiles the scenario's buckets.
    warmup_ms: Vec<f64>,
    latency: Latency,
    latencies_ms: Vec<f64>,
    items_per_s: f64,
    prompt_tokens_per_s: f64,
    computed_tokens_per_s: f64,
    model_gflop: f64,
    gflops: f64,
    ceiling_fraction: f64,
    /// Scores of the first timed request, for comparison with the baseline.
    scores: Vec<Vec<f64>>,
}

#[derive(Debug, Serialize)]
struct StartTimes {
    /// The request scored first: 1 item, a 16-token query, 2 labels.
    request: String,
    /// Fresh, empty executable cache: process already running, Engine::load to first score.
    cold_load_s: f64,
    cold_first_score_s: f64,
    cold_compiles: u64,
    cold_compile_ms: u64,
    /// A second process on the populated cache: its main() to its first score.
    warm_first_score_s: f64,
    warm_load_s: f64,
    warm_compiles: u64,
    warm_store_hits: u64,
    /// The whole second process as its parent saw it (exec to exit).
    warm_process_s: f64,
}

fn main() -> Result<()> {
    let started = Instant::now();
    let args = Args::parse();
    // The engine logs its load phases (weights read, weights on the device) at info.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("scorer_engine=info")),
        )
        .init();
    let model_path = args.model_path();
    let tokenizer = Tokenizer::for_model(&model_path)
        .with_context(|| format!("loading the tokenizer of {}", model_path.display()))?;
    let workload = Workload::new(&tokenizer)?;
    let scenarios = build_scenarios(&args, &workload)?;
    if scenarios.is_empty() {
        bail!("no scenario selected");
    }
    // Start-up is timed on a small request, so that it measures loading and compiling rather than
    // one large forward pass (each scenario's first, compiling request is in its `warmup_ms`).
    let first = &workload.scenario(16, 1, 2, None, args.softmax)?;
    if let Some(dir) = &args.warm_start_child {
        return warm_start_child(&args, dir, first, started);
    }
    if let Some(path) = &args.dump_inputs {
        let doc = json!({"model": model_path, "scenarios": scenarios});
        std::fs::write(path, serde_json::to_vec(&doc)?)?;
        eprintln!("wrote {} scenarios to {}", scenarios.len(), path.display());
        return Ok(());
    }

    let plugin = args.plugin_path();
    eprintln!("matmul ceiling (f32 2048x896x4864 dot_general) ...");
    let ceiling_start = ceiling::measure(&plugin, args.ceiling_runs)?;
    eprintln!(
        "  {:.1} GFLOP/s ([h,f] {:.1}, [f,h] {:.1})",
        ceiling_start.gflops, ceiling_start.median_hf, ceiling_start.median_fh
    );

    let cache_dir = tempfile::tempdir()?;
    let (engine, start) = if args.no_start {
        (Engine::load(engine_config(&args, None))?, None)
    } else {
        let (engine, start) = measure_start(&args, cache_dir.path(), first)?;
        (engine, Some(start))
    };
    let after_load = report::memory();

    let mut results = Vec::new();
    for sc in &scenarios {
        eprintln!("scenario {} ...", sc.name);
        let r = run_scenario(
            &engine,
            &args,
            sc,
            engine.model_config(),
            ceiling_start.gflops,
        )?;
        eprintln!(
            "  {:.2} items/s, p50 {:.0} ms, {:.1} GFLOP/s",
            r.items_per_s, r.latency.p50_ms, r.gflops
        );
        results.push(r);
    }

    eprintln!("matmul ceiling again ...");
    let ceiling_end = ceiling::measure(&plugin, args.ceiling_runs)?;
    // The faster of the two measurements is the denominator: noise from other processes lowers
    // a ceiling, so the larger one is the fairer (harder) reference.
    let ceiling_gflops = ceiling_start.gflops.max(ceiling_end.gflops);
    for r in &mut results {
        r.ceiling_fraction = r.gflops / ceiling_gflops;
    }
    let stats = engine.stats()?;
    let memory = report::memory();

    print_table(
        &results,
        &ceiling_start,
        &ceiling_end,
        start.as_ref(),
        memory,
        stats.weight_bytes,
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "bench": "score_bench",
            "unix_time": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
            "machine": machine(),
            "model": model_path,
            "model_name": engine.model_config().name,
            "plugin": plugin,
            "packing": format!("{:?}", Packing::from(args.packing)),
            "max_batch_tokens": args.max_batch_tokens,
            "prefill_chunk_tokens": args.prefill_chunk_tokens,
            "layout": format!("{:?}", args.layout),
            "attention": format!("{:?}", args.attention),
            "dtype": args.dtype.as_str(),
            "dense_gflop_per_token": flops::dense_flops_per_token(engine.model_config()) / 1e9,
            "head_gflop_per_position": 2.0 * (engine.model_config().hidden_size
                * engine.model_config().vocab_size) as f64 / 1e9,
            "ceiling_start": ceiling_start,
            "ceiling_end": ceiling_end,
            "ceiling_gflops": ceiling_gflops,
            "start": start,
            "memory_after_load": after_load,
            "memory_end": memory,
            "weight_bytes": stats.weight_bytes,
            "engine_stats": format!("{stats:?}"),
            "scenarios": results,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn build_scenarios(args: &Args, workload: &Workload) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let grid = if args.only_prefill {
        &[][..]
    } else {
        &args.query_tokens[..]
    };
    for &q in grid {
        for &n in &args.items {
            for &l in &args.labels {
                if l > workload.max_labels() {
                    bail!(
                        "--labels {l}: at most {} are available",
                        workload.max_labels()
                    );
                }
                out.push(workload.scenario(q, n, l, args.item_tokens, args.softmax)?);
            }
        }
    }
    for &total in &args.prefill {
        out.push(workload.prefill(total, args.softmax)?);
    }
    Ok(out)
}

fn engine_config(args: &Args, cache: Option<&Path>) -> EngineConfig {
    let mut cfg = EngineConfig::new(args.model_path(), "bench".into());
    cfg.plugin_path = args.plugin_path();
    cfg.packing = args.packing.into();
    cfg.max_batch_tokens = args.max_batch_tokens;
    cfg.prefill_chunk_tokens = args.prefill_chunk_tokens;
    cfg.layout = args.layout.into();
    cfg.attention = args.attention;
    cfg.dtype = args.dtype;
    cfg.compile_cache = cache.map(Path::to_path_buf);
    // Start-up is measured with the weight cache of the service (`scorer serve`): the cold start
    // builds it in the fresh directory, the warm start maps it.
    cfg.weight_cache = cache.map(|c| c.join("weights"));
    // Each scenario repeats one request: a prefix cache would turn every timed iteration into
    // a cache hit, which is not what the Hugging Face baseline computes (prefix_bench measures
    // the cache).
    cfg.prefix_cache_bytes = 0;
    cfg
}

/// Cold start in this process on an empty cache, then warm start in a second process on the
/// cache the first one filled. Returns the cold engine for the scenarios.
fn measure_start(args: &Args, cache: &Path, first: &Scenario) -> Result<(Engine, StartTimes)> {
    eprintln!(
        "cold start (empty executable cache {}) ...",
        cache.display()
    );
    let t0 = Instant::now();
    let engine = Engine::load(engine_config(args, Some(cache)))?;
    let cold_load_s = t0.elapsed().as_secs_f64();
    engine.score(&first.request())?;
    let cold_first_score_s = t0.elapsed().as_secs_f64();
    let cold = engine.stats()?;
    eprintln!("  load {cold_load_s:.1} s, first score {cold_first_score_s:.1} s");

    eprintln!("warm start (second process, same cache) ...");
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe);
    child.args(std::env::args_os().skip(1));
    child.arg("--warm-start-child").arg(cache);
    let t0 = Instant::now();
    let out = child.output().context("running the warm-start process")?;
    let warm_process_s = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "the warm-start process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let warm: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the warm-start process's report")?;
    let f = |k: &str| warm[k].as_f64().unwrap_or(f64::NAN);
    let u = |k: &str| warm[k].as_u64().unwrap_or(0);
    let start = StartTimes {
        request: first.name.clone(),
        cold_load_s,
        cold_first_score_s,
        cold_compiles: cold.compiles,
        cold_compile_ms: cold.compile_ms_total,
        warm_first_score_s: f("first_score_s"),
        warm_load_s: f("load_s"),
        warm_compiles: u("compiles"),
        warm_store_hits: u("store_hits"),
        warm_process_s,
    };
    eprintln!(
        "  first score {:.1} s ({} compiles, {} loaded from the cache)",
        start.warm_first_score_s, start.warm_compiles, start.warm_store_hits
    );
    Ok((engine, start))
}

fn warm_start_child(args: &Args, cache: &Path, first: &Scenario, started: Instant) -> Result<()> {
    let t0 = Instant::now();
    let engine = Engine::load(engine_config(args, Some(cache)))?;
    let load_s = t0.elapsed().as_secs_f64();
    engine.score(&first.request())?;
    let stats = engine.stats()?;
    let doc = json!({
        "first_score_s": started.elapsed().as_secs_f64(),
        "load_s": load_s,
        "compiles": stats.compiles,
        "store_hits": stats.store_hits,
    });
    println!("{doc}");
    Ok(())
}

fn run_scenario(
    engine: &Engine,
    args: &Args,
    sc: &Scenario,
    config: &scorer_engine::weights::ModelConfig,
    ceiling_gflops: f64,
) -> Result<ScenarioResult> {
    let req = sc.request();
    let mut warmup_ms = Vec::with_capacity(args.warmup);
    for _ in 0..args.warmup {
        let t0 = Instant::now();
        engine.score(&req)?;
        warmup_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let iters = args.iters.max(1);
    let before = engine.stats()?;
    let mut latencies_ms = Vec::with_capacity(iters);
    let mut scores = Vec::new();
    let t_all = Instant::now();
    for i in 0..iters {
        let t0 = Instant::now();
        let resp = engine.score(&req)?;
        latencies_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if i == 0 {
            scores = resp.scores;
        }
    }
    let total_s = t_all.elapsed().as_secs_f64();
    let after = engine.stats()?;
    let per_req = |a: u64, b: u64| (a - b) as f64 / iters as f64;
    let work = flops::request_work(
        config,
        &sc.prompts(),
        sc.labels,
        sc.apply_softmax,
        args.packing.into(),
    );
    let prompt_tokens = sc.prompt_tokens();
    let gflops = work.flops * iters as f64 / total_s / 1e9;
    Ok(ScenarioResult {
        name: sc.name.clone(),
        query_tokens: sc.query_tokens,
        items: sc.items,
        labels: sc.labels,
        apply_softmax: sc.apply_softmax,
        iters,
        prompt_tokens,
        needed_tokens: work.tokens,
        computed_tokens: per_req(after.tokens_real, before.tokens_real),
        padded_tokens: per_req(after.tokens_computed, before.tokens_computed),
        padding_ratio: per_req(after.tokens_computed, before.tokens_computed)
            / work.tokens.max(1) as f64,
        forward_passes: per_req(after.forward_passes, before.forward_passes),
        timed_compiles: after.compiles - before.compiles,
        warmup_ms,
        latency: Latency::of(&latencies_ms),
        latencies_ms,
        items_per_s: (sc.items * iters) as f64 / total_s,
        prompt_tokens_per_s: (prompt_tokens * iters) as f64 / total_s,
        computed_tokens_per_s: (after.tokens_real - before.tokens_real) as f64 / total_s,
        model_gflop: work.flops / 1e9,
        gflops,
        ceiling_fraction: gflops / ceiling_gflops,
        scores,
    })
}

fn print_table(
    results: &[ScenarioResult],
    c0: &Ceiling,
    c1: &Ceiling,
    start: Option<&StartTimes>,
    mem: Memory,
    weight_bytes: u64,
) {
    println!(
        "matmul ceiling: {:.1} GFLOP/s at start, {:.1} at end (medians; [h,f] {:.1}/{:.1}, [f,h] {:.1}/{:.1})",
        c0.gflops, c1.gflops, c0.median_hf, c1.median_hf, c0.median_fh, c1.median_fh
    );
    if let Some(s) = start {
        println!(
            "{}: cold start to first score {:.1} s (load {:.1} s, {} compiles {:.1} s); warm start {:.1} s (load {:.1} s, {} compiles, {} cached executables; process {:.1} s)",
            s.request,
            s.cold_first_score_s,
            s.cold_load_s,
            s.cold_compiles,
            s.cold_compile_ms as f64 / 1e3,
            s.warm_first_score_s,
            s.warm_load_s,
            s.warm_compiles,
            s.warm_store_hits,
            s.warm_process_s
        );
    }
    println!(
        "peak RSS {:.2} GiB, RSS now {:.2} GiB, weights on the device {:.2} GiB",
        gib(mem.peak_rss_bytes),
        gib(mem.rss_bytes),
        gib(weight_bytes)
    );
    println!(
        "{:<18} {:>6} {:>7} {:>7} {:>7} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6}",
        "scenario",
        "items",
        "prompt",
        "needed",
        "padded",
        "pad×",
        "pass",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "items/s",
        "prompt/s",
        "GFLOP/s",
        "%ceil"
    );
    for r in results {
        println!(
            "{:<18} {:>6} {:>7} {:>7} {:>7.0} {:>5.2} {:>5.1} {:>8.0} {:>8.0} {:>8.0} {:>8.2} {:>9.0} {:>7.1} {:>5.0}%",
            r.name,
            r.items,
            r.prompt_tokens,
            r.needed_tokens,
            r.padded_tokens,
            r.padding_ratio,
            r.forward_passes,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.items_per_s,
            r.prompt_tokens_per_s,
            r.gflops,
            r.ceiling_fraction * 100.0
        );
    }
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string());
    let flags = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|s| s.trim().to_string()));
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "avx2": flags.contains(" avx2"),
        "avx512f": flags.contains(" avx512f"),
        "mem_total": mem_total,
        "load_avg": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_string()),
    })
}
