//! Phase 4 of the test plan (`test_score_api_jax_features.py`), for XLA through PJRT instead of
//! JAX: what leaves the device, device placement, prefill-only counters, and prefix reuse — on
//! the real models and the real CPU plugin. Own test binary, so the process-wide device→host
//! byte counter sees only these tests (which run one at a time, see `common::serial`).

mod common;

use std::sync::LazyLock;

use common::*;
use scorer_engine::model::buckets::{label_bucket, score_bucket, token_bucket};
use scorer_engine::pjrt::d2h_bytes_total;
use scorer_engine::runtime::Engine;
use scorer_protocol::{ScoreBackend, ScoreResponse};
use serde_json::{Value, json};

static QWEN_F32: LazyLock<Engine> = LazyLock::new(|| load(QWEN, |_| {}));
static SMOL_F32: LazyLock<Engine> = LazyLock::new(|| load(SMOL, |_| {}));

fn score(engine: &Engine, body: &Value) -> ScoreResponse {
    engine
        .score(&req(body.clone()))
        .unwrap_or_else(|e| panic!("{body} scores: {e}"))
}

/// Bytes copied device→host while scoring `body` (after a warm-up call, so compiling is not in it).
fn d2h_of(engine: &Engine, body: &Value) -> (u64, ScoreResponse) {
    score(engine, body);
    let before = d2h_bytes_total();
    let resp = score(engine, body);
    (d2h_bytes_total() - before, resp)
}

fn items(n: usize) -> Vec<String> {
    (0..n).map(|i| format!(" choice {i}")).collect()
}

fn labels(n: usize, first: i64) -> Vec<i64> {
    (0..n as i64).map(|i| first + i).collect()
}

/// Plan 4.1: label scores are picked on the device (the `logprobs.at[i, token_ids]` of the JAX
/// plan is a gather inside the compiled program): what comes back is the [N, L] result padded
/// to its buckets, f32 — never a vocabulary-sized row (151,936 floats = 593 KiB per item).
#[test]
fn test_score_on_device_extraction() {
    let _serial = serial();
    let engine = &*QWEN_F32;
    for (n, l, apply_softmax) in [(1, 2, true), (3, 4, false), (8, 2, true)] {
        let body = json!({"query": "Which is best?", "items": items(n),
            "label_token_ids": labels(l, 100), "apply_softmax": apply_softmax});
        let (moved, resp) = d2h_of(engine, &body);
        assert_well_formed(&resp.scores, n, l, apply_softmax);
        let floor = (n * l * 4) as u64;
        let ceiling = (score_bucket(n) * label_bucket(l) * 4) as u64;
        eprintln!("[on-device] N={n} L={l} softmax={apply_softmax}: {moved} bytes device->host");
        assert!(
            (floor..=ceiling).contains(&moved),
            "N={n} L={l}: moved {moved} bytes, expected the [N, L] result ({floor}..={ceiling})"
        );
        assert!(
            moved < (QWEN_VOCAB * 4) as u64,
            "less than one vocabulary row"
        );
    }
}

/// Plan 4.1 (sharding correctness): on the CPU plugin the analogue of sharding strategies is
/// which device holds the weights and runs the program; the same batch gives bit-identical
/// scores on every device the plugin exposes (SmolLM2: one engine per device).
#[test]
fn test_score_sharding_correctness() {
    let _serial = serial();
    let body = json!({"query": "Is the following a fruit? Answer Yes or No:",
        "items": [" apple", " truck", " pear", " stone"],
        "label_token_ids": [SMOL_YES, SMOL_NO], "apply_softmax": false});
    let reference = score(&SMOL_F32, &body);
    let devices = plugin_device_count();
    assert!(
        devices >= 2,
        "the CPU plugin exposes several devices, saw {devices}"
    );
    for device in 1..devices {
        let engine = load(SMOL, |c| c.device = device);
        let resp = score(&engine, &body);
        assert_eq!(resp.scores, reference.scores, "device {device} vs device 0");
    }
}

