//! The prefill program against a plain-Rust f32 reference of the same
//! architecture, on tiny random models, plus packing, padding, dtype, cache and
//! store behaviour, and a smoke run of the real SmolLM2 GGUF. All on the real
//! CPU PJRT plugin.

use std::path::PathBuf;
use std::sync::Arc;

use scorer_engine::model::{
    DType, DirStore, HeadVariant, LayerLayout, LoadOptions, Model, PackedBatch,
};
use scorer_testkit::tiny::{
    LLAMA_LIKE, QWEN_LIKE, Rng, assert_rows_close, client, ids, packed_batch, per_item_batch,
    reference, tiny_weights,
};

// ---- tests ----------------------------------------------------------------------

#[test]
fn qwen_like_forward_matches_reference() {
    let w = tiny_weights(&QWEN_LIKE, 1);
    let model = Model::load(client(), &w, DType::F32, 0).unwrap();
    let mut r = Rng(7);
    let prompts = vec![ids(&mut r, 9), ids(&mut r, 5), ids(&mut r, 12)];
    let batch = per_item_batch(&prompts, &[3, 17, 95], true);
    for head in [HeadVariant::FullLogprobs, HeadVariant::LabelLogits] {
        let got = model.run(&batch, head).unwrap();
        assert_rows_close(
            &got,
            &reference(&w, &batch, head),
            1e-4,
            &format!("{head:?}"),
        );
    }
}

#[test]
fn llama_like_untied_without_bias_matches_reference() {
    let w = tiny_weights(&LLAMA_LIKE, 2);
    let model = Model::load(client(), &w, DType::F32, 0).unwrap();
    let mut r = Rng(8);
    let prompts = vec![ids(&mut r, 20), ids(&mut r, 7)];
    let batch = per_item_batch(&prompts, &[0, 1, 2, 50, 60], true);
    for head in [HeadVariant::FullLogprobs, HeadVariant::LabelLogits] {
        let got = model.run(&batch, head).unwrap();
        assert_rows_close(
            &got,
            &reference(&w, &batch, head),
            1e-4,
            &format!("{head:?}"),
        );
    }
}

#[test]
fn per_layer_layout_matches_reference() {
    for (arch, seed) in [(&QWEN_LIKE, 21), (&LLAMA_LIKE, 22)] {
        let w = tiny_weights(arch, seed);
        let opts = LoadOptions {
            layout: LayerLayout::PerLayer,
            ..Default::default()
        };
        let model = Model::load_with(client(), &w, opts).unwrap();
        assert_eq!(model.layout(), LayerLayout::PerLayer);
        let mut r = Rng(seed);
        let batch = packed_batch(
            &ids(&mut r, 7),
            &[ids(&mut r, 3), ids(&mut r, 5)],
            &[1, 2, 3],
        );
        for head in [HeadVariant::FullLogprobs, HeadVariant::LabelLogits] {
            let got = model.run(&batch, head).unwrap();
            assert_rows_close(&got, &reference(&w, &batch, head), 1e-4, "per-layer layout");
        }
    }
}

