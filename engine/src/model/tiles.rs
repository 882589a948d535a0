//! Tiled attention: each row computes scores only for the columns the packing lets it see, up to
//! a tile's padding, instead of for every column before it.
//!
//! A multi-item pass is a shared query followed by many short items. Each item row sees the
//! query and its own item, nothing else. Causal row blocks (`attention::attend`) still compute
//! every earlier item's columns: 5/8 to 9/16 of `[T, T]`. A [`Tiling`] splits the pass at a static
//! `shared` row:
//!
//! - rows `0..shared` (the query) attend causally over the cached and shared columns, in row
//!   blocks as before;
//! - rows `shared..T` form tiles of `width` rows. A tile's rows attend to all cached and shared
//!   columns (one dense dot, `[rows, C + shared]`) and to a window of `2 · width` columns: the
//!   tile before and its own (one dot batched over tiles).
//!
//! So an item row costs `C + shared + 2 · width` entries, not `C + T · 5/8`. Both parts go through
//! one softmax over their concatenated columns, under the same visibility rule as the dense mask
//! (the window columns are never also shared columns, so nothing is counted twice).
//!
//! The shapes are static (`shared`, `width` and `T` key the program), but where the query ends and
//! how long the items are is per batch. [`choose`] therefore checks on the host that every
//! column a row can see lies in its two parts, picks the cheapest tiling that holds, and returns
//! `None` when none beats the row blocks. A tile cannot see an item that started two tiles back,
//! so an item longer than `width + 1` tokens needs a wider tiling. A pass that packs several jobs'
//! queries usually does not fit either: a later query's items see it only where it ends inside
//! the shared columns or the first tile.
//!
//! Measured on a 2-vCPU CPU (docs/BENCHMARKS.md, `benches/attention_ab`): 1–11 % faster passes
//! for 27–73 % fewer score entries; the gain grows with the pass.

use std::collections::HashMap;

use crate::hlo::{Cmp, DotDims, ElemType, FuncBuilder, TensorType, Value};

use super::PackedBatch;
use super::attention::{AttnShape, BatchInputs, MASKED, attend_rows, near, row_blocks, visible};

type HloResult<T> = crate::hlo::Result<T>;

/// The static shape of a tiled pass (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tiling {
    /// Rows (and batch columns) `0..shared` form the shared region.
    pub shared: i64,
    /// Rows `shared..T` in tiles of this many.
    pub width: i64,
}

/// Tile widths tried, smallest first. Each divides [`SHARED_STEP`] or is a multiple of it.
const WIDTHS: [i64; 3] = [32, 64, 128];
/// `shared` is a multiple of this, which bounds the programs a model compiles per token bucket.
const SHARED_STEP: i64 = 32;
/// Passes shorter than this keep the row blocks: their attention is a small part of the pass.
const MIN_TOKENS: i64 = 256;
/// Tiling is used only when it computes at most this fraction of the row blocks' score entries:
/// the second dot and the concatenation cost something too.
const MAX_COST_RATIO: f64 = 0.8;

/// Score entries (per head) of the row-blocked attention of `rows` rows over `cache` columns in
/// front of them.
fn row_block_cost(rows: i64, cache: i64) -> i64 {
    if rows == 0 {
        return 0;
    }
    let blocks = row_blocks(rows);
    let per = rows / blocks;
    (1..=blocks).map(|i| per * (cache + i * per)).sum()
}

/// Score entries (per head) of `tiling` on a pass of `tokens` rows after `cache` columns.
fn tiled_cost(tokens: i64, cache: i64, tiling: Tiling) -> i64 {
    let Tiling { shared, width } = tiling;
    row_block_cost(shared, cache) + (tokens - shared) * (cache + shared + 2 * width)
}

/// Whether every column a row of `batch` can see is in its two parts under `tiling`: for a row
/// in tile `i ≥ 1`, no visible batch column at or after `shared` lies before tile `i - 1`. The
/// rows of the shared region and every cached column are computed in full, so they always fit.
fn fits(batch: &PackedBatch, tiling: Tiling) -> bool {
    let (shared, width) = (tiling.shared as usize, tiling.width as usize);
    // Per segment, its first token at or after `shared` (seen so far: causal).
    let mut first: HashMap<i32, usize> = HashMap::new();
    for r in shared..batch.tokens.len() {
        let seg = batch.segment[r];
        if seg < 0 {
            continue;
        }
        let mut lo = *first.entry(seg).or_insert(r);
        if let Some(&p) = first.get(&batch.prefix_segment[r]) {
            lo = lo.min(p);
        }
        let tile = (r - shared) / width;
        if tile >= 1 && lo < shared + (tile - 1) * width {
            return false;
        }
    }
    true
}