/// Plan 4.2: prefill only, shown by counters (timings are printed, never asserted): one forward
/// pass per multi-item request, no decode step, and the tokens computed are the shared query once
/// plus each item's own tokens — against the per-item prompts a one-prompt-per-item engine would
/// compute.
#[test]
fn test_score_prefill_only_performance() {
    let _serial = serial();
    let engine = &*QWEN_F32;
    let body = json!({
        "query": "You are a shopping assistant. Is the following product a kitchen appliance? Answer Yes or No. Product:",
        "items": [" blender", " hiking boots", " toaster oven", " paperback novel",
                  " espresso machine", " garden hose"],
        "label_token_ids": [QWEN_YES, QWEN_NO], "apply_softmax": true});
    score(engine, &body); // compile outside the measured call
    let job = engine.prepare(&req(body.clone())).expect("prepare");
    let prompt_tokens: usize = job.prompts.iter().map(Vec::len).sum();
    let prefix = common_prefix(&job.prompts);
    let packed = prefix + job.prompts.iter().map(|p| p.len() - prefix).sum::<usize>();

    let before = engine.stats().expect("stats");
    let started = std::time::Instant::now();
    let resp = score(engine, &body);
    let elapsed = started.elapsed();
    let after = engine.stats().expect("stats");

    assert_eq!(after.forward_passes - before.forward_passes, 1);
    assert_eq!(after.decode_steps, 0);
    assert_eq!(resp.usage.completion_tokens, 0);
    assert_eq!(resp.usage.prompt_tokens, prompt_tokens);
    assert_eq!((after.tokens_real - before.tokens_real) as usize, packed);
    let bucket = token_bucket(packed, usize::MAX).expect("a bucket");
    assert_eq!(
        (after.tokens_computed - before.tokens_computed) as usize,
        bucket
    );
    assert!(packed < prompt_tokens, "the query is computed once");
    eprintln!(
        "[prefill] 6 items: {prompt_tokens} prompt tokens, {packed} computed ({bucket} with \
         padding), 1 pass, {:.2} s",
        elapsed.as_secs_f64()
    );
}

/// Plan 4.2: only the [N, L] result leaves the device, so device→host memory is O(N) and not
/// O(vocab): the same request shape moves the same bytes on SmolLM2 (49,152-token vocabulary) as
/// on Qwen (151,936), and 32 items move 16 times what 2 items move. Process memory is reported.
#[test]
fn test_score_memory_efficiency() {
    let _serial = serial();
    let body = |n: usize, yes: i64, no: i64| {
        json!({"query": "Rate:", "items": items(n), "label_token_ids": [yes, no],
               "apply_softmax": false})
    };
    let (qwen_2, _) = d2h_of(&QWEN_F32, &body(2, QWEN_YES, QWEN_NO));
    let (smol_2, _) = d2h_of(&SMOL_F32, &body(2, SMOL_YES, SMOL_NO));
    let (smol_32, resp) = d2h_of(&SMOL_F32, &body(32, SMOL_YES, SMOL_NO));
    assert_well_formed(&resp.scores, 32, 2, false);
    assert_eq!(
        qwen_2, smol_2,
        "bytes moved do not depend on the vocabulary size"
    );
    assert_eq!(smol_32, 16 * smol_2, "bytes moved grow with the item count");
    assert_eq!(smol_32, 32 * 2 * 4, "exactly the [32, 2] f32 result");
    let (rss, peak) = rss_kib();
    eprintln!(
        "[memory] d2h: 2 items {smol_2} B (SmolLM2) = {qwen_2} B (Qwen), 32 items {smol_32} B; \
         process RSS {} MiB, peak {} MiB (both engines' weights)",
        rss / 1024,
        peak / 1024
    );
}