#[test]
fn row_blocked_attention_matches_reference() {
    // Passes of 315, 631 and 1,000 tokens (buckets 320, 640, 1,024) run their attention in 1, 4
    // and 8 causal row blocks; a shared query with items puts segment boundaries inside and
    // across the blocks, and the cached variant adds prefix columns in front of every block.
    for (arch, seed) in [(&QWEN_LIKE, 31), (&LLAMA_LIKE, 32)] {
        let w = tiny_weights(arch, seed);
        let model = Model::load(client(), &w, DType::F32, 0).unwrap();
        let mut r = Rng(seed);
        for (query, items) in [(200, 12), (400, 24), (600, 40)] {
            let q = ids(&mut r, query);
            let items: Vec<Vec<u32>> = (0..items).map(|i| ids(&mut r, 5 + i % 11)).collect();
            let batch = packed_batch(&q, &items, &[1, 2, 3]);
            assert!(batch.tokens.len() > 256, "{} tokens", batch.tokens.len());
            let want = reference(&w, &batch, HeadVariant::FullLogprobs);
            let got = model.run(&batch, HeadVariant::FullLogprobs).unwrap();
            assert_rows_close(&got, &want, 1e-4, "row-blocked attention");
            // The query as a cached prefix, the items after it.
            let kv = model.prefix_kv(&q).unwrap();
            let rest = packed_batch(&[], &items, &[1, 2, 3]);
            let rest = PackedBatch {
                positions: rest.positions.iter().map(|p| p + query as i32).collect(),
                ..rest
            };
            let got = model
                .run_cached(&rest, HeadVariant::FullLogprobs, &kv, query)
                .unwrap();
            assert_rows_close(
                &got,
                &want,
                1e-4,
                "row-blocked attention over a cached prefix",
            );
        }
    }
}

#[test]
fn long_positions_match_reference() {
    // RoPE angles up to ~1000 rad exercise the device's cos/sin range reduction.
    let w = tiny_weights(&QWEN_LIKE, 3);
    let model = Model::load(client(), &w, DType::F32, 0).unwrap();
    let mut r = Rng(9);
    let mut batch = per_item_batch(&[ids(&mut r, 24)], &[5, 6], true);
    batch.positions.iter_mut().for_each(|p| *p += 1000);
    let head = HeadVariant::FullLogprobs;
    assert_rows_close(
        &model.run(&batch, head).unwrap(),
        &reference(&w, &batch, head),
        1e-4,
        "offset positions",
    );
}

#[test]
fn packed_items_equal_per_item_prompts() {
    for (arch, seed) in [(&QWEN_LIKE, 4), (&LLAMA_LIKE, 5)] {
        let w = tiny_weights(arch, seed);
        let model = Model::load(client(), &w, DType::F32, 0).unwrap();
        let mut r = Rng(seed + 10);
        let query = ids(&mut r, 11);
        let items = vec![
            ids(&mut r, 3),
            ids(&mut r, 1),
            ids(&mut r, 6),
            ids(&mut r, 4),
        ];
        let labels = [9, 4, 77];
        let packed = packed_batch(&query, &items, &labels);
        let prompts: Vec<Vec<u32>> = items
            .iter()
            .map(|i| [query.clone(), i.clone()].concat())
            .collect();
        let per_item = per_item_batch(&prompts, &labels, false);
        for head in [HeadVariant::FullLogprobs, HeadVariant::LabelLogits] {
            let a = model.run(&packed, head).unwrap();
            let b = model.run(&per_item, head).unwrap();
            assert_rows_close(&a, &b, 1e-4, "packed vs per-item");
            // And each prompt alone, the plainest form of the computation.
            for (k, p) in prompts.iter().enumerate() {
                let alone = model
                    .run(
                        &per_item_batch(std::slice::from_ref(p), &labels, false),
                        head,
                    )
                    .unwrap();
                assert_rows_close(&a[k..k + 1], &alone, 1e-4, "packed vs alone");
            }
        }
        assert_rows_close(
            &model.run(&packed, HeadVariant::FullLogprobs).unwrap(),
            &reference(&w, &packed, HeadVariant::FullLogprobs),
            1e-4,
            "packed vs reference",
        );
    }
}

