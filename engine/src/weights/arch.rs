//! The architectures the engine implements, and per architecture the one table that names its
//! checkpoint tensors in both spellings (Hugging Face state dict and GGUF).
//!
//! Both loaders walk the same [`tensor_table`], so a tensor cannot be known to one loader and
//! missing from the other; everything a program needs beyond the names lives in
//! [`super::ModelConfig`] and its [`super::ArchFeatures`].

use std::fmt;

use anyhow::{Result, bail};
use serde::Serialize;

/// The decoder families the engine builds programs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Qwen2,
    Llama,
    Qwen3,
    Mistral,
    Phi3,
    Gemma3,
}

/// The names [`Arch::parse`] accepts, for error messages and docs.
pub const SUPPORTED: &str = "qwen2, llama, qwen3, mistral, phi3, gemma3_text (GGUF: gemma3)";

impl Arch {
    /// Accepts GGUF `general.architecture` and HF `model_type` spellings; anything else is refused
    /// by name (a look-alike family loaded as another would score wrong).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "qwen2" => Ok(Self::Qwen2),
            "llama" => Ok(Self::Llama),
            "qwen3" => Ok(Self::Qwen3),
            "mistral" => Ok(Self::Mistral),
            "phi3" => Ok(Self::Phi3),
            // HF writes the text-only model as gemma3_text; llama.cpp calls it gemma3.
            "gemma3_text" | "gemma3" => Ok(Self::Gemma3),
            other => bail!("unsupported model architecture {other:?} (supported: {SUPPORTED})"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
            Self::Qwen3 => "qwen3",
            Self::Mistral => "mistral",
            Self::Phi3 => "phi3",
            Self::Gemma3 => "gemma3",
        }
    }

    /// llama.cpp's converter permutes Q/K rows for these (transformers' `LlamaTensorProcessor`
    /// undoes it for GGUF architecture "llama" only).
    pub(crate) fn gguf_permutes_qk(self) -> bool {
        self == Self::Llama
    }

    /// llama.cpp stores Gemma norm weights as `1 + w`; transformers' `Gemma2TensorProcessor`
    /// subtracts 1 from every GGUF tensor whose name contains `norm.weight`.
    pub(crate) fn gguf_norm_offset(self) -> bool {
        self == Self::Gemma3
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a per-layer checkpoint tensor goes in [`super::LayerWeights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerTensor {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    /// Phi-3's fused `[q; k; v]` rows, split by the loader.
    Qkv,
    O,
    QNorm,
    KNorm,
    PostAttnNorm,
    FfnNorm,
    PostFfnNorm,
    Gate,
    Up,
    /// Phi-3's fused `[gate; up]` rows, split by the loader.
    GateUp,
    Down,
}

/// Whether a listed tensor must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    /// Present only in some checkpoints (attention biases of a Llama with `attention_bias`).
    Optional,
}

/// One row of an architecture's name table: `model.layers.{i}.{hf}` / `blk.{i}.{gguf}`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TensorName {
    pub slot: LayerTensor,
    pub hf: &'static str,
    pub gguf: &'static str,
    pub need: Need,
}

const fn req(slot: LayerTensor, hf: &'static str, gguf: &'static str) -> TensorName {
    TensorName {
        slot,
        hf,
        gguf,
        need: Need::Required,
    }
}

const fn opt(slot: LayerTensor, hf: &'static str, gguf: &'static str) -> TensorName {
    TensorName {
        slot,
        hf,
        gguf,
        need: Need::Optional,
    }
}

use LayerTensor as L;

const ATTN_NORM: TensorName = req(L::AttnNorm, "input_layernorm.weight", "attn_norm.weight");
const Q: TensorName = req(L::Q, "self_attn.q_proj.weight", "attn_q.weight");
const K: TensorName = req(L::K, "self_attn.k_proj.weight", "attn_k.weight");
const V: TensorName = req(L::V, "self_attn.v_proj.weight", "attn_v.weight");
const O: TensorName = req(L::O, "self_attn.o_proj.weight", "attn_output.weight");
const QB: TensorName = opt(L::QBias, "self_attn.q_proj.bias", "attn_q.bias");
const KB: TensorName = opt(L::KBias, "self_attn.k_proj.bias", "attn_k.bias");
const VB: TensorName = opt(L::VBias, "self_attn.v_proj.bias", "attn_v.bias");
const QN: TensorName = req(L::QNorm, "self_attn.q_norm.weight", "attn_q_norm.weight");
const KN: TensorName = req(L::KNorm, "self_attn.k_norm.weight", "attn_k_norm.weight");
const FFN_NORM: TensorName = req(
    L::FfnNorm,
    "post_attention_layernorm.weight",
    "ffn_norm.weight",
);
const GATE: TensorName = req(L::Gate, "mlp.gate_proj.weight", "ffn_gate.weight");
const UP: TensorName = req(L::Up, "mlp.up_proj.weight", "ffn_up.weight");
const DOWN: TensorName = req(L::Down, "mlp.down_proj.weight", "ffn_down.weight");

const QWEN2: &[TensorName] = &[
    ATTN_NORM,
    Q,
    K,
    V,
    req(L::QBias, QB.hf, QB.gguf),
    req(L::KBias, KB.hf, KB.gguf),
    req(L::VBias, VB.hf, VB.gguf),
    O,
    FFN_NORM,
    GATE,
    UP,
    DOWN,
];
const LLAMA: &[TensorName] = &[ATTN_NORM, Q, K, V, QB, KB, VB, O, FFN_NORM, GATE, UP, DOWN];
const QWEN3: &[TensorName] = &[ATTN_NORM, Q, K, V, QN, KN, O, FFN_NORM, GATE, UP, DOWN];
const PHI3: &[TensorName] = &[
    ATTN_NORM,
    req(L::Qkv, "self_attn.qkv_proj.weight", "attn_qkv.weight"),
    O,
    FFN_NORM,
    // llama.cpp keeps Phi-3's fused gate|up under the name ffn_up.
    req(L::GateUp, "mlp.gate_up_proj.weight", "ffn_up.weight"),
    DOWN,
];
const GEMMA3: &[TensorName] = &[
    ATTN_NORM,
    Q,
    K,
    V,
    QN,
    KN,
    O,
    req(
        L::PostAttnNorm,
        "post_attention_layernorm.weight",
        "post_attention_norm.weight",
    ),
    req(
        L::FfnNorm,
        "pre_feedforward_layernorm.weight",
        "ffn_norm.weight",
    ),
    req(
        L::PostFfnNorm,
        "post_feedforward_layernorm.weight",
        "post_ffw_norm.weight",
    ),
    GATE,
    UP,
    DOWN,
];

/// The per-layer tensors of `arch`, in both spellings.
pub(crate) fn tensor_table(arch: Arch) -> &'static [TensorName] {
    match arch {
        Arch::Qwen2 => QWEN2,
        Arch::Llama | Arch::Mistral => LLAMA,
        Arch::Qwen3 => QWEN3,
        Arch::Phi3 => PHI3,
        Arch::Gemma3 => GEMMA3,
    }
}

/// Global tensors (the same names in every supported architecture): `(hf, gguf)`.
pub(crate) const EMBED: (&str, &str) = ("model.embed_tokens.weight", "token_embd.weight");
pub(crate) const FINAL_NORM: (&str, &str) = ("model.norm.weight", "output_norm.weight");
pub(crate) const LM_HEAD: (&str, &str) = ("lm_head.weight", "output.weight");
