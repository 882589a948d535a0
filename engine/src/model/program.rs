//! The prefill program: one StableHLO module computing, for a flattened ragged
//! batch of `T` tokens, the label scores at `S` scored positions.
//!
//! Parameters: the weights (see `params.rs`, in that order), then — with a cached prefix of
//! `C` columns — `cache_k f32[layers, kv_heads, C, hd]`, `cache_v` (same), `cache_len i32[]`,
//! then `tokens i32[T]`, `positions i32[T]`, `segment i32[T]`, `prefix_segment i32[T]`, and for
//! [`ProgramKind::Score`] `score_index i32[S]`, `label_ids i32[S, L]`. Results: `f32[S, L]`
//! ([`ProgramKind::Score`]; with `pooled` also the final-norm hidden states `f32[S, H]`) or the keys and values of every token, `f32[layers, kv_heads, T, hd]`
//! twice ([`ProgramKind::PrefixKv`]: what a prefix cache keeps). A [`ProgramKind::PrefixKv`]
//! program with a cached prefix returns the cache extended by the batch instead,
//! `f32[layers, kv_heads, C + T, hd]` twice with the batch at columns `cache_len..`: one chunk of a
//! chunked prefill.
//!
//! Token `i` attends token `j` iff `j <= i`, `seg[j] != -1`, and `seg[j]` is
//! `seg[i]` or `prefix_segment[i]`; every real token (`seg[i] != -1`) also attends the
//! first `cache_len` cached columns, which hold the keys and values of positions
//! `0..cache_len` (a prefix computed by an earlier pass); in a sliding-window layer only keys
//! at model positions `> p - window` (see `attention.rs`). Matmuls run over all `T` tokens at
//! once; attention is `[heads, T, C + T]` with the mask applied by `select`, computed in causal
//! row blocks that leave out the columns no row of a block can see (`attention::attend`), or —
//! in a tiled program — per tile of rows over the shared columns and a window (`tiles.rs`).
//!
//! The block is read from the architecture descriptor in [`Dims`] (norm kind, activation,
//! QK-norm, sandwich norms, attention scale and soft-caps, per-layer attention kind), never from
//! the family's name.

use anyhow::{Context, Result};

use crate::hlo::{DotDims, ElemType, FuncBuilder, HloError, Precision, TensorType, Value};

use super::attention::{self, AttnInputs, AttnShape, BatchInputs};
use super::params::{Dims, LayerLayout, Slot, layer_slots, param_specs};
use super::tiles::Tiling;
use super::{DType, HeadVariant};

type HloResult<T> = crate::hlo::Result<T>;

/// What a program returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ProgramKind {
    /// Label values at the scored positions.
    Score,
    /// Every layer's keys and values of the batch's tokens (no head): a prefix to cache.
    PrefixKv,
}

/// Everything that determines a program's text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProgramSpec {
    pub dims: Dims,
    pub dtype: DType,
    pub layout: LayerLayout,
    pub tokens: i64,
    pub scores: i64,
    pub labels: i64,
    pub head: HeadVariant,
    pub kind: ProgramKind,
    /// Columns of cached prefix keys/values taken as inputs (a bucket size); 0: none.
    pub cache: i64,
    /// A [`ProgramKind::Score`] program also returns the final-norm hidden states at the scored
    /// positions, `f32[S, H]` (SGLang's `return_pooled_hidden_states`).
    pub pooled: bool,
    /// Tiled attention (`tiles.rs`); per-layer layout only.
    pub tiling: Option<Tiling>,
}

/// Whether `--dtype bf16` also feeds the attention dots bf16 (q, k, probabilities, v), as a
/// GPU's fused attention does.
const BF16_ATTENTION_DOTS: bool = true;

fn missing(what: impl std::fmt::Debug) -> HloError {
    HloError::Invalid {
        op: "prefill",
        msg: format!("no parameter for {what:?}"),
    }
}