/// A program already compiled wins over a cheaper one not yet compiled when it computes at most
/// this factor of the cheapest one's score entries: compiling a new shape takes seconds on a CPU,
/// a few percent of one pass's attention does not.
const COMPILED_SLACK: f64 = 1.25;

/// The tiling for `batch`, padded to `tokens` rows after `cache` cached columns: the cheapest one
/// that is exact for it, or `None` (the row blocks) when none saves enough. `compiled` says
/// whether the program of a choice is compiled already; among the choices within
/// [`COMPILED_SLACK`] of the cheapest, the cheapest compiled one is taken.
pub(crate) fn choose(
    batch: &PackedBatch,
    tokens: i64,
    cache: i64,
    compiled: impl Fn(Option<Tiling>) -> bool,
) -> Option<Tiling> {
    if tokens < MIN_TOKENS {
        return None;
    }
    let blocks = row_block_cost(tokens, cache);
    let limit = blocks as f64 * MAX_COST_RATIO;
    let mut candidates: Vec<(i64, Tiling)> = (0..tokens)
        .step_by(SHARED_STEP as usize)
        .flat_map(|shared| WIDTHS.map(|width| Tiling { shared, width }))
        .filter(|t| {
            let rows = tokens - t.shared;
            rows >= 2 * t.width && rows % t.width == 0
        })
        .map(|t| (tiled_cost(tokens, cache, t), t))
        .filter(|&(cost, _)| (cost as f64) <= limit)
        .collect();
    candidates.sort_by_key(|&(cost, t)| (cost, t.width, t.shared));
    let mut fitting = candidates
        .into_iter()
        .filter(|&(_, t)| fits(batch, t))
        .map(|(cost, t)| (cost, Some(t)))
        .chain(std::iter::once((blocks, None)));
    let (best_cost, best) = fitting.next()?;
    if best.is_none() || compiled(best) {
        return best;
    }
    let slack = best_cost as f64 * COMPILED_SLACK;
    fitting
        .take_while(|&(cost, _)| cost as f64 <= slack)
        .find(|&(_, t)| compiled(t))
        .map_or(best, |(_, t)| t)
}

/// A tiled pass's masks for one attention kind, built once per pass.
#[derive(Clone)]
pub(crate) struct TileMasks {
    pub tiling: Tiling,
    /// `[shared, C + shared]`: the shared rows over the cached and shared columns.
    pub shared: Value,
    /// `[tiles, width, C + shared + 2 · width]`: each tile's rows over the cached and shared
    /// columns, then the tile before it and its own.
    pub items: Value,
}

/// `x` with axis `axis` (length `tiles · width`) split into tiles, each widened by the tile
/// before it: `[.., tiles, 2 · width, ..]`. The first tile's predecessor is `fill`.
fn windows(b: &mut FuncBuilder, x: &Value, axis: usize, width: i64, fill: f64) -> HloResult<Value> {
    let dims = x.dims().to_vec();
    let tiles = dims[axis] / width;
    let mut split = dims[..axis].to_vec();
    split.extend([tiles, width]);
    split.extend(&dims[axis + 1..]);
    let xs = b.reshape(x, &split)?;
    let mut one = split.clone();
    one[axis] = 1;
    let pad = b.splat(TensorType::new(&one, x.elem()), fill);
    let prev = if tiles == 1 {
        pad
    } else {
        let mut limit = split.clone();
        limit[axis] = tiles - 1;
        let head = b.slice(&xs, &vec![0; split.len()], &limit)?;
        b.concatenate(&[&pad, &head], axis as i64)?
    };
    b.concatenate(&[&prev, &xs], axis as i64 + 1)
}