/// Within one request the query is computed once (plan 4.3's cross-request cache is
/// `tests/prefix_cache.rs::test_score_with_prefix_caching`). This query is short of the cache's
/// 32-token minimum, so it runs on the plain packed path: `tokens_real` is the prefix once plus
/// each item's own tokens, and every row equals the item scored alone.
#[test]
fn query_computed_once_within_a_request() {
    let _serial = serial();
    let engine = &*QWEN_F32;
    let query =
        "Context: the warehouse stocks fruit, tools and books. Question: is this item fruit? Item:";
    let body = json!({"query": query, "items": [" apple", " hammer", " pear", " atlas"],
        "label_token_ids": [QWEN_YES, QWEN_NO], "apply_softmax": true});
    let job = engine.prepare(&req(body.clone())).expect("prepare");
    let prefix = common_prefix(&job.prompts);
    let query_tokens = engine.tokenizer().encode(query).expect("encode").len();
    assert!(
        prefix >= query_tokens,
        "the whole query is shared ({prefix} < {query_tokens})"
    );

    let before = engine.stats().expect("stats");
    let resp = score(engine, &body);
    let mid = engine.stats().expect("stats");
    let computed = (mid.tokens_real - before.tokens_real) as usize;
    let own: usize = job.prompts.iter().map(|p| p.len() - prefix).sum();
    assert_eq!(
        computed,
        prefix + own,
        "prefix computed once, then each item's tokens"
    );
    assert!(computed < resp.usage.prompt_tokens);

    for (i, item) in [" apple", " hammer", " pear", " atlas"].iter().enumerate() {
        let alone = score(
            engine,
            &json!({"query": query, "items": [item], "label_token_ids": [QWEN_YES, QWEN_NO],
                    "apply_softmax": true}),
        );
        assert!(
            max_diff(&resp.scores[i..=i], &alone.scores) <= 1e-4,
            "item {i}"
        );
    }
    let again_before = engine.stats().expect("stats");
    score(engine, &body);
    let again = engine.stats().expect("stats");
    eprintln!(
        "[prefix] 4 items: {} prompt tokens, {computed} computed; the same request again \
         computed {} (below the cache's 32-token minimum: computed again)",
        resp.usage.prompt_tokens,
        again.tokens_real - again_before.tokens_real
    );
}

/// Plan 4.3 (parallel sampling): the same prompt scored n times in one request — the prefix is
/// the whole prompt, computed once and read n times: `tokens_real` is one prompt's length, one
/// pass, and all n rows are identical (across requests: `tests/prefix_cache.rs`).
#[test]
fn parallel_samples_computed_once_within_a_request() {
    let _serial = serial();
    let engine = &*QWEN_F32;
    let n = 8;
    let body = json!({"query": "Is Paris the capital of France? Answer:",
        "items": vec![" Yes"; n], "label_token_ids": [QWEN_YES, QWEN_NO], "apply_softmax": false});
    let job = engine.prepare(&req(body.clone())).expect("prepare");
    let one = job.prompts[0].len();
    let before = engine.stats().expect("stats");
    let resp = score(engine, &body);
    let after = engine.stats().expect("stats");
    assert_eq!(after.forward_passes - before.forward_passes, 1);
    assert_eq!(
        (after.tokens_real - before.tokens_real) as usize,
        one,
        "computed once"
    );
    assert_eq!(
        after.scored_positions - before.scored_positions,
        n as u64,
        "read n times"
    );
    assert_eq!(
        resp.usage.prompt_tokens,
        n * one,
        "usage counts every prompt"
    );
    assert_well_formed(&resp.scores, n, 2, false);
    assert!(
        resp.scores.iter().all(|r| *r == resp.scores[0]),
        "identical rows"
    );
}

fn common_prefix(prompts: &[Vec<u32>]) -> usize {
    let first = &prompts[0];
    prompts[1..].iter().fold(first.len(), |len, p| {
        first[..len]
            .iter()
            .zip(p)
            .take_while(|(a, b)| a == b)
            .count()
    })
}