struct Ctx<'a> {
    d: &'a Dims,
    /// Element type of the inputs of every dot (weight matmuls, the head, and the attention
    /// dots when `attn_mat` says so); results are f32 whatever it is.
    mat: ElemType,
    /// Element type of the inputs of the two attention dots (`q·kᵀ`, `p·v`).
    attn_mat: ElemType,
    precision: Precision,
    tokens: i64,
}

/// One layer's weights as values of the program (params or slices of them).
struct LayerParams {
    attn_norm: Value,
    wqkv: Value,
    bqkv: Option<Value>,
    wo: Value,
    q_norm: Option<Value>,
    k_norm: Option<Value>,
    post_attn_norm: Option<Value>,
    ffn_norm: Value,
    post_ffn_norm: Option<Value>,
    wgu: Value,
    wdown: Value,
}

impl LayerParams {
    fn from_slots(
        mut pick: impl FnMut(Slot) -> HloResult<Option<Value>>,
    ) -> HloResult<LayerParams> {
        fn need(
            pick: &mut impl FnMut(Slot) -> HloResult<Option<Value>>,
            slot: Slot,
        ) -> HloResult<Value> {
            pick(slot)?.ok_or_else(|| missing(slot))
        }
        Ok(LayerParams {
            attn_norm: need(&mut pick, Slot::AttnNorm)?,
            wqkv: need(&mut pick, Slot::Wqkv)?,
            bqkv: pick(Slot::Bqkv)?,
            wo: need(&mut pick, Slot::Wo)?,
            q_norm: pick(Slot::QNorm)?,
            k_norm: pick(Slot::KNorm)?,
            post_attn_norm: pick(Slot::PostAttnNorm)?,
            ffn_norm: need(&mut pick, Slot::FfnNorm)?,
            post_ffn_norm: pick(Slot::PostFfnNorm)?,
            wgu: need(&mut pick, Slot::Wgu)?,
            wdown: need(&mut pick, Slot::Wdown)?,
        })
    }
}

