//! GGUF metadata to [`ModelConfig`], the way transformers 5.24's GGUF loader
//! (`integrations/ggml.py` `GGUF_CONFIG_MAPPING`, then the family's config defaults) reads it.
//! Metadata transformers would silently drop (RoPE scaling keys, precomputed `rope_freqs`,
//! soft-capping) is refused instead: the checkpoint means something the reference ignores.

use anyhow::{Result, anyhow, bail};

use super::config::{ArchFeatures, LayerAttention};
use super::gguf::GgufFile;
use super::{Arch, ModelConfig, RopeScaling};

fn file_stem(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The hyper-parameters stored under `{arch}.*` plus the tokenizer's vocabulary size.
pub(crate) fn read_config(g: &GgufFile) -> Result<ModelConfig> {
    let arch_name = g
        .meta_string("general.architecture")?
        .ok_or_else(|| anyhow!("GGUF has no general.architecture"))?;
    let arch = match arch_name.as_str() {
        "qwen2" | "llama" | "qwen3" | "phi3" | "gemma3" => Arch::parse(&arch_name)?,
        other => bail!(
            "GGUF general.architecture {other:?} is not supported (GGUF: qwen2, llama, qwen3, phi3, gemma3)"
        ),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let need = |k: &str| -> Result<usize> {
        let v = g
            .meta_u64(&key(k))?
            .ok_or_else(|| anyhow!("GGUF has no {}", key(k)))?;
        Ok(usize::try_from(v)?)
    };
    let opt = |k: &str| -> Result<Option<usize>> {
        g.meta_u64(&key(k))?
            .map(usize::try_from)
            .transpose()
            .map_err(Into::into)
    };
    for k in ["expert_count", "expert_used_count"] {
        if let Some(n) = opt(k)?
            && n > 0
        {
            bail!(
                "GGUF {} = {n}: mixture-of-experts models are not supported",
                key(k)
            );
        }
    }
    if let Some(t) = g.meta_string(&key("rope.scaling.type"))?
        && t != "none"
    {
        bail!(
            "GGUF {} = {t:?} is not supported (transformers' GGUF loader ignores it)",
            key("rope.scaling.type")
        );
    }
    if let Some(f) = g.meta_f32(&key("rope.scaling.factor"))?
        && f != 1.0
    {
        bail!("GGUF {} = {f} is not supported", key("rope.scaling.factor"));
    }
    if g.has_tensor("rope_freqs.weight") {
        bail!(
            "GGUF tensor rope_freqs.weight (precomputed RoPE scaling, e.g. Llama 3.1's) is not \
             supported: transformers' GGUF loader ignores it; load the Hugging Face checkpoint"
        );
    }
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(c) = g.meta_f32(&key(k))? {
            bail!("GGUF {} = {c} is not supported from GGUF", key(k));
        }
    }
    let hidden_size = need("embedding_length")?;
    let num_heads = need("attention.head_count")?;
    if num_heads == 0 {
        bail!("GGUF {} is 0", key("attention.head_count"));
    }
    let num_layers = need("block_count")?;
    let num_kv_heads = opt("attention.head_count_kv")?.unwrap_or(num_heads);
    let head_dim = opt("attention.key_length")?.unwrap_or(hidden_size / num_heads);
    if let Some(v) = opt("attention.value_length")?
        && v != head_dim
    {
        bail!(
            "GGUF {} = {v} differs from key_length {head_dim}: not supported",
            key("attention.value_length")
        );
    }
    if let Some(r) = opt("rope.dimension_count")?
        && r != head_dim
    {
        bail!(
            "GGUF {} = {r} (partial rotary over head_dim {head_dim}) is not supported",
            key("rope.dimension_count")
        );
    }
    let window = opt("attention.sliding_window")?;
    let (layer_attention, sliding_window) = match (arch, window) {
        // Gemma3TextConfig's default pattern: every sixth layer is global (llama.cpp hard-wires the
        // same); GGUF stores no layer types.
        (Arch::Gemma3, Some(w)) => (
            (0..num_layers)
                .map(|i| {
                    if (i + 1) % 6 != 0 {
                        LayerAttention::Sliding
                    } else {
                        LayerAttention::Full
                    }
                })
                .collect(),
            Some(w),
        ),
        (Arch::Gemma3, None) => bail!("GGUF has no {}", key("attention.sliding_window")),
        (Arch::Phi3, Some(w)) => (vec![LayerAttention::Sliding; num_layers], Some(w)),
        (_, None) => (Vec::new(), None),
        (_, Some(w)) => bail!(
            "GGUF {} = {w} is not supported for {arch} (no sliding window in that architecture)",
            key("attention.sliding_window")
        ),
    };
    let gemma = arch == Arch::Gemma3;
    if gemma && head_dim != 256 {
        // transformers' GGUF loader leaves query_pre_attn_scalar at its default 256 (not in the
        // metadata); the engine follows it only where that equals head_dim, as in every Gemma 3
        // except 27B (whose real scalar is hidden / heads).
        bail!(
            "GGUF gemma3 with key_length {head_dim}: query_pre_attn_scalar is not in the metadata and cannot be inferred (supported: 256)"
        );
    }
    let vocab_size = match g.get("tokenizer.ggml.tokens") {
        Some(v) => v
            .to_vec()
            .map_err(|e| anyhow!("tokenizer.ggml.tokens: {e}"))?
            .len(),
        None => need("vocab_size")?,
    };
    let id = |k: &str| -> Result<Option<u32>> {
        g.meta_u64(k)?
            .map(u32::try_from)
            .transpose()
            .map_err(Into::into)
    };
    let features = ArchFeatures {
        rope_scaling: RopeScaling::None,
        local_rope_theta: gemma.then_some(10_000.0),
        sliding_window,
        layer_attention,
        attn_scale: gemma.then(|| (256f64).powf(-0.5) as f32),
        ..ArchFeatures::fixed(arch, hidden_size)
    };
    let config = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        // llama.cpp's converter always writes it; a file without one gets the prompt limit.
        context_length: opt("context_length")?.unwrap_or(usize::MAX),
        rope_theta: g.meta_f32(&key("rope.freq_base"))?.unwrap_or(if gemma {
            1_000_000.0
        } else {
            10_000.0
        }),
        rms_norm_eps: g
            .meta_f32(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| anyhow!("GGUF has no {}", key("attention.layer_norm_rms_epsilon")))?,
        // llama.cpp writes `output.weight` only when the head is not the embedding; transformers'
        // GGUF loader decides tying the same way.
        tie_word_embeddings: !g.has_tensor("output.weight"),
        attention_bias: g.has_tensor("blk.0.attn_q.bias"),
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: id("tokenizer.ggml.eos_token_id")?,
        name: match g.meta_string("general.name")? {
            Some(n) => n,
            None => file_stem(g.path()),
        },
        features,
    };
    config.check()?;
    Ok(config)
}
