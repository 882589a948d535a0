//! `config.json` to [`ModelConfig`], defaulting every field the way transformers 5.24's config
//! class of that `model_type` does, and refusing (naming the field and its value) every setting the
//! program does not implement. Both RoPE spellings are read: the legacy `rope_theta` +
//! `rope_scaling` of Hub checkpoints and transformers 5's `rope_parameters`.

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value};

use super::config::{Activation, ArchFeatures, LayerAttention};
use super::{Arch, ModelConfig, RopeScaling};

type Obj = Map<String, Value>;

/// A field that is present and not `null`.
fn field<'a>(o: &'a Obj, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn uint(o: &Obj, key: &str) -> Result<Option<usize>> {
    field(o, key)
        .map(|v| {
            v.as_u64().map(|x| x as usize).ok_or_else(|| {
                anyhow!("config.json {key} must be a non-negative integer, found {v}")
            })
        })
        .transpose()
}

fn need_uint(o: &Obj, key: &str) -> Result<usize> {
    uint(o, key)?.ok_or_else(|| anyhow!("config.json has no integer {key}"))
}

fn float(o: &Obj, key: &str) -> Result<Option<f64>> {
    field(o, key)
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| anyhow!("config.json {key} must be a number, found {v}"))
        })
        .transpose()
}

fn boolean(o: &Obj, key: &str) -> Result<Option<bool>> {
    field(o, key)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| anyhow!("config.json {key} must be a boolean, found {v}"))
        })
        .transpose()
}

/// Llama 3 lists several eos ids; the first is the one generation configs name.
fn token_id(o: &Obj, key: &str) -> Option<u32> {
    match field(o, key)? {
        Value::Array(a) => a.first()?.as_u64().map(|v| v as u32),
        v => v.as_u64().map(|v| v as u32),
    }
}

/// Settings no supported architecture implements, whatever the family.
fn refuse_unsupported(o: &Obj, arch: Arch) -> Result<()> {
    for key in [
        "num_experts",
        "num_local_experts",
        "n_routed_experts",
        "moe_num_experts",
    ] {
        if let Some(n) = uint(o, key)?
            && n > 0
        {
            bail!("config.json {key} = {n}: mixture-of-experts models are not supported");
        }
    }
    if let Some(q) = field(o, "quantization_config") {
        let method = q.get("quant_method").cloned().unwrap_or(Value::Null);
        bail!(
            "config.json quantization_config (quant_method {method}) is not supported: use f32/f16/bf16 safetensors or a GGUF"
        );
    }
    if boolean(o, "mlp_bias")? == Some(true) {
        bail!("config.json mlp_bias = true is not supported");
    }
    // Qwen2 always has q/k/v biases and no o_proj bias; elsewhere `attention_bias` also adds an
    // o_proj bias, which the program does not have.
    if arch != Arch::Qwen2 && boolean(o, "attention_bias")? == Some(true) {
        bail!("config.json attention_bias = true is not supported for {arch}");
    }
    if boolean(o, "use_bidirectional_attention")? == Some(true) {
        bail!("config.json use_bidirectional_attention = true is not supported (causal LMs only)");
    }
    if let Some(p) = float(o, "partial_rotary_factor")?
        && p != 1.0
    {
        bail!("config.json partial_rotary_factor = {p} is not supported (only 1.0)");
    }
    if arch != Arch::Gemma3
        && let Some(v) = field(o, "final_logit_softcapping")
    {
        bail!(
            "config.json final_logit_softcapping = {v} is not supported for {arch} (only gemma3 applies it)"
        );
    }
    // Gemma3 keeps attn_logit_softcapping in its config but transformers 5.24's Gemma 3 attention
    // never applies it: there is no reference to match, whatever the family.
    if let Some(v) = field(o, "attn_logit_softcapping") {
        bail!(
            "config.json attn_logit_softcapping = {v} is not supported (transformers' {arch} does not apply it)"
        );
    }
    Ok(())
}

/// The activation field (`hidden_act`, Gemma: `hidden_activation`) must be the one the block uses.
fn activation(o: &Obj, arch: Arch) -> Result<Activation> {
    let (key, default, want) = match arch {
        Arch::Gemma3 => (
            "hidden_activation",
            "gelu_pytorch_tanh",
            Activation::GeluTanh,
        ),
        _ => ("hidden_act", "silu", Activation::Silu),
    };
    let name = match field(o, key) {
        None => default,
        Some(Value::String(s)) => s.as_str(),
        Some(v) => bail!("config.json {key} must be a string, found {v}"),
    };
    let got = match name {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" => Activation::GeluTanh,
        other => bail!("config.json {key} = {other:?} is not supported (silu, gelu_pytorch_tanh)"),
    };
    if got != want {
        bail!("config.json {key} = {name:?} is not supported for {arch} (expected {default:?})");
    }
    Ok(got)
}

