//! Tiled attention (`model/tiles.rs`) against the plain-Rust reference and against the row
//! blocks, on tiny random models and the real CPU PJRT plugin: a query with short items, items
//! over a cached prefix, unrelated short prompts, a sliding window that tiles cross, items too
//! long for a tile (refused) and two queries in one pass.

use scorer_engine::model::{Attention, DType, HeadVariant, Model, PackedBatch};
use scorer_engine::weights::{LayerAttention, ModelWeights};
use scorer_testkit::tiny::{
    LLAMA_LIKE, QWEN_LIKE, Rng, assert_rows_close, client, ids, packed_batch, per_item_batch,
    reference, tiny_weights,
};

const HEAD: HeadVariant = HeadVariant::FullLogprobs;

fn models(w: &ModelWeights) -> (Model, Model) {
    let tiled = Model::load(client(), w, DType::F32, 0).unwrap();
    assert_eq!(tiled.attention(), Attention::Tiled, "the default");
    let mut blocks = Model::load(client(), w, DType::F32, 0).unwrap();
    blocks.set_attention(Attention::RowBlocks);
    (tiled, blocks)
}

/// Runs `batch` (over `cached` when given) on both models; checks both against the reference
/// (computed on `full`, the batch with the cached prefix in front) and each other; returns
/// whether the tiled model tiled it.
fn check(
    w: &ModelWeights,
    (tiled, blocks): &(Model, Model),
    batch: &PackedBatch,
    cached: Option<(&[u32], &PackedBatch)>,
    what: &str,
) -> bool {
    let before = tiled.stats().tiled_passes;
    let (got, base, want) = match cached {
        None => (
            tiled.run(batch, HEAD).unwrap(),
            blocks.run(batch, HEAD).unwrap(),
            reference(w, batch, HEAD),
        ),
        Some((prefix, full)) => {
            let kt = tiled.prefix_kv(prefix).unwrap();
            let kb = blocks.prefix_kv(prefix).unwrap();
            let n = prefix.len();
            (
                tiled.run_cached(batch, HEAD, &kt, n).unwrap(),
                blocks.run_cached(batch, HEAD, &kb, n).unwrap(),
                reference(w, full, HEAD),
            )
        }
    };
    assert_rows_close(&got, &want, 1e-4, &format!("{what}: tiled vs reference"));
    assert_rows_close(&got, &base, 1e-4, &format!("{what}: tiled vs row blocks"));
    tiled.stats().tiled_passes > before
}

fn items(r: &mut Rng, n: usize, lo: usize, spread: usize) -> Vec<Vec<u32>> {
    (0..n).map(|i| ids(r, lo + i % spread)).collect()
}

#[test]
fn a_query_with_short_items_is_tiled_and_exact() {
    for (arch, seed) in [(&QWEN_LIKE, 41), (&LLAMA_LIKE, 42)] {
        let w = tiny_weights(arch, seed);
        let m = models(&w);
        let mut r = Rng(seed);
        // Query lengths around the 32-token steps of the shared region, items up to 33 tokens
        // (32-row tiles) and up to 60 (64-row tiles).
        for (query, n, lo, spread) in [(200, 24, 12, 11), (97, 20, 20, 14), (300, 40, 3, 40)] {
            let q = ids(&mut r, query);
            let it = items(&mut r, n, lo, spread);
            let batch = packed_batch(&q, &it, &[1, 2, 3]);
            let what = format!("query {query}, {n} items");
            assert!(check(&w, &m, &batch, None, &what), "{what}: not tiled");
        }
    }
}

#[test]
fn items_over_a_cached_prefix_are_tiled_and_exact() {
    let w = tiny_weights(&QWEN_LIKE, 43);
    let m = models(&w);
    let mut r = Rng(43);
    for (query, n) in [(300, 30), (1000, 48)] {
        let q = ids(&mut r, query);
        let it = items(&mut r, n, 4, 25);
        let full = packed_batch(&q, &it, &[4, 5]);
        let rest = packed_batch(&[], &it, &[4, 5]);
        let rest = PackedBatch {
            positions: rest.positions.iter().map(|p| p + query as i32).collect(),
            ..rest
        };
        let what = format!("cached query {query}, {n} items");
        assert!(
            check(&w, &m, &rest, Some((&q, &full)), &what),
            "{what}: not tiled"
        );
    }
}

#[test]
fn unrelated_short_prompts_are_tiled_and_exact() {
    // Many small jobs in one pass: no shared columns at all, each row sees its own window.
    let w = tiny_weights(&LLAMA_LIKE, 44);
    let m = models(&w);
    let mut r = Rng(44);
    let prompts = items(&mut r, 40, 5, 20);
    let batch = per_item_batch(&prompts, &[7], false);
    assert!(
        check(&w, &m, &batch, None, "unrelated prompts"),
        "not tiled"
    );
}

#[test]
fn sliding_windows_inside_tiles_stay_exact() {
    // Every other layer sees 24 positions back: windows end inside the query, inside the
    // items and across tile boundaries.
    let mut w = tiny_weights(&QWEN_LIKE, 45);
    w.config.features.sliding_window = Some(24);
    w.config.features.layer_attention = (0..QWEN_LIKE.layers)
        .map(|i| {
            if i % 2 == 0 {
                LayerAttention::Sliding
            } else {
                LayerAttention::Full
            }
        })
        .collect();
    let m = models(&w);
    let mut r = Rng(45);
    let q = ids(&mut r, 230);
    let it = items(&mut r, 40, 10, 20);
    let batch = packed_batch(&q, &it, &[1, 2]);
    assert!(check(&w, &m, &batch, None, "sliding window"), "not tiled");
}

#[test]
fn long_items_keep_the_row_blocks_and_two_jobs_stay_exact() {
    let w = tiny_weights(&QWEN_LIKE, 46);
    let m = models(&w);
    let mut r = Rng(46);
    // Two items as long as the pass is wide: a tile would not hold them.
    let q = ids(&mut r, 64);
    let long = vec![ids(&mut r, 300), ids(&mut r, 250)];
    let batch = packed_batch(&q, &long, &[1]);
    assert!(!check(&w, &m, &batch, None, "long items"), "tiled");
    // Two jobs in one pass: exact whichever way it runs (tiled only where the second query ends
    // inside the shared columns or the first window; the unit tests pin the refusals).
    let (q1, q2) = (ids(&mut r, 150), ids(&mut r, 150));
    let (i1, i2) = (items(&mut r, 6, 10, 5), items(&mut r, 6, 10, 5));
    let mut batch = packed_batch(&q1, &i1, &[2]);
    let second = packed_batch(&q2, &i2, &[3]);
    let base = batch.segment.iter().max().copied().unwrap_or(0) + 1;
    let offset = batch.tokens.len() as i32;
    batch.tokens.extend(&second.tokens);
    batch.positions.extend(&second.positions);
    batch
        .segment
        .extend(second.segment.iter().map(|s| s + base));
    batch.prefix_segment.extend(
        second
            .prefix_segment
            .iter()
            .map(|&p| if p < 0 { p } else { p + base }),
    );
    batch
        .score_index
        .extend(second.score_index.iter().map(|i| i + offset));
    batch.label_ids.extend(second.label_ids);
    check(&w, &m, &batch, None, "two jobs");
}
