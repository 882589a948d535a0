//! The per-batch attention inputs of the prefill program, one set per attention kind
//! ([`AttnVariant`]): the visibility mask and the RoPE cos/sin tables.
//!
//! Visibility is decided by flattened index, segment and — for sliding windows — **model
//! positions** (the `positions` input), never by flattened distance: a packed item sits after
//! other items in the batch but at positions continuing its query, and a cached prefix column `c`
//! holds position `c`. So a query at position `p` sees a key at position `q` iff the causal and
//! segment rules allow it and `q > p - window`, whether the key is in the batch or in the cache;
//! packing, the prefix cache and coalescing stay exact with a window.
//!
//! [`attend`] computes the attention itself in row blocks: the mask is causal in flattened order,
//! so the rows of block `i` can see no column past the block's last row, and each block's scores
//! are `[heads, rows, C + (i + 1) · rows]` instead of `[heads, rows, C + T]`. With 4 blocks a
//! pass computes 5/8 of the dense score entries (with 8, 9/16), and the softmax — memory-bound
//! on a CPU, about a third of a 1,024-token pass when dense — shrinks with them (measured: the
//! 1,024-token pass 4–10 % faster, a 576-token one 5 %).

use crate::hlo::{Cmp, DotDims, ElemType, FuncBuilder, Precision, TensorType, Value};

use super::params::AttnVariant;
use super::tiles::{self, TileMasks, Tiling};

type HloResult<T> = crate::hlo::Result<T>;

/// One attention kind's inputs to a layer.
#[derive(Clone)]
pub(crate) struct AttnInputs {
    /// `[T, C + T]` (cached columns first) or `[T, T]`, `pred`.
    pub mask: Value,
    /// `[T, head_dim]` each.
    pub cos: Value,
    pub sin: Value,
    /// A tiled pass's masks (built from `mask`), which [`attend`] then uses instead.
    pub tiles: Option<TileMasks>,
}

/// The batch-level values every variant derives from.
pub(crate) struct BatchInputs<'a> {
    pub tokens: i64,
    pub head_dim: i64,
    pub positions: &'a Value,
    pub segment: &'a Value,
    pub prefix: &'a Value,
    /// `(columns, cache_len)` of a cached prefix.
    pub cache: Option<(i64, &'a Value)>,
    /// The pass's tiling, if it is tiled (`tiles.rs`).
    pub tiling: Option<Tiling>,
}

/// The causal + segment mask without a window, `[T, C + T]` or `[T, T]`.
fn base_mask(b: &mut FuncBuilder, x: &BatchInputs<'_>) -> HloResult<Value> {
    let t = x.tokens;
    let tt = [t, t];
    let seg_q = b.broadcast_in_dim(x.segment, &tt, &[0])?;
    let seg_k = b.broadcast_in_dim(x.segment, &tt, &[1])?;
    let pre_q = b.broadcast_in_dim(x.prefix, &tt, &[0])?;
    let row = b.iota(TensorType::i32(&tt), 0)?;
    let col = b.iota(TensorType::i32(&tt), 1)?;
    let causal = b.compare(&col, &row, Cmp::Le)?;
    let mask = visible(b, &causal, &seg_q, &pre_q, &seg_k)?;
    // With a cache, [T, C] columns in front: real tokens see the first cache_len of them.
    match x.cache {
        Some((c, cache_len)) => {
            let tc = [t, c];
            let ccol = b.iota(TensorType::i32(&tc), 1)?;
            let len = b.broadcast_in_dim(cache_len, &tc, &[])?;
            let filled = b.compare(&ccol, &len, Cmp::Lt)?;
            let seg_row = b.broadcast_in_dim(x.segment, &tc, &[0])?;
            let pad = b.splat(TensorType::i32(&tc), -1.0);
            let real_row = b.compare(&seg_row, &pad, Cmp::Ne)?;
            let cmask = b.and(&filled, &real_row)?;
            b.concatenate(&[&cmask, &mask], 1)
        }
        None => Ok(mask),
    }
}

