//! Hugging Face model directories: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Tensors are already in HF orientation; only the dtype changes.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::{Arch, HostTensor, LayerWeights, ModelConfig, ModelWeights};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

/// Parses `config.json` the way transformers' Qwen2Config / LlamaConfig default their fields.
pub(crate) fn parse_config(json: &Value, name: String) -> Result<ModelConfig> {
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("config.json has no model_type"))?;
    let arch = Arch::parse(model_type)?;
    let uint =
        |k: &str| -> Option<usize> { json.get(k).and_then(Value::as_u64).map(|v| v as usize) };
    let need = |k: &str| uint(k).ok_or_else(|| anyhow!("config.json has no integer {k}"));
    let float = |k: &str| json.get(k).and_then(Value::as_f64);
    // Llama 3 lists several eos ids; the first is the one generation configs name.
    let token_id = |k: &str| -> Option<u32> {
        match json.get(k)? {
            Value::Array(a) => a.first()?.as_u64().map(|v| v as u32),
            v => v.as_u64().map(|v| v as u32),
        }
    };
    let hidden_size = need("hidden_size")?;
    let num_heads = need("num_attention_heads")?;
    let rope_theta = float("rope_theta")
        // transformers >= 5 nests it under rope_parameters
        .or_else(|| json.get("rope_parameters")?.get("rope_theta")?.as_f64())
        .unwrap_or(10_000.0);
    let config = ModelConfig {
        arch,
        vocab_size: need("vocab_size")?,
        hidden_size,
        intermediate_size: need("intermediate_size")?,
        num_layers: need("num_hidden_layers")?,
        num_heads,
        num_kv_heads: uint("num_key_value_heads").unwrap_or(num_heads),
        head_dim: uint("head_dim").unwrap_or(hidden_size / num_heads),
        rope_theta: rope_theta as f32,
        rms_norm_eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
        tie_word_embeddings: json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        attention_bias: match arch {
            Arch::Qwen2 => true,
            Arch::Llama => json
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        bos_token_id: token_id("bos_token_id"),
        eos_token_id: token_id("eos_token_id"),
        name,
    };
    config.check()?;
    Ok(config)
}

/// The safetensors files of a directory, in a stable order.
fn shard_files(dir: &Path) -> Result<Vec<String>> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let json: Value = serde_json::from_slice(&std::fs::read(&index)?)
            .with_context(|| format!("parse {}", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("{} has no weight_map", index.display()))?;
        let files: BTreeSet<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if files.is_empty() {
            bail!("{} lists no shard files", index.display());
        }
        return Ok(files.into_iter().collect());
    }
    if dir.join(SINGLE_FILE).is_file() {
        return Ok(vec![SINGLE_FILE.to_owned()]);
    }
    bail!(
        "{} has neither {SINGLE_FILE} nor {INDEX_FILE}",
        dir.display()
    )
}

fn to_f32(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<HostTensor> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            bail!("tensor {name}: unsupported safetensors dtype {other:?} (F32, F16, BF16 only)")
        }
    };
    HostTensor::new(view.shape().to_vec(), data)
}

/// The directory's `config.json`, parsed and checked.
pub(crate) fn read_dir_config(dir: &Path) -> Result<ModelConfig> {
    let config_path = dir.join("config.json");
    let json: Value = serde_json::from_slice(
        &std::fs::read(&config_path).with_context(|| format!("read {}", config_path.display()))?,
    )
    .with_context(|| format!("parse {}", config_path.display()))?;
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_config(&json, name)
}

/// Loads a Qwen2 or Llama model from a Hugging Face directory.
pub fn load_hf_dir(dir: &Path) -> Result<ModelWeights> {
    let start = Instant::now();
    let config = read_dir_config(dir)?;

    let files = shard_files(dir)?;
    let maps = files
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
            // SAFETY: the map is read-only and lives only for this load; a concurrent writer
            // truncating the file is outside what any loader can defend against.
            unsafe { Mmap::map(&file) }.with_context(|| format!("mmap {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let shards = maps
        .iter()
        .zip(&files)
        .map(|(m, f)| SafeTensors::deserialize(m).map_err(|e| anyhow!("parse {f}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut where_is: HashMap<String, usize> = HashMap::new();
    for (i, st) in shards.iter().enumerate() {
        for name in st.names() {
            where_is.insert(name.to_owned(), i);
        }
    }
    let get = |name: &str| -> Result<HostTensor> {
        let &i = where_is
            .get(name)
            .ok_or_else(|| anyhow!("{} has no tensor {name}", dir.display()))?;
        let view = shards[i]
            .tensor(name)
            .map_err(|e| anyhow!("tensor {name}: {e}"))?;
        to_f32(name, &view)
    };
    let opt = |name: &str| -> Result<Option<HostTensor>> {
        if where_is.contains_key(name) {
            get(name).map(Some)
        } else {
            Ok(None)
        }
    };

    let layers = (0..config.num_layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            Ok(LayerWeights {
                attn_norm: get(&format!("{p}.input_layernorm.weight"))?,
                q_proj: get(&format!("{p}.self_attn.q_proj.weight"))?,
                q_bias: opt(&format!("{p}.self_attn.q_proj.bias"))?,
                k_proj: get(&format!("{p}.self_attn.k_proj.weight"))?,
                k_bias: opt(&format!("{p}.self_attn.k_proj.bias"))?,
                v_proj: get(&format!("{p}.self_attn.v_proj.weight"))?,
                v_bias: opt(&format!("{p}.self_attn.v_proj.bias"))?,
                o_proj: get(&format!("{p}.self_attn.o_proj.weight"))?,
                ffn_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_proj: get(&format!("{p}.mlp.gate_proj.weight"))?,
                up_proj: get(&format!("{p}.mlp.up_proj.weight"))?,
                down_proj: get(&format!("{p}.mlp.down_proj.weight"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // transformers ties the head whenever the config says so, ignoring a stored lm_head.
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(get("lm_head.weight")?)
    };
    let weights = ModelWeights {
        embed_tokens: get("model.embed_tokens.weight")?,
        layers,
        final_norm: get("model.norm.weight")?,
        lm_head,
        config,
    };
    weights.validate()?;
    tracing::info!(
        path = %dir.display(),
        arch = %weights.config.arch,
        shards = files.len(),
        params = weights.num_params(),
        elapsed_ms = start.elapsed().as_millis() as u64,
        "loaded Hugging Face weights"
    );
    Ok(weights)
}
