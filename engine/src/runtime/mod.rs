//! The engine as a service: tokenizer on the caller's side, PJRT on one dedicated thread per
//! device.
//!
//! A device's weights, executables in use and prefix cache are owned by that device's engine
//! thread (one actor per concern); callers send it work over a channel and block on the reply.
//! Tokenization and validation happen on the caller's thread so the device thread only ever
//! runs forward passes. Several devices of one plugin ([`Engine::load_devices`]) share one
//! plugin load and one PJRT client (a thread-safe object; the plugin wants one client per
//! process), so a program is compiled once for all of them; each device gets its own thread and
//! prefix cache, and each [`Engine`] is a separate backend (a worker with its own queue).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use scorer_protocol::rerank::RerankInput;
use scorer_protocol::{
    EngineUnavailable, JobFailure, ScoreBackend, ScoreJob, ScoreOutput, ScoreRequest,
    ScoreResponse, ValidationError,
};

mod long;
mod passes;

use crate::chat_template::ChatTemplate;
use crate::model::{Attention, DType, DirStore, LayerLayout, LoadOptions, Model, ModelStats};
use crate::packing::Packing;
use crate::pjrt::{Client, ClientOptions, DeviceSelection, Plugin};
use crate::prefix_cache::PrefixCache;
use crate::rerank_template::{RerankTemplate, RerankTemplateChoice, prepare_rerank};
use crate::scoring::{ChatSupport, Limits, load_chat_support, prepare};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, ModelConfig};
use passes::run_jobs;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A GGUF file or a Hugging Face model directory.
    pub model_path: PathBuf,
    /// The name answered in responses and `/v1/models`.
    pub model_id: String,
    pub plugin_path: PathBuf,
    /// Plugin-specific options for `PJRT_Client_Create` (GPU allocator settings, typed extras);
    /// empty: the plugin's defaults.
    pub client_options: ClientOptions,
    pub dtype: DType,
    /// How per-layer weights reach the program (stacked under one `while` loop, or one
    /// parameter per layer in an unrolled program).
    pub layout: LayerLayout,
    /// How passes compute attention (`--attention`): tiled where it saves work, or row blocks.
    pub attention: Attention,
    /// Which of the plugin's addressable devices holds the weights ([`Engine::load`];
    /// [`Engine::load_devices`] takes a selection instead).
    pub device: usize,
    pub limits: Limits,
    pub packing: Packing,
    /// Tokens per forward pass (the largest token bucket used).
    pub max_batch_tokens: usize,
    /// A prompt longer than a pass is computed in chunks of this many tokens (chunked prefill,
    /// `--prefill-chunk-tokens`); device memory per pass grows with chunk × prompt length.
    pub prefill_chunk_tokens: usize,
    /// Directory of serialized executables, so a warm start compiles nothing (None: memory only).
    pub compile_cache: Option<PathBuf>,
    /// Directory of device-ready weight files, so a warm start neither dequantizes nor copies
    /// the weights (None: loaded from the model file every time).
    pub weight_cache: Option<PathBuf>,
    /// Device bytes of prefix keys/values kept between batches (0: none are kept; jobs of one
    /// batch that share a prefix still compute it once).
    pub prefix_cache_bytes: u64,
    /// Shared prefixes shorter than this are not worth a separate pass: such jobs are packed
    /// as usual (0 turns coalescing and the prefix cache off).
    pub prefix_min_tokens: usize,
    /// The rerank template (`--rerank-template`; default: the built-in one for a Qwen3 reranker).
    pub rerank_template: RerankTemplateChoice,
}

/// Default bound of the prefix cache: about 40 cached 512-token prefixes of Qwen2.5-0.5B.
pub const DEFAULT_PREFIX_CACHE_BYTES: u64 = 512 << 20;
/// Default chunk of a chunked prefill: the attention of a chunk of a 32k-token prompt on
/// Qwen2.5-0.5B (14 heads) is `14 × 1,024 × 33k` f32, about 1.9 GiB.
pub const DEFAULT_PREFILL_CHUNK_TOKENS: usize = 1024;
/// Default shortest prefix worth caching or coalescing.
pub const DEFAULT_PREFIX_MIN_TOKENS: usize = 32;

impl EngineConfig {
    pub fn new(model_path: PathBuf, model_id: String) -> Self {
        EngineConfig {
            model_path,
            model_id,
            plugin_path: crate::pjrt::default_plugin_path(),
            client_options: ClientOptions::default(),
            dtype: DType::F32,
            layout: LayerLayout::default(),
            attention: Attention::default(),
            device: 0,
            limits: Limits::default(),
            packing: Packing::default(),
            max_batch_tokens: 2048,
            prefill_chunk_tokens: DEFAULT_PREFILL_CHUNK_TOKENS,
            compile_cache: None,
            weight_cache: None,
            prefix_cache_bytes: DEFAULT_PREFIX_CACHE_BYTES,
            prefix_min_tokens: DEFAULT_PREFIX_MIN_TOKENS,
            rerank_template: RerankTemplateChoice::Auto,
        }
    }