#[test]
fn padding_and_other_segments_do_not_change_results() {
    let w = tiny_weights(&QWEN_LIKE, 6);
    let model = Model::load(client(), &w, DType::F32, 0).unwrap();
    let mut r = Rng(11);
    let a = ids(&mut r, 10);
    let b = ids(&mut r, 40);
    let head = HeadVariant::FullLogprobs;
    // `a` alone pads 10 -> 32 tokens, 1 -> 1 scored rows, 3 -> 4 labels.
    let alone = model
        .run(
            &per_item_batch(std::slice::from_ref(&a), &[1, 2, 3], false),
            head,
        )
        .unwrap();
    // After another prompt it pads 50 -> 64 tokens and sits at other positions.
    let mut both = per_item_batch(&[b, a], &[1, 2, 3], false);
    let second = model.run(&both, head).unwrap();
    assert_rows_close(&alone, &second[1..], 1e-5, "padding / neighbours");
    // Ragged label lists are padded to the widest and cut back per row.
    both.label_ids[0] = vec![5];
    let ragged = model.run(&both, head).unwrap();
    assert_eq!(ragged[0].len(), 1);
    assert_rows_close(&ragged[1..], &alone, 1e-5, "ragged labels");
    assert_eq!(model.stats().decode_steps, 0);
}

#[test]
fn bf16_stays_close_to_f32() {
    let w = tiny_weights(&QWEN_LIKE, 12);
    let f = Model::load(client(), &w, DType::F32, 0).unwrap();
    let h = Model::load(client(), &w, DType::BF16, 0).unwrap();
    let mut r = Rng(13);
    let batch = per_item_batch(&[ids(&mut r, 14), ids(&mut r, 6)], &[2, 40, 80], true);
    let a = f.run(&batch, HeadVariant::FullLogprobs).unwrap();
    let b = h.run(&batch, HeadVariant::FullLogprobs).unwrap();
    // bf16 keeps ~3 significant digits; log-probs here are O(1-10).
    assert_rows_close(&b, &a, 0.25, "bf16 vs f32");
    let differs = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .any(|(x, y)| x != y);
    assert!(differs, "the bf16 program really computes in bf16");
    // Matrices halve; norms and biases stay f32.
    let (hb, fb) = (h.stats().weight_bytes, f.stats().weight_bytes);
    assert!(
        hb * 2 > fb && hb * 20 < fb * 11,
        "bf16 {hb} bytes vs f32 {fb}"
    );
}

#[test]
fn executables_are_cached_per_bucket_and_variant() {
    let w = tiny_weights(&LLAMA_LIKE, 14);
    let model = Model::load(client(), &w, DType::F32, 0).unwrap();
    let mut r = Rng(15);
    let short = per_item_batch(&[ids(&mut r, 5)], &[1, 2], false);
    let same_bucket = per_item_batch(&[ids(&mut r, 30)], &[3, 4], false);
    let longer = per_item_batch(&[ids(&mut r, 33)], &[3, 4], false);
    model.run(&short, HeadVariant::FullLogprobs).unwrap();
    model.run(&same_bucket, HeadVariant::FullLogprobs).unwrap();
    model.run(&longer, HeadVariant::FullLogprobs).unwrap();
    model.run(&short, HeadVariant::LabelLogits).unwrap();
    let s = model.stats();
    assert_eq!(s.compiles, 3);
    assert_eq!(s.cache_hits, 1);
    assert_eq!(s.forward_passes, 4);
    assert_eq!(s.tokens_computed, 32 + 32 + 48 + 32);
    assert_eq!(s.tokens_real, 5 + 30 + 33 + 5);
    assert_eq!(s.executables_cached, 3);
}