/// The visibility rule on broadcast operands of one shape: `causal`, the key is a real token
/// (segment not -1), and its segment is the query's or the query's prefix segment.
pub(crate) fn visible(
    b: &mut FuncBuilder,
    causal: &Value,
    seg_q: &Value,
    pre_q: &Value,
    seg_k: &Value,
) -> HloResult<Value> {
    let same = b.compare(seg_k, seg_q, Cmp::Eq)?;
    let in_prefix = b.compare(seg_k, pre_q, Cmp::Eq)?;
    let pad = b.splat(TensorType::i32(seg_k.dims()), -1.0);
    let real = b.compare(seg_k, &pad, Cmp::Ne)?;
    let seen = b.or(&same, &in_prefix)?;
    let mask = b.and(causal, &seen)?;
    b.and(&mask, &real)
}

/// `pos_q - pos_k < window` on broadcast operands of one shape.
pub(crate) fn near(
    b: &mut FuncBuilder,
    pos_q: &Value,
    pos_k: &Value,
    window: i64,
) -> HloResult<Value> {
    let dist = b.sub(pos_q, pos_k)?;
    let w = b.splat(TensorType::i32(dist.dims()), window as f64);
    b.compare(&dist, &w, Cmp::Lt)
}

/// `pos_q - pos_k < window` over the mask's columns (cached column `c` is position `c`).
fn window_mask(b: &mut FuncBuilder, x: &BatchInputs<'_>, window: i64) -> HloResult<Value> {
    let t = x.tokens;
    let tt = [t, t];
    let pos_q = b.broadcast_in_dim(x.positions, &tt, &[0])?;
    let pos_k = b.broadcast_in_dim(x.positions, &tt, &[1])?;
    let batch = near(b, &pos_q, &pos_k, window)?;
    match x.cache {
        Some((c, _)) => {
            let tc = [t, c];
            let ccol = b.iota(TensorType::i32(&tc), 1)?;
            let pos_qc = b.broadcast_in_dim(x.positions, &tc, &[0])?;
            let cached = near(b, &pos_qc, &ccol, window)?;
            b.concatenate(&[&cached, &batch], 1)
        }
        None => Ok(batch),
    }
}

/// RoPE tables `[T, hd]`: angle = position · inv_freq, halves duplicated, times the variant's
/// cos/sin factor where it is not 1.
fn rope_tables(
    b: &mut FuncBuilder,
    x: &BatchInputs<'_>,
    v: &AttnVariant,
) -> HloResult<(Value, Value)> {
    let (t, hd) = (x.tokens, x.head_dim);
    let half = hd / 2;
    let inv_freq = b.constant_f32(&[half], &v.inv_freq())?;
    let pos_f = b.convert(x.positions, ElemType::F32);
    let pos_b = b.broadcast_in_dim(&pos_f, &[t, half], &[0])?;
    let inv_b = b.broadcast_in_dim(&inv_freq, &[t, half], &[1])?;
    let freqs = b.mul(&pos_b, &inv_b)?;
    let angles = b.concatenate(&[&freqs, &freqs], 1)?;
    let mut cos = b.cos(&angles)?;
    let mut sin = b.sin(&angles)?;
    let scale = v.rope_scale();
    if scale != 1.0 {
        cos = b.mul_const(&cos, scale as f64)?;
        sin = b.mul_const(&sin, scale as f64)?;
    }
    Ok((cos, sin))
}

/// The inputs of every variant, in `variants` order (the base mask is built once and shared).
pub(crate) fn build(
    b: &mut FuncBuilder,
    x: &BatchInputs<'_>,
    variants: &[AttnVariant],
) -> HloResult<Vec<AttnInputs>> {
    let base = base_mask(b, x)?;
    variants
        .iter()
        .map(|v| {
            let mask = match v.window {
                Some(w) => {
                    let near = window_mask(b, x, w)?;
                    b.and(&base, &near)?
                }
                None => base.clone(),
            };
            let (cos, sin) = rope_tables(b, x, v)?;
            let tiles = match x.tiling {
                Some(t) => Some(tiles::masks(b, x, &mask, v.window, t)?),
                None => None,
            };
            Ok(AttnInputs {
                mask,
                cos,
                sin,
                tiles,
            })
        })
        .collect()
}

