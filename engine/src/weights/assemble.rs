//! Building [`LayerWeights`] from an architecture's name table, shared by both loaders: each
//! loader only says how to fetch one named tensor (and applies its format's own fix-ups, such as
//! GGUF's Q/K permutation); which tensors exist, which are required, and how fused ones split is
//! decided here, once.

use std::collections::BTreeSet;

use anyhow::{Result, bail};

use super::arch::{LayerTensor, Need, TensorName, tensor_table};
use super::{HostTensor, LayerWeights, ModelConfig};

/// Which spelling of the table a loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Hf,
    Gguf,
}

impl Format {
    fn layer_name(self, t: &TensorName, layer: usize) -> String {
        match self {
            Format::Hf => format!("model.layers.{layer}.{}", t.hf),
            Format::Gguf => format!("blk.{layer}.{}", t.gguf),
        }
    }
}

/// Rows `[from, from + n)` of a 2-D tensor.
fn rows(t: &HostTensor, what: &str, from: usize, n: usize) -> Result<HostTensor> {
    let cols = match t.shape.as_slice() {
        [_, c] => *c,
        other => bail!("{what}: expected a matrix, found shape {other:?}"),
    };
    let data = t.data.get(from * cols..(from + n) * cols).ok_or_else(|| {
        anyhow::anyhow!(
            "{what}: shape {:?} has no rows {from}..{}",
            t.shape,
            from + n
        )
    })?;
    HostTensor::new(vec![n, cols], data.to_vec())
}

/// Loads layer `layer` of `config`'s architecture. `fetch(name, slot)` returns the tensor, or
/// `None` when the checkpoint has no tensor of that name; every name asked for is added to `used`.
pub(crate) fn layer(
    config: &ModelConfig,
    format: Format,
    layer: usize,
    used: &mut BTreeSet<String>,
    mut fetch: impl FnMut(&str, LayerTensor) -> Result<Option<HostTensor>>,
) -> Result<LayerWeights> {
    let mut got: Vec<(LayerTensor, HostTensor)> = Vec::new();
    for t in tensor_table(config.arch) {
        let name = format.layer_name(t, layer);
        let tensor = fetch(&name, t.slot)?;
        used.insert(name.clone());
        match (tensor, t.need) {
            (Some(x), _) => got.push((t.slot, x)),
            (None, Need::Optional) => {}
            (None, Need::Required) => bail!("checkpoint has no tensor {name}"),
        }
    }
    let mut take = |slot: LayerTensor| -> Option<HostTensor> {
        let i = got.iter().position(|(s, _)| *s == slot)?;
        Some(got.swap_remove(i).1)
    };
    let missing = |what: &str| anyhow::anyhow!("layer {layer}: no {what} tensor");
    let (qw, kvw) = (
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
    );
    let (q_proj, k_proj, v_proj) = match take(LayerTensor::Qkv) {
        Some(qkv) => {
            let what = format!("layer {layer} qkv_proj");
            (
                rows(&qkv, &what, 0, qw)?,
                rows(&qkv, &what, qw, kvw)?,
                rows(&qkv, &what, qw + kvw, kvw)?,
            )
        }
        None => (
            take(LayerTensor::Q).ok_or_else(|| missing("q_proj"))?,
            take(LayerTensor::K).ok_or_else(|| missing("k_proj"))?,
            take(LayerTensor::V).ok_or_else(|| missing("v_proj"))?,
        ),
    };
    let ffn = config.intermediate_size;
    let (gate_proj, up_proj) = match take(LayerTensor::GateUp) {
        Some(gu) => {
            let what = format!("layer {layer} gate_up_proj");
            (rows(&gu, &what, 0, ffn)?, rows(&gu, &what, ffn, ffn)?)
        }
        None => (
            take(LayerTensor::Gate).ok_or_else(|| missing("gate_proj"))?,
            take(LayerTensor::Up).ok_or_else(|| missing("up_proj"))?,
        ),
    };
    Ok(LayerWeights {
        attn_norm: take(LayerTensor::AttnNorm).ok_or_else(|| missing("input_layernorm"))?,
        q_proj,
        q_bias: take(LayerTensor::QBias),
        k_proj,
        k_bias: take(LayerTensor::KBias),
        v_proj,
        v_bias: take(LayerTensor::VBias),
        o_proj: take(LayerTensor::O).ok_or_else(|| missing("o_proj"))?,
        q_norm: take(LayerTensor::QNorm),
        k_norm: take(LayerTensor::KNorm),
        post_attn_norm: take(LayerTensor::PostAttnNorm),
        ffn_norm: take(LayerTensor::FfnNorm).ok_or_else(|| missing("ffn norm"))?,
        post_ffn_norm: take(LayerTensor::PostFfnNorm),
        gate_proj,
        up_proj,
        down_proj: take(LayerTensor::Down).ok_or_else(|| missing("down_proj"))?,
    })
}

/// Fails when the checkpoint holds a tensor no slot consumed (an o_proj bias, a MoE router,
/// precomputed RoPE factors...): loading it without that tensor would score wrong.
pub(crate) fn refuse_unused<'a>(
    all: impl Iterator<Item = &'a str>,
    used: &BTreeSet<String>,
    ignorable: impl Fn(&str) -> bool,
    arch: impl std::fmt::Display,
) -> Result<()> {
    let mut extra: Vec<&str> = all
        .filter(|n| !used.contains(*n) && !ignorable(n))
        .collect();
    // Sorted, so the tensor named is the same on every load.
    extra.sort_unstable();
    if let Some(first) = extra.first() {
        bail!(
            "checkpoint tensor {first} (and {} more) is not used by the {arch} program: \
             the model has a feature the engine does not implement",
            extra.len() - 1
        );
    }
    Ok(())
}