    /// The model's rerank template under `self.rerank_template` (a bad template file fails the
    /// load, naming the file and what is wrong with it).
    pub fn load_rerank_template(
        &self,
        arch: weights::Arch,
        tokenizer: &Tokenizer,
    ) -> Result<Option<RerankTemplate>> {
        let template = RerankTemplate::for_model(
            &self.rerank_template,
            arch,
            &self.model_path,
            &self.model_id,
            tokenizer,
        )
        .context("loading the rerank template")?;
        if template.is_some() {
            tracing::info!(model = %self.model_id, "rerank template loaded: the rerank routes are served");
        }
        Ok(template)
    }
}

/// Why a scoring call failed: the caller's fault (400) or ours.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    Engine(String),
}

type Reply<T> = mpsc::SyncSender<T>;

enum Command {
    Score(Vec<ScoreJob>, Reply<Vec<Result<ScoreOutput, String>>>),
    Stats(Reply<ModelStats>),
    /// End the engine thread (what its death looks like to callers).
    Stop,
}

pub struct Engine {
    model_id: String,
    tokenizer: Arc<Tokenizer>,
    config: ModelConfig,
    limits: Limits,
    device: usize,
    chat: ChatSupport,
    rerank: Option<RerankTemplate>,
    tx: mpsc::Sender<Command>,
}

impl Engine {
    /// Loads the tokenizer and weights, starts the engine thread of `cfg.device` and uploads the
    /// weights to that device once. Returns when the engine can score.
    pub fn load(cfg: EngineConfig) -> Result<Engine> {
        let device = cfg.device;
        Engine::load_devices(cfg, &DeviceSelection::one(device))?
            .pop()
            .ok_or_else(|| anyhow!("no engine started on device {device}"))
    }

    /// One engine per selected device (`cfg.device` is not looked at), in the selection's
    /// order: ONE plugin load and ONE PJRT client for all of them, the host weights read
    /// once and uploaded to each device, and one engine thread per device with its own
    /// prefix cache. Programs are compiled once for all devices (the client shares
    /// executables). A device the plugin does not have fails before any weight is read.
    pub fn load_devices(cfg: EngineConfig, devices: &DeviceSelection) -> Result<Vec<Engine>> {
        let started = Instant::now();
        let client = open_client(&cfg)?;
        let devices = devices
            .resolve(client.device_count())
            .with_context(|| format!("choosing devices of {}", cfg.plugin_path.display()))?;
        let tokenizer =
            Arc::new(Tokenizer::for_model(&cfg.model_path).with_context(|| {
                format!("loading the tokenizer of {}", cfg.model_path.display())
            })?);
        let config = weights::load_config(&cfg.model_path).with_context(|| {
            format!("reading the model metadata of {}", cfg.model_path.display())
        })?;
        let rerank = cfg.load_rerank_template(config.arch, &tokenizer)?;
        tracing::info!(model = %cfg.model_id, arch = %config.arch, layers = config.num_layers,
            elapsed_ms = started.elapsed().as_millis() as u64, "tokenizer and metadata loaded");

        // Devices start one after another: the first places the weights (reading the model file,
        // or mapping the weight cache, which it writes if it is missing), so the next ones map
        // the cache instead of each reading and dequantizing the file again.
        let mut engines = Vec::with_capacity(devices.len());
        for &device in &devices {
            let (tx, rx) = mpsc::channel::<Command>();
            let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
            let (thread_cfg, client) = (cfg.clone(), client.clone());
            thread::Builder::new()
                .name(format!("scorer-engine-{device}"))
                .spawn(move || match start_device(&thread_cfg, client, device) {
                    Ok(model) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(&model, &thread_cfg, rx);
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                })
                .context("could not start an engine thread")?;
            ready_rx
                .recv()
                .map_err(|_| {
                    anyhow!("the engine thread of device {device} exited during start-up")
                })?
                .with_context(|| format!("starting the engine on device {device}"))?;
            engines.push(Engine {
                model_id: cfg.model_id.clone(),
                tokenizer: tokenizer.clone(),
                config: config.clone(),
                limits: cfg.limits.within_context(config.context_length),
                device,
                chat: load_chat_support(&cfg.model_path, &cfg.model_id),
                rerank: rerank.clone(),
                tx,
            });
        }
        tracing::info!(model = %cfg.model_id, ?devices,
            elapsed_ms = started.elapsed().as_millis() as u64, "engine ready");
        Ok(engines)
    }

    /// Which of the plugin's addressable devices this engine runs on.
    pub fn device(&self) -> usize {
        self.device
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The model's chat template, if it has one this server can render.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref().ok()
    }

    pub fn rerank_template(&self) -> Option<&RerankTemplate> {
        self.rerank.as_ref()
    }

