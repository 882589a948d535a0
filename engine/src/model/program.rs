//! The prefill program: one StableHLO module computing, for a flattened ragged
//! batch of `T` tokens, the label scores at `S` scored positions.
//!
//! Parameters: the weights (see `params.rs`, in that order), then
//! `tokens i32[T]`, `positions i32[T]`, `segment i32[T]`, `prefix_segment i32[T]`,
//! `score_index i32[S]`, `label_ids i32[S, L]`. Result: `f32[S, L]`.
//!
//! Token `i` attends token `j` iff `j <= i`, `seg[j] != -1`, and `seg[j]` is
//! `seg[i]` or `prefix_segment[i]`. Matmuls run over all `T` tokens at once and
//! attention is `[heads, T, T]` with the mask applied by `select`.

use anyhow::{Context, Result};

use crate::hlo::{Cmp, DotDims, ElemType, FuncBuilder, Precision, TensorType, Value};

use super::DType;
use super::HeadVariant;
use super::params::{Dims, Slot, matrix_elem, param_specs};

/// Everything that determines a program's text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProgramSpec {
    pub dims: Dims,
    pub dtype: DType,
    pub tokens: i64,
    pub scores: i64,
    pub labels: i64,
    pub head: HeadVariant,
}

/// Masked attention scores get this instead of -inf, so a fully masked
/// (padding) row stays finite: its probabilities then multiply zeros, never NaN.
const MASKED: f64 = -1e30;

struct Ctx<'a> {
    d: &'a Dims,
    mat: ElemType,
    precision: Precision,
}

impl Ctx<'_> {
    /// `x [.., K] @ w^T` for `w [N, K]` (HF orientation), `x` cast to the matrix type; f32 result.
    fn matmul(&self, b: &mut FuncBuilder, x: &Value, w: &Value) -> crate::hlo::Result<Value> {
        let xc = b.convert(x, self.mat);
        let last = x.rank() as i64 - 1;
        b.dot_general(
            &xc,
            w,
            &DotDims::contract(&[last], &[1]),
            ElemType::F32,
            self.precision,
        )
    }

    /// HF RMSNorm over the last dim of `x [R, H]` with weight `w [H]`, in f32.
    fn rms_norm(&self, b: &mut FuncBuilder, x: &Value, w: &Value) -> crate::hlo::Result<Value> {
        let dims = x.dims().to_vec();
        let sq = b.mul(x, x)?;
        let sum = b.reduce_sum(&sq, &[1])?;
        let hdim = b.splat_like(&sum, self.d.hidden as f64);
        let mean = b.div(&sum, &hdim)?;
        let var = b.add_const(&mean, self.d.eps() as f64)?;
        let r = b.rsqrt(&var)?;
        let rb = b.broadcast_leading(&r, &dims)?;
        let normed = b.mul(x, &rb)?;
        let wb = b.broadcast_trailing(w, &dims)?;
        b.mul(&normed, &wb)
    }

    /// Rotate-half RoPE on `x [T, n, hd]` with `cos`/`sin` `[T, hd]`.
    fn rope(
        &self,
        b: &mut FuncBuilder,
        x: &Value,
        cos: &Value,
        sin: &Value,
    ) -> crate::hlo::Result<Value> {
        let dims = x.dims().to_vec();
        let (t, n, hd) = (dims[0], dims[1], dims[2]);
        let half = hd / 2;
        let x1 = b.slice(x, &[0, 0, 0], &[t, n, half])?;
        let x2 = b.slice(x, &[0, 0, half], &[t, n, hd])?;
        let nx2 = b.neg(&x2)?;
        let rot = b.concatenate(&[&nx2, &x1], 2)?;
        let cb = b.broadcast_in_dim(cos, &dims, &[0, 2])?;
        let sb = b.broadcast_in_dim(sin, &dims, &[0, 2])?;
        let a = b.mul(x, &cb)?;
        let c = b.mul(&rot, &sb)?;
        b.add(&a, &c)
    }
}

