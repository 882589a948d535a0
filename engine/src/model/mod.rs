//! Decoder-only prefill (every architecture of `weights::Arch`) as one StableHLO program over a
//! flattened ragged batch.
//!
//! [`Model::load`] uploads the weights once (they stay on the device as program
//! parameters); [`Model::run`] pads a [`PackedBatch`] to static buckets, compiles
//! the program for that bucket on first use (kept in memory, optionally in an
//! [`ExecutableStore`]) and returns only the `[S, L]` label values.

mod attention;
pub mod buckets;
mod head;
mod load;
mod params;
mod program;
mod store;
mod tiles;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::pjrt::{Buffer, Client, LoadedExecutable};
use crate::weights::ModelConfig;

use params::Dims;

pub use head::HeadRows;
pub use params::LayerLayout;
use program::{ProgramKind, ProgramSpec, build_program};

pub use store::{DirStore, ExecutableStore};

/// Precision of the weights on the device and of the matmuls.
///
/// * `F32`: f32 weights, f32 everything.
/// * `BF16`: bf16 weights and bf16 matmul inputs (activations are converted to bf16 right before
///   each dot, the attention dots included) with f32 accumulation and f32 results — what a GPU's
///   tensor cores and a TPU's MXU run. Norms, RoPE, softmax, logsumexp, soft-capping and the
///   residual stream stay f32.
/// * `BF16Storage`: bf16 weights widened to f32 on the device; every computation is f32. Half
///   the weight memory at f32 accuracy (scores within ~2e-3 of f32), and on a CPU no slower
///   than `BF16`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    BF16,
    #[serde(rename = "bf16-storage")]
    BF16Storage,
}

impl DType {
    /// Parses `f32` / `bf16` / `bf16-storage` (the `--dtype` spellings).
    pub fn parse(s: &str) -> Result<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "bf16-storage" | "bf16_storage" => Ok(DType::BF16Storage),
            other => bail!("unknown dtype {other:?} (expected f32, bf16 or bf16-storage)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::BF16Storage => "bf16-storage",
        }
    }

    /// Whether the weights are stored in bf16 on the device.
    pub fn bf16_weights(self) -> bool {
        matches!(self, DType::BF16 | DType::BF16Storage)
    }

    /// Whether matmul inputs are bf16 (with f32 accumulation).
    pub fn bf16_compute(self) -> bool {
        self == DType::BF16
    }
}

/// What the program computes at each scored position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HeadVariant {
    /// Label log-probabilities: label logits minus the full-vocabulary logsumexp.
    FullLogprobs,
    /// Raw label logits from the label rows of the head only (enough for a
    /// softmax over the labels, where the normaliser cancels).
    LabelLogits,
}

/// A flattened ragged batch: several segments (prompts, or a shared prefix and
/// its continuations) laid end to end.
///
/// Token `i` attends token `j` iff `j <= i`, `segment[j] != -1`, and `segment[j]`
/// equals `segment[i]` or `prefix_segment[i]` (`-1`: no prefix).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<i32>,
    pub segment: Vec<i32>,
    pub prefix_segment: Vec<i32>,
    /// Flattened index of each scored position (its logits predict the labels).
    pub score_index: Vec<i32>,
    /// Label ids per scored position.
    pub label_ids: Vec<Vec<u32>>,
}

/// Counters of the work done by a [`Model`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelStats {
    /// Programs compiled (cache misses that also missed the store).
    pub compiles: u64,
    pub compile_ms_total: u64,
    /// Runs that found their executable in memory.
    pub cache_hits: u64,
    /// Executables loaded from the [`ExecutableStore`] instead of compiled.
    pub store_hits: u64,
    pub forward_passes: u64,
    /// Forward passes whose attention was tiled (`Attention::Tiled`).
    pub tiled_passes: u64,
    /// Runs of the prefix key/value program (prefixes computed for the prefix cache).
    pub prefix_passes: u64,
    /// Prefix tokens served from cached keys/values instead of being computed.
    pub prefix_hit_tokens: u64,
    /// Tokens of shared prefixes that had to be computed (not in the cache).
    pub prefix_miss_tokens: u64,
    /// Device bytes held by the prefix cache, and its entry count.
    pub prefix_cache_bytes: u64,
    pub prefix_cache_entries: usize,
    /// Tokens computed, padding included (the bucket sizes).
    pub tokens_computed: u64,
    /// Tokens of the batches before padding.
    pub tokens_real: u64,
    pub scored_positions: u64,
    /// Always 0: scoring is prefill only.
    pub decode_steps: u64,
    pub executables_cached: usize,
    /// Bytes of weights resident on the device (uploaded once).
    pub weight_bytes: u64,
}

