//! Tiled attention (`--attention tiled`) against row blocks on the default model: two models
//! over the same mapped weight cache in one process, the same batch run on each in turn, medians
//! of `ROUNDS` (default 7) alternating runs. Alternating in one process takes out what separate
//! score_bench runs cannot: the machine's drift between runs (5–10 % here), which is larger than
//! the difference measured.
//!
//!   cargo bench --bench attention_ab            # ROUNDS=7
//!
//! Scenarios: a query with 16 or 40 items of 22 tokens, and 56 items over a cached 1,000-token
//! query (the prefix-cache path). Token ids are pseudo-random; the scores are not checked here
//! (engine/tests/tiled_attention.rs does that).
use std::time::Instant;

use scorer_engine::home;
use scorer_engine::model::{Attention, HeadVariant, LoadOptions, Model, PackedBatch};
use scorer_engine::pjrt::{Client, Plugin, default_plugin_path};

fn batch(query: usize, items: usize, len: usize, start: usize, seed: u32) -> PackedBatch {
    let mut b = PackedBatch::default();
    let mut x = seed;
    let mut id = || {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        100 + (x >> 8) % 20000
    };
    for i in 0..query {
        b.tokens.push(id());
        b.positions.push((start + i) as i32);
        b.segment.push(0);
        b.prefix_segment.push(-1);
    }
    for k in 0..items {
        for i in 0..len {
            b.tokens.push(id());
            b.positions.push((start + query + i) as i32);
            b.segment.push(k as i32 + 1);
            b.prefix_segment.push(if query > 0 { 0 } else { -1 });
        }
        b.score_index.push(b.tokens.len() as i32 - 1);
        b.label_ids.push(vec![1, 2]);
    }
    b
}

fn main() -> anyhow::Result<()> {
    let plugin = Plugin::load(&default_plugin_path())?;
    let client = Client::new(&plugin)?;
    let path = home::model_file("qwen2.5-coder-0.5b-instruct-q4_k_m");
    let wc = home::weight_cache();
    let mut tiled = Model::load_path(client.clone(), &path, LoadOptions::default(), Some(&wc))?;
    let mut rb = Model::load_path(client, &path, LoadOptions::default(), Some(&wc))?;
    tiled.set_max_tokens(2048);
    rb.set_max_tokens(2048);
    rb.set_attention(Attention::RowBlocks);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let head = HeadVariant::FullLogprobs;
    let cases: Vec<(&str, usize, usize, usize, bool)> = vec![
        ("q50x16x22", 50, 16, 22, false),
        ("q200x16x22", 200, 16, 22, false),
        ("q200x40x22", 200, 40, 22, false),
        ("cached1000 x 56x22", 1000, 56, 22, true),
    ];
    for (name, q, n, len, cached) in cases {
        let (b, kv) = if cached {
            let pre = batch(q, 0, 0, 0, 7);
            (batch(0, n, len, q, 9), Some(pre.tokens))
        } else {
            (batch(q, n, len, 0, 9), None)
        };
        let kvs = match &kv {
            Some(t) => Some((tiled.prefix_kv(t)?, rb.prefix_kv(t)?)),
            None => None,
        };
        let run = |m: &Model, which: usize| -> anyhow::Result<f64> {
            let t0 = Instant::now();
            match &kvs {
                Some((a, c)) => {
                    let k = if which == 0 { a } else { c };
                    m.run_cached(&b, head, k, q)?;
                }
                None => {
                    m.run(&b, head)?;
                }
            }
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        };
        run(&tiled, 0)?;
        run(&rb, 1)?;
        let (mut a, mut c) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(run(&tiled, 0)?);
            c.push(run(&rb, 1)?);
        }
        a.sort_by(f64::total_cmp);
        c.sort_by(f64::total_cmp);
        let (ma, mc) = (a[a.len() / 2], c[c.len() / 2]);
        println!(
            "{name}: tokens {} tiled {:.0} ms, row blocks {:.0} ms, ratio {:.3} (tiled passes {})",
            b.tokens.len(),
            ma,
            mc,
            ma / mc,
            tiled.stats().tiled_passes
        );
    }
    Ok(())
}
