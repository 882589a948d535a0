//! The architecture descriptor: every hyper-parameter and block feature a prefill program needs,
//! resolved once by the loaders (`hf_config.rs` from `config.json`, `gguf_config.rs` from GGUF
//! metadata) so the program reads one value per concept instead of testing the family name.

use anyhow::{Result, bail};
use serde::Serialize;

pub use super::arch::Arch;
pub use super::rope::RopeScaling;

/// How an RMSNorm applies its weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `w · x / rms(x)` (Llama, Qwen, Mistral, Phi-3).
    #[default]
    Weight,
    /// `(1 + w) · x / rms(x)` (Gemma: the stored weight is the offset from one).
    OnePlusWeight,
}

/// The gated MLP's activation: `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x · sigmoid(x)` (HF `silu`).
    #[default]
    Silu,
    /// HF `gelu_pytorch_tanh`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
}

/// What a layer attends to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerAttention {
    /// Every earlier position.
    #[default]
    Full,
    /// Positions `> p - sliding_window` (model positions), with the local RoPE where the family
    /// has one (Gemma 3's `rope_local_base_freq`).
    Sliding,
}

/// Everything about a block beyond the plain Llama shape (RMSNorm `w·x`, SiLU, rotate-half RoPE
/// with one theta, full causal attention scaled by `head_dim^-0.5`). `Default` is that plain
/// block.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchFeatures {
    pub norm: NormKind,
    pub activation: Activation,
    /// Embeddings are multiplied by this (Gemma: `sqrt(hidden_size)`, rounded to f32).
    pub embed_scale: Option<f32>,
    /// RMSNorm over `head_dim` on queries and keys before RoPE (`q_norm` / `k_norm`).
    pub qk_norm: bool,
    /// Gemma's extra norms: `post_attention_layernorm` on the attention output and
    /// `post_feedforward_layernorm` on the MLP output, each before its residual add
    /// (`ffn_norm` then plays `pre_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// RoPE frequency scaling of full-attention layers (and of all layers without a local theta).
    pub rope_scaling: RopeScaling,
    /// RoPE theta of sliding layers when it differs from `rope_theta` (Gemma 3); always unscaled.
    pub local_rope_theta: Option<f32>,
    /// The window of [`LayerAttention::Sliding`] layers.
    pub sliding_window: Option<usize>,
    /// Per layer; empty means every layer is [`LayerAttention::Full`].
    pub layer_attention: Vec<LayerAttention>,
    /// Attention logits are multiplied by this; `None`: `head_dim^-0.5`
    /// (Gemma: `query_pre_attn_scalar^-0.5`).
    pub attn_scale: Option<f32>,
    /// `cap · tanh(x / cap)` on the final logits before the log-softmax.
    pub final_softcap: Option<f32>,
}

impl ArchFeatures {
    /// What an architecture's modeling code hard-wires (norm kind, activation, embedding scale,
    /// QK-norm, extra norms); RoPE, windows, attention scale and caps come from the checkpoint.
    pub(crate) fn fixed(arch: Arch, hidden_size: usize) -> ArchFeatures {
        let gemma = arch == Arch::Gemma3;
        ArchFeatures {
            norm: if gemma {
                NormKind::OnePlusWeight
            } else {
                NormKind::Weight
            },
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            // HF: `torch.tensor(hidden_size**0.5)` cast to the weights' dtype.
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt() as f32),
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            sandwich_norms: gemma,
            ..ArchFeatures::default()
        }
    }

    pub fn layer_attention(&self, layer: usize) -> LayerAttention {
        self.layer_attention.get(layer).copied().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The longest prompt the model was trained for (`max_position_embeddings`, GGUF
    /// `<arch>.context_length`): the engine's prompt limit is capped at it.
    pub context_length: usize,
    /// RoPE base of full-attention layers.
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    /// True when the LM head reuses `embed_tokens` (then `ModelWeights::lm_head` is `None`).
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (always on Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Human-readable model name (GGUF `general.name`, else the file or directory name).
    pub name: String,
    /// The block's features beyond the plain Llama shape.
    pub features: ArchFeatures,
}

impl ModelConfig {
    pub(crate) fn check(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
            bail!("model config has zero heads or head_dim: {self:?}");
        }
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            bail!("model config has zero layers, hidden size or vocabulary: {self:?}");
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            );
        }
        let f = &self.features;
        if !f.layer_attention.is_empty() && f.layer_attention.len() != self.num_layers {
            bail!(
                "layer_types lists {} layers, the model has {}",
                f.layer_attention.len(),
                self.num_layers
            );
        }
        let sliding = f.layer_attention.contains(&LayerAttention::Sliding);
        match f.sliding_window {
            Some(0) => bail!("sliding_window 0 would hide every token"),
            None if sliding => bail!("layer_types has sliding_attention but no sliding_window"),
            _ => {}
        }
        if let Some(c) = f.final_softcap
            && !(c.is_finite() && c > 0.0)
        {
            bail!("final_logit_softcapping {c} must be a positive number");
        }
        Ok(())
    }
}
