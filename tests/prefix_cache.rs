//! Coalescing and the prefix KV cache (issue 6, plan 4.3) on the real SmolLM2 GGUF and the real
//! CPU plugin: cached and coalesced scores equal the plain path, repeated prefixes hit, concurrent
//! requests sharing a prefix compute it once, and the cache stays within its byte bound.
//!
//! Requests are token ids, so the shared prefix is exact (no tokenizer merges at the boundary).

mod common;

use std::sync::LazyLock;

use common::*;
use scorer_engine::model::ModelStats;
use scorer_engine::runtime::Engine;
use scorer_protocol::{ScoreBackend, ScoreJob};
use serde_json::{Value, json};

/// Default settings: coalescing on, 512 MiB cache.
static CACHED: LazyLock<Engine> = LazyLock::new(|| load(SMOL, |_| {}));
/// No coalescing, no cache: the plain shared-prefix packing the cache is checked against.
static PLAIN: LazyLock<Engine> = LazyLock::new(|| {
    load(SMOL, |c| {
        c.prefix_min_tokens = 0;
        c.prefix_cache_bytes = 0;
    })
});

/// Deterministic token ids in a range every model here has.
fn ids(seed: u64, n: usize) -> Vec<u32> {
    token_ids(seed, n, 1000, 21_000)
}

fn body(query: &[u32], items: &[Vec<u32>], softmax: bool) -> Value {
    json!({"query": query, "items": items, "label_token_ids": [SMOL_YES, SMOL_NO, 300],
        "apply_softmax": softmax})
}

fn items(seed: u64, n: usize) -> Vec<Vec<u32>> {
    (0..n as u64)
        .map(|i| ids(seed * 100 + i, 3 + i as usize % 4))
        .collect()
}

fn jobs(engine: &Engine, bodies: &[Value]) -> Vec<ScoreJob> {
    bodies
        .iter()
        .map(|b| engine.prepare(&req(b.clone())).expect("valid request"))
        .collect()
}

fn scores(engine: &Engine, bodies: &[Value]) -> Vec<Vec<Vec<f64>>> {
    engine
        .score_batch(&jobs(engine, bodies))
        .expect("engine up")
        .into_iter()
        .map(|r| r.expect("scored").scores)
        .collect()
}

fn stats(engine: &Engine) -> ModelStats {
    engine.stats().expect("engine stats")
}

fn assert_same(got: &[Vec<Vec<f64>>], want: &[Vec<Vec<f64>>], what: &str) {
    assert_eq!(got.len(), want.len());
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        let d = max_diff(g, w);
        assert!(d <= 1e-4, "{what}: job {j} differs by {d}");
    }
}

#[test]
fn cached_and_coalesced_scores_equal_the_plain_path() {
    let _serial = serial();
    let system = ids(1, 70);
    // Jobs sharing a system prompt with different queries, both head variants, plus a job
    // sharing nothing and a job whose items share more than the query.
    let mut bodies: Vec<Value> = (0..4)
        .map(|q| {
            let query = [&system[..], &ids(10 + q, 5 + q as usize)].concat();
            body(&query, &items(q, 3), q % 2 == 0)
        })
        .collect();
    bodies.push(body(&ids(7, 40), &items(9, 2), true));
    let long_items: Vec<Vec<u32>> = (0..3)
        .map(|i| [ids(8, 6), ids(80 + i, 2)].concat())
        .collect();
    bodies.push(body(&system, &long_items, false));

    let want = scores(&PLAIN, &bodies);
    assert_eq!(
        stats(&PLAIN).prefix_passes,
        0,
        "the plain engine never caches"
    );

    let before = stats(&CACHED);
    let together = scores(&CACHED, &bodies);
    let mid = stats(&CACHED);
    assert_same(&together, &want, "coalesced in one batch");
    assert!(mid.prefix_passes > before.prefix_passes);
    // Same requests one by one: now served from the cache.
    let one_by_one: Vec<Vec<Vec<f64>>> = bodies
        .iter()
        .flat_map(|b| scores(&CACHED, std::slice::from_ref(b)))
        .collect();
    let after = stats(&CACHED);
    assert_same(&one_by_one, &want, "one by one from the cache");
    assert!(after.prefix_hit_tokens > mid.prefix_hit_tokens);
}