/// Inside the layer loop: the inputs of layer `i` (a traced `i32[]`), chosen from `all` by the
/// constant per-layer variant table. One variant needs no choice.
pub(crate) fn select_for_layer(
    b: &mut FuncBuilder,
    all: &[AttnInputs],
    layer_variant: &[usize],
    i: &Value,
) -> HloResult<AttnInputs> {
    let Some(first) = all.first() else {
        return Err(crate::hlo::HloError::Invalid {
            op: "prefill",
            msg: "no attention variant".into(),
        });
    };
    if all.len() == 1 {
        return Ok(first.clone());
    }
    let table: Vec<i32> = layer_variant.iter().map(|&k| k as i32).collect();
    let table = b.constant_i32(&[table.len() as i64], &table)?;
    let k = b.dynamic_slice(&table, &[i], &[1])?;
    let k = b.reshape(&k, &[])?;
    let mut chosen = first.clone();
    for (idx, v) in all.iter().enumerate().skip(1) {
        let kc = b.scalar_i32(idx as i32);
        let pick = b.compare(&k, &kc, Cmp::Eq)?;
        chosen = AttnInputs {
            mask: b.select(&pick, &v.mask, &chosen.mask)?,
            cos: b.select(&pick, &v.cos, &chosen.cos)?,
            sin: b.select(&pick, &v.sin, &chosen.sin)?,
            tiles: None,
        };
    }
    Ok(chosen)
}

/// Masked attention scores get this instead of -inf, so a fully masked
/// (padding) row stays finite: its probabilities then multiply zeros, never NaN.
pub(crate) const MASKED: f64 = -1e30;

/// Row blocks are at least this many rows (fewer, larger dots below it).
const MIN_BLOCK_ROWS: i64 = 128;

/// The shape facts of one layer's attention.
pub(crate) struct AttnShape {
    pub tokens: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    /// Cached columns in front of the batch's own (0 without a cache).
    pub cache: i64,
    /// The factor on `q · kᵀ`.
    pub scale: f64,
    /// Element type of the two dots' inputs (f32 accumulation and results).
    pub mat: ElemType,
    pub precision: Precision,
}

/// How many row blocks a pass of `t` tokens is split into: 8 or 4 blocks of at least
/// [`MIN_BLOCK_ROWS`] rows that divide `t`, else 1. Two blocks (a quarter of the entries
/// saved) measured slower than one here: the slices and the concatenation cost more.
pub(crate) fn row_blocks(t: i64) -> i64 {
    [8, 4]
        .into_iter()
        .find(|&n| t % n == 0 && t / n >= MIN_BLOCK_ROWS)
        .unwrap_or(1)
}

/// Scaled dot-product attention of `q [T, heads, hd]` (after RoPE) over `k_all`, `v_all`
/// `[kv_heads, C + T, hd]` (cached columns first) under `attn`'s mask `[T, C + T]`; returns
/// `[T, heads · hd]`. Query heads are grouped by the KV head they share (HF `repeat_kv` order:
/// `[kv_heads, g, T, hd]`), so GQA is one batched matmul without materialising repeated K/V.
/// A tiled pass goes to `tiles::attend_tiled`; otherwise causal row blocks (see the module doc).
pub(crate) fn attend(
    b: &mut FuncBuilder,
    s: &AttnShape,
    q: &Value,
    k_all: &Value,
    v_all: &Value,
    attn: &AttnInputs,
) -> HloResult<Value> {
    if let Some(m) = &attn.tiles {
        return tiles::attend_tiled(b, s, q, k_all, v_all, m);
    }
    let (t, nh, nkv, hd) = (s.tokens, s.heads, s.kv_heads, s.head_dim);
    let g = nh / nkv;
    let q = b.reshape(q, &[t, nkv, g, hd])?;
    let q = b.transpose(&q, &[1, 2, 0, 3])?;
    let ctxv = attend_rows(b, s, &q, k_all, v_all, &attn.mask, s.cache)?;
    let ctxv = b.transpose(&ctxv, &[2, 0, 1, 3])?;
    b.reshape(&ctxv, &[t, nh * hd])
}

