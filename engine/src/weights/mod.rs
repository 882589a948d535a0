//! Model weights as f32 host tensors in Hugging Face orientation.
//!
//! Every loader produces the same [`ModelWeights`]: row-major f32 tensors shaped exactly like the
//! `transformers` state dict (`[out_features, in_features]` for projections), with llama.cpp's Q/K row
//! permutation and Gemma's `1 + w` norm storage already undone, plus the architecture descriptor
//! ([`ModelConfig`] with its [`ArchFeatures`]). The model builder therefore never needs to know where
//! weights came from, nor which family they belong to. What is supported and what is refused:
//! docs/MODELS.md.

mod arch;
mod assemble;
pub mod cache;
mod config;
pub mod gguf;
mod gguf_config;
mod hf_config;
mod hf_dir;
mod identity;
mod permute;
mod rope;

use std::path::Path;

use anyhow::{Context, Result, bail};

pub use arch::SUPPORTED as SUPPORTED_ARCHITECTURES;
pub use config::{Activation, Arch, ArchFeatures, LayerAttention, ModelConfig, NormKind};
pub use gguf::load_gguf;
pub use hf_config::parse_hf_config;
pub use hf_dir::load_hf_dir;
pub use identity::content_hash;
pub use permute::unpermute_llama_rows;
pub use rope::RopeScaling;

/// A dense row-major f32 tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Fails when `data` does not hold exactly `shape.iter().product()` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            bail!(
                "tensor shape {shape:?} needs {numel} values, got {}",
                data.len()
            );
        }
        Ok(Self { shape, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Row `r` of a 2-D tensor.
    pub fn row(&self, r: usize) -> &[f32] {
        let cols = self.shape.last().copied().unwrap_or(1);
        &self.data[r * cols..(r + 1) * cols]
    }

    /// Fails unless the shape is exactly `expected`; names the tensor in the error.
    pub fn expect_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            bail!(
                "{name}: expected shape {expected:?}, found {:?}",
                self.shape
            );
        }
        Ok(())
    }
}

/// One decoder layer, in Hugging Face orientation.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `input_layernorm`, `[h]`.
    pub attn_norm: HostTensor,
    /// `[num_heads * head_dim, h]`.
    pub q_proj: HostTensor,
    pub q_bias: Option<HostTensor>,
    /// `[num_kv_heads * head_dim, h]`.
    pub k_proj: HostTensor,
    pub k_bias: Option<HostTensor>,
    /// `[num_kv_heads * head_dim, h]`.
    pub v_proj: HostTensor,
    pub v_bias: Option<HostTensor>,
    /// `[h, num_heads * head_dim]`.
    pub o_proj: HostTensor,
    /// `self_attn.q_norm` / `k_norm`, `[head_dim]` (QK-norm families).
    pub q_norm: Option<HostTensor>,
    pub k_norm: Option<HostTensor>,
    /// Gemma's `post_attention_layernorm` on the attention output, `[h]`.
    pub post_attn_norm: Option<HostTensor>,
    /// The norm before the MLP, `[h]`: `post_attention_layernorm` in Llama-style blocks,
    /// `pre_feedforward_layernorm` in Gemma's.
    pub ffn_norm: HostTensor,
    /// Gemma's `post_feedforward_layernorm` on the MLP output, `[h]`.
    pub post_ffn_norm: Option<HostTensor>,
    /// `[ffn, h]`.
    pub gate_proj: HostTensor,
    /// `[ffn, h]`.
    pub up_proj: HostTensor,
    /// `[h, ffn]`.
    pub down_proj: HostTensor,
}

/// A whole decoder-only model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub config: ModelConfig,
    /// `[vocab, h]`.
    pub embed_tokens: HostTensor,
    pub layers: Vec<LayerWeights>,
    /// `[h]`.
    pub final_norm: HostTensor,
    /// `[vocab, h]`; `None` means tied to `embed_tokens`.
    pub lm_head: Option<HostTensor>,
}

