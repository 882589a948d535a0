//! How host weights become the program's parameters: which tensors, in what
//! order, shape, element type and layout.
//!
//! Per-layer tensors are stacked into `[layers, ...]` so one `stablehlo.while`
//! body can select layer `i` with `dynamic_slice` (compile time independent of
//! depth). Projections are stored `[in, out]` (the plain `x @ W` layout) and
//! fused where they share an input: q|k|v into one matrix, gate|up into another,
//! so each is one large matmul over all tokens.

use anyhow::{Result, bail};
use half::bf16;

use crate::hlo::ElemType;
use crate::weights::{HostTensor, ModelConfig, ModelWeights};

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
    /// `[layers, hidden, q + 2 kv]`.
    Wqkv,
    /// `[layers, q + 2 kv]`, only with attention biases.
    Bqkv,
    /// `[layers, q, hidden]`.
    Wo,
    /// `[layers, hidden]`.
    FfnNorm,
    /// `[layers, hidden, 2 ffn]`: gate columns then up columns.
    Wgu,
    /// `[layers, ffn, hidden]`.
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
        dims: vec![l, d.hidden, d.qkv_width()],
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
        dims: vec![l, d.q_width(), d.hidden],
        elem: m,
    });
    specs.push(ParamSpec {
        slot: Slot::FfnNorm,
        dims: vec![l, d.hidden],
        elem: f,
    });
    specs.push(ParamSpec {
        slot: Slot::Wgu,
        dims: vec![l, d.hidden, 2 * d.ffn],
        elem: m,
    });
    specs.push(ParamSpec {
        slot: Slot::Wdown,
        dims: vec![l, d.ffn, d.hidden],
        elem: m,
    });
    specs
}

/// Host data of one parameter, ready to upload.
pub(crate) enum HostData {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
}

impl HostData {
    fn of(values: Vec<f32>, elem: ElemType) -> HostData {
        match elem {
            ElemType::BF16 => HostData::BF16(values.into_iter().map(bf16::from_f32).collect()),
            _ => HostData::F32(values),
        }
    }
}

/// Writes `src` (`[rows, cols]`, HF `[out, in]`) transposed into the column
/// range `col_off..col_off + rows` of `dst` (`[cols, dst_cols]`).
fn transpose_into(
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_cols: usize,
    col_off: usize,
) {
    const BLOCK: usize = 64;
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                let src_row = &src[r * cols..(r + 1) * cols];
                for c in c0..(c0 + BLOCK).min(cols) {
                    dst[c * dst_cols + col_off + r] = src_row[c];
                }
            }
        }
    }
}

fn check(t: &HostTensor, name: &str, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        bail!("{name}: expected shape {shape:?}, found {:?}", t.shape);
    }
    Ok(())
}

/// Builds the host data of one parameter from the HF-orientation weights.
pub(crate) fn host_param(w: &ModelWeights, d: &Dims, spec: &ParamSpec) -> Result<HostData> {
    let h = d.hidden as usize;
    let ffn = d.ffn as usize;
    let q = d.q_width() as usize;
    let kv = d.kv_width() as usize;
    let qkv = d.qkv_width() as usize;
    let layers = &w.layers;
    let values = match spec.slot {
        Slot::Embed => w.embed_tokens.data.clone(),
        Slot::LmHead => match &w.lm_head {
            Some(t) => t.data.clone(),
            None => bail!("the program expects a separate LM head but the weights tie it"),
        },
        Slot::FinalNorm => w.final_norm.data.clone(),
        Slot::AttnNorm => layers
            .iter()
            .flat_map(|l| l.attn_norm.data.iter().copied())
            .collect(),
        Slot::FfnNorm => layers
            .iter()
            .flat_map(|l| l.ffn_norm.data.iter().copied())
            .collect(),
        Slot::Wqkv => {
            let mut out = vec![0f32; layers.len() * h * qkv];
            for (i, l) in layers.iter().enumerate() {
                check(&l.q_proj, "q_proj", &[q, h])?;
                check(&l.k_proj, "k_proj", &[kv, h])?;
                check(&l.v_proj, "v_proj", &[kv, h])?;
                let dst = &mut out[i * h * qkv..(i + 1) * h * qkv];
                transpose_into(&l.q_proj.data, q, h, dst, qkv, 0);
                transpose_into(&l.k_proj.data, kv, h, dst, qkv, q);
                transpose_into(&l.v_proj.data, kv, h, dst, qkv, q + kv);
            }
            out
        }
        Slot::Bqkv => {
            let mut out = Vec::with_capacity(layers.len() * qkv);
            for l in layers {
                for (b, n) in [(&l.q_bias, q), (&l.k_bias, kv), (&l.v_bias, kv)] {
                    match b {
                        Some(t) => {
                            check(t, "attention bias", &[n])?;
                            out.extend_from_slice(&t.data);
                        }
                        // A model may carry only some of the biases; absent ones are zero.
                        None => out.extend(std::iter::repeat_n(0.0, n)),
                    }
                }
            }
            out
        }
        Slot::Wo => {
            let mut out = vec![0f32; layers.len() * q * h];
            for (i, l) in layers.iter().enumerate() {
                check(&l.o_proj, "o_proj", &[h, q])?;
                transpose_into(
                    &l.o_proj.data,
                    h,
                    q,
                    &mut out[i * q * h..(i + 1) * q * h],
                    h,
                    0,
                );
            }
            out
        }
        Slot::Wgu => {
            let mut out = vec![0f32; layers.len() * h * 2 * ffn];
            for (i, l) in layers.iter().enumerate() {
                check(&l.gate_proj, "gate_proj", &[ffn, h])?;
                check(&l.up_proj, "up_proj", &[ffn, h])?;
                let dst = &mut out[i * h * 2 * ffn..(i + 1) * h * 2 * ffn];
                transpose_into(&l.gate_proj.data, ffn, h, dst, 2 * ffn, 0);
                transpose_into(&l.up_proj.data, ffn, h, dst, 2 * ffn, ffn);
            }
            out
        }
        Slot::Wdown => {
            let mut out = vec![0f32; layers.len() * ffn * h];
            for (i, l) in layers.iter().enumerate() {
                check(&l.down_proj, "down_proj", &[h, ffn])?;
                transpose_into(
                    &l.down_proj.data,
                    h,
                    ffn,
                    &mut out[i * ffn * h..(i + 1) * ffn * h],
                    h,
                    0,
                );
            }
            out
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_into_places_columns() {
        // src [2, 3] -> dst [3, 4] at column offset 1.
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut dst = [0.0f32; 12];
        transpose_into(&src, 2, 3, &mut dst, 4, 1);
        assert_eq!(
            dst,
            [0.0, 1.0, 4.0, 0.0, 0.0, 2.0, 5.0, 0.0, 0.0, 3.0, 6.0, 0.0]
        );
    }
}
