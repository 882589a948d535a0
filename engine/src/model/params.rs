//! How host weights become the program's parameters: which tensors, in what
//! order, shape, element type and layout.
//!
//! Per-layer tensors are one parameter per layer (the unrolled default), or, in the stacked
//! layout, stacked into `[layers, ...]` so one `stablehlo.while` body can select layer `i`
//! with `dynamic_slice` (compile time independent of depth).
//!
//! Projections are stored `[in, out]` (transposed from HF's `[out, in]` once, when the
//! parameters are built: a warm start maps them from the weight cache as they are): the CPU
//! plugin's dot packs the weight operand on every call, and with the contracted dimension
//! leading that packing reads contiguous memory — 1.5× faster for a 64-token pass, 1.1× at 256
//! tokens, the same at 2,048 (docs/BENCHMARKS.md). They are fused where they share an input:
//! q|k|v columns into one matrix, gate|up into another, so each is one large matmul over all
//! tokens.

use std::borrow::Cow;

use anyhow::{Result, bail};
use half::bf16;

use crate::hlo::ElemType;
use crate::weights::{
    Activation, HostTensor, LayerAttention, LayerWeights, ModelConfig, ModelWeights, NormKind,
    RopeScaling,
};

use super::DType;

/// One kind of attention layer: its window and its RoPE table (Gemma 3 has two kinds, sliding
/// layers with the local theta and full layers with the global one; most models have one).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AttnVariant {
    /// Keys at model positions `> p - window` are visible to a query at `p`; `None`: all earlier.
    pub window: Option<i64>,
    /// `inv_freq[head_dim / 2]` as f32 bit patterns.
    pub inv_freq_bits: Vec<u32>,
    /// The factor on cos and sin (YaRN's attention factor; 1 otherwise), as bits.
    pub rope_scale_bits: u32,
}

impl AttnVariant {
    pub fn inv_freq(&self) -> Vec<f32> {
        self.inv_freq_bits
            .iter()
            .map(|b| f32::from_bits(*b))
            .collect()
    }

    pub fn rope_scale(&self) -> f32 {
        f32::from_bits(self.rope_scale_bits)
    }
}

/// The shape facts and block features a program needs, derived from the config (f32 values as
/// bit patterns, so `Dims` can key the executable cache).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dims {
    pub vocab: i64,
    pub hidden: i64,
    pub ffn: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub eps_bits: u32,
    pub bias: bool,
    pub tied: bool,
    /// Gemma's `(1 + w)` norms.
    pub norm_one_plus: bool,
    /// GELU-tanh instead of SiLU in the gated MLP.
    pub gelu: bool,
    pub embed_scale_bits: Option<u32>,
    pub qk_norm: bool,
    /// Post-attention and post-feed-forward norms (Gemma).
    pub sandwich: bool,
    pub attn_scale_bits: u32,
    pub final_softcap_bits: Option<u32>,
    /// The distinct attention kinds, and per layer the index of its kind.
    pub variants: Vec<AttnVariant>,
    pub layer_variant: Vec<usize>,
}

impl Dims {
    pub fn new(c: &ModelConfig, tied: bool) -> Dims {
        let f = &c.features;
        let mut variants: Vec<AttnVariant> = Vec::new();
        let mut layer_variant = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let sliding = f.layer_attention(i) == LayerAttention::Sliding;
            let (theta, scaling) = match f.local_rope_theta {
                Some(local) if sliding => (local, RopeScaling::None),
                _ => (c.rope_theta, f.rope_scaling.clone()),
            };
            let (inv_freq, scale) = scaling.frequencies(theta, c.head_dim);
            let v = AttnVariant {
                window: if sliding {
                    f.sliding_window.map(|w| w as i64)
                } else {
                    None
                },
                inv_freq_bits: inv_freq.iter().map(|x| x.to_bits()).collect(),
                rope_scale_bits: scale.to_bits(),
            };
            let k = match variants.iter().position(|x| *x == v) {
                Some(k) => k,
                None => {
                    variants.push(v);
                    variants.len() - 1
                }
            };
            layer_variant.push(k);
        }
        let bits = |x: Option<f32>| x.map(f32::to_bits);
        let scale = f
            .attn_scale
            .unwrap_or((1.0 / (c.head_dim as f64).sqrt()) as f32);
        Dims {
            vocab: c.vocab_size as i64,
            hidden: c.hidden_size as i64,
            ffn: c.intermediate_size as i64,
            layers: c.num_layers as i64,
            heads: c.num_heads as i64,
            kv_heads: c.num_kv_heads as i64,
            head_dim: c.head_dim as i64,
            eps_bits: c.rms_norm_eps.to_bits(),
            bias: c.attention_bias,
            tied,
            norm_one_plus: f.norm == NormKind::OnePlusWeight,
            gelu: f.activation == Activation::GeluTanh,
            embed_scale_bits: bits(f.embed_scale),
            qk_norm: f.qk_norm,
            sandwich: f.sandwich_norms,
            attn_scale_bits: scale.to_bits(),
            final_softcap_bits: bits(f.final_softcap),
            variants,
            layer_variant,
        }
    }

    pub fn q_width(&self) -> i64 {
        self.heads * self.head_dim
    }

    pub fn kv_width(&self) -> i64 {
        self.kv_heads * self.head_dim
    }

    pub fn qkv_width(&self) -> i64 {
        self.q_width() + 2 * self.kv_width()
    }

    pub fn eps(&self) -> f32 {
        f32::from_bits(self.eps_bits)
    }
}