/// Per-layer weights carried through the loop, in `LAYER_SLOTS` order.
const LAYER_SLOTS: [Slot; 7] = [
    Slot::AttnNorm,
    Slot::Wqkv,
    Slot::Bqkv,
    Slot::Wo,
    Slot::FfnNorm,
    Slot::Wgu,
    Slot::Wdown,
];

pub(crate) fn build_program(spec: &ProgramSpec) -> Result<String> {
    build(spec).with_context(|| format!("building the prefill program for {spec:?}"))
}

fn build(spec: &ProgramSpec) -> crate::hlo::Result<String> {
    let d = &spec.dims;
    let ctx = Ctx {
        d,
        mat: matrix_elem(spec.dtype),
        precision: match spec.dtype {
            DType::F32 => Precision::Highest,
            DType::BF16 => Precision::Default,
        },
    };
    let (t, s, l) = (spec.tokens, spec.scores, spec.labels);
    let (hd, nh, nkv) = (d.head_dim, d.heads, d.kv_heads);
    let g = nh / nkv;
    let mut b = FuncBuilder::new();

    let mut weights: Vec<(Slot, Value)> = Vec::new();
    for p in param_specs(d, spec.dtype) {
        let v = b.param(TensorType::new(&p.dims, p.elem));
        weights.push((p.slot, v));
    }
    let get = |slot: Slot| {
        weights
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, v)| v.clone())
    };
    let missing = |slot: Slot| crate::hlo::HloError::Invalid {
        op: "prefill",
        msg: format!("no parameter for {slot:?}"),
    };
    let embed = get(Slot::Embed).ok_or_else(|| missing(Slot::Embed))?;
    let head = if d.tied {
        embed.clone()
    } else {
        get(Slot::LmHead).ok_or_else(|| missing(Slot::LmHead))?
    };
    let final_norm = get(Slot::FinalNorm).ok_or_else(|| missing(Slot::FinalNorm))?;

    let tokens = b.param(TensorType::i32(&[t]));
    let positions = b.param(TensorType::i32(&[t]));
    let segment = b.param(TensorType::i32(&[t]));
    let prefix = b.param(TensorType::i32(&[t]));
    let score_index = b.param(TensorType::i32(&[s]));
    let label_ids = b.param(TensorType::i32(&[s, l]));

    // Embedding lookup; the residual stream stays f32 in every dtype.
    let x0 = b.take_rows(&embed, &tokens)?;
    let x0 = b.convert(&x0, ElemType::F32);

    // Attention mask [T, T], built once.
    let tt = [t, t];
    let seg_q = b.broadcast_in_dim(&segment, &tt, &[0])?;
    let seg_k = b.broadcast_in_dim(&segment, &tt, &[1])?;
    let pre_q = b.broadcast_in_dim(&prefix, &tt, &[0])?;
    let row = b.iota(TensorType::i32(&tt), 0)?;
    let col = b.iota(TensorType::i32(&tt), 1)?;
    let causal = b.compare(&col, &row, Cmp::Le)?;
    let same = b.compare(&seg_k, &seg_q, Cmp::Eq)?;
    let in_prefix = b.compare(&seg_k, &pre_q, Cmp::Eq)?;
    let pad = b.splat(TensorType::i32(&tt), -1.0);
    let real = b.compare(&seg_k, &pad, Cmp::Ne)?;
    let visible = b.or(&same, &in_prefix)?;
    let mask = b.and(&causal, &visible)?;
    let mask = b.and(&mask, &real)?;

    // RoPE tables [T, hd]: angle = position * theta^(-2i/hd), duplicated halves.
    let half = hd / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / (d.rope_theta() as f64).powf((2 * i) as f64 / hd as f64)) as f32)
        .collect();
    let inv_freq = b.constant_f32(&[half], &inv_freq)?;
    let pos_f = b.convert(&positions, ElemType::F32);
    let pos_b = b.broadcast_in_dim(&pos_f, &[t, half], &[0])?;
    let inv_b = b.broadcast_in_dim(&inv_freq, &[t, half], &[1])?;
    let freqs = b.mul(&pos_b, &inv_b)?;
    let angles = b.concatenate(&[&freqs, &freqs], 1)?;
    let cos = b.cos(&angles)?;
    let sin = b.sin(&angles)?;

    // The decoder layers as one while loop over the stacked weights.
    let layer_weights: Vec<(Slot, Value)> = LAYER_SLOTS
        .iter()
        .filter_map(|s| get(*s).map(|v| (*s, v)))
        .collect();
    let i0 = b.scalar_i32(0);
    let mut carried: Vec<&Value> = vec![&i0, &x0, &mask, &cos, &sin];
    carried.extend(layer_weights.iter().map(|(_, v)| v));
    let n_layers = d.layers as i32;
    let slots: Vec<Slot> = layer_weights.iter().map(|(s, _)| *s).collect();
    let scale = 1.0 / (hd as f64).sqrt();

    let out = b.while_loop(
        &carried,
        |b, a| b.lt_const(&a[0], n_layers),
        |b, a| {
            let (i, x, mask, cos, sin) = (&a[0], &a[1], &a[2], &a[3], &a[4]);
            let stacked = &a[5..];
            let zero = b.scalar_i32(0);
            // Layer i's slice of a stacked weight, with the layer dim dropped.
            let layer = |b: &mut FuncBuilder, slot: Slot| -> crate::hlo::Result<Option<Value>> {
                let Some(k) = slots.iter().position(|s| *s == slot) else {
                    return Ok(None);
                };
                let w = &stacked[k];
                let mut starts = vec![i];
                starts.extend(std::iter::repeat_n(&zero, w.rank() - 1));
                let mut sizes = w.dims().to_vec();
                sizes[0] = 1;
                let sl = b.dynamic_slice(w, &starts, &sizes)?;
                Ok(Some(b.reshape(&sl, &w.dims()[1..])?))
            };
            let need = |v: Option<Value>, slot: Slot| v.ok_or_else(|| missing(slot));

            // Attention block.
            let attn_norm = need(layer(b, Slot::AttnNorm)?, Slot::AttnNorm)?;
            let hn = ctx.rms_norm(b, x, &attn_norm)?;
            let wqkv = need(layer(b, Slot::Wqkv)?, Slot::Wqkv)?;
            let mut qkv = ctx.matmul(b, &hn, &wqkv)?;
            if let Some(bias) = layer(b, Slot::Bqkv)? {
                let bb = b.broadcast_trailing(&bias, qkv.dims())?;
                qkv = b.add(&qkv, &bb)?;
            }
            let (qw, kvw) = (d.q_width(), d.kv_width());
            let q = b.slice(&qkv, &[0, 0], &[t, qw])?;
            let k = b.slice(&qkv, &[0, qw], &[t, qw + kvw])?;
            let v = b.slice(&qkv, &[0, qw + kvw], &[t, qw + 2 * kvw])?;
            let q = b.reshape(&q, &[t, nh, hd])?;
            let k = b.reshape(&k, &[t, nkv, hd])?;
            let v = b.reshape(&v, &[t, nkv, hd])?;
            let q = ctx.rope(b, &q, cos, sin)?;
            let k = ctx.rope(b, &k, cos, sin)?;
            // Query heads grouped by the KV head they share (HF repeat_kv order):
            // [T, nkv, g, hd] -> [nkv, g*T, hd], so GQA is one batched matmul
            // without materialising repeated K/V.
            let q = b.reshape(&q, &[t, nkv, g, hd])?;
            let q = b.transpose(&q, &[1, 2, 0, 3])?;
            let q = b.reshape(&q, &[nkv, g * t, hd])?;
            let k = b.transpose(&k, &[1, 0, 2])?;
            let v = b.transpose(&v, &[1, 0, 2])?;
            let qc = b.convert(&q, ctx.mat);
            let kc = b.convert(&k, ctx.mat);
            let scores = b.dot_general(
                &qc,
                &kc,
                &DotDims::batched(&[0], &[0], &[2], &[2]),
                ElemType::F32,
                ctx.precision,
            )?;
            let scores = b.mul_const(&scores, scale)?;
            let scores = b.reshape(&scores, &[nkv, g, t, t])?;
            let mask4 = b.broadcast_in_dim(mask, &[nkv, g, t, t], &[2, 3])?;
            let neg = b.scalar(ElemType::F32, MASKED);
            let neg = b.broadcast_in_dim(&neg, &[nkv, g, t, t], &[])?;
            let scores = b.select(&mask4, &scores, &neg)?;
            let probs = b.softmax_last(&scores)?;
            let probs = b.reshape(&probs, &[nkv, g * t, t])?;
            let pc = b.convert(&probs, ctx.mat);
            let vc = b.convert(&v, ctx.mat);
            let ctxv = b.dot_general(
                &pc,
                &vc,
                &DotDims::batched(&[0], &[0], &[2], &[1]),
                ElemType::F32,
                ctx.precision,
            )?;
            let ctxv = b.reshape(&ctxv, &[nkv, g, t, hd])?;
            let ctxv = b.transpose(&ctxv, &[2, 0, 1, 3])?;
            let ctxv = b.reshape(&ctxv, &[t, nh * hd])?;
            let wo = need(layer(b, Slot::Wo)?, Slot::Wo)?;
            let o = ctx.matmul(b, &ctxv, &wo)?;
            let x = b.add(x, &o)?;

            // SwiGLU block.
            let ffn_norm = need(layer(b, Slot::FfnNorm)?, Slot::FfnNorm)?;
            let hn = ctx.rms_norm(b, &x, &ffn_norm)?;
            let wgu = need(layer(b, Slot::Wgu)?, Slot::Wgu)?;
            let gu = ctx.matmul(b, &hn, &wgu)?;
            let gate = b.slice(&gu, &[0, 0], &[t, d.ffn])?;
            let up = b.slice(&gu, &[0, d.ffn], &[t, 2 * d.ffn])?;
            let sig = b.logistic(&gate)?;
            let act = b.mul(&gate, &sig)?;
            let act = b.mul(&act, &up)?;
            let wdown = need(layer(b, Slot::Wdown)?, Slot::Wdown)?;
            let down = ctx.matmul(b, &act, &wdown)?;
            let x = b.add(&x, &down)?;

            let one = b.scalar_i32(1);
            let next = b.add(i, &one)?;
            let mut results = vec![next, x, mask.clone(), cos.clone(), sin.clone()];
            results.extend(stacked.iter().cloned());
            Ok(results)
        },
    )?;
    let hidden = &out[1];

    // Head, only at the scored positions.
    let hs = b.take_rows(hidden, &score_index)?;
    let hs = ctx.rms_norm(&mut b, &hs, &final_norm)?;
    let hsc = b.convert(&hs, ctx.mat);
    // Label rows of the head: [S, L, H], one batched dot per scored position.
    let label_rows = b.take_rows(&head, &label_ids)?;
    let label_logits = b.dot_general(
        &hsc,
        &label_rows,
        &DotDims::batched(&[0], &[0], &[1], &[2]),
        ElemType::F32,
        ctx.precision,
    )?;
    let result = match spec.head {
        HeadVariant::LabelLogits => label_logits,
        HeadVariant::FullLogprobs => {
            let logits = b.dot_general(
                &hsc,
                &head,
                &DotDims::contract(&[1], &[1]),
                ElemType::F32,
                ctx.precision,
            )?;
            let lse = b.logsumexp_last(&logits)?;
            let lse = b.broadcast_leading(&lse, &[s, l])?;
            b.sub(&label_logits, &lse)?
        }
    };
    b.finish(&[result])
}
