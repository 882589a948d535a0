//! GGUF files: metadata and dequantized tensors, through candle-core's reader.
//!
//! candle's `gguf_file` parses the header and `QTensor::dequantize` expands every GGML type the
//! project needs (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, ...), so no block format is
//! hand-written here. candle reports shapes outermost-first (`[rows, cols]`), which is already the
//! Hugging Face `[out_features, in_features]` orientation.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};

use super::permute::unpermute_llama_rows;
use super::{Arch, HostTensor, LayerWeights, ModelConfig, ModelWeights};

/// An open GGUF file: parsed header plus a handle for reading tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("open GGUF {}", path.display()))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| anyhow!("read GGUF header of {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// The GGML storage type of a tensor, e.g. `Q4K`.
    pub fn tensor_type(&self, name: &str) -> Option<candle_core::quantized::GgmlDType> {
        self.content.tensor_infos.get(name).map(|t| t.ggml_dtype)
    }

    pub fn meta_string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| anyhow!("GGUF key {key}: {e}"))
            })
            .transpose()
    }

    /// Integer metadata of any width; GGUF writers disagree on u32 vs u64 vs i32.
    pub fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => u64::from(*x),
            Value::U16(x) => u64::from(*x),
            Value::U32(x) => u64::from(*x),
            Value::U64(x) => *x,
            Value::I8(x) => u64::try_from(*x)?,
            Value::I16(x) => u64::try_from(*x)?,
            Value::I32(x) => u64::try_from(*x)?,
            Value::I64(x) => u64::try_from(*x)?,
            other => bail!("GGUF key {key}: expected an integer, found {other:?}"),
        };
        Ok(Some(n))
    }

    pub fn meta_f32(&self, key: &str) -> Result<Option<f32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v {
            Value::F32(x) => Ok(Some(*x)),
            Value::F64(x) => Ok(Some(*x as f32)),
            _ => Ok(self.meta_u64(key)?.map(|x| x as f32)),
        }
    }

    pub fn meta_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Ok(self.meta_u64(key)?.map(|x| x != 0)),
        }
    }

    /// A metadata array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn meta_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v.to_vec().map_err(|e| anyhow!("GGUF key {key}: {e}"))?;
        arr.iter()
            .map(|x| {
                x.to_string()
                    .map(String::as_str)
                    .map_err(|e| anyhow!("GGUF key {key}: {e}"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A metadata array of integers (e.g. `tokenizer.ggml.token_type`).
    pub fn meta_i64s(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v.to_vec().map_err(|e| anyhow!("GGUF key {key}: {e}"))?;
        arr.iter()
            .map(|x| match x {
                Value::I32(n) => Ok(i64::from(*n)),
                Value::U32(n) => Ok(i64::from(*n)),
                Value::I64(n) => Ok(*n),
                Value::U8(n) => Ok(i64::from(*n)),
                Value::I8(n) => Ok(i64::from(*n)),
                Value::U16(n) => Ok(i64::from(*n)),
                Value::I16(n) => Ok(i64::from(*n)),
                Value::U64(n) => i64::try_from(*n).map_err(Into::into),
                other => Err(anyhow!(
                    "GGUF key {key}: expected integers, found {other:?}"
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Reads and dequantizes one tensor to f32, shaped outermost-first.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| anyhow!("GGUF {} has no tensor {name}", self.path.display()))?;
        // A fresh handle per tensor keeps `&self` readers independent (loading may fan out to threads).
        let mut file = File::open(&self.path)?;
        let q = info
            .read(&mut file, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| anyhow!("read tensor {name}: {e}"))?;
        let shape = q.shape().dims().to_vec();
        let data = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| anyhow!("dequantize {name} ({:?}): {e}", info.ggml_dtype))?;
        HostTensor::new(shape, data)
    }
}

/// The hyper-parameters stored under `{arch}.*` plus the tokenizer's vocabulary size.
pub(crate) fn read_config(g: &GgufFile) -> Result<ModelConfig> {
    let arch_name = g
        .meta_string("general.architecture")?
        .ok_or_else(|| anyhow!("GGUF has no general.architecture"))?;
    let arch = Arch::parse(&arch_name)?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let need = |k: &str| -> Result<usize> {
        let v = g
            .meta_u64(&key(k))?
            .ok_or_else(|| anyhow!("GGUF has no {}", key(k)))?;
        Ok(usize::try_from(v)?)
    };
    let hidden_size = need("embedding_length")?;
    let num_heads = need("attention.head_count")?;
    let num_kv_heads = match g.meta_u64(&key("attention.head_count_kv"))? {
        Some(n) => usize::try_from(n)?,
        None => num_heads,
    };
    let head_dim = match g.meta_u64(&key("attention.key_length"))? {
        Some(n) => usize::try_from(n)?,
        None => hidden_size / num_heads,
    };
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
    let config = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        num_layers: need("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta: g.meta_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
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
    };
    config.check()?;
    Ok(config)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn load_layer(g: &GgufFile, c: &ModelConfig, i: usize) -> Result<LayerWeights> {
    let t = |part: &str| g.tensor_f32(&format!("blk.{i}.{part}"));
    let opt = |part: &str| -> Result<Option<HostTensor>> {
        let name = format!("blk.{i}.{part}");
        if g.has_tensor(&name) {
            g.tensor_f32(&name).map(Some)
        } else {
            Ok(None)
        }
    };
    let mut q_proj = t("attn_q.weight")?;
    let mut k_proj = t("attn_k.weight")?;
    let mut q_bias = opt("attn_q.bias")?;
    let mut k_bias = opt("attn_k.bias")?;
    if c.arch == Arch::Llama {
        let h = c.hidden_size;
        q_proj.data = unpermute_llama_rows(&q_proj.data, c.num_heads, h)?;
        k_proj.data = unpermute_llama_rows(&k_proj.data, c.num_kv_heads, h)?;
        if let Some(b) = q_bias.as_mut() {
            b.data = unpermute_llama_rows(&b.data, c.num_heads, 1)?;
        }
        if let Some(b) = k_bias.as_mut() {
            b.data = unpermute_llama_rows(&b.data, c.num_kv_heads, 1)?;
        }
    }
    Ok(LayerWeights {
        attn_norm: t("attn_norm.weight")?,
        q_proj,
        q_bias,
        k_proj,
        k_bias,
        v_proj: t("attn_v.weight")?,
        v_bias: opt("attn_v.bias")?,
        o_proj: t("attn_output.weight")?,
        ffn_norm: t("ffn_norm.weight")?,
        gate_proj: t("ffn_gate.weight")?,
        up_proj: t("ffn_up.weight")?,
        down_proj: t("ffn_down.weight")?,
    })
}

/// Loads a Qwen2 or Llama GGUF, dequantizing every tensor to f32.
pub fn load_gguf(path: &Path) -> Result<ModelWeights> {
    let start = Instant::now();
    let g = GgufFile::open(path)?;
    let config = read_config(&g)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let (layers, embed_tokens, lm_head) = load_parts_parallel(&g, &config, threads)?;
    let weights = ModelWeights {
        embed_tokens,
        layers,
        final_norm: g.tensor_f32("output_norm.weight")?,
        lm_head,
        config,
    };
    weights.validate()?;
    tracing::info!(
        path = %path.display(),
        arch = %weights.config.arch,
        layers = weights.config.num_layers,
        params = weights.num_params(),
        elapsed_ms = start.elapsed().as_millis() as u64,
        "loaded GGUF weights"
    );
    Ok(weights)
}

/// One unit of loading work; the two vocabulary-sized matrices are the largest single items.
enum Part {
    Embed(HostTensor),
    Head(HostTensor),
    Layer(usize, Box<LayerWeights>),
}

type Parts = (Vec<LayerWeights>, HostTensor, Option<HostTensor>);

/// Dequantization is CPU-bound and single-threaded per tensor in candle, so independent parts are
/// spread over a few workers pulling from a shared counter (big matrices first, so they overlap
/// with the layers instead of trailing them).
fn load_parts_parallel(g: &GgufFile, c: &ModelConfig, threads: usize) -> Result<Parts> {
    let mut jobs: Vec<Option<usize>> = vec![None];
    if !c.tie_word_embeddings {
        jobs.push(Some(usize::MAX));
    }
    jobs.extend((0..c.num_layers).map(Some));
    let next = AtomicUsize::new(0);
    let run = |job: Option<usize>| -> Result<Part> {
        match job {
            None => g.tensor_f32("token_embd.weight").map(Part::Embed),
            Some(usize::MAX) => g.tensor_f32("output.weight").map(Part::Head),
            Some(i) => load_layer(g, c, i).map(|l| Part::Layer(i, Box::new(l))),
        }
    };
    let parts: Vec<Part> = std::thread::scope(|s| -> Result<Vec<Part>> {
        let workers: Vec<_> = (0..threads.min(jobs.len()))
            .map(|_| {
                s.spawn(|| -> Result<Vec<Part>> {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&job) = jobs.get(k) else {
                            return Ok(done);
                        };
                        done.push(run(job)?);
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(
                w.join()
                    .map_err(|_| anyhow!("weight loader thread panicked"))??,
            );
        }
        Ok(all)
    })?;
    let mut layers: Vec<Option<LayerWeights>> = (0..c.num_layers).map(|_| None).collect();
    let (mut embed, mut head) = (None, None);
    for part in parts {
        match part {
            Part::Embed(t) => embed = Some(t),
            Part::Head(t) => head = Some(t),
            Part::Layer(i, l) => layers[i] = Some(*l),
        }
    }
    let layers = layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.ok_or_else(|| anyhow!("layer {i} was not loaded")))
        .collect::<Result<Vec<_>>>()?;
    let embed = embed.ok_or_else(|| anyhow!("token_embd.weight was not loaded"))?;
    Ok((layers, embed, head))
}