/// The weight parameters of the program, in parameter order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// `[vocab, hidden]`; also the head when tied.
    Embed,
    /// `[vocab, hidden]`, only when not tied.
    LmHead,
    /// `[hidden]`.
    FinalNorm,
    /// `[layers, hidden]`.
    AttnNorm,
    /// `[layers, hidden, q + 2 kv]`.
    Wqkv,
    /// `[layers, q + 2 kv]`, only with attention biases.
    Bqkv,
    /// `[layers, q, hidden]`.
    Wo,
    /// `[layers, head_dim]` each, with QK-norm.
    QNorm,
    KNorm,
    /// `[layers, hidden]`, with sandwich norms.
    PostAttnNorm,
    /// `[layers, hidden]`.
    FfnNorm,
    /// `[layers, hidden]`, with sandwich norms.
    PostFfnNorm,
    /// `[layers, hidden, 2 ffn]`: gate columns then up columns.
    Wgu,
    /// `[layers, ffn, hidden]`.
    Wdown,
}

/// How per-layer weights are passed to the program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerLayout {
    /// One `[layers, ...]` parameter per weight kind; the program loops over
    /// layers with `stablehlo.while` and `dynamic_slice` (compile time flat in
    /// depth; each layer's weights are copied out of the stack every pass: a 34-token pass of
    /// Qwen2.5-0.5B takes 1.5× as long as with [`LayerLayout::PerLayer`]).
    Stacked,
    /// One parameter per weight per layer; the program is unrolled (no copies,
    /// compile time grows with depth: about 0.5 s against 0.4 s for 24 layers on the CPU
    /// plugin). The default.
    #[default]
    PerLayer,
}

#[derive(Clone, Debug)]
pub(crate) struct ParamSpec {
    pub slot: Slot,
    /// `Some(i)`: layer `i`'s tensor alone (per-layer layout); `None` for global
    /// weights and for stacked per-layer weights.
    pub layer: Option<usize>,
    pub dims: Vec<i64>,
    pub elem: ElemType,
}

pub(crate) fn matrix_elem(dtype: DType) -> ElemType {
    if dtype.bf16_weights() {
        ElemType::BF16
    } else {
        ElemType::F32
    }
}

/// The per-layer weight kinds, in parameter order, with their per-layer dims.
pub(crate) fn layer_slots(d: &Dims) -> Vec<(Slot, Vec<i64>)> {
    let mut v = vec![
        (Slot::AttnNorm, vec![d.hidden]),
        (Slot::Wqkv, vec![d.hidden, d.qkv_width()]),
    ];
    if d.bias {
        v.push((Slot::Bqkv, vec![d.qkv_width()]));
    }
    v.push((Slot::Wo, vec![d.q_width(), d.hidden]));
    if d.qk_norm {
        v.extend([
            (Slot::QNorm, vec![d.head_dim]),
            (Slot::KNorm, vec![d.head_dim]),
        ]);
    }
    if d.sandwich {
        v.push((Slot::PostAttnNorm, vec![d.hidden]));
    }
    v.push((Slot::FfnNorm, vec![d.hidden]));
    if d.sandwich {
        v.push((Slot::PostFfnNorm, vec![d.hidden]));
    }
    v.extend([
        (Slot::Wgu, vec![d.hidden, 2 * d.ffn]),
        (Slot::Wdown, vec![d.ffn, d.hidden]),
    ]);
    v
}