/// Per-layer attention kinds from `layer_types` (or Gemma 3's legacy `sliding_window_pattern`).
fn layer_types(o: &Obj, arch: Arch, layers: usize) -> Result<Vec<LayerAttention>> {
    let listed = match field(o, "layer_types") {
        None => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(LayerAttention::Full),
                    Some("sliding_attention") => Ok(LayerAttention::Sliding),
                    _ => bail!("config.json layer_types entry {t} is not supported (full_attention, sliding_attention)"),
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(v) => bail!("config.json layer_types must be a list, found {v}"),
    };
    match arch {
        Arch::Gemma3 => Ok(match listed {
            Some(l) => l,
            None => {
                let pattern = uint(o, "sliding_window_pattern")?.unwrap_or(6);
                if pattern == 0 {
                    bail!("config.json sliding_window_pattern = 0 is not valid");
                }
                (0..layers)
                    .map(|i| {
                        if (i + 1) % pattern != 0 {
                            LayerAttention::Sliding
                        } else {
                            LayerAttention::Full
                        }
                    })
                    .collect()
            }
        }),
        Arch::Qwen2 | Arch::Qwen3 => {
            if boolean(o, "use_sliding_window")? == Some(true) {
                let w = field(o, "sliding_window").cloned().unwrap_or(Value::Null);
                bail!(
                    "config.json use_sliding_window = true (sliding_window {w}) is not supported for {arch}"
                );
            }
            if let Some(l) = &listed
                && l.contains(&LayerAttention::Sliding)
            {
                bail!("config.json layer_types has sliding_attention, not supported for {arch}");
            }
            Ok(Vec::new())
        }
        Arch::Mistral | Arch::Phi3 => {
            if let Some(l) = listed {
                bail!(
                    "config.json layer_types ({} entries) is not supported for {arch}: it slides every layer by sliding_window",
                    l.len()
                );
            }
            // MistralConfig defaults an absent sliding_window to 4096 (an explicit null is none);
            // Phi3Config defaults it to none.
            let absent_default = arch == Arch::Mistral && !o.contains_key("sliding_window");
            Ok(if absent_default || uint(o, "sliding_window")?.is_some() {
                vec![LayerAttention::Sliding; layers]
            } else {
                Vec::new()
            })
        }
        Arch::Llama => {
            if let Some(w) = field(o, "sliding_window") {
                bail!(
                    "config.json sliding_window = {w} is not supported for llama (no sliding window in that architecture)"
                );
            }
            if let Some(l) = &listed
                && l.contains(&LayerAttention::Sliding)
            {
                bail!("config.json layer_types has sliding_attention, not supported for llama");
            }
            Ok(Vec::new())
        }
    }
}

/// A flat RoPE dict (`rope_parameters`, or the legacy `rope_scaling`), with the theta it holds.
fn rope_dict<'a>(o: &'a Obj, key: &str) -> Result<Option<&'a Obj>> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(v) => bail!("config.json {key} must be an object, found {v}"),
    }
}

fn theta_of(d: Option<&Obj>, fallback: Option<f64>, default: f64) -> Result<f32> {
    let t = match d.and_then(|d| field(d, "rope_theta")) {
        Some(v) => v
            .as_f64()
            .ok_or_else(|| anyhow!("rope_theta must be a number, found {v}"))?,
        None => fallback.unwrap_or(default),
    };
    if !(t.is_finite() && t > 0.0) {
        bail!("rope_theta {t} must be a positive number");
    }
    Ok(t as f32)
}

/// `(theta, scaling)` of full layers and, for Gemma 3, the theta of sliding layers.
fn rope(
    o: &Obj,
    arch: Arch,
    max_pos: usize,
    orig_max: usize,
) -> Result<(f32, RopeScaling, Option<f32>)> {
    let legacy = rope_dict(o, "rope_scaling")?;
    let params = rope_dict(o, "rope_parameters")?;
    let top_theta = float(o, "rope_theta")?;
    if arch == Arch::Gemma3 {
        let nested = |k: &str| -> Result<Option<&Obj>> {
            match params.and_then(|p| field(p, k)) {
                None => Ok(None),
                Some(Value::Object(m)) => Ok(Some(m)),
                Some(v) => bail!("config.json rope_parameters.{k} must be an object, found {v}"),
            }
        };
        if let Some(k) = params.and_then(|p| {
            p.keys()
                .find(|k| *k != "full_attention" && *k != "sliding_attention")
        }) {
            bail!(
                "config.json rope_parameters.{k} is not supported for gemma3 (full_attention, sliding_attention)"
            );
        }
        // Legacy rope_scaling applies to full-attention layers (Gemma3TextConfig).
        let full = legacy.or(nested("full_attention")?);
        let sliding = nested("sliding_attention")?;
        let global = theta_of(nested("full_attention")?, top_theta, 1_000_000.0)?;
        let local = theta_of(sliding, float(o, "rope_local_base_freq")?, 10_000.0)?;
        let scaling = match full {
            Some(d) => RopeScaling::from_dict(d, max_pos, orig_max)?,
            None => RopeScaling::None,
        };
        if let Some(d) = sliding {
            let s = RopeScaling::from_dict(d, max_pos, orig_max)?;
            if s != RopeScaling::None {
                bail!(
                    "config.json rope_parameters.sliding_attention scaling {s:?} is not supported (only default RoPE on sliding layers)"
                );
            }
        }
        return Ok((global, scaling, Some(local)));
    }
    let d = legacy.or(params);
    if let Some(d) = d
        && let Some(k) = d
            .keys()
            .find(|k| *k == "full_attention" || *k == "sliding_attention")
    {
        bail!(
            "config.json rope parameters nested by layer type ({k}) are not supported for {arch}"
        );
    }
    let theta = theta_of(d, top_theta, 10_000.0)?;
    let scaling = match d {
        Some(d) => RopeScaling::from_dict(d, max_pos, orig_max)?,
        None => RopeScaling::None,
    };
    if arch == Arch::Phi3 && scaling != RopeScaling::None {
        // Phi3Config turns "su" and "yarn" into longrope and validates only default/longrope.
        bail!("config.json rope scaling {scaling:?} is not supported for phi3 (only default RoPE)");
    }
    Ok((theta, scaling, None))
}