/// The rows of `q [kv_heads, g, rows, hd]` over `k`, `v` `[kv_heads, cache + rows, hd]` under
/// `mask [rows, cache + rows]`, causal in row order, in row blocks; returns
/// `[kv_heads, g, rows, hd]`. Exact: the columns a block leaves out are masked anyway.
pub(crate) fn attend_rows(
    b: &mut FuncBuilder,
    s: &AttnShape,
    q: &Value,
    k: &Value,
    v: &Value,
    mask: &Value,
    cache: i64,
) -> HloResult<Value> {
    let (nkv, g, t, hd) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let c = cache;
    let blocks = row_blocks(t);
    let rows = t / blocks;
    let mut outs = Vec::with_capacity(blocks as usize);
    for i in 0..blocks {
        let (r0, r1) = (i * rows, (i + 1) * rows);
        // What the block's rows can see: the cached columns and the batch up to its last row.
        let cols = c + r1;
        let (qi, ki, vi, mi) = if blocks == 1 {
            (q.clone(), k.clone(), v.clone(), mask.clone())
        } else {
            (
                b.slice(q, &[0, 0, r0, 0], &[nkv, g, r1, hd])?,
                b.slice(k, &[0, 0, 0], &[nkv, cols, hd])?,
                b.slice(v, &[0, 0, 0], &[nkv, cols, hd])?,
                b.slice(mask, &[r0, 0], &[r1, cols])?,
            )
        };
        let qi = b.reshape(&qi, &[nkv, g * rows, hd])?;
        let qc = b.convert(&qi, s.mat);
        let kc = b.convert(&ki, s.mat);
        let scores = b.dot_general(
            &qc,
            &kc,
            &DotDims::batched(&[0], &[0], &[2], &[2]),
            ElemType::F32,
            s.precision,
        )?;
        let scores = b.mul_const(&scores, s.scale)?;
        let full = [nkv, g, rows, cols];
        let scores = b.reshape(&scores, &full)?;
        let mask4 = b.broadcast_in_dim(&mi, &full, &[2, 3])?;
        let neg = b.scalar(ElemType::F32, MASKED);
        let neg = b.broadcast_in_dim(&neg, &full, &[])?;
        let scores = b.select(&mask4, &scores, &neg)?;
        let probs = b.softmax_last(&scores)?;
        let probs = b.reshape(&probs, &[nkv, g * rows, cols])?;
        let pc = b.convert(&probs, s.mat);
        let vc = b.convert(&vi, s.mat);
        let out = b.dot_general(
            &pc,
            &vc,
            &DotDims::batched(&[0], &[0], &[2], &[1]),
            ElemType::F32,
            s.precision,
        )?;
        outs.push(b.reshape(&out, &[nkv, g, rows, hd])?);
    }
    match outs.len() {
        1 => Ok(outs.swap_remove(0)),
        _ => {
            let refs: Vec<&Value> = outs.iter().collect();
            b.concatenate(&refs, 2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::row_blocks;

    #[test]
    fn row_blocks_divide_the_pass() {
        assert_eq!(row_blocks(32), 1);
        assert_eq!(row_blocks(192), 1);
        assert_eq!(row_blocks(256), 1);
        assert_eq!(row_blocks(448), 1);
        assert_eq!(row_blocks(512), 4);
        assert_eq!(row_blocks(576), 4);
        assert_eq!(row_blocks(1024), 8);
        assert_eq!(row_blocks(2048), 8);
        assert_eq!(row_blocks(1000), 4);
    }
}