pub(crate) fn slot_elem(slot: Slot, dtype: DType) -> ElemType {
    match slot {
        Slot::FinalNorm
        | Slot::AttnNorm
        | Slot::FfnNorm
        | Slot::Bqkv
        | Slot::QNorm
        | Slot::KNorm
        | Slot::PostAttnNorm
        | Slot::PostFfnNorm => ElemType::F32,
        _ => matrix_elem(dtype),
    }
}

pub(crate) fn param_specs(d: &Dims, dtype: DType, layout: LayerLayout) -> Vec<ParamSpec> {
    let global = |slot: Slot, dims: Vec<i64>| ParamSpec {
        slot,
        layer: None,
        dims,
        elem: slot_elem(slot, dtype),
    };
    let mut specs = vec![global(Slot::Embed, vec![d.vocab, d.hidden])];
    if !d.tied {
        specs.push(global(Slot::LmHead, vec![d.vocab, d.hidden]));
    }
    specs.push(global(Slot::FinalNorm, vec![d.hidden]));
    match layout {
        LayerLayout::Stacked => {
            for (slot, dims) in layer_slots(d) {
                let mut stacked = vec![d.layers];
                stacked.extend(dims);
                specs.push(global(slot, stacked));
            }
        }
        LayerLayout::PerLayer => {
            for i in 0..d.layers as usize {
                for (slot, dims) in layer_slots(d) {
                    specs.push(ParamSpec {
                        slot,
                        layer: Some(i),
                        dims,
                        elem: slot_elem(slot, dtype),
                    });
                }
            }
        }
    }
    specs
}

/// Host data of one parameter, ready to upload; f32 tensors that need no
/// restacking are borrowed rather than copied.
pub(crate) enum HostData<'a> {
    F32(Cow<'a, [f32]>),
    BF16(Vec<bf16>),
}

impl<'a> HostData<'a> {
    fn of(values: Cow<'a, [f32]>, elem: ElemType) -> HostData<'a> {
        match elem {
            ElemType::BF16 => HostData::BF16(values.iter().map(|v| bf16::from_f32(*v)).collect()),
            _ => HostData::F32(values),
        }
    }

    pub fn byte_len(&self) -> u64 {
        match self {
            HostData::F32(v) => 4 * v.len() as u64,
            HostData::BF16(v) => 2 * v.len() as u64,
        }
    }
}

fn check(t: &HostTensor, name: &str, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        bail!("{name}: expected shape {shape:?}, found {:?}", t.shape);
    }
    Ok(())
}

/// Concatenates, per layer, the rows of the tensors `pick` returns (each
/// checked against its expected shape), and stacks the layers.
fn stack_rows<'w>(
    layers: &'w [LayerWeights],
    pick: impl Fn(&'w LayerWeights) -> Vec<(&'w HostTensor, &'static str, Vec<usize>)>,
) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for l in layers {
        for (t, name, shape) in pick(l) {
            check(t, name, &shape)?;
            out.extend_from_slice(&t.data);
        }
    }
    Ok(out)
}