#[test]
fn store_serves_executables_to_a_new_model() {
    let dir = std::env::temp_dir().join(format!("scorer-model-store-{}", std::process::id()));
    let store = Arc::new(DirStore::new(&dir).unwrap());
    let w = tiny_weights(&QWEN_LIKE, 16);
    let mut r = Rng(17);
    let batch = per_item_batch(&[ids(&mut r, 8)], &[1, 2], false);
    let mut first = Model::load(client(), &w, DType::F32, 0).unwrap();
    first.set_store(store.clone());
    let a = first.run(&batch, HeadVariant::FullLogprobs).unwrap();
    assert_eq!((first.stats().compiles, first.stats().store_hits), (1, 0));
    let mut second = Model::load(client(), &w, DType::F32, 0).unwrap();
    second.set_store(store);
    let b = second.run(&batch, HeadVariant::FullLogprobs).unwrap();
    assert_eq!((second.stats().compiles, second.stats().store_hits), (0, 1));
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_batches_are_rejected() {
    let w = tiny_weights(&QWEN_LIKE, 18);
    let mut model = Model::load(client(), &w, DType::F32, 0).unwrap();
    let good = per_item_batch(&[vec![1, 2, 3]], &[4, 5], false);
    let mut b = good.clone();
    b.tokens[0] = 96;
    assert!(
        model.run(&b, HeadVariant::FullLogprobs).is_err(),
        "token outside vocab"
    );
    let mut b = good.clone();
    b.label_ids[0][0] = 1000;
    assert!(
        model.run(&b, HeadVariant::FullLogprobs).is_err(),
        "label outside vocab"
    );
    let mut b = good.clone();
    b.score_index[0] = 3;
    assert!(
        model.run(&b, HeadVariant::FullLogprobs).is_err(),
        "score index past the end"
    );
    let mut b = good.clone();
    b.positions.pop();
    assert!(
        model.run(&b, HeadVariant::FullLogprobs).is_err(),
        "ragged inputs"
    );
    model.set_max_tokens(64);
    let long = per_item_batch(&[vec![1; 65]], &[4, 5], false);
    assert!(
        model.run(&long, HeadVariant::FullLogprobs).is_err(),
        "over the largest bucket"
    );
    assert_eq!(model.stats().forward_passes, 0);
}

#[test]
fn several_devices_give_the_same_result() {
    let c = client();
    if c.device_count() < 2 {
        // The CPU plugin reports 4 devices; a single-device plugin has nothing to compare.
        return;
    }
    let w = tiny_weights(&QWEN_LIKE, 19);
    let mut r = Rng(20);
    let batch = per_item_batch(&[ids(&mut r, 9)], &[1, 2], false);
    let a = Model::load(c.clone(), &w, DType::F32, 0)
        .unwrap()
        .run(&batch, HeadVariant::FullLogprobs)
        .unwrap();
    let b = Model::load(c.clone(), &w, DType::F32, 1)
        .unwrap()
        .run(&batch, HeadVariant::FullLogprobs)
        .unwrap();
    assert_eq!(a, b);
    assert!(Model::load(c.clone(), &w, DType::F32, c.device_count()).is_err());
}

// ---- the real model ----------------------------------------------------------------

fn model_path(alias: &str) -> PathBuf {
    let home = std::env::var_os("SCORER_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/scorer")
        });
    home.join("models").join(format!("{alias}.gguf"))
}

#[test]
fn smollm2_gguf_forward_runs_and_is_finite() {
    let path = model_path("smollm2-135m-instruct-q4_1");
    let w = scorer_engine::weights::load_gguf(&path)
        .unwrap_or_else(|e| panic!("{} (run `scorer fetch`): {e:#}", path.display()));
    let model = Model::load(client(), &w, DType::F32, 0).unwrap();
    // "The capital of France is" in SmolLM2's vocabulary does not matter here:
    // any ids give a distribution; check it is one.
    let prompt: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let labels: Vec<u32> = (0..8).map(|i| 1000 + 37 * i).collect();
    let batch = per_item_batch(&[prompt], &labels, true);
    let logprobs = model.run(&batch, HeadVariant::FullLogprobs).unwrap();
    let logits = model.run(&batch, HeadVariant::LabelLogits).unwrap();
    for (lp, lg) in logprobs.iter().zip(&logits) {
        assert!(lp.iter().all(|v| v.is_finite() && *v < 0.0), "{lp:?}");
        assert!(lg.iter().all(|v| v.is_finite()), "{lg:?}");
        // Both variants share the logits: log-prob differences equal logit differences.
        for k in 1..lp.len() {
            assert!(((lp[k] - lp[0]) - (lg[k] - lg[0])).abs() < 1e-3);
        }
    }
}