impl Ctx<'_> {
    /// `x [.., K] @ w` for `w [K, N]` (projections are stored `[in, out]`, see `params.rs`),
    /// `x` cast to the matrix type right before the dot; f32 accumulation and result. With
    /// `--dtype bf16-storage` bf16 weights are widened here instead (`mat` is f32).
    fn matmul(&self, b: &mut FuncBuilder, x: &Value, w: &Value) -> HloResult<Value> {
        let xc = b.convert(x, self.mat);
        let wc = b.convert(w, self.mat);
        let last = x.rank() as i64 - 1;
        b.dot_general(
            &xc,
            &wc,
            &DotDims::contract(&[last], &[0]),
            ElemType::F32,
            self.precision,
        )
    }

    /// HF RMSNorm over the last dim of `x [R, N]` with weight `w [N]`, in f32: `w · x / rms`,
    /// or Gemma's `(1 + w) · x / rms`.
    fn rms_norm(&self, b: &mut FuncBuilder, x: &Value, w: &Value) -> HloResult<Value> {
        let dims = x.dims().to_vec();
        let n = dims[dims.len() - 1];
        let sq = b.mul(x, x)?;
        let sum = b.reduce_sum(&sq, &[dims.len() as i64 - 1])?;
        let hdim = b.splat_like(&sum, n as f64);
        let mean = b.div(&sum, &hdim)?;
        let var = b.add_const(&mean, self.d.eps() as f64)?;
        let r = b.rsqrt(&var)?;
        let rb = b.broadcast_leading(&r, &dims)?;
        let normed = b.mul(x, &rb)?;
        let w = if self.d.norm_one_plus {
            b.add_const(w, 1.0)?
        } else {
            w.clone()
        };
        let wb = b.broadcast_trailing(&w, &dims)?;
        b.mul(&normed, &wb)
    }

    /// RMSNorm of each head of `x [T, n, hd]` over `hd` (QK-norm).
    fn head_norm(&self, b: &mut FuncBuilder, x: &Value, w: &Value) -> HloResult<Value> {
        let dims = x.dims().to_vec();
        let flat = b.reshape(x, &[dims[0] * dims[1], dims[2]])?;
        let normed = self.rms_norm(b, &flat, w)?;
        b.reshape(&normed, &dims)
    }

    /// `cap · tanh(x / cap)`.
    fn softcap(b: &mut FuncBuilder, x: &Value, cap_bits: Option<u32>) -> HloResult<Value> {
        let Some(bits) = cap_bits else {
            return Ok(x.clone());
        };
        let cap = f32::from_bits(bits) as f64;
        let c = b.splat_like(x, cap);
        let scaled = b.div(x, &c)?;
        let t = b.tanh(&scaled)?;
        b.mul(&t, &c)
    }

    /// The gated MLP's activation of `gate`.
    fn activation(&self, b: &mut FuncBuilder, gate: &Value) -> HloResult<Value> {
        if self.d.gelu {
            // PyTorch's tanh GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
            let x3 = b.mul(gate, gate)?;
            let x3 = b.mul(&x3, gate)?;
            let inner = b.mul_const(&x3, 0.044715)?;
            let inner = b.add(gate, &inner)?;
            let inner = b.mul_const(&inner, (2.0 / std::f64::consts::PI).sqrt())?;
            let t = b.tanh(&inner)?;
            let t = b.add_const(&t, 1.0)?;
            let half = b.mul_const(gate, 0.5)?;
            b.mul(&half, &t)
        } else {
            let sig = b.logistic(gate)?;
            b.mul(gate, &sig)
        }
    }

    /// Rotate-half RoPE on `x [T, n, hd]` with `cos`/`sin` `[T, hd]`.
    fn rope(&self, b: &mut FuncBuilder, x: &Value, cos: &Value, sin: &Value) -> HloResult<Value> {
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

    /// One decoder layer on the residual stream `x [T, H]` (f32). `attn.mask` is `[T, C + T]`
    /// when `cache` holds this layer's cached keys and values (`[kv_heads, C, hd]` each), else
    /// `[T, T]`. Returns the new stream and this layer's keys and values of the `T` tokens
    /// (`[kv_heads, T, hd]`, keys after QK-norm and RoPE).
    fn layer(
        &self,
        b: &mut FuncBuilder,
        x: &Value,
        attn: &AttnInputs,
        w: &LayerParams,
        cache: Option<(&Value, &Value)>,
    ) -> HloResult<(Value, Value, Value)> {
        let (cos, sin) = (&attn.cos, &attn.sin);
        let d = self.d;
        let t = self.tokens;
        let (hd, nh, nkv) = (d.head_dim, d.heads, d.kv_heads);

        // Attention block.
        let hn = self.rms_norm(b, x, &w.attn_norm)?;
        let mut qkv = self.matmul(b, &hn, &w.wqkv)?;
        if let Some(bias) = &w.bqkv {
            let bb = b.broadcast_trailing(bias, qkv.dims())?;
            qkv = b.add(&qkv, &bb)?;
        }
        let (qw, kvw) = (d.q_width(), d.kv_width());
        let q = b.slice(&qkv, &[0, 0], &[t, qw])?;
        let k = b.slice(&qkv, &[0, qw], &[t, qw + kvw])?;
        let v = b.slice(&qkv, &[0, qw + kvw], &[t, qw + 2 * kvw])?;
        let q = b.reshape(&q, &[t, nh, hd])?;
        let k = b.reshape(&k, &[t, nkv, hd])?;
        let v = b.reshape(&v, &[t, nkv, hd])?;
        let (q, k) = match (&w.q_norm, &w.k_norm) {
            (Some(qn), Some(kn)) => (self.head_norm(b, &q, qn)?, self.head_norm(b, &k, kn)?),
            _ => (q, k),
        };
        let q = self.rope(b, &q, cos, sin)?;
        let k = self.rope(b, &k, cos, sin)?;
        let k = b.transpose(&k, &[1, 0, 2])?;
        let v = b.transpose(&v, &[1, 0, 2])?;
        // Cached prefix columns first: the mask's column order.
        let (k_all, v_all) = match cache {
            Some((ck, cv)) => (b.concatenate(&[ck, &k], 1)?, b.concatenate(&[cv, &v], 1)?),
            None => (k.clone(), v.clone()),
        };
        let shape = AttnShape {
            tokens: t,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            cache: k_all.dims()[1] - t,
            scale: f32::from_bits(d.attn_scale_bits) as f64,
            mat: self.attn_mat,
            precision: self.precision,
        };
        let ctxv = attention::attend(b, &shape, &q, &k_all, &v_all, attn)?;
        let mut o = self.matmul(b, &ctxv, &w.wo)?;
        if let Some(n) = &w.post_attn_norm {
            o = self.rms_norm(b, &o, n)?;
        }
        let x = b.add(x, &o)?;

        // Gated MLP block.
        let hn = self.rms_norm(b, &x, &w.ffn_norm)?;
        let gu = self.matmul(b, &hn, &w.wgu)?;
        let gate = b.slice(&gu, &[0, 0], &[t, d.ffn])?;
        let up = b.slice(&gu, &[0, d.ffn], &[t, 2 * d.ffn])?;
        let act = self.activation(b, &gate)?;
        let act = b.mul(&act, &up)?;
        let mut down = self.matmul(b, &act, &w.wdown)?;
        if let Some(n) = &w.post_ffn_norm {
            down = self.rms_norm(b, &down, n)?;
        }
        Ok((b.add(&x, &down)?, k, v))
    }
}

