//! The architecture hyper-parameters a prefill program needs.

use std::fmt;

use anyhow::{Result, bail};
use serde::Serialize;

/// The decoder families the engine builds programs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Qwen2,
    Llama,
}

impl Arch {
    /// Accepts GGUF `general.architecture` and HF `model_type` spellings.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "qwen2" => Ok(Self::Qwen2),
            // SmolLM, Llama 2/3 and Mistral-style dense models all load as llama.
            "llama" | "mistral" => Ok(Self::Llama),
            other => bail!("unsupported model architecture {other:?} (supported: qwen2, llama)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
}

impl ModelConfig {
    pub(crate) fn check(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
            bail!("model config has zero heads or head_dim: {self:?}");
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
        Ok(())
    }
}
