//! How a [`Model`]'s weights reach the device: from host tensors ([`Model::load_with`]), or from
//! a model file through the on-disk weight cache ([`Model::load_path`]).
//!
//! A start that reads and dequantizes a GGUF and copies the result into device buffers costs
//! seconds every time. The cache keeps the program's parameters exactly as they are uploaded
//! (stacked, dequantized, in the dtype's element types) in one file under `SCORER_HOME`
//! (`crate::weights::cache`); a later start maps it and hands the mapping to the plugin with
//! zero-copy semantics, so the CPU plugin uses the page cache as the weights. The key covers the
//! model file's identity (content sample hash, size, mtime), its config, the dtype, the layer
//! layout and [`PARAM_FORMAT`]; a file that fails its checks is rebuilt, and a cache that cannot
//! be written only costs the upload from memory.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::hlo::ElemType;
use crate::pjrt::{Buffer, Client, ElementType, HostOwner, NativeType};
use crate::weights::cache::{CacheError, WeightFile, Writer};
use crate::weights::{self, ModelConfig, ModelWeights};

use super::params::{Dims, HostData, ParamSpec, host_param, param_specs};
use super::{DEFAULT_MAX_TOKENS, DType, LayerLayout, LoadOptions, Model, ModelStats};

/// Bumped whenever `params.rs` changes what a parameter holds, so old cache files miss.
const PARAM_FORMAT: u32 = 2;

impl Model {
    /// Uploads `weights` to `device` once, in the default [`LayerLayout`].
    pub fn load(
        client: Client,
        weights: &ModelWeights,
        dtype: DType,
        device: usize,
    ) -> Result<Model> {
        Self::load_with(
            client,
            weights,
            LoadOptions {
                dtype,
                device,
                layout: LayerLayout::default(),
                attention: Default::default(),
            },
        )
    }

    /// Uploads `weights` once, laid out for the program as `opts` says.
    pub fn load_with(client: Client, weights: &ModelWeights, opts: LoadOptions) -> Result<Model> {
        let started = Instant::now();
        weights
            .validate()
            .context("checking the weights against their config")?;
        check_device(&client, opts.device)?;
        let dims = Dims::new(&weights.config, weights.lm_head.is_none());
        let mut buffers = Vec::new();
        let mut weight_bytes = 0u64;
        // One parameter at a time keeps the host peak at one stacked tensor.
        for spec in param_specs(&dims, opts.dtype, opts.layout) {
            let data = host_param(weights, &dims, &spec)?;
            let buf = match &data {
                HostData::F32(v) => client.buffer_from_host(v, &spec.dims, opts.device),
                HostData::BF16(v) => client.buffer_from_host(v, &spec.dims, opts.device),
            }
            .with_context(|| format!("uploading {:?} {:?}", spec.slot, spec.dims))?;
            weight_bytes += data.byte_len();
            buffers.push(buf);
        }
        Ok(Model::assemble(
            client,
            weights.config.clone(),
            dims,
            opts,
            buffers,
            weight_bytes,
            started,
            "host tensors",
        ))
    }