    /// Validate, tokenize and score one request end to end.
    pub fn score(&self, req: &ScoreRequest) -> Result<ScoreResponse, ScoreError> {
        let job = self.prepare(req)?;
        let out = self
            .score_batch(std::slice::from_ref(&job))
            .map_err(|e| ScoreError::Engine(e.to_string()))?
            .pop()
            .unwrap_or_else(|| Err(JobFailure::new("the engine returned no result")))
            .map_err(|e| ScoreError::Engine(e.message))?;
        Ok(ScoreResponse::from_output(out, self.model_id.clone()))
    }

    /// Ends the engine thread once the work already sent to it is done; every later call answers
    /// [`EngineUnavailable`], as after a crash of that thread. For an orderly shutdown, and for
    /// tests of what a worker does when its engine dies.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// Counters of the device side: forward passes, tokens computed, compiles, decode steps.
    pub fn stats(&self) -> Result<ModelStats> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Command::Stats(reply))
            .map_err(|_| anyhow!("the engine thread has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow!("the engine thread has stopped"))
    }
}

impl ScoreBackend for Engine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError> {
        let vocab = self.config.vocab_size;
        prepare(req, &self.tokenizer, &self.chat, vocab, &self.limits)
    }

    fn prepare_rerank(&self, req: &RerankInput) -> Result<ScoreJob, ValidationError> {
        prepare_rerank(
            self.rerank.as_ref(),
            &self.model_id,
            req,
            &self.tokenizer,
            self.config.vocab_size,
            &self.limits,
        )
    }

    fn score_batch(
        &self,
        jobs: &[ScoreJob],
    ) -> Result<Vec<Result<ScoreOutput, JobFailure>>, EngineUnavailable> {
        let (reply, rx) = mpsc::sync_channel(1);
        let stopped = || EngineUnavailable {
            reason: "the engine thread has stopped".to_string(),
        };
        if self.tx.send(Command::Score(jobs.to_vec(), reply)).is_err() {
            return Err(stopped());
        }
        // A reply channel dropped unanswered: the thread died (panicked) on this batch.
        let outputs = rx.recv().map_err(|_| stopped())?;
        Ok(outputs
            .into_iter()
            .map(|r| r.map_err(JobFailure::new))
            .collect())
    }
}

/// Loads the plugin and creates the one client every device's engine shares.
fn open_client(cfg: &EngineConfig) -> Result<Client> {
    let plugin = Plugin::load(&cfg.plugin_path)
        .with_context(|| format!("loading the PJRT plugin {}", cfg.plugin_path.display()))?;
    let client = Client::with_client_options(&plugin, &cfg.client_options)
        .with_context(|| format!("creating the PJRT client (options: {})", cfg.client_options))?;
    if cfg.client_options.has_gpu_options() {
        let platform = client.platform_name().unwrap_or_default();
        if !matches!(platform.as_str(), "cuda" | "gpu" | "rocm") {
            tracing::warn!(%platform, options = %cfg.client_options,
                "GPU client options given to a non-GPU plugin, which ignores them");
        }
    }
    Ok(client)
}

/// Places the weights on `device` (on that device's engine thread): mapped from the weight
/// cache when it holds them, else read from the model file (and cached).
fn start_device(cfg: &EngineConfig, client: Client, device: usize) -> Result<Model> {
    let started = Instant::now();
    let opts = LoadOptions {
        dtype: cfg.dtype,
        device,
        layout: cfg.layout,
        attention: cfg.attention,
    };
    let mut model = Model::load_path(client, &cfg.model_path, opts, cfg.weight_cache.as_deref())
        .context("placing the weights on the device")?;
    model.set_max_tokens(cfg.max_batch_tokens);
    if let Some(dir) = &cfg.compile_cache {
        let store = DirStore::new(dir.clone())
            .with_context(|| format!("opening the executable cache {}", dir.display()))?;
        model.set_store(Arc::new(store));
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, dtype = ?cfg.dtype,
        device, "weights on the device");
    Ok(model)
}

fn serve(model: &Model, cfg: &EngineConfig, rx: mpsc::Receiver<Command>) {
    let mut cache = PrefixCache::new(cfg.prefix_cache_bytes);
    for command in rx {
        match command {
            Command::Score(jobs, reply) => {
                let _ = reply.send(run_jobs(model, cfg, &mut cache, &jobs));
            }
            Command::Stats(reply) => {
                let mut stats = model.stats();
                let c = cache.stats();
                stats.prefix_hit_tokens = c.hit_tokens;
                stats.prefix_miss_tokens = c.miss_tokens;
                stats.prefix_cache_bytes = c.bytes;
                stats.prefix_cache_entries = c.entries;
                let _ = reply.send(stats);
            }
            Command::Stop => {
                tracing::warn!("engine thread stopping");
                return;
            }
        }
    }
}
