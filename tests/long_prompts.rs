//! Prompts longer than one pass (issue 15, item 3): chunked prefill on the real CPU plugin.
//!
//! Tiny random checkpoints from `tests/reference/goldens` (their own goldens are checked in
//! `engine/tests/tiny_archs.rs`), copied with `max_position_embeddings` raised to 32,768 so that
//! long prompts are allowed; the sliding-window Mistral one (window 8) has its windows cross
//! every chunk boundary. Requests are token ids. The reference is the same request computed as
//! ONE pass (every token in one `[T, T]` attention), at a length where that still fits; the
//! chunked engines run passes of at most 512 tokens, with the query and a long item computed
//! chunk by chunk. A 16k-token query with 32 items is then scored with two different chunk sizes
//! (different pass boundaries, different programs, one through the prefix-cache path and one
//! through the plain path), and the peak memory is reported and bounded.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::ScoreResponse;
use serde_json::{Value, json};

const TOL: f64 = 1e-4;

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/goldens")
        .join(name)
}

/// A copy of the tiny checkpoint `name` whose context length is 32,768 (with the Qwen2 one's
/// tokenizer where it has none: requests are token ids, the tokenizer only has to load).
fn long_context_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for entry in std::fs::read_dir(golden_dir(name)).expect("checkpoint dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if !dir.join(f).exists() {
            std::fs::copy(golden_dir("tiny-qwen2-f32").join(f), dir.join(f)).expect("tokenizer");
        }
    }
    let path = dir.join("config.json");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("json");
    config["max_position_embeddings"] = json!(32768);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
    (tmp, dir)
}

fn engine(dir: &Path, tweak: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig::new(dir.to_path_buf(), "tiny".into());
    cfg.weight_cache = None;
    tweak(&mut cfg);
    Engine::load(cfg).expect("engine loads (run `scorer fetch` for the plugin)")
}

/// Everything in one pass: no coalescing, no cache, passes as large as the request.
fn one_pass(dir: &Path) -> Engine {
    engine(dir, |c| {
        c.max_batch_tokens = 4096;
        c.prefill_chunk_tokens = 4096;
        c.prefix_min_tokens = 0;
        c.prefix_cache_bytes = 0;
    })
}

/// Passes of at most 512 tokens, prefills in chunks of `chunk`.
fn chunked(dir: &Path, chunk: usize, coalesce: bool) -> Engine {
    engine(dir, |c| {
        c.max_batch_tokens = 512;
        c.prefill_chunk_tokens = chunk;
        if !coalesce {
            c.prefix_min_tokens = 0;
            c.prefix_cache_bytes = 0;
        }
    })
}

/// Passes of at most 2,048 tokens (the default), prefills in chunks of `chunk`.
fn long_chunks(dir: &Path, chunk: usize, coalesce: bool) -> Engine {
    engine(dir, |c| {
        c.prefill_chunk_tokens = chunk;
        if !coalesce {
            c.prefix_min_tokens = 0;
            c.prefix_cache_bytes = 0;
        }
    })
}

/// Deterministic token ids below `vocab`.
fn ids(seed: u64, n: usize, vocab: u32) -> Vec<u32> {
    token_ids(seed, n, 3, vocab)
}

fn body(query: &[u32], items: &[Vec<u32>]) -> Value {
    json!({"query": query, "items": items, "label_token_ids": [5, 17, 42, 99],
        "return_token_logprobs": true})
}

fn score(engine: &Engine, body: &Value) -> ScoreResponse {
    engine.score(&req(body.clone())).expect("scored")
}

fn logprobs(r: &ScoreResponse) -> Vec<Vec<f64>> {
    r.token_logprobs.clone().expect("token_logprobs asked for")
}

fn assert_same(got: &ScoreResponse, want: &ScoreResponse, what: &str) {
    assert_close_to_reference(&logprobs(got), &logprobs(want), TOL, what);
    assert_close_to_reference(&got.scores, &want.scores, TOL, what);
    assert_eq!(got.usage.prompt_tokens, want.usage.prompt_tokens, "{what}");
}

#[test]
fn chunked_prefill_equals_one_pass() {
    for (name, vocab) in [("tiny-qwen2-f32", 320), ("tiny-mistral-sw", 256)] {
        let (_tmp, dir) = long_context_copy(name);
        // A 3,000-token query, short items and one item of 700 tokens (longer than a pass).
        let query = ids(1, 3000, vocab);
        let mut items: Vec<Vec<u32>> = (0..8).map(|i| ids(10 + i, 3 + i as usize, vocab)).collect();
        items.push(ids(99, 700, vocab));
        let b = body(&query, &items);
        let want = score(&one_pass(&dir), &b);
        let started = Instant::now();
        for (chunk, coalesce) in [(256, false), (384, true), (512, true)] {
            let got = score(&chunked(&dir, chunk, coalesce), &b);
            assert_same(
                &got,
                &want,
                &format!("{name} chunk {chunk} coalesce {coalesce}"),
            );
        }
        // A lone prompt longer than a pass: everything but its last token is the prefix.
        let lone = body(&ids(7, 1499, vocab), &[vec![1]]);
        let want = score(&one_pass(&dir), &lone);
        let got = score(&chunked(&dir, 300, false), &lone);
        assert_same(&got, &want, &format!("{name} one 1,500-token prompt"));
        eprintln!("[chunked] {name}: {:.1} s", started.elapsed().as_secs_f64());
    }
}

#[test]
fn sixteen_k_query_with_32_items() {
    let (_tmp, dir) = long_context_copy("tiny-qwen2-f32");
    let query = ids(3, 16_384, 320);
    let items: Vec<Vec<u32>> = (0..32)
        .map(|i| ids(200 + i, 4 + i as usize % 9, 320))
        .collect();
    let b = body(&query, &items);
    let (_, hwm_before) = rss_kib();
    let started = Instant::now();
    let a = score(&long_chunks(&dir, 1024, true), &b);
    let first = started.elapsed();
    let b2 = score(&long_chunks(&dir, 1536, false), &b);
    let (_, hwm) = rss_kib();
    eprintln!(
        "[16k] query 16,384 tokens x 32 items: {:.1} s (chunk 1,024, compiles included), both {:.1} s; peak RSS {} MiB (before {} MiB)",
        first.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        hwm / 1024,
        hwm_before / 1024
    );
    assert_eq!(a.scores.len(), 32);
    assert!(a.scores.iter().flatten().all(|s| s.is_finite() && *s > 0.0));
    assert_same(&b2, &a, "16k query, chunks of 1,024 vs 1,536");
    // Memory is bounded by the chunk, not the square of the prompt: one [T, T] f32 attention
    // of the 16k prompt alone would be 4 heads x 16,416^2 x 4 B = 4 GiB.
    assert!(hwm < 3 << 20, "peak RSS {hwm} KiB");
}

#[test]
fn a_prompt_past_the_context_length_is_refused() {
    // The checkpoint as saved: max_position_embeddings 128.
    let e = engine(&golden_dir("tiny-qwen2-f32"), |_| {});
    assert_eq!(e.limits().max_prompt_tokens, 128);
    let err = e
        .score(&req(body(&ids(5, 129, 320), &[vec![1]])))
        .expect_err("over the context length");
    let msg = err.to_string();
    assert!(
        msg.contains("130 tokens") && msg.contains("limit is 128"),
        "{msg}"
    );
    assert!(e.score(&req(body(&ids(5, 127, 320), &[vec![1]]))).is_ok());
}