/// The masks of `tiling` from this kind's dense mask `full` (`[T, C + T]`, for the shared
/// columns) and, for the windows, the same rule as `attention::base_mask` (and `window`'s) on
/// the windowed segment and position vectors.
pub(crate) fn masks(
    b: &mut FuncBuilder,
    x: &BatchInputs<'_>,
    full: &Value,
    window: Option<i64>,
    tiling: Tiling,
) -> HloResult<TileMasks> {
    let t = x.tokens;
    let c = x.cache.map_or(0, |(c, _)| c);
    let Tiling { shared, width } = tiling;
    let ca = c + shared;
    let tiles = (t - shared) / width;
    let shared_mask = b.slice(full, &[0, 0], &[shared, ca])?;

    let rows = |b: &mut FuncBuilder, v: &Value| -> HloResult<Value> {
        let items = b.slice(v, &[shared], &[t])?;
        b.reshape(&items, &[tiles, width])
    };
    let cols = |b: &mut FuncBuilder, v: &Value, fill: f64| -> HloResult<Value> {
        let items = b.slice(v, &[shared], &[t])?;
        windows(b, &items, 0, width, fill)
    };
    let dims = [tiles, width, 2 * width];
    let seg_q = rows(b, x.segment)?;
    let seg_q = b.broadcast_in_dim(&seg_q, &dims, &[0, 1])?;
    let pre_q = rows(b, x.prefix)?;
    let pre_q = b.broadcast_in_dim(&pre_q, &dims, &[0, 1])?;
    let seg_k = cols(b, x.segment, -1.0)?;
    let seg_k = b.broadcast_in_dim(&seg_k, &dims, &[0, 2])?;
    // Row `a` of a tile is window column `width + a`: causal is `col <= row + width`.
    let row = b.iota(TensorType::i32(&dims), 1)?;
    let row = b.add_const(&row, width as f64)?;
    let col = b.iota(TensorType::i32(&dims), 2)?;
    let causal = b.compare(&col, &row, Cmp::Le)?;
    let mut win = visible(b, &causal, &seg_q, &pre_q, &seg_k)?;
    if let Some(w) = window {
        let pos_q = rows(b, x.positions)?;
        let pos_q = b.broadcast_in_dim(&pos_q, &dims, &[0, 1])?;
        let pos_k = cols(b, x.positions, 0.0)?;
        let pos_k = b.broadcast_in_dim(&pos_k, &dims, &[0, 2])?;
        let close = near(b, &pos_q, &pos_k, w)?;
        win = b.and(&win, &close)?;
    }
    let items = if ca > 0 {
        let front = b.slice(full, &[shared, 0], &[t, ca])?;
        let front = b.reshape(&front, &[tiles, width, ca])?;
        b.concatenate(&[&front, &win], 2)?
    } else {
        win
    };
    Ok(TileMasks {
        tiling,
        shared: shared_mask,
        items,
    })
}