    /// Loads the model file `path` (GGUF or Hugging Face directory) onto the device. With a
    /// `weight_cache` directory the program's parameters come from (or go into) a cache file
    /// there, mapped and uploaded without a copy; without one, as [`Model::load_with`].
    pub fn load_path(
        client: Client,
        path: &Path,
        opts: LoadOptions,
        weight_cache: Option<&Path>,
    ) -> Result<Model> {
        let Some(dir) = weight_cache else {
            let host = weights::load(path)
                .with_context(|| format!("loading weights from {}", path.display()))?;
            return Model::load_with(client, &host, opts);
        };
        check_device(&client, opts.device)?;
        let started = Instant::now();
        let config = weights::load_config(path)
            .with_context(|| format!("reading the model metadata of {}", path.display()))?;
        let key = cache_key(path, &config, opts)?;
        let file = dir.join(format!("{key}.weights"));
        match WeightFile::open(&file, &key) {
            Ok(cached) => match Model::from_cache(&client, &config, &cached, opts, started) {
                Ok(model) => return Ok(model),
                Err(e) => tracing::warn!(file = %file.display(), error = %format!("{e:#}"),
                    "weight cache does not fit the program; rebuilding it"),
            },
            Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(file = %file.display(), "no weight cache yet; building it");
            }
            Err(e) => tracing::warn!(error = %e, "weight cache unusable; rebuilding it"),
        }
        let host = weights::load(path)
            .with_context(|| format!("loading weights from {}", path.display()))?;
        host.validate()
            .context("checking the weights against their config")?;
        let written = write_cache(&host, &file, &key, opts);
        match written.and_then(|()| Ok(WeightFile::open(&file, &key)?)) {
            Ok(cached) => {
                drop(host);
                Model::from_cache(&client, &config, &cached, opts, started)
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %format!("{e:#}"),
                    "could not write the weight cache; uploading from memory");
                Model::load_with(client, &host, opts)
            }
        }
    }

    /// Uploads a verified cache file's tensors as the program's parameters, aliasing the map.
    fn from_cache(
        client: &Client,
        config: &ModelConfig,
        cached: &WeightFile,
        opts: LoadOptions,
        started: Instant,
    ) -> Result<Model> {
        let tied = match cached.meta("tied") {
            Some("true") => true,
            Some("false") => false,
            other => bail!("the cache does not say whether the head is tied ({other:?})"),
        };
        let dims = Dims::new(config, tied);
        let specs = param_specs(&dims, opts.dtype, opts.layout);
        let entries = cached.tensors();
        ensure!(
            entries.len() == specs.len(),
            "the cache holds {} tensors, the program takes {}",
            entries.len(),
            specs.len()
        );
        let owner: HostOwner = cached.mapping();
        let mut buffers = Vec::with_capacity(specs.len());
        for (spec, entry) in specs.iter().zip(entries) {
            let (ty, name) = element(spec.elem)?;
            ensure!(
                entry.name == param_name(spec) && entry.dims == spec.dims && entry.dtype == name,
                "cache tensor {} {:?} {} where the program takes {} {:?} {name}",
                entry.name,
                entry.dims,
                entry.dtype,
                param_name(spec),
                spec.dims
            );
            let start = usize::try_from(entry.offset)?;
            let end = start + usize::try_from(entry.len)?;
            let buf = client
                .buffer_from_shared(owner.clone(), start..end, ty, &spec.dims, opts.device)
                .with_context(|| format!("uploading {} from the weight cache", entry.name))?;
            buffers.push(buf);
        }
        Ok(Model::assemble(
            client.clone(),
            config.clone(),
            dims,
            opts,
            buffers,
            cached.data_bytes(),
            started,
            "weight cache (mapped)",
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        client: Client,
        config: ModelConfig,
        dims: Dims,
        opts: LoadOptions,
        weights: Vec<Buffer>,
        weight_bytes: u64,
        started: Instant,
        source: &str,
    ) -> Model {
        tracing::info!(
            model = %config.name,
            dtype = opts.dtype.as_str(),
            layout = ?opts.layout,
            device = opts.device,
            weight_mib = weight_bytes / (1 << 20),
            source,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model weights on the device"
        );
        Model {
            client,
            device: opts.device,
            config,
            dtype: opts.dtype,
            layout: opts.layout,
            attention: opts.attention,
            dims,
            weights,
            max_tokens: DEFAULT_MAX_TOKENS,
            cache: Mutex::new(Default::default()),
            stats: Mutex::new(ModelStats {
                weight_bytes,
                ..Default::default()
            }),
            store: None,
        }
    }
}

fn check_device(client: &Client, device: usize) -> Result<()> {
    ensure!(
        device < client.device_count(),
        "device {device} does not exist (the plugin has {})",
        client.device_count()
    );
    Ok(())
}

/// The element type of a parameter on the device and its spelling in the cache index.
fn element(elem: ElemType) -> Result<(ElementType, &'static str)> {
    match elem {
        ElemType::F32 => Ok((ElementType::F32, "f32")),
        ElemType::BF16 => Ok((ElementType::BF16, "bf16")),
        other => bail!("no weight parameter is {other:?}"),
    }
}

fn param_name(spec: &ParamSpec) -> String {
    match spec.layer {
        Some(i) => format!("{:?}.{i}", spec.slot),
        None => format!("{:?}", spec.slot),
    }
}

/// The cache entry of `path` under `opts`: hex SHA-256 of everything that decides the bytes.
fn cache_key(path: &Path, config: &ModelConfig, opts: LoadOptions) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"scorer weight cache\0");
    h.update(crate::weights::cache::FORMAT_VERSION.to_le_bytes());
    h.update(PARAM_FORMAT.to_le_bytes());
    h.update(weights::content_hash(path)?.as_bytes());
    // Size and mtime of the file, or of every file of a Hugging Face directory.
    let mut files = vec![path.to_path_buf()];
    if path.is_dir() {
        files = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
    }
    for f in files {
        let meta = std::fs::metadata(&f).with_context(|| format!("model file {}", f.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update(meta.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    h.update(format!("{config:?}").as_bytes());
    h.update(opts.dtype.as_str().as_bytes());
    h.update(format!("{:?}", opts.layout).as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// Writes the program's parameters of `host` (one stacked tensor in memory at a time).
fn write_cache(host: &ModelWeights, file: &Path, key: &str, opts: LoadOptions) -> Result<()> {
    let started = Instant::now();
    let tied = host.lm_head.is_none();
    let dims = Dims::new(&host.config, tied);
    let mut w = Writer::create(file, key)?;
    w.set_meta("tied", if tied { "true" } else { "false" });
    w.set_meta("model", &host.config.name);
    for spec in param_specs(&dims, opts.dtype, opts.layout) {
        let data = host_param(host, &dims, &spec)?;
        let (_, dtype) = element(spec.elem)?;
        let bytes: &[u8] = match &data {
            HostData::F32(v) => as_bytes(v),
            HostData::BF16(v) => as_bytes(v),
        };
        w.add(&param_name(&spec), &spec.dims, dtype, bytes)?;
    }
    let path = w.finish()?;
    tracing::info!(file = %path.display(), elapsed_ms = started.elapsed().as_millis() as u64,
        "weight cache written");
    Ok(())
}

/// The raw little-endian bytes of plain-old-data values.
fn as_bytes<T: NativeType>(v: &[T]) -> &[u8] {
    // SAFETY: `NativeType` implementors are plain old data; the view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