/// How a pass computes its attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Attention {
    /// Tiled where the batch allows it and it saves work (a shared query, short items: each
    /// row over the query and its own tile), else causal row blocks. Per-layer layout only.
    #[default]
    Tiled,
    /// Causal row blocks over every earlier column (the mask does the rest).
    RowBlocks,
}

impl Attention {
    pub fn parse(s: &str) -> Result<Attention> {
        match s {
            "tiled" => Ok(Attention::Tiled),
            "row-blocks" => Ok(Attention::RowBlocks),
            other => bail!("unknown attention {other:?} (expected tiled or row-blocks)"),
        }
    }
}

/// How [`Model::load_with`] places the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    pub dtype: DType,
    /// Which of the client's addressable devices holds the weights and runs the programs.
    pub device: usize,
    pub layout: LayerLayout,
    pub attention: Attention,
}

/// The largest token bucket unless [`Model::set_max_tokens`] says otherwise.
pub const DEFAULT_MAX_TOKENS: usize = 8192;

/// A model whose weights live on one device, with its compiled programs.
pub struct Model {
    client: Client,
    device: usize,
    config: ModelConfig,
    dtype: DType,
    layout: LayerLayout,
    attention: Attention,
    dims: Dims,
    weights: Vec<Buffer>,
    max_tokens: usize,
    cache: Mutex<HashMap<ProgramSpec, Arc<LoadedExecutable>>>,
    stats: Mutex<ModelStats>,
    store: Option<Arc<dyn ExecutableStore>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.config.name)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// The largest batch (in tokens) [`Model::run`] accepts.
    pub fn set_max_tokens(&mut self, max_tokens: usize) {
        self.max_tokens = max_tokens.max(1);
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Where compiled executables are also looked up and saved (an on-disk cache).
    pub fn set_store(&mut self, store: Arc<dyn ExecutableStore>) {
        self.store = Some(store);
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn layout(&self) -> LayerLayout {
        self.layout
    }

    pub fn set_attention(&mut self, attention: Attention) {
        self.attention = attention;
    }

    pub fn attention(&self) -> Attention {
        self.attention
    }

    pub fn device(&self) -> usize {
        self.device
    }

    pub fn stats(&self) -> ModelStats {
        let mut s = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        s.executables_cached = self.cache.lock().map(|c| c.len()).unwrap_or(0);
        s
    }

    fn spec(
        &self,
        tokens: usize,
        scores: usize,
        labels: usize,
        head: HeadVariant,
    ) -> Result<ProgramSpec> {
        let t = buckets::token_bucket(tokens, self.max_tokens).with_context(|| {
            format!(
                "{tokens} tokens exceed the largest batch of {}",
                self.max_tokens
            )
        })?;
        Ok(ProgramSpec {
            dims: self.dims.clone(),
            dtype: self.dtype,
            layout: self.layout,
            tokens: t as i64,
            scores: buckets::score_bucket(scores) as i64,
            labels: buckets::label_bucket(labels) as i64,
            head,
            kind: ProgramKind::Score,
            cache: 0,
            pooled: false,
            tiling: None,
        })
    }

    /// The StableHLO text of the program for a batch of this size.
    pub fn program_text(
        &self,
        tokens: usize,
        scores: usize,
        labels: usize,
        head: HeadVariant,
    ) -> Result<String> {
        build_program(&self.spec(tokens, scores, labels, head)?)
    }

    /// Compiles (or loads) the program for a batch of this size ahead of traffic.
    pub fn warm_up(
        &self,
        tokens: usize,
        scores: usize,
        labels: usize,
        head: HeadVariant,
    ) -> Result<()> {
        let spec = self.spec(tokens, scores, labels, head)?;
        self.executable(&spec).map(|_| ())
    }

    fn executable(&self, spec: &ProgramSpec) -> Result<Arc<LoadedExecutable>> {
        if let Some(exe) = self.cache.lock().ok().and_then(|c| c.get(spec).cloned()) {
            self.bump(|s| s.cache_hits += 1);
            return Ok(exe);
        }
        let text = build_program(spec)?;
        let key = self.store.as_ref().map(|_| store::key(&self.client, &text));
        let mut loaded = None;
        if let (Some(store), Some(key)) = (&self.store, &key)
            && let Some(bytes) = store.load(key)
        {
            match self.client.deserialize_executable(&bytes) {
                Ok(exe) => {
                    self.bump(|s| s.store_hits += 1);
                    tracing::info!(tokens = spec.tokens, scores = spec.scores, labels = spec.labels,
                        head = ?spec.head, "executable loaded from the store");
                    loaded = Some(exe);
                }
                Err(e) => tracing::warn!(error = %e, "stored executable unusable; compiling"),
            }
        }
        let exe = match loaded {
            Some(exe) => exe,
            None => {
                let started = Instant::now();
                let exe = self
                    .client
                    .compile(&text)
                    .with_context(|| format!("compiling the prefill program for {spec:?}"))?;
                let ms = started.elapsed().as_millis() as u64;
                self.bump(|s| {
                    s.compiles += 1;
                    s.compile_ms_total += ms;
                });
                tracing::info!(tokens = spec.tokens, scores = spec.scores, labels = spec.labels,
                    head = ?spec.head, dtype = spec.dtype.as_str(), tiling = ?spec.tiling,
                    compile_ms = ms, "compiled prefill program");
                if let (Some(store), Some(key)) = (&self.store, &key) {
                    match exe.serialize() {
                        Ok(bytes) => {
                            if let Err(e) = store.save(key, &bytes) {
                                tracing::warn!(error = %format!("{e:#}"), "could not store the executable");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "could not serialize the executable"),
                    }
                }
                exe
            }
        };
        let exe = Arc::new(exe);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(spec.clone(), exe.clone());
        }
        Ok(exe)
    }

    fn bump(&self, f: impl FnOnce(&mut ModelStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Runs one forward pass and returns, per scored position, one value per
    /// label: log-probabilities ([`HeadVariant::FullLogprobs`]) or logits
    /// ([`HeadVariant::LabelLogits`]). Only these `[S, L]` values leave the device.
    pub fn run(&self, batch: &PackedBatch, head: HeadVariant) -> Result<Vec<Vec<f32>>> {
        self.run_with(batch, head, false, None)
            .map(|rows| rows.values)
    }

    /// [`Model::run`] on a batch that continues a cached prefix: every real token also attends
    /// the first `len` positions of `prefix` (whose positions are `0..len`, so the batch's
    /// positions start at `len`). Scores equal those of the batch with the prefix's tokens in
    /// front of every segment.
    pub fn run_cached(
        &self,
        batch: &PackedBatch,
        head: HeadVariant,
        prefix: &PrefixKv,
        len: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.run_with(batch, head, false, Some((prefix, len)))
            .map(|rows| rows.values)
    }

    /// Computes every layer's keys and values of `tokens` (positions `0..`), kept on the device
    /// for [`Model::run_cached`]. One pass: `tokens` must fit the largest batch.
    pub fn prefix_kv(&self, tokens: &[u32]) -> Result<PrefixKv> {
        self.kv_pass(None, tokens)
    }

    /// The keys and values of `base`'s first `len` positions followed by those of `tokens`
    /// (positions `len..`; no base: `0..`), computed in passes of at most `chunk` tokens, each
    /// attending to the keys/values of everything before it: a chunked prefill. Device memory
    /// per pass is bounded by the chunk (its attention is `[heads, chunk, columns so far]`), so a
    /// prompt may be as long as the model allows.
    pub fn extend_kv(
        &self,
        base: Option<(&PrefixKv, usize)>,
        tokens: &[u32],
        chunk: usize,
    ) -> Result<PrefixKv> {
        let chunk = chunk.clamp(1, self.max_tokens);
        let mut pieces = tokens.chunks(chunk);
        let first = pieces
            .next()
            .context("an empty prefix has nothing to cache")?;
        let mut cur = self.kv_pass(base, first)?;
        for piece in pieces {
            let len = cur.tokens;
            cur = self.kv_pass(Some((&cur, len)), piece)?;
        }
        Ok(cur)
    }

    /// One pass of the key/value program: `tokens` after the first `len` positions of `base`.
    fn kv_pass(&self, base: Option<(&PrefixKv, usize)>, tokens: &[u32]) -> Result<PrefixKv> {
        ensure!(!tokens.is_empty(), "an empty prefix has nothing to cache");
        let start = match base {
            Some((kv, len)) => {
                ensure!(
                    len > 0 && len <= kv.tokens,
                    "cached prefix length {len} outside 1..={}",
                    kv.tokens
                );
                len
            }
            None => 0,
        };
        let n = tokens.len();
        let batch = PackedBatch {
            tokens: tokens.to_vec(),
            positions: (start as i32..(start + n) as i32).collect(),
            segment: vec![0; n],
            prefix_segment: vec![-1; n],
            score_index: Vec::new(),
            label_ids: Vec::new(),
        };
        self.check_ids(&batch)?;
        let mut spec = self.spec(n, 1, 1, HeadVariant::LabelLogits)?;
        spec.kind = ProgramKind::PrefixKv;
        spec.scores = 0;
        spec.labels = 0;
        spec.cache = base.map_or(0, |(kv, _)| kv.columns as i64);
        let tb = spec.tokens as usize;
        let exe = self.executable(&spec)?;
        let cache_len = match base {
            Some(_) => Some(self.upload_i32(&[start as i32], &[])?),
            None => None,
        };
        let inputs = self.upload_tokens(&batch, tb)?;
        let mut args: Vec<&Buffer> = self.weights.iter().collect();
        if let (Some((kv, _)), Some(len)) = (base, &cache_len) {
            args.extend([&kv.k, &kv.v, len]);
        }
        args.extend(inputs.iter());
        let mut outs = exe
            .execute_on(self.device, &args)
            .context("running the prefix key/value program")?
            .into_iter();
        let (Some(k), Some(v)) = (outs.next(), outs.next()) else {
            bail!("the prefix key/value program returned fewer than two results");
        };
        let columns = base.map_or(0, |(kv, _)| kv.columns) + tb;
        let d = &self.dims;
        let bytes = 2 * (d.layers * d.kv_heads * columns as i64 * d.head_dim) as u64 * 4;
        self.bump(|st| {
            st.prefix_passes += 1;
            st.tokens_computed += tb as u64;
            st.tokens_real += n as u64;
        });
        Ok(PrefixKv {
            k,
            v,
            tokens: start + n,
            columns,
            bytes,
        })
    }

    fn check_ids(&self, batch: &PackedBatch) -> Result<()> {
        let n = batch.tokens.len();
        ensure!(
            batch.positions.len() == n
                && batch.segment.len() == n
                && batch.prefix_segment.len() == n,
            "tokens, positions, segment and prefix_segment must have equal lengths"
        );
        let vocab = self.config.vocab_size;
        if let Some(t) = batch.tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {t} is outside the vocabulary of {vocab}");
        }
        if let Some(limit) = self.config.features.rope_scaling.max_exact_positions()
            && let Some(&p) = batch.positions.iter().max()
            && p as usize >= limit
        {
            // HF's dynamic RoPE recomputes (and keeps) its base past this length: not reproduced.
            bail!(
                "position {p} is past max_position_embeddings {limit}, where dynamic RoPE scaling                  changes its frequencies (not implemented)"
            );
        }
        Ok(())
    }

    /// Pads and uploads tokens, positions, segment and prefix_segment to `tb` entries.
    fn upload_tokens(&self, batch: &PackedBatch, tb: usize) -> Result<[Buffer; 4]> {
        let tokens: Vec<i32> = batch.tokens.iter().map(|&t| t as i32).collect();
        let t = [tb as i64];
        Ok([
            self.upload_i32(&pad(&tokens, tb, 0), &t)?,
            self.upload_i32(&pad(&batch.positions, tb, 0), &t)?,
            self.upload_i32(&pad(&batch.segment, tb, -1), &t)?,
            self.upload_i32(&pad(&batch.prefix_segment, tb, -1), &t)?,
        ])
    }

    fn upload_i32(&self, v: &[i32], dims: &[i64]) -> Result<Buffer> {
        self.client
            .buffer_from_host(v, dims, self.device)
            .context("uploading batch inputs")
    }

    /// [`Model::run`] (or [`Model::run_cached`] with `cache`), with the final-norm hidden state
    /// of every scored position too when `pooled` (a program variant with a second result; the
    /// values are the same as without).
    pub fn run_with(
        &self,
        batch: &PackedBatch,
        head: HeadVariant,
        pooled: bool,
        cache: Option<(&PrefixKv, usize)>,
    ) -> Result<HeadRows> {
        if let Some((prefix, len)) = cache {
            ensure!(
                len > 0 && len <= prefix.tokens,
                "cached prefix length {len} outside 1..={}",
                prefix.tokens
            );
        }
        self.check_ids(batch)?;
        ensure!(
            batch.score_index.len() == batch.label_ids.len(),
            "one label list per scored position"
        );
        let n = batch.tokens.len();
        let s = batch.score_index.len();
        if s == 0 {
            return Ok(HeadRows {
                values: Vec::new(),
                hidden: pooled.then(Vec::new),
            });
        }
        let vocab = self.config.vocab_size;
        if let Some(l) = batch
            .label_ids
            .iter()
            .flatten()
            .find(|&&l| l as usize >= vocab)
        {
            bail!("label id {l} is outside the vocabulary of {vocab}");
        }
        if let Some(i) = batch
            .score_index
            .iter()
            .find(|&&i| i < 0 || i as usize >= n)
        {
            bail!("score index {i} is outside the batch of {n} tokens");
        }
        let l = batch.label_ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut spec = self.spec(n, s, l, head)?;
        spec.pooled = pooled;
        if let Some((prefix, _)) = cache {
            spec.cache = prefix.columns as i64;
        }
        if self.attention == Attention::Tiled && self.layout == LayerLayout::PerLayer {
            let compiled = |tiling: Option<tiles::Tiling>| {
                let mut s = spec.clone();
                s.tiling = tiling;
                self.cache.lock().is_ok_and(|c| c.contains_key(&s))
            };
            spec.tiling = tiles::choose(batch, spec.tokens, spec.cache, compiled);
        }
        let (tb, sb, lb) = (
            spec.tokens as usize,
            spec.scores as usize,
            spec.labels as usize,
        );
        let score_index = pad(&batch.score_index, sb, 0);
        let mut labels = vec![0i32; sb * lb];
        for (r, row) in batch.label_ids.iter().enumerate() {
            for (c, &id) in row.iter().enumerate() {
                labels[r * lb + c] = id as i32;
            }
        }

        let exe = self.executable(&spec)?;
        let cache_len = match cache {
            Some((_, len)) => Some(self.upload_i32(&[len as i32], &[])?),
            None => None,
        };
        let tokens = self.upload_tokens(batch, tb)?;
        let scored = [
            self.upload_i32(&score_index, &[sb as i64])?,
            self.upload_i32(&labels, &[sb as i64, lb as i64])?,
        ];
        let mut args: Vec<&Buffer> = self.weights.iter().collect();
        if let (Some((prefix, _)), Some(len)) = (cache, &cache_len) {
            args.extend([&prefix.k, &prefix.v, len]);
        }
        args.extend(tokens.iter());
        args.extend(scored.iter());
        let outs = exe
            .execute_on(self.device, &args)
            .context("running the prefill program")?;
        let out = outs
            .first()
            .context("the prefill program returned nothing")?;
        let values = out.to_host::<f32>().context("reading the label scores")?;
        let hidden = if pooled {
            Some(head::pooled_rows(outs.get(1), s, sb)?)
        } else {
            None
        };
        ensure!(
            values.len() == sb * lb,
            "expected {}x{} results, got {}",
            sb,
            lb,
            values.len()
        );
        let attention = if spec.tiling.is_some() {
            "tiled"
        } else {
            "row_blocks"
        };
        metrics::counter!("scorer_engine_passes_total", "attention" => attention).increment(1);
        self.bump(|st| {
            st.forward_passes += 1;
            st.tiled_passes += u64::from(spec.tiling.is_some());
            st.tokens_computed += tb as u64;
            st.tokens_real += n as u64;
            st.scored_positions += s as u64;
        });
        Ok(HeadRows {
            values: batch
                .label_ids
                .iter()
                .enumerate()
                .map(|(r, row)| values[r * lb..r * lb + row.len()].to_vec())
                .collect(),
            hidden,
        })
    }
}

fn pad(v: &[i32], len: usize, fill: i32) -> Vec<i32> {
    let mut out = v.to_vec();
    out.resize(len, fill);
    out
}

/// Every layer's keys and values of a token prefix, resident on the device (see
/// [`Model::prefix_kv`]). Dropping it frees the device memory.
pub struct PrefixKv {
    k: Buffer,
    v: Buffer,
    tokens: usize,
    columns: usize,
    bytes: u64,
}

impl PrefixKv {
    /// Tokens of the prefix.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Device bytes held (keys and values, padded to the bucket).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl std::fmt::Debug for PrefixKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixKv")
            .field("tokens", &self.tokens)
            .field("columns", &self.columns)
            .field("bytes", &self.bytes)
            .finish()
    }
}