pub(crate) fn build_program(spec: &ProgramSpec) -> Result<String> {
    build(spec).with_context(|| format!("building the prefill program for {spec:?}"))
}

fn build(spec: &ProgramSpec) -> HloResult<String> {
    let d = &spec.dims;
    let (t, s, l) = (spec.tokens, spec.scores, spec.labels);
    // `--dtype bf16`: bf16 dot inputs, f32 accumulation (the dots' f32 result type); the
    // residual stream, norms, RoPE, softmax, logsumexp and soft-caps stay f32 in every dtype.
    let (mat, precision) = if spec.dtype.bf16_compute() {
        (ElemType::BF16, Precision::Default)
    } else {
        (ElemType::F32, Precision::Highest)
    };
    let ctx = Ctx {
        d,
        mat,
        attn_mat: if BF16_ATTENTION_DOTS {
            mat
        } else {
            ElemType::F32
        },
        precision,
        tokens: t,
    };
    if spec.tiling.is_some() && spec.layout != LayerLayout::PerLayer {
        return Err(HloError::Invalid {
            op: "prefill",
            msg: "tiled attention needs the per-layer layout".into(),
        });
    }
    let mut b = FuncBuilder::new();

    let mut weights: Vec<(Slot, Option<usize>, Value)> = Vec::new();
    for p in param_specs(d, spec.dtype, spec.layout) {
        let v = b.param(TensorType::new(&p.dims, p.elem));
        weights.push((p.slot, p.layer, v));
    }
    let get = |slot: Slot, layer: Option<usize>| {
        weights
            .iter()
            .find(|(s, l, _)| *s == slot && *l == layer)
            .map(|(_, _, v)| v.clone())
    };
    let embed = get(Slot::Embed, None).ok_or_else(|| missing(Slot::Embed))?;
    let head = if d.tied {
        embed.clone()
    } else {
        get(Slot::LmHead, None).ok_or_else(|| missing(Slot::LmHead))?
    };
    let final_norm = get(Slot::FinalNorm, None).ok_or_else(|| missing(Slot::FinalNorm))?;

    let (nkv, hd, layers) = (d.kv_heads, d.head_dim, d.layers);
    let c = spec.cache;
    let cache = (c > 0).then(|| {
        let kv = TensorType::new(&[layers, nkv, c, hd], ElemType::F32);
        (
            b.param(kv.clone()),
            b.param(kv),
            b.param(TensorType::scalar(ElemType::I32)),
        )
    });
    let tokens = b.param(TensorType::i32(&[t]));
    let positions = b.param(TensorType::i32(&[t]));
    let segment = b.param(TensorType::i32(&[t]));
    let prefix = b.param(TensorType::i32(&[t]));
    let scored = (spec.kind == ProgramKind::Score).then(|| {
        (
            b.param(TensorType::i32(&[s])),
            b.param(TensorType::i32(&[s, l])),
        )
    });

    // Embedding lookup; the residual stream stays f32 in every dtype.
    let x0 = b.take_rows(&embed, &tokens)?;
    let mut x0 = b.convert(&x0, ElemType::F32);
    if let Some(bits) = d.embed_scale_bits {
        x0 = b.mul_const(&x0, f32::from_bits(bits) as f64)?;
    }

    // Masks and RoPE tables, once per attention kind.
    let attn = attention::build(
        &mut b,
        &BatchInputs {
            tokens: t,
            head_dim: hd,
            positions: &positions,
            segment: &segment,
            prefix: &prefix,
            cache: cache.as_ref().map(|(_, _, len)| (c, len)),
            tiling: spec.tiling,
        },
        &d.variants,
    )?;

    let wants_kv = spec.kind == ProgramKind::PrefixKv;
    let (hidden, kv) = match spec.layout {
        LayerLayout::PerLayer => {
            let mut x = x0;
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for i in 0..d.layers as usize {
                let w = LayerParams::from_slots(|slot| Ok(get(slot, Some(i))))?;
                let layer_cache = match &cache {
                    Some((ck, cv, _)) => {
                        let li = i as i64;
                        let pick = |b: &mut FuncBuilder, all: &Value| -> HloResult<Value> {
                            let sl = b.slice(all, &[li, 0, 0, 0], &[li + 1, nkv, c, hd])?;
                            b.reshape(&sl, &[nkv, c, hd])
                        };
                        Some((pick(&mut b, ck)?, pick(&mut b, cv)?))
                    }
                    None => None,
                };
                let variant = d.layer_variant.get(i).copied().unwrap_or(0);
                let inputs = attn
                    .get(variant)
                    .ok_or_else(|| missing("attention variant"))?;
                let (nx, k, v) = ctx.layer(
                    &mut b,
                    &x,
                    inputs,
                    &w,
                    layer_cache.as_ref().map(|(k, v)| (k, v)),
                )?;
                x = nx;
                if wants_kv {
                    ks.push(b.reshape(&k, &[1, nkv, t, hd])?);
                    vs.push(b.reshape(&v, &[1, nkv, t, hd])?);
                }
            }
            let kv = if wants_kv {
                let ks: Vec<&Value> = ks.iter().collect();
                let vs: Vec<&Value> = vs.iter().collect();
                Some((b.concatenate(&ks, 0)?, b.concatenate(&vs, 0)?))
            } else {
                None
            };
            (x, kv)
        }
        LayerLayout::Stacked => {
            let stacked: Vec<(Slot, Value)> = layer_slots(d)
                .into_iter()
                .filter_map(|(s, _)| get(s, None).map(|v| (s, v)))
                .collect();
            let kv_out = TensorType::new(&[layers, nkv, t, hd], ElemType::F32);
            let init = Carry {
                layer: b.scalar_i32(0),
                x: x0,
                attn,
                cache: cache.as_ref().map(|(k, v, _)| (k.clone(), v.clone())),
                kv_acc: wants_kv
                    .then(|| (b.splat(kv_out.clone(), 0.0), b.splat(kv_out.clone(), 0.0))),
                weights: stacked.iter().map(|(_, v)| v.clone()).collect(),
            };
            let out = stacked_layers(&mut b, &ctx, init, &stacked)?;
            (out.x, out.kv_acc)
        }
    };

    let Some((score_index, label_ids)) = scored else {
        let (k, v) = kv.ok_or_else(|| missing("prefix keys and values"))?;
        return match &cache {
            // Extending a cached prefix (chunked prefill): the result is the cache with this
            // pass's keys/values written after its first `cache_len` columns, `C + T` columns.
            Some((ck, cv, len)) => {
                let k = append_at(&mut b, ck, &k, len)?;
                let v = append_at(&mut b, cv, &v, len)?;
                b.finish(&[k, v])
            }
            None => b.finish(&[k, v]),
        };
    };
    // Head, only at the scored positions.
    let hs = b.take_rows(&hidden, &score_index)?;
    let hs = ctx.rms_norm(&mut b, &hs, &final_norm)?;
    let hsc = b.convert(&hs, ctx.mat);
    // Label rows of the head: [S, L, H], one batched dot per scored position.
    let label_rows = b.take_rows(&head, &label_ids)?;
    let label_rows = b.convert(&label_rows, ctx.mat);
    let label_logits = b.dot_general(
        &hsc,
        &label_rows,
        &DotDims::batched(&[0], &[0], &[1], &[2]),
        ElemType::F32,
        ctx.precision,
    )?;
    let label_logits = Ctx::softcap(&mut b, &label_logits, d.final_softcap_bits)?;
    let result = match spec.head {
        HeadVariant::LabelLogits => label_logits,
        HeadVariant::FullLogprobs => {
            let head = b.convert(&head, ctx.mat);
            let logits = b.dot_general(
                &hsc,
                &head,
                &DotDims::contract(&[1], &[1]),
                ElemType::F32,
                ctx.precision,
            )?;
            let logits = Ctx::softcap(&mut b, &logits, d.final_softcap_bits)?;
            let lse = b.logsumexp_last(&logits)?;
            let lse = b.broadcast_leading(&lse, &[s, l])?;
            b.sub(&label_logits, &lse)?
        }
    };
    if spec.pooled {
        // The head's input, already computed: leaves the device only in this variant.
        let pooled = b.convert(&hs, ElemType::F32);
        return b.finish(&[result, pooled]);
    }
    b.finish(&[result])
}