#[test]
fn test_score_with_prefix_caching() {
    let _serial = serial();
    let query = ids(2, 90);
    let first = body(&query, &items(20, 4), true);
    let second = body(&query, &items(21, 4), true);

    let s0 = stats(&CACHED);
    scores(&CACHED, std::slice::from_ref(&first));
    let s1 = stats(&CACHED);
    assert_eq!(
        s1.prefix_miss_tokens - s0.prefix_miss_tokens,
        query.len() as u64,
        "first sight: the query is computed"
    );
    assert!(s1.prefix_cache_entries >= 1 && s1.prefix_cache_bytes > 0);

    let got = scores(&CACHED, std::slice::from_ref(&second));
    let s2 = stats(&CACHED);
    assert_eq!(
        s2.prefix_hit_tokens - s1.prefix_hit_tokens,
        query.len() as u64,
        "the query comes from the cache"
    );
    assert_eq!(s2.prefix_miss_tokens, s1.prefix_miss_tokens, "no misses");
    assert_eq!(s2.prefix_passes, s1.prefix_passes, "no prefix recomputed");
    let item_tokens: usize = items(21, 4).iter().map(Vec::len).sum();
    assert_eq!(
        (s2.tokens_real - s1.tokens_real) as usize,
        item_tokens,
        "only the items' tokens are computed"
    );
    assert_same(&got, &scores(&PLAIN, &[second]), "cached vs plain");
}

#[test]
fn test_score_parallel_sampling_caching() {
    let _serial = serial();
    // One prompt sampled n times per request, over several requests: its prefix is computed
    // once in all, every later row reads it.
    let query = ids(3, 60);
    let n = 6;
    let request = body(&query, &vec![ids(30, 4); n], false);
    let s0 = stats(&CACHED);
    let first = scores(&CACHED, std::slice::from_ref(&request));
    let again = scores(&CACHED, &[request.clone(), request.clone()]);
    let s1 = stats(&CACHED);
    assert_eq!(s1.prefix_passes - s0.prefix_passes, 1, "computed once");
    let shared = (query.len() + 3) as u64; // the prompt but its last token
    assert_eq!(s1.prefix_miss_tokens - s0.prefix_miss_tokens, shared);
    assert_eq!(s1.prefix_hit_tokens - s0.prefix_hit_tokens, shared);
    assert!(first[0].iter().all(|r| *r == first[0][0]), "identical rows");
    assert_same(&again[..1], &first, "later requests");
    assert_same(&first, &scores(&PLAIN, &[request]), "cached vs plain");
}

#[test]
fn concurrent_same_prefix_requests_compute_the_prefix_once() {
    let _serial = serial();
    let system = ids(4, 100);
    let bodies: Vec<Value> = (0..8)
        .map(|q| {
            body(
                &[&system[..], &ids(40 + q, 6)].concat(),
                &items(40 + q, 2),
                true,
            )
        })
        .collect();
    let s0 = stats(&CACHED);
    let got: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| s.spawn(move || scores(&CACHED, std::slice::from_ref(b)).remove(0)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    let s1 = stats(&CACHED);
    assert_eq!(
        s1.prefix_passes - s0.prefix_passes,
        1,
        "one prefix pass for all eight requests"
    );
    assert!(
        s1.prefix_hit_tokens - s0.prefix_hit_tokens >= 7 * system.len() as u64,
        "the system prompt is read, not recomputed"
    );
    assert_same(&got, &scores(&PLAIN, &bodies), "concurrent vs plain");
}

#[test]
fn the_cache_stays_within_its_byte_bound() {
    let _serial = serial();
    let one = load(SMOL, |c| c.prefix_cache_bytes = 0);
    // Learn one 64-token entry's size, then allow two of them.
    let small = load(SMOL, |c| c.prefix_cache_bytes = 1 << 40);
    scores(&small, &[body(&ids(5, 60), &items(50, 2), true)]);
    let entry = stats(&small).prefix_cache_bytes;
    assert!(entry > 0);
    drop(small);
    let bounded = load(SMOL, |c| c.prefix_cache_bytes = 2 * entry);
    for q in 0..5 {
        scores(&bounded, &[body(&ids(60 + q, 60), &items(q, 2), true)]);
        let s = stats(&bounded);
        assert!(
            s.prefix_cache_bytes <= 2 * entry,
            "{} > bound",
            s.prefix_cache_bytes
        );
    }
    assert_eq!(
        stats(&bounded).prefix_cache_entries,
        2,
        "least recently used evicted"
    );
    // With no cache, a lone job is packed as before: no prefix pass.
    scores(&one, &[body(&ids(5, 60), &items(50, 2), true)]);
    assert_eq!(stats(&one).prefix_passes, 0);
}
