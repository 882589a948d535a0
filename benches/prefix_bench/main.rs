//! Coalescing and prefix-cache benchmark (issue 6, docs/BENCHMARKS.md):
//!
//! (a) 32 requests sharing a 500-token system prompt with different queries: tokens computed and
//!     wall time, coalescing + cache against the plain packed engine and against the naive sum of
//!     prompt tokens; as one batch (what a worker hands the engine) and as 32 concurrent calls.
//! (b) the same 200-token query with new items: the second request against an items-only pass
//!     (the same items with a one-token query, so nothing is shared); target ≤ 1.2×.
//!
//! `cargo bench --bench prefix_bench -- [--model ALIAS] [--reps N]`. Not run by `cargo test`.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use scorer_engine::model::ModelStats;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::{ScoreBackend, ScoreJob, ScoreRequest};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Model alias under $SCORER_HOME/models (see `scorer fetch`).
    #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
    model: String,
    /// Repetitions per measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, default_value_t = 500)]
    system_tokens: usize,
    #[arg(long, default_value_t = 32)]
    requests: usize,
    #[arg(long, default_value_t = 200)]
    query_tokens: usize,
    #[arg(long, default_value_t = 16)]
    items: usize,
    /// Ignored: `cargo bench` passes `--bench` to harness-less benches.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Deterministic token ids (a range every supported vocabulary has).
fn ids(seed: u64, n: usize) -> Vec<u32> {
    scorer_testkit::engine::token_ids(seed, n, 1000, 21_000)
}

fn request(query: &[u32], items: &[Vec<u32>]) -> Result<ScoreRequest> {
    Ok(serde_json::from_value(json!({
        "query": query, "items": items, "label_token_ids": [1000, 1001], "apply_softmax": true
    }))?)
}

fn items(seed: u64, n: usize) -> Vec<Vec<u32>> {
    (0..n as u64).map(|i| ids(seed * 1000 + i, 8)).collect()
}

fn load(args: &Args, cache: bool) -> Result<Engine> {
    let home = scorer_engine::home::scorer_home();
    let mut cfg = EngineConfig::new(
        home.join("models").join(format!("{}.gguf", args.model)),
        args.model.clone(),
    );
    cfg.compile_cache = Some(scorer_engine::home::executable_cache());
    if !cache {
        cfg.prefix_cache_bytes = 0;
        cfg.prefix_min_tokens = 0;
    }
    Engine::load(cfg).context("loading the engine (run `scorer fetch`)")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Run {
    seconds: f64,
    tokens: u64,
    prefix_passes: u64,
    hit: u64,
}

fn delta(before: &ModelStats, after: &ModelStats, seconds: f64) -> Run {
    Run {
        seconds,
        tokens: after.tokens_real - before.tokens_real,
        prefix_passes: after.prefix_passes - before.prefix_passes,
        hit: after.prefix_hit_tokens - before.prefix_hit_tokens,
    }
}

fn batch(engine: &Engine, jobs: &[ScoreJob]) -> Result<Run> {
    let before = engine.stats()?;
    let t = Instant::now();
    for r in engine.score_batch(jobs)? {
        r?;
    }
    let s = t.elapsed().as_secs_f64();
    Ok(delta(&before, &engine.stats()?, s))
}

fn concurrent(engine: &Engine, reqs: &[ScoreRequest]) -> Result<Run> {
    let before = engine.stats()?;
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = reqs
            .iter()
            .map(|r| s.spawn(move || engine.score(r)))
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("request thread panicked"))??;
        }
        Ok(())
    })?;
    let s = t.elapsed().as_secs_f64();
    Ok(delta(&before, &engine.stats()?, s))
}

