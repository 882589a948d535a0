//! Tiny random decoder models and a plain-Rust f32 reference forward of the same architecture
//! (f64 accumulation), for tests of the prefill program on the real CPU PJRT plugin: weights,
//! batches (per-item and packed), the reference label values and a row comparison.

use std::sync::OnceLock;

use scorer_engine::model::{HeadVariant, PackedBatch};
use scorer_engine::pjrt::{Client, Plugin, default_plugin_path};
use scorer_engine::weights::{
    Arch, HostTensor, LayerAttention, LayerWeights, ModelConfig, ModelWeights,
};

/// The process's one CPU client.
pub fn client() -> Client {
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

/// A small deterministic generator (an LCG): the same weights and ids on every run.
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor {
            shape: shape.to_vec(),
            data: (0..n).map(|_| offset + scale * self.uniform()).collect(),
        }
    }
}

pub struct Tiny {
    pub arch: Arch,
    pub bias: bool,
    pub tied: bool,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

pub const QWEN_LIKE: Tiny = Tiny {
    arch: Arch::Qwen2,
    bias: true,
    tied: true,
    layers: 3,
    heads: 4,
    kv_heads: 2,
};

pub const LLAMA_LIKE: Tiny = Tiny {
    arch: Arch::Llama,
    bias: false,
    tied: false,
    layers: 2,
    heads: 6,
    kv_heads: 3,
};

pub fn tiny_weights(t: &Tiny, seed: u64) -> ModelWeights {
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

pub fn matvec(w: &HostTensor, x: &[f32], bias: Option<&HostTensor>) -> Vec<f32> {
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

pub fn rms_norm(x: &[f32], w: &HostTensor, eps: f32) -> Vec<f32> {
    let ms: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps as f64).sqrt();
    x.iter()
        .zip(&w.data)
        .map(|(v, g)| (*v as f64 * r) as f32 * g)
        .collect()
}

pub fn rope(x: &mut [f32], pos: i32, theta: f32) {
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

/// Whether token `i` sees token `j`: causal, same segment or `i`'s prefix segment, and within
/// `window` model positions when the layer has one.
pub fn attends(b: &PackedBatch, i: usize, j: usize, window: Option<usize>) -> bool {
    j <= i
        && b.segment[j] != -1
        && (b.segment[j] == b.segment[i] || b.segment[j] == b.prefix_segment[i])
        && window.is_none_or(|w| ((b.positions[i] - b.positions[j]) as i64) < w as i64)
}

/// Final-normed hidden states of every token.
pub fn reference_hidden(w: &ModelWeights, b: &PackedBatch) -> Vec<Vec<f32>> {
    let c = &w.config;
    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let g = nh / nkv;
    let n = b.tokens.len();
    let mut x: Vec<Vec<f32>> = b
        .tokens
        .iter()
        .map(|&t| w.embed_tokens.row(t as usize).to_vec())
        .collect();
    for (li, l) in w.layers.iter().enumerate() {
        let window = (c.features.layer_attention(li) == LayerAttention::Sliding)
            .then_some(c.features.sliding_window)
            .flatten();
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
                let js: Vec<usize> = (0..n).filter(|&j| attends(b, i, j, window)).collect();
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
pub fn reference(w: &ModelWeights, b: &PackedBatch, head: HeadVariant) -> Vec<Vec<f32>> {
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

pub fn assert_rows_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
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
pub fn per_item_batch(prompts: &[Vec<u32>], labels: &[u32], score_all: bool) -> PackedBatch {
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
pub fn packed_batch(query: &[u32], items: &[Vec<u32>], labels: &[u32]) -> PackedBatch {
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

pub fn ids(r: &mut Rng, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| ((r.uniform() + 1.0) * 47.9) as u32 % 96)
        .collect()
}