/// `cache [layers, kv, C, hd]` widened to `C + T` columns with `new [layers, kv, T, hd]` written
/// from column `len` on (`len <= C`): the first `len + T` columns are then the keys/values of
/// positions `0..len + T`, whatever the cache held past `len`.
fn append_at(b: &mut FuncBuilder, cache: &Value, new: &Value, len: &Value) -> HloResult<Value> {
    let widened = b.concatenate(&[cache, new], 2)?;
    let zero = b.scalar_i32(0);
    b.dynamic_update_slice(&widened, new, &[&zero, &zero, len, &zero])
}

/// The stacked layer loop's carried state, by name. [`Carry::values`] and [`Carry::rebuild`]
/// are the one place that fixes its order in the `stablehlo.while`.
struct Carry {
    /// The layer index, `i32[]`.
    layer: Value,
    /// The residual stream `[T, H]`.
    x: Value,
    /// Per attention kind: mask and RoPE tables (loop-invariant).
    attn: Vec<AttnInputs>,
    /// Cached prefix keys and values, `[layers, kv_heads, C, hd]` each (read per layer).
    cache: Option<(Value, Value)>,
    /// Keys and values of the batch, `[layers, kv_heads, T, hd]` each (written per layer).
    kv_acc: Option<(Value, Value)>,
    /// Stacked weights, in [`layer_slots`] order (loop-invariant).
    weights: Vec<Value>,
}

