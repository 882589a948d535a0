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

use super::arch::{EMBED, FINAL_NORM, LM_HEAD};
use super::assemble::{self, Format};
use super::{HostTensor, ModelConfig, ModelWeights, parse_hf_config};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

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

/// The directory's `config.json`, parsed and checked against what the engine implements.
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
    parse_hf_config(&json, name).with_context(|| format!("model config {}", config_path.display()))
}

/// Loads a model of a supported architecture from a Hugging Face directory.
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

    let mut used = BTreeSet::new();
    let layers = (0..config.num_layers)
        .map(|i| assemble::layer(&config, Format::Hf, i, &mut used, |name, _| opt(name)))
        .collect::<Result<Vec<_>>>()?;
    // transformers ties the head whenever the config says so, ignoring a stored lm_head.
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(get(LM_HEAD.0)?)
    };
    used.extend([EMBED.0, FINAL_NORM.0, LM_HEAD.0].map(String::from));
    // Non-persistent buffers some old checkpoints still carry.
    let ignorable = |n: &str| n.ends_with("rotary_emb.inv_freq");
    assemble::refuse_unused(
        where_is.keys().map(String::as_str),
        &used,
        ignorable,
        config.arch,
    )?;
    let weights = ModelWeights {
        embed_tokens: get(EMBED.0)?,
        layers,
        final_norm: get(FINAL_NORM.0)?,
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