/// Parses `config.json`; see the module docs.
pub fn parse_hf_config(json: &Value, name: String) -> Result<ModelConfig> {
    let o = json
        .as_object()
        .ok_or_else(|| anyhow!("config.json is not an object"))?;
    let model_type = field(o, "model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("config.json has no model_type"))?;
    if model_type == "gemma3" {
        bail!(
            "config.json model_type \"gemma3\" is the multimodal Gemma 3; only its text model (model_type \"gemma3_text\") is supported"
        );
    }
    let arch = Arch::parse(model_type)?;
    refuse_unsupported(o, arch)?;
    let activation = activation(o, arch)?;
    let hidden_size = need_uint(o, "hidden_size")?;
    let num_heads = need_uint(o, "num_attention_heads")?;
    if num_heads == 0 {
        bail!("config.json num_attention_heads is 0");
    }
    let num_layers = need_uint(o, "num_hidden_layers")?;
    let head_dim = match (uint(o, "head_dim")?, arch) {
        (Some(h), _) => h,
        (None, Arch::Qwen3) => 128,
        (None, Arch::Gemma3) => 256,
        (None, _) => hidden_size / num_heads,
    };
    let max_pos = match (uint(o, "max_position_embeddings")?, arch) {
        (Some(m), _) => m,
        (None, Arch::Llama) => 2048,
        (None, Arch::Qwen2 | Arch::Qwen3) => 32768,
        (None, Arch::Mistral) => 4096 * 32,
        (None, Arch::Phi3) => 4096,
        (None, Arch::Gemma3) => 131_072,
    };
    let orig_max = match arch {
        Arch::Phi3 => uint(o, "original_max_position_embeddings")?.unwrap_or(4096),
        _ => max_pos,
    };
    let (rope_theta, rope_scaling, local_rope_theta) = rope(o, arch, max_pos, orig_max)?;
    let layer_attention = layer_types(o, arch, num_layers)?;
    let sliding_window = if layer_attention.contains(&LayerAttention::Sliding) {
        Some(match (uint(o, "sliding_window")?, arch) {
            (Some(w), _) => w,
            (None, Arch::Gemma3 | Arch::Mistral) => 4096,
            (None, _) => bail!("config.json has sliding layers but no sliding_window"),
        })
    } else {
        None
    };
    let gemma = arch == Arch::Gemma3;
    let features = ArchFeatures {
        activation,
        rope_scaling,
        local_rope_theta,
        sliding_window,
        layer_attention,
        attn_scale: if gemma {
            let s = float(o, "query_pre_attn_scalar")?.unwrap_or(256.0);
            if s <= 0.0 {
                bail!("config.json query_pre_attn_scalar = {s} must be positive");
            }
            Some(s.powf(-0.5) as f32)
        } else {
            None
        },
        final_softcap: float(o, "final_logit_softcapping")?.map(|c| c as f32),
        ..ArchFeatures::fixed(arch, hidden_size)
    };
    let default_eps = if arch == Arch::Phi3 { 1e-5 } else { 1e-6 };
    let config = ModelConfig {
        arch,
        vocab_size: need_uint(o, "vocab_size")?,
        hidden_size,
        intermediate_size: need_uint(o, "intermediate_size")?,
        num_layers,
        num_heads,
        num_kv_heads: uint(o, "num_key_value_heads")?.unwrap_or(num_heads),
        head_dim,
        context_length: max_pos,
        rope_theta,
        rms_norm_eps: float(o, "rms_norm_eps")?.unwrap_or(default_eps) as f32,
        tie_word_embeddings: boolean(o, "tie_word_embeddings")?.unwrap_or(gemma),
        attention_bias: arch == Arch::Qwen2,
        bos_token_id: token_id(o, "bos_token_id"),
        eos_token_id: token_id(o, "eos_token_id"),
        name,
        features,
    };
    config.check()?;
    Ok(config)
}