impl ModelWeights {
    /// The LM head matrix, whether tied or separate.
    pub fn lm_head_or_embed(&self) -> &HostTensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Number of f32 parameters held (a tied head counted once).
    pub fn num_params(&self) -> usize {
        let opt = |t: &Option<HostTensor>| t.as_ref().map_or(0, HostTensor::numel);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.attn_norm.numel()
                    + l.q_proj.numel()
                    + opt(&l.q_bias)
                    + l.k_proj.numel()
                    + opt(&l.k_bias)
                    + l.v_proj.numel()
                    + opt(&l.v_bias)
                    + l.o_proj.numel()
                    + opt(&l.q_norm)
                    + opt(&l.k_norm)
                    + opt(&l.post_attn_norm)
                    + l.ffn_norm.numel()
                    + opt(&l.post_ffn_norm)
                    + l.gate_proj.numel()
                    + l.up_proj.numel()
                    + l.down_proj.numel()
            })
            .sum();
        self.embed_tokens.numel() + layers + self.final_norm.numel() + opt(&self.lm_head)
    }

    /// Checks every tensor's shape against the config, so a loader bug surfaces at load time
    /// instead of as a shape error deep inside program compilation.
    pub fn validate(&self) -> Result<()> {
        let c = &self.config;
        let (h, ffn, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q_rows, kv_rows) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        if self.layers.len() != c.num_layers {
            bail!(
                "config says {} layers, found {}",
                c.num_layers,
                self.layers.len()
            );
        }
        self.embed_tokens
            .expect_shape("embed_tokens", &[vocab, h])?;
        self.final_norm.expect_shape("final_norm", &[h])?;
        if let Some(head) = &self.lm_head {
            head.expect_shape("lm_head", &[vocab, h])?;
        }
        for (i, l) in self.layers.iter().enumerate() {
            let ctx = |what: &str| format!("layer {i} {what}");
            l.attn_norm.expect_shape(&ctx("attn_norm"), &[h])?;
            l.ffn_norm.expect_shape(&ctx("ffn_norm"), &[h])?;
            l.q_proj.expect_shape(&ctx("q_proj"), &[q_rows, h])?;
            l.k_proj.expect_shape(&ctx("k_proj"), &[kv_rows, h])?;
            l.v_proj.expect_shape(&ctx("v_proj"), &[kv_rows, h])?;
            l.o_proj.expect_shape(&ctx("o_proj"), &[h, q_rows])?;
            l.gate_proj.expect_shape(&ctx("gate_proj"), &[ffn, h])?;
            l.up_proj.expect_shape(&ctx("up_proj"), &[ffn, h])?;
            l.down_proj.expect_shape(&ctx("down_proj"), &[h, ffn])?;
            for (name, bias, rows) in [
                ("q_bias", &l.q_bias, q_rows),
                ("k_bias", &l.k_bias, kv_rows),
                ("v_bias", &l.v_bias, kv_rows),
            ] {
                match bias {
                    Some(b) => b.expect_shape(&ctx(name), &[rows])?,
                    None if c.attention_bias => bail!("{} missing", ctx(name)),
                    None => {}
                }
            }
            let f = &c.features;
            for (name, t, wanted, len) in [
                ("q_norm", &l.q_norm, f.qk_norm, c.head_dim),
                ("k_norm", &l.k_norm, f.qk_norm, c.head_dim),
                ("post_attn_norm", &l.post_attn_norm, f.sandwich_norms, h),
                ("post_ffn_norm", &l.post_ffn_norm, f.sandwich_norms, h),
            ] {
                match (t, wanted) {
                    (Some(t), true) => t.expect_shape(&ctx(name), &[len])?,
                    (None, false) => {}
                    (None, true) => bail!("{} missing", ctx(name)),
                    (Some(_), false) => {
                        bail!(
                            "{} present but the {} block has no such norm",
                            ctx(name),
                            c.arch
                        )
                    }
                }
            }
        }
        Ok(())
    }
}

/// The model's hyper-parameters alone (GGUF header or `config.json`), checked like a full load
/// checks them, without reading or dequantizing any tensor: what an API process needs.
pub fn load_config(model_path: &Path) -> Result<ModelConfig> {
    let meta = std::fs::metadata(model_path)
        .with_context(|| format!("model path {}", model_path.display()))?;
    if meta.is_dir() {
        hf_dir::read_dir_config(model_path)
    } else {
        gguf_config::read_config(&gguf::GgufFile::open(model_path)?)
    }
}

/// Loads a model from a GGUF file or a Hugging Face directory (config.json + safetensors).
pub fn load(model_path: &Path) -> Result<ModelWeights> {
    let meta = std::fs::metadata(model_path)
        .with_context(|| format!("model path {}", model_path.display()))?;
    if meta.is_dir() {
        load_hf_dir(model_path)
    } else {
        load_gguf(model_path)
    }
}
