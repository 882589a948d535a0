//! How host weights become the program's parameters: which tensors, in what
//! order, shape, element type and layout.
//!
//! Per-layer tensors are stacked into `[layers, ...]` so one `stablehlo.while`
//! body can select layer `i` with `dynamic_slice` (compile time independent of
//! depth). Projections keep the HF `[out, in]` orientation (the matmul
//! contracts `in` on both sides; XLA's CPU dot runs this as fast as `[in, out]`,
//! and loading then needs no transposes) and are fused where they share an
//! input: q|k|v rows into one matrix, gate|up into another, so each is one large
//! matmul over all tokens.

use std::borrow::Cow;

use anyhow::{Result, bail};
use half::bf16;

use crate::hlo::ElemType;
use crate::weights::{HostTensor, LayerWeights, ModelConfig, ModelWeights};

use super::DType;

/// The shape facts a program needs, derived from the config.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dims {
    pub vocab: i64,
    pub hidden: i64,
    pub ffn: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    /// `rope_theta` and `rms_norm_eps` as bit patterns, so `Dims` can be a key.
    pub rope_theta_bits: u32,
    pub eps_bits: u32,
    pub bias: bool,
    pub tied: bool,
}

impl Dims {
    pub fn new(c: &ModelConfig, tied: bool) -> Dims {
        Dims {
            vocab: c.vocab_size as i64,
            hidden: c.hidden_size as i64,
            ffn: c.intermediate_size as i64,
            layers: c.num_layers as i64,
            heads: c.num_heads as i64,
            kv_heads: c.num_kv_heads as i64,
            head_dim: c.head_dim as i64,
            rope_theta_bits: c.rope_theta.to_bits(),
            eps_bits: c.rms_norm_eps.to_bits(),
            bias: c.attention_bias,
            tied,
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

    pub fn rope_theta(&self) -> f32 {
        f32::from_bits(self.rope_theta_bits)
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
    /// `[layers, q + 2 kv, hidden]`.
    Wqkv,
    /// `[layers, q + 2 kv]`, only with attention biases.
    Bqkv,
    /// `[layers, hidden, q]`.
    Wo,
    /// `[layers, hidden]`.
    FfnNorm,
    /// `[layers, 2 ffn, hidden]`: gate rows then up rows.
    Wgu,
    /// `[layers, hidden, ffn]`.
    Wdown,
}

#[derive(Clone, Debug)]
pub(crate) struct ParamSpec {
    pub slot: Slot,
    pub dims: Vec<i64>,
    pub elem: ElemType,
}

pub(crate) fn matrix_elem(dtype: DType) -> ElemType {
    match dtype {
        DType::F32 => ElemType::F32,
        DType::BF16 => ElemType::BF16,
    }
}

pub(crate) fn param_specs(d: &Dims, dtype: DType) -> Vec<ParamSpec> {
    let m = matrix_elem(dtype);
    let f = ElemType::F32;
    let l = d.layers;
    let mut specs = vec![ParamSpec {
        slot: Slot::Embed,
        dims: vec![d.vocab, d.hidden],
        elem: m,
    }];
    if !d.tied {
        specs.push(ParamSpec {
            slot: Slot::LmHead,
            dims: vec![d.vocab, d.hidden],
            elem: m,
        });
    }
    specs.push(ParamSpec {
        slot: Slot::FinalNorm,
        dims: vec![d.hidden],
        elem: f,
    });
    specs.push(ParamSpec {
        slot: Slot::AttnNorm,
        dims: vec![l, d.hidden],
        elem: f,
    });
    specs.push(ParamSpec {
        slot: Slot::Wqkv,
        dims: vec![l, d.qkv_width(), d.hidden],
        elem: m,
    });
    if d.bias {
        specs.push(ParamSpec {
            slot: Slot::Bqkv,
            dims: vec![l, d.qkv_width()],
            elem: f,
        });
    }
    specs.push(ParamSpec {
        slot: Slot::Wo,
        dims: vec![l, d.hidden, d.q_width()],
        elem: m,
    });
    specs.push(ParamSpec {
        slot: Slot::FfnNorm,
        dims: vec![l, d.hidden],
        elem: f,
    });
    specs.push(ParamSpec {
        slot: Slot::Wgu,
        dims: vec![l, 2 * d.ffn, d.hidden],
        elem: m,
    });
    specs.push(ParamSpec {
        slot: Slot::Wdown,
        dims: vec![l, d.hidden, d.ffn],
        elem: m,
    });
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
    w: &'w ModelWeights,
    pick: impl Fn(&'w LayerWeights) -> Vec<(&'w HostTensor, &'static str, Vec<usize>)>,
) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for l in &w.layers {
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
    let values: Cow<'w, [f32]> = match spec.slot {
        Slot::Embed => Cow::Borrowed(&w.embed_tokens.data),
        Slot::LmHead => match &w.lm_head {
            Some(t) => Cow::Borrowed(&t.data),
            None => bail!("the program expects a separate LM head but the weights tie it"),
        },
        Slot::FinalNorm => Cow::Borrowed(&w.final_norm.data),
        Slot::AttnNorm => Cow::Owned(stack_rows(w, |l| {
            vec![(&l.attn_norm, "attn_norm", vec![h])]
        })?),
        Slot::FfnNorm => Cow::Owned(stack_rows(w, |l| vec![(&l.ffn_norm, "ffn_norm", vec![h])])?),
        Slot::Wqkv => Cow::Owned(stack_rows(w, |l| {
            vec![
                (&l.q_proj, "q_proj", vec![q, h]),
                (&l.k_proj, "k_proj", vec![kv, h]),
                (&l.v_proj, "v_proj", vec![kv, h]),
            ]
        })?),
        Slot::Bqkv => {
            let mut out = Vec::with_capacity(w.layers.len() * d.qkv_width() as usize);
            for l in &w.layers {
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
        Slot::Wo => Cow::Owned(stack_rows(w, |l| vec![(&l.o_proj, "o_proj", vec![h, q])])?),
        Slot::Wgu => Cow::Owned(stack_rows(w, |l| {
            vec![
                (&l.gate_proj, "gate_proj", vec![ffn, h]),
                (&l.up_proj, "up_proj", vec![ffn, h]),
            ]
        })?),
        Slot::Wdown => Cow::Owned(stack_rows(w, |l| {
            vec![(&l.down_proj, "down_proj", vec![h, ffn])]
        })?),
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
