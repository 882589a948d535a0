//! The prefill program against a plain-Rust f32 reference of the same
//! architecture, on tiny random models, plus packing, padding, dtype, cache and
//! store behaviour, and a smoke run of the real SmolLM2 GGUF. All on the real
//! CPU PJRT plugin.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use scorer_engine::model::{
    DType, DirStore, HeadVariant, LayerLayout, LoadOptions, Model, PackedBatch,
};
use scorer_engine::pjrt::{Client, Plugin, default_plugin_path};
use scorer_engine::weights::{Arch, HostTensor, LayerWeights, ModelConfig, ModelWeights};

fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let plugin =
                Plugin::load(&default_plugin_path()).expect("CPU PJRT plugin (run `scorer fetch`)");
            Client::new(&plugin).expect("PJRT client")
        })
        .clone()
}

// ---- tiny random models -------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor {
            shape: shape.to_vec(),
            data: (0..n).map(|_| offset + scale * self.next()).collect(),
        }
    }
}

struct Tiny {
    arch: Arch,
    bias: bool,
    tied: bool,
    layers: usize,
    heads: usize,
    kv_heads: usize,
}

const QWEN_LIKE: Tiny = Tiny {
    arch: Arch::Qwen2,
    bias: true,
    tied: true,
    layers: 3,
    heads: 4,
    kv_heads: 2,
};

const LLAMA_LIKE: Tiny = Tiny {
    arch: Arch::Llama,
    bias: false,
    tied: false,
    layers: 2,
    heads: 6,
    kv_heads: 3,
};

fn tiny_weights(t: &Tiny, seed: u64) -> ModelWeights {
    let (vocab, h, ffn, hd) = (96, 32, 48, 8);
    let mut r = Rng(seed);
    let (q, kv) = (t.heads * hd, t.kv_heads * hd);
    let ws = 1.5 / (h as f32).sqrt();
    let layers = (0..t.layers)
        .map(|_| LayerWeights {
            attn_norm: r.tensor(&[h], 0.2, 1.0),
            q_proj: r.tensor(&[q, h], ws, 0.0),
            q_bias: t.bias.then(|| r.tensor(&[q], 0.3, 0.0)),
            k_proj: r.tensor(&[kv, h], ws, 0.0),
            k_bias: t.bias.then(|| r.tensor(&[kv], 0.3, 0.0)),
            v_proj: r.tensor(&[kv, h], ws, 0.0),
            v_bias: t.bias.then(|| r.tensor(&[kv], 0.3, 0.0)),
            o_proj: r.tensor(&[h, q], ws, 0.0),
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            ffn_norm: r.tensor(&[h], 0.2, 1.0),
            post_ffn_norm: None,
            gate_proj: r.tensor(&[ffn, h], ws, 0.0),
            up_proj: r.tensor(&[ffn, h], ws, 0.0),
            down_proj: r.tensor(&[h, ffn], 1.5 / (ffn as f32).sqrt(), 0.0),
        })
        .collect();
    ModelWeights {
        config: ModelConfig {
            arch: t.arch,
            vocab_size: vocab,
            hidden_size: h,
            intermediate_size: ffn,
            num_layers: t.layers,
            num_heads: t.heads,
            num_kv_heads: t.kv_heads,
            head_dim: hd,
            context_length: 32768,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: t.tied,
            attention_bias: t.bias,
            bos_token_id: None,
            eos_token_id: None,
            name: "tiny".into(),
            features: Default::default(),
        },
        embed_tokens: r.tensor(&[vocab, h], 1.0, 0.0),
        layers,
        final_norm: r.tensor(&[h], 0.2, 1.0),
        lm_head: (!t.tied).then(|| r.tensor(&[vocab, h], 1.0, 0.0)),
    }
}

// ---- the reference forward ------------------------------------------------------

fn matvec(w: &HostTensor, x: &[f32], bias: Option<&HostTensor>) -> Vec<f32> {
    let (rows, cols) = (w.shape[0], w.shape[1]);
    (0..rows)
        .map(|r| {
            let s: f64 = (0..cols)
                .map(|c| w.data[r * cols + c] as f64 * x[c] as f64)
                .sum();
            s as f32 + bias.map_or(0.0, |b| b.data[r])
        })
        .collect()
}

fn rms_norm(x: &[f32], w: &HostTensor, eps: f32) -> Vec<f32> {
    let ms: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps as f64).sqrt();
    x.iter()
        .zip(&w.data)
        .map(|(v, g)| (*v as f64 * r) as f32 * g)
        .collect()
}