/// (a) for repetition `rep`: a fresh system prompt, so the first batch meets a cold cache.
fn shared_system(args: &Args, rep: u64) -> Result<(Vec<ScoreRequest>, usize)> {
    let system = ids(10_000 + rep, args.system_tokens);
    let mut naive = 0;
    let reqs = (0..args.requests as u64)
        .map(|q| {
            let query = [&system[..], &ids(rep * 100 + q, 20)].concat();
            let its = items(rep * 100 + q, 4);
            naive += its.iter().map(|i| query.len() + i.len()).sum::<usize>();
            request(&query, &its)
        })
        .collect::<Result<_>>()?;
    Ok((reqs, naive))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cached = load(&args, true)?;
    let plain = load(&args, false)?;
    let prep = |e: &Engine, reqs: &[ScoreRequest]| -> Result<Vec<ScoreJob>> {
        reqs.iter()
            .map(|r| e.prepare(r).map_err(anyhow::Error::from))
            .collect()
    };

    // Warm-up: compile the buckets both paths use.
    for rep in 0..2 {
        let (reqs, _) = shared_system(&args, 900 + rep)?;
        batch(&cached, &prep(&cached, &reqs)?)?;
        batch(&plain, &prep(&plain, &reqs)?)?;
        concurrent(&cached, &reqs)?;
    }

    println!(
        "## (a) {} requests, {}-token system prompt, 20-token queries, 4 items of 8 tokens ({})",
        args.requests, args.system_tokens, args.model
    );
    let (mut p_s, mut c_s, mut w_s, mut k_s) = (vec![], vec![], vec![], vec![]);
    let mut naive_tokens = 0;
    let (mut p_tok, mut c_tok, mut w_tok, mut k_tok, mut k_passes) = (0, 0, 0, 0, 0);
    for rep in 0..args.reps as u64 {
        let (reqs, naive) = shared_system(&args, rep)?;
        naive_tokens = naive;
        let p = batch(&plain, &prep(&plain, &reqs)?)?;
        let c = batch(&cached, &prep(&cached, &reqs)?)?;
        // The same system prompt, new queries: the cache holds it now.
        let (again, _) = shared_system(&args, rep)?;
        let again: Vec<ScoreRequest> = again
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.items =
                    serde_json::from_value(json!(items(50_000 + i as u64, 4))).unwrap_or(r.items);
                r
            })
            .collect();
        let w = batch(&cached, &prep(&cached, &again)?)?;
        let (conc, _) = shared_system(&args, 500 + rep)?;
        let k = concurrent(&cached, &conc)?;
        p_s.push(p.seconds);
        c_s.push(c.seconds);
        w_s.push(w.seconds);
        k_s.push(k.seconds);
        (p_tok, c_tok, w_tok, k_tok, k_passes) =
            (p.tokens, c.tokens, w.tokens, k.tokens, k.prefix_passes);
        eprintln!(
            "rep {rep}: plain {:.2}s/{} tok; coalesced cold {:.2}s/{} tok ({} prefix passes); warm {:.2}s/{} tok (hit {}); 32 concurrent cold {:.2}s/{} tok ({} prefix passes)",
            p.seconds,
            p.tokens,
            c.seconds,
            c.tokens,
            c.prefix_passes,
            w.seconds,
            w.tokens,
            w.hit,
            k.seconds,
            k.tokens,
            k.prefix_passes
        );
    }
    let (p, c, w, k) = (median(p_s), median(c_s), median(w_s), median(k_s));
    println!("| path | tokens computed | vs naive | seconds (median) | vs plain |");
    println!("|---|---|---|---|---|");
    println!("| naive (every prompt whole) | {naive_tokens} | 1.00 | | |");
    let row = |name: &str, tok: u64, s: f64| {
        println!(
            "| {name} | {tok} | {:.3} | {s:.2} | {:.2}× faster |",
            tok as f64 / naive_tokens as f64,
            p / s
        );
    };
    row("plain packing (query shared per request)", p_tok, p);
    row("coalesced, cold cache (one batch)", c_tok, c);
    row(
        "coalesced, warm cache (same system prompt, new queries)",
        w_tok,
        w,
    );
    row(
        &format!("32 concurrent calls, cold ({k_passes} prefix pass)"),
        k_tok,
        k,
    );

    println!(
        "\n## (b) the same {}-token query with {} new items ({})",
        args.query_tokens, args.items, args.model
    );
    let (mut second, mut only) = (vec![], vec![]);
    for rep in 0..args.reps as u64 + 1 {
        let query = ids(20_000 + rep, args.query_tokens);
        let first = request(&query, &items(70_000 + rep, args.items))?;
        cached.score(&first)?;
        let new_items = items(80_000 + rep, args.items);
        let next = request(&query, &new_items)?;
        let before = cached.stats()?;
        let t = Instant::now();
        cached.score(&next)?;
        let s2 = t.elapsed().as_secs_f64();
        let d = delta(&before, &cached.stats()?, s2);
        // Items only: a one-token query shares nothing worth caching.
        let alone = request(&query[..1], &new_items)?;
        let t = Instant::now();
        cached.score(&alone)?;
        let s1 = t.elapsed().as_secs_f64();
        eprintln!(
            "rep {rep}: second request {s2:.3}s ({} tok, hit {}), items-only {s1:.3}s",
            d.tokens, d.hit
        );
        if rep > 0 {
            // rep 0 compiles the cached-program bucket
            second.push(s2);
            only.push(s1);
        }
    }
    let (s2, s1) = (median(second), median(only));
    println!("| second request (cache hit) | items-only pass | ratio (target ≤ 1.2) |");
    println!("|---|---|---|");
    println!(
        "| {:.1} ms | {:.1} ms | {:.2} |",
        s2 * 1e3,
        s1 * 1e3,
        s2 / s1
    );
    Ok(())
}