impl Carry {
    fn values(&self) -> Vec<&Value> {
        let mut v = vec![&self.layer, &self.x];
        for a in &self.attn {
            v.extend([&a.mask, &a.cos, &a.sin]);
        }
        if let Some((k, c)) = &self.cache {
            v.extend([k, c]);
        }
        if let Some((k, c)) = &self.kv_acc {
            v.extend([k, c]);
        }
        v.extend(self.weights.iter());
        v
    }

    /// The same structure as `self`, filled from a flat list in [`Carry::values`] order.
    fn rebuild(&self, flat: &[Value]) -> HloResult<Carry> {
        let mut it = flat.iter().cloned();
        let mut next = || it.next().ok_or_else(|| missing("loop-carried value"));
        let layer = next()?;
        let x = next()?;
        let mut attn = Vec::with_capacity(self.attn.len());
        for _ in &self.attn {
            attn.push(AttnInputs {
                mask: next()?,
                cos: next()?,
                sin: next()?,
                tiles: None,
            });
        }
        let cache = match self.cache {
            Some(_) => Some((next()?, next()?)),
            None => None,
        };
        let kv_acc = match self.kv_acc {
            Some(_) => Some((next()?, next()?)),
            None => None,
        };
        let weights = (0..self.weights.len())
            .map(|_| next())
            .collect::<HloResult<Vec<_>>>()?;
        Ok(Carry {
            layer,
            x,
            attn,
            cache,
            kv_acc,
            weights,
        })
    }
}