/// Tiled attention of `q [T, heads, hd]` over `k_all`, `v_all` `[kv_heads, C + T, hd]`;
/// returns `[T, heads · hd]` as `attention::attend` does.
pub(crate) fn attend_tiled(
    b: &mut FuncBuilder,
    s: &AttnShape,
    q: &Value,
    k_all: &Value,
    v_all: &Value,
    m: &TileMasks,
) -> HloResult<Value> {
    let (t, nh, nkv, hd, c) = (s.tokens, s.heads, s.kv_heads, s.head_dim, s.cache);
    let g = nh / nkv;
    let Tiling { shared, width } = m.tiling;
    let (ca, r) = (c + shared, t - shared);
    let tiles = r / width;
    let q = b.reshape(q, &[t, nkv, g, hd])?;
    let mut outs = Vec::with_capacity(2);

    if shared > 0 {
        let qs = b.slice(&q, &[0, 0, 0, 0], &[shared, nkv, g, hd])?;
        let qs = b.transpose(&qs, &[1, 2, 0, 3])?;
        let ks = b.slice(k_all, &[0, 0, 0], &[nkv, ca, hd])?;
        let vs = b.slice(v_all, &[0, 0, 0], &[nkv, ca, hd])?;
        let out = attend_rows(b, s, &qs, &ks, &vs, &m.shared, c)?;
        let out = b.transpose(&out, &[2, 0, 1, 3])?;
        outs.push(b.reshape(&out, &[shared, nh * hd])?);
    }

    // Item rows as [kv, tiles, g, width, hd]: both dots then need only reshapes.
    let qi = b.slice(&q, &[shared, 0, 0, 0], &[t, nkv, g, hd])?;
    let qi = b.reshape(&qi, &[tiles, width, nkv, g, hd])?;
    let qi = b.transpose(&qi, &[2, 0, 3, 1, 4])?;
    let qi = b.convert(&qi, s.mat);
    let kb = b.slice(k_all, &[0, ca, 0], &[nkv, c + t, hd])?;
    let vb = b.slice(v_all, &[0, ca, 0], &[nkv, c + t, hd])?;
    let kw = windows(b, &kb, 1, width, 0.0)?;
    let vw = windows(b, &vb, 1, width, 0.0)?;
    let kw = b.convert(&kw, s.mat);
    let vw = b.convert(&vw, s.mat);
    let five = |cols: i64| [nkv, tiles, g, width, cols];

    let qb = b.reshape(&qi, &[nkv, tiles, g * width, hd])?;
    let sb = b.dot_general(
        &qb,
        &kw,
        &DotDims::batched(&[0, 1], &[0, 1], &[3], &[3]),
        ElemType::F32,
        s.precision,
    )?;
    let sb = b.reshape(&sb, &five(2 * width))?;
    let (ka, va) = if ca > 0 {
        let ka = b.slice(k_all, &[0, 0, 0], &[nkv, ca, hd])?;
        let va = b.slice(v_all, &[0, 0, 0], &[nkv, ca, hd])?;
        (Some(b.convert(&ka, s.mat)), Some(b.convert(&va, s.mat)))
    } else {
        (None, None)
    };
    let scores = match &ka {
        Some(ka) => {
            let qa = b.reshape(&qi, &[nkv, tiles * g * width, hd])?;
            let sa = b.dot_general(
                &qa,
                ka,
                &DotDims::batched(&[0], &[0], &[2], &[2]),
                ElemType::F32,
                s.precision,
            )?;
            let sa = b.reshape(&sa, &five(ca))?;
            b.concatenate(&[&sa, &sb], 4)?
        }
        None => sb,
    };
    let all = five(ca + 2 * width);
    let scores = b.mul_const(&scores, s.scale)?;
    let mask = b.broadcast_in_dim(&m.items, &all, &[1, 3, 4])?;
    let neg = b.scalar(ElemType::F32, MASKED);
    let neg = b.broadcast_in_dim(&neg, &all, &[])?;
    let scores = b.select(&mask, &scores, &neg)?;
    let probs = b.softmax_last(&scores)?;

    let pb = b.slice(&probs, &[0, 0, 0, 0, ca], &all)?;
    let pb = b.reshape(&pb, &[nkv, tiles, g * width, 2 * width])?;
    let pb = b.convert(&pb, s.mat);
    let ob = b.dot_general(
        &pb,
        &vw,
        &DotDims::batched(&[0, 1], &[0, 1], &[3], &[2]),
        ElemType::F32,
        s.precision,
    )?;
    let mut out = b.reshape(&ob, &five(hd))?;
    if let Some(va) = &va {
        let pa = b.slice(&probs, &[0, 0, 0, 0, 0], &five(ca))?;
        let pa = b.reshape(&pa, &[nkv, tiles * g * width, ca])?;
        let pa = b.convert(&pa, s.mat);
        let oa = b.dot_general(
            &pa,
            va,
            &DotDims::batched(&[0], &[0], &[2], &[1]),
            ElemType::F32,
            s.precision,
        )?;
        let oa = b.reshape(&oa, &five(hd))?;
        out = b.add(&out, &oa)?;
    }
    // [kv, tiles, g, width, hd] -> [tiles, width, kv, g, hd] -> [R, heads · hd].
    let out = b.transpose(&out, &[1, 3, 0, 2, 4])?;
    outs.push(b.reshape(&out, &[r, nh * hd])?);
    match outs.len() {
        1 => Ok(outs.swap_remove(0)),
        _ => b.concatenate(&[&outs[0], &outs[1]], 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query of `query` tokens (segment 0) and items of the given lengths (segments 1..,
    /// prefix segment 0).
    fn batch(query: usize, items: &[usize]) -> PackedBatch {
        let mut b = PackedBatch::default();
        for i in 0..query {
            b.tokens.push(1);
            b.positions.push(i as i32);
            b.segment.push(0);
            b.prefix_segment.push(-1);
        }
        for (k, &len) in items.iter().enumerate() {
            for i in 0..len {
                b.tokens.push(1);
                b.positions.push((query + i) as i32);
                b.segment.push(k as i32 + 1);
                b.prefix_segment.push(if query > 0 { 0 } else { -1 });
            }
        }
        b
    }

    #[test]
    fn short_items_after_a_query_are_tiled() {
        // 200 + 16 × 22 = 552 tokens in a 576 bucket: the query's rows up to 224, then 32-row
        // tiles (at 192 the query's last 8 columns would fall out of the third tile's window).
        let b = batch(200, &[22; 16]);
        let t = choose(&b, 576, 0, |_| false).expect("tiled");
        assert_eq!(
            t,
            Tiling {
                shared: 224,
                width: 32
            }
        );
        assert!(!fits(
            &b,
            Tiling {
                shared: 192,
                width: 32
            }
        ));
        assert!(tiled_cost(576, 0, t) < row_block_cost(576, 0) * 3 / 4);
    }

    #[test]
    fn long_items_need_wide_tiles_or_none() {
        // 70-token items always span three 32-row tiles.
        let b = batch(200, &[70; 5]);
        for shared in (0..=288).step_by(32) {
            assert!(!fits(&b, Tiling { shared, width: 32 }), "{shared}");
        }
        if let Some(t) = choose(&b, 576, 0, |_| false) {
            assert!(t.width >= 64, "{t:?}");
        }
        // Items as long as the pass: nothing to save.
        assert_eq!(choose(&batch(64, &[400]), 512, 0, |_| false), None);
        // Small passes keep the row blocks.
        assert_eq!(choose(&batch(100, &[10; 8]), 192, 0, |_| false), None);
    }

    #[test]
    fn items_over_a_cached_prefix_start_at_row_zero() {
        let b = batch(0, &[20; 30]);
        let t = choose(&b, 640, 1024, |_| false).expect("tiled");
        assert_eq!(t.shared, 0);
        assert!(fits(&b, t));
    }

    #[test]
    fn a_second_query_in_the_pass_is_refused() {
        // Two jobs of 150 + 6 × 20 tokens: the second's items see its query (rows 270..420),
        // which lies past the shared columns of every tiling cheap enough to use.
        let mut b = batch(150, &[20; 6]);
        let second = batch(150, &[20; 6]);
        let base = b.segment.iter().max().copied().unwrap_or(0) + 1;
        for i in 0..second.tokens.len() {
            b.tokens.push(1);
            b.positions.push(second.positions[i]);
            b.segment.push(second.segment[i] + base);
            let p = second.prefix_segment[i];
            b.prefix_segment.push(if p < 0 { -1 } else { p + base });
        }
        for width in WIDTHS {
            for shared in (0..=256).step_by(32) {
                if (576 - shared) % width == 0 {
                    assert!(!fits(&b, Tiling { shared, width }), "{shared} {width}");
                }
            }
        }
        assert_eq!(choose(&b, 576, 0, |_| false), None);
    }

    #[test]
    fn a_compiled_program_within_the_slack_wins() {
        let b = batch(200, &[22; 24]);
        let best = choose(&b, 640, 0, |_| false).expect("tiled");
        // The row blocks cost more than the slack allows: compiled or not, the tiling is taken.
        assert_eq!(choose(&b, 640, 0, |t| t.is_none()), Some(best));
        // A slightly costlier tiling that is compiled beats compiling the best one.
        assert_eq!(best.shared, 224);
        let wider = Tiling {
            shared: best.shared + 32,
            width: best.width,
        };
        assert!(fits(&b, wider));
        assert!(tiled_cost(640, 0, wider) as f64 <= tiled_cost(640, 0, best) as f64 * 1.25);
        assert_eq!(choose(&b, 640, 0, |t| t == Some(wider)), Some(wider));
        assert_eq!(choose(&b, 640, 0, |t| t.is_some()), Some(best));
    }

    #[test]
    fn windows_hold_the_tile_before() {
        assert_eq!(row_block_cost(576, 0), 144 * (144 + 288 + 432 + 576));
        let b = batch(256, &[33; 4]);
        // A 33-token item spans at most two 32-row tiles; a 65-token one always spans three.
        assert!(fits(
            &b,
            Tiling {
                shared: 256,
                width: 32
            }
        ));
        let b = batch(256, &[65; 4]);
        assert!(!fits(
            &b,
            Tiling {
                shared: 256,
                width: 32
            }
        ));
    }
}