/// Builds the host data of one parameter from the HF-orientation weights.
pub(crate) fn host_param<'w>(
    w: &'w ModelWeights,
    d: &Dims,
    spec: &ParamSpec,
) -> Result<HostData<'w>> {
    let h = d.hidden as usize;
    let ffn = d.ffn as usize;
    let q = d.q_width() as usize;
    let kv = d.kv_width() as usize;
    let w_layers: &'w [LayerWeights] = match spec.layer {
        Some(i) => match w.layers.get(i..=i) {
            Some(one) => one,
            None => bail!("layer {i} does not exist"),
        },
        None => &w.layers,
    };
    // One tensor per layer: borrowed for a single layer, else stacked.
    let one = |get: fn(&LayerWeights) -> &HostTensor,
               name: &'static str,
               shape: Vec<usize>|
     -> Result<Cow<'w, [f32]>> {
        match w_layers {
            [l] => {
                let t = get(l);
                check(t, name, &shape)?;
                Ok(Cow::Borrowed(&t.data))
            }
            _ => Ok(Cow::Owned(stack_rows(w_layers, |l| {
                vec![(get(l), name, shape.clone())]
            })?)),
        }
    };
    // An optional per-layer tensor the program needs (the config asked for it).
    let some = |get: fn(&LayerWeights) -> &Option<HostTensor>,
                name: &'static str,
                len: usize|
     -> Result<Cow<'w, [f32]>> {
        let mut out = Vec::with_capacity(w_layers.len() * len);
        for l in w_layers {
            let Some(t) = get(l) else {
                bail!("the program expects {name} but the weights have none");
            };
            check(t, name, &[len])?;
            out.extend_from_slice(&t.data);
        }
        Ok(Cow::Owned(out))
    };
    let hd = d.head_dim as usize;
    let values: Cow<'w, [f32]> = match spec.slot {
        Slot::Embed => Cow::Borrowed(&w.embed_tokens.data),
        Slot::LmHead => match &w.lm_head {
            Some(t) => Cow::Borrowed(&t.data),
            None => bail!("the program expects a separate LM head but the weights tie it"),
        },
        Slot::FinalNorm => Cow::Borrowed(&w.final_norm.data),
        Slot::AttnNorm => one(|l| &l.attn_norm, "attn_norm", vec![h])?,
        Slot::FfnNorm => one(|l| &l.ffn_norm, "ffn_norm", vec![h])?,
        Slot::Wqkv => Cow::Owned(stack_rows(w_layers, |l| {
            vec![
                (&l.q_proj, "q_proj", vec![q, h]),
                (&l.k_proj, "k_proj", vec![kv, h]),
                (&l.v_proj, "v_proj", vec![kv, h]),
            ]
        })?),
        Slot::Bqkv => {
            let mut out = Vec::with_capacity(w_layers.len() * d.qkv_width() as usize);
            for l in w_layers {
                for (b, n) in [(&l.q_bias, q), (&l.k_bias, kv), (&l.v_bias, kv)] {
                    match b {
                        Some(t) => {
                            if t.data.len() != n {
                                bail!("attention bias: expected {n} values, found {:?}", t.shape);
                            }
                            out.extend_from_slice(&t.data);
                        }
                        // A model may carry only some of the biases; absent ones are zero.
                        None => out.extend(std::iter::repeat_n(0.0, n)),
                    }
                }
            }
            Cow::Owned(out)
        }
        Slot::Wo => one(|l| &l.o_proj, "o_proj", vec![h, q])?,
        Slot::QNorm => some(|l| &l.q_norm, "q_norm", hd)?,
        Slot::KNorm => some(|l| &l.k_norm, "k_norm", hd)?,
        Slot::PostAttnNorm => some(|l| &l.post_attn_norm, "post_attention_layernorm", h)?,
        Slot::PostFfnNorm => some(|l| &l.post_ffn_norm, "post_feedforward_layernorm", h)?,
        Slot::Wgu => Cow::Owned(stack_rows(w_layers, |l| {
            vec![
                (&l.gate_proj, "gate_proj", vec![ffn, h]),
                (&l.up_proj, "up_proj", vec![ffn, h]),
            ]
        })?),
        Slot::Wdown => one(|l| &l.down_proj, "down_proj", vec![h, ffn])?,
    };
    // Projections were built per layer in HF `[out, in]` order; the program takes `[in, out]`.
    let values = match spec.slot {
        Slot::Wqkv | Slot::Wo | Slot::Wgu | Slot::Wdown => {
            let dims = &spec.dims;
            let (rows, cols) = (dims[dims.len() - 1] as usize, dims[dims.len() - 2] as usize);
            Cow::Owned(transpose_blocks(&values, rows, cols))
        }
        _ => values,
    };
    let expected: i64 = spec.dims.iter().product();
    if values.len() as i64 != expected {
        bail!(
            "{:?}: built {} values for shape {:?}",
            spec.slot,
            values.len(),
            spec.dims
        );
    }
    Ok(HostData::of(values, spec.elem))
}

/// Transposes every `[rows, cols]` block of `v` (row-major, blocks end to end) to `[cols, rows]`,
/// in tiles so both sides stay in cache.
fn transpose_blocks(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let block = rows * cols;
    let mut out = vec![0f32; v.len()];
    if block == 0 {
        return out;
    }
    for (src, dst) in v.chunks_exact(block).zip(out.chunks_exact_mut(block)) {
        for r0 in (0..rows).step_by(TILE) {
            for c0 in (0..cols).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    for c in c0..(c0 + TILE).min(cols) {
                        dst[c * rows + r] = src[r * cols + c];
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::transpose_blocks;

    #[test]
    fn transposes_each_block() {
        // Two 2x3 blocks.
        let v = [1., 2., 3., 4., 5., 6., 10., 20., 30., 40., 50., 60.];
        assert_eq!(
            transpose_blocks(&v, 2, 3),
            vec![1., 4., 2., 5., 3., 6., 10., 40., 20., 50., 30., 60.]
        );
        // Larger than a tile, not a multiple of it.
        let (r, c) = (45, 70);
        let v: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
        let t = transpose_blocks(&v, r, c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], v[i * c + j]);
            }
        }
    }
}