/// One `stablehlo.while` over the stacked weights; layer `i`'s slice of each is taken with
/// `dynamic_slice`, its attention kind picked from the constant per-layer table.
fn stacked_layers(
    b: &mut FuncBuilder,
    ctx: &Ctx<'_>,
    init: Carry,
    stacked: &[(Slot, Value)],
) -> HloResult<Carry> {
    let d = ctx.d;
    let (nkv, t, hd) = (d.kv_heads, ctx.tokens, d.head_dim);
    let n_layers = d.layers as i32;
    let slots: Vec<Slot> = stacked.iter().map(|(s, _)| *s).collect();
    let out = b.while_loop(
        &init.values(),
        |b, a| b.lt_const(&a[0], n_layers),
        |b, a| {
            let cur = init.rebuild(a)?;
            let i = &cur.layer;
            let zero = b.scalar_i32(0);
            let layer_slice = |b: &mut FuncBuilder, w: &Value| -> HloResult<Value> {
                let mut starts = vec![i];
                starts.extend(std::iter::repeat_n(&zero, w.rank() - 1));
                let mut sizes = w.dims().to_vec();
                sizes[0] = 1;
                let sl = b.dynamic_slice(w, &starts, &sizes)?;
                b.reshape(&sl, &w.dims()[1..])
            };
            let w = LayerParams::from_slots(|slot| {
                let Some(k) = slots.iter().position(|s| *s == slot) else {
                    return Ok(None);
                };
                Ok(Some(layer_slice(b, &cur.weights[k])?))
            })?;
            let layer_cache = match &cur.cache {
                Some((ck, cv)) => Some((layer_slice(b, ck)?, layer_slice(b, cv)?)),
                None => None,
            };
            let inputs = attention::select_for_layer(b, &cur.attn, &d.layer_variant, i)?;
            let (x, k, v) = ctx.layer(
                b,
                &cur.x,
                &inputs,
                &w,
                layer_cache.as_ref().map(|(k, v)| (k, v)),
            )?;
            let kv_acc = match &cur.kv_acc {
                Some((ka, va)) => {
                    let k1 = b.reshape(&k, &[1, nkv, t, hd])?;
                    let v1 = b.reshape(&v, &[1, nkv, t, hd])?;
                    let starts = [i, &zero, &zero, &zero];
                    Some((
                        b.dynamic_update_slice(ka, &k1, &starts)?,
                        b.dynamic_update_slice(va, &v1, &starts)?,
                    ))
                }
                None => None,
            };
            let one = b.scalar_i32(1);
            let next = Carry {
                layer: b.add(i, &one)?,
                x,
                kv_acc,
                ..cur
            };
            Ok(next.values().into_iter().cloned().collect())
        },
    )?;
    init.rebuild(&out)
}