fn rope(x: &mut [f32], pos: i32, theta: f32) {
    let hd = x.len();
    let half = hd / 2;
    for i in 0..half {
        let inv = (1.0 / (theta as f64).powf((2 * i) as f64 / hd as f64)) as f32;
        let angle = (pos as f32 * inv) as f64;
        let (c, s) = (angle.cos() as f32, angle.sin() as f32);
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

fn attends(b: &PackedBatch, i: usize, j: usize) -> bool {
    j <= i
        && b.segment[j] != -1
        && (b.segment[j] == b.segment[i] || b.segment[j] == b.prefix_segment[i])
}

/// Final-normed hidden states of every token.
fn reference_hidden(w: &ModelWeights, b: &PackedBatch) -> Vec<Vec<f32>> {
    let c = &w.config;
    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let g = nh / nkv;
    let n = b.tokens.len();
    let mut x: Vec<Vec<f32>> = b
        .tokens
        .iter()
        .map(|&t| w.embed_tokens.row(t as usize).to_vec())
        .collect();
    for l in &w.layers {
        let mut q = Vec::new();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for (i, xi) in x.iter().enumerate() {
            let h = rms_norm(xi, &l.attn_norm, c.rms_norm_eps);
            let mut qi = matvec(&l.q_proj, &h, l.q_bias.as_ref());
            let mut ki = matvec(&l.k_proj, &h, l.k_bias.as_ref());
            for head in qi.chunks_mut(hd) {
                rope(head, b.positions[i], c.rope_theta);
            }
            for head in ki.chunks_mut(hd) {
                rope(head, b.positions[i], c.rope_theta);
            }
            q.push(qi);
            k.push(ki);
            v.push(matvec(&l.v_proj, &h, l.v_bias.as_ref()));
        }
        for i in 0..n {
            let mut attn = vec![0f32; nh * hd];
            for head in 0..nh {
                let kvh = head / g;
                let qh = &q[i][head * hd..(head + 1) * hd];
                let js: Vec<usize> = (0..n).filter(|&j| attends(b, i, j)).collect();
                if js.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = js
                    .iter()
                    .map(|&j| {
                        let kh = &k[j][kvh * hd..(kvh + 1) * hd];
                        qh.iter()
                            .zip(kh)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (&j, s) in js.iter().zip(&scores) {
                    let p = (s - m).exp() / z;
                    for d in 0..hd {
                        attn[head * hd + d] += (p * v[j][kvh * hd + d] as f64) as f32;
                    }
                }
            }
            let o = matvec(&l.o_proj, &attn, None);
            x[i].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms_norm(&x[i], &l.ffn_norm, c.rms_norm_eps);
            let gate = matvec(&l.gate_proj, &h, None);
            let up = matvec(&l.up_proj, &h, None);
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = matvec(&l.down_proj, &act, None);
            x[i].iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
    }
    x.iter()
        .map(|xi| rms_norm(xi, &w.final_norm, c.rms_norm_eps))
        .collect()
}

/// Reference label values per scored position.
fn reference(w: &ModelWeights, b: &PackedBatch, head: HeadVariant) -> Vec<Vec<f32>> {
    let hidden = reference_hidden(w, b);
    let lm = w.lm_head_or_embed();
    b.score_index
        .iter()
        .zip(&b.label_ids)
        .map(|(&i, labels)| {
            let logits = matvec(lm, &hidden[i as usize], None);
            let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + logits
                .iter()
                .map(|v| (*v as f64 - m).exp())
                .sum::<f64>()
                .ln();
            labels
                .iter()
                .map(|&id| match head {
                    HeadVariant::LabelLogits => logits[id as usize],
                    HeadVariant::FullLogprobs => (logits[id as usize] as f64 - lse) as f32,
                })
                .collect()
        })
        .collect()
}

fn assert_rows_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {r} width");
        for (c, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(a.is_finite(), "{what}: [{r}][{c}] is {a}");
            assert!((a - b).abs() <= tol, "{what}: [{r}][{c}] got {a}, want {b}");
        }
    }
}

// ---- batches ------------------------------------------------------------------

/// Each prompt its own segment; every listed position of each prompt scored.
fn per_item_batch(prompts: &[Vec<u32>], labels: &[u32], score_all: bool) -> PackedBatch {
    let mut b = PackedBatch::default();
    for (s, p) in prompts.iter().enumerate() {
        let start = b.tokens.len();
        b.tokens.extend(p);
        b.positions.extend(0..p.len() as i32);
        b.segment.extend(std::iter::repeat_n(s as i32, p.len()));
        b.prefix_segment.extend(std::iter::repeat_n(-1, p.len()));
        let scored: Vec<usize> = if score_all {
            (0..p.len()).collect()
        } else {
            vec![p.len() - 1]
        };
        for k in scored {
            b.score_index.push((start + k) as i32);
            b.label_ids.push(labels.to_vec());
        }
    }
    b
}

/// The query as segment 0, each item a segment that also sees the query, with
/// positions continuing from the query; the last token of each item is scored.
fn packed_batch(query: &[u32], items: &[Vec<u32>], labels: &[u32]) -> PackedBatch {
    let mut b = PackedBatch {
        tokens: query.to_vec(),
        positions: (0..query.len() as i32).collect(),
        segment: vec![0; query.len()],
        prefix_segment: vec![-1; query.len()],
        ..Default::default()
    };
    for (k, item) in items.iter().enumerate() {
        let seg = k as i32 + 1;
        b.tokens.extend(item);
        b.positions
            .extend((0..item.len() as i32).map(|p| p + query.len() as i32));
        b.segment.extend(std::iter::repeat_n(seg, item.len()));
        b.prefix_segment.extend(std::iter::repeat_n(0, item.len()));
        b.score_index.push(b.tokens.len() as i32 - 1);
        b.label_ids.push(labels.to_vec());
    }
    b
}

fn ids(r: &mut Rng, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| ((r.next() + 1.0) * 47.9) as u32 % 96)
        .collect()
}

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
