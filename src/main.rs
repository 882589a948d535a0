//! `scorer`: one binary for every role (serve, api, worker) and the tools around it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use scorer::roles;
use scorer::{fetch, home};
use scorer_api::{AuthMode, ServiceConfig};
use scorer_engine::frontend::Frontend;
use scorer_engine::model::{Attention, DType};
use scorer_engine::pjrt::DeviceSelection;
use scorer_engine::rerank_template::RerankTemplateChoice;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::{
    Items, LabelIds, Limits, Preparer, ScoreBackend, ScoreRequest, TextOrTokens,
};
use scorer_worker::WorkerConfig;

#[derive(Parser)]
#[command(
    name = "scorer",
    version,
    about = "Score (query, item) pairs with a causal LM on XLA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download, verify and unpack the PJRT CPU plugin and the models into SCORER_HOME.
    Fetch {
        /// Only these artifacts (`xla-cpu-pjrt` or a model alias); all of them when omitted.
        #[arg(long = "model", value_name = "ALIAS")]
        only: Vec<String>,
        /// Only a PJRT plugin: `cpu` (the default when the flag has no value) or `cuda13`
        /// (jax-cuda13-pjrt and the NVIDIA runtime wheels it needs, pinned and checksummed).
        #[arg(long, conflicts_with = "only", value_name = "NAME", num_args = 0..=1,
            default_missing_value = "cpu")]
        plugin: Option<String>,
        /// Cache directory (default ~/.cache/scorer).
        #[arg(long, env = "SCORER_HOME")]
        home: Option<PathBuf>,
    },
    /// API and worker in one process. With no broker/store URLs: in-process queue and stores
    /// (the embedded default); each URL given swaps in the real service.
    Serve {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// The HTTP API alone (distributed deployment: needs the three URLs).
    Api {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// A worker alone (distributed deployment: needs the three URLs); one per device with
    /// --devices.
    Worker {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        service: ServiceArgs,
        #[command(flatten)]
        devices: DeviceArgs,
    },
    /// Apply the Postgres migrations and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Make, list and revoke API keys (kept hashed in Postgres).
    Keys(scorer::keys::KeysArgs),
    /// Retention: delete finished jobs and batches older than --older-than from Postgres, in
    /// bounded transactions (run it from cron or a Kubernetes CronJob; docs/OPERATIONS.md).
    Prune(scorer::prune::PruneArgs),
    /// Score a JSONL file through a running service's batches API: progress bar, resumable
    /// (custom_ids already in the output or error file are skipped).
    Bulk(scorer::bulk::BulkArgs),
    /// Score one request on the engine directly and print the response JSON.
    Score {
        #[command(flatten)]
        engine: EngineArgs,
        /// The query text.
        #[arg(long, default_value = "")]
        query: String,
        /// An item text (repeat for several items).
        #[arg(long = "item", value_name = "TEXT")]
        items: Vec<String>,
        /// A label token id (repeat for several labels).
        #[arg(long = "label", value_name = "ID", required = true)]
        labels: Vec<i64>,
        #[arg(long)]
        apply_softmax: bool,
        #[arg(long)]
        item_first: bool,
        #[arg(long)]
        temperature: Option<f64>,
    },
}

/// What the engine runs: the model, the PJRT plugin, the precision.
#[derive(Args, Clone)]
struct EngineArgs {
    /// An alias (see `scorer fetch`), a GGUF path, a Hugging Face directory, or a hub id.
    #[arg(long, env = "SCORER_MODEL", default_value = home::DEFAULT_MODEL)]
    model: String,
    /// The PJRT plugin: a shared library path, or a name found in SCORER_HOME or the Python
    /// environment (`cpu`, `cuda13`, `cuda12`, `tpu`); default: the fetched CPU plugin.
    #[arg(long, env = "SCORER_PJRT_PLUGIN")]
    pjrt_plugin: Option<String>,
    /// GPU plugins: the fraction of device memory the allocator may take (0, 1].
    #[arg(long, env = "SCORER_GPU_MEMORY_FRACTION")]
    gpu_memory_fraction: Option<f32>,
    /// GPU plugins: reserve the allocator's memory at start (true) or grow on demand (false).
    #[arg(long, env = "SCORER_GPU_PREALLOCATE")]
    gpu_preallocate: Option<bool>,
    /// GPU plugins: the allocator (`default`, `bfc`, `cuda`, `platform`).
    #[arg(long, env = "SCORER_GPU_ALLOCATOR")]
    gpu_allocator: Option<scorer_engine::pjrt::GpuAllocator>,
    /// Any other plugin client option, `name:type=value` (type `str`, `int`, `float`, `bool`);
    /// repeatable.
    #[arg(long = "pjrt-option", value_name = "NAME:TYPE=VALUE")]
    pjrt_options: Vec<String>,
    /// Precision: f32 (default); bf16 (bf16 weights and matmul inputs, f32 accumulation — for
    /// GPUs/TPUs); bf16-storage (bf16 weights, f32 compute — half the memory on a CPU).
    #[arg(long, env = "SCORER_DTYPE", default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
    /// Attention: tiled (default: where a pass is a shared query with short items, each row
    /// attends the query and its own tile only) or row-blocks (every earlier column, masked).
    #[arg(long, env = "SCORER_ATTENTION", default_value = "tiled", value_parser = parse_attention)]
    attention: Attention,
    /// Which of the plugin's devices holds the weights (`scorer worker --devices` for several).
    #[arg(long, env = "SCORER_DEVICE", default_value_t = 0)]
    device: usize,
    /// Device memory (MiB) for keys/values of hot prefixes kept between batches (0: none kept).
    #[arg(long, env = "SCORER_PREFIX_CACHE_MB",
        default_value_t = scorer_engine::runtime::DEFAULT_PREFIX_CACHE_BYTES >> 20)]
    prefix_cache_mb: u64,
    /// Items in one request (400 beyond).
    #[arg(long, env = "SCORER_MAX_ITEMS", default_value_t = Limits::default().max_items)]
    max_items: usize,
    /// Tokens in one prompt, query and item together (400 beyond), capped at the model's
    /// context length; prompts longer than a pass are computed by chunked prefill.
    #[arg(long, env = "SCORER_MAX_PROMPT_TOKENS",
        default_value_t = Limits::default().max_prompt_tokens)]
    max_prompt_tokens: usize,
    /// Tokens over all prompts of one request (400 beyond).
    #[arg(long, env = "SCORER_MAX_REQUEST_TOKENS",
        default_value_t = Limits::default().max_request_tokens)]
    max_request_tokens: usize,
    /// Label ids per item (400 beyond).
    #[arg(long, env = "SCORER_MAX_LABELS", default_value_t = Limits::default().max_labels)]
    max_labels: usize,
    /// Chunk of a chunked prefill (a prompt longer than a pass): device memory per pass grows
    /// with chunk × prompt length.
    #[arg(long, env = "SCORER_PREFILL_CHUNK_TOKENS",
        default_value_t = scorer_engine::runtime::DEFAULT_PREFILL_CHUNK_TOKENS)]
    prefill_chunk_tokens: usize,
    /// Shortest shared token prefix worth coalescing jobs on or caching (0: off).
    #[arg(long, env = "SCORER_PREFIX_MIN_TOKENS",
        default_value_t = scorer_engine::runtime::DEFAULT_PREFIX_MIN_TOKENS)]
    prefix_min_tokens: usize,
    /// Do not keep the dequantized weights in `$SCORER_HOME/weights` (a warm start then reads
    /// and dequantizes the model file again, seconds instead of one `mmap`; the cache holds
    /// the weights at the dtype's size, e.g. 2.4 GiB f32 / 1.2 GiB bf16 for the default model).
    #[arg(long, env = "SCORER_NO_WEIGHT_CACHE")]
    no_weight_cache: bool,
    // --- rerank (docs/RERANK.md) ---
    /// The rerank routes' template: a JSON template file, or `qwen3-reranker` (the built-in
    /// Qwen3-Reranker template). Unset: the built-in one for a Qwen3 model whose name contains
    /// "reranker", else none (the rerank routes answer 400).
    #[arg(
        long,
        env = "SCORER_RERANK_TEMPLATE",
        value_name = "FILE|qwen3-reranker"
    )]
    rerank_template: Option<String>,
}

/// Several devices from one `scorer worker` (docs/ACCELERATORS.md, "Several devices").
#[derive(Args, Clone)]
struct DeviceArgs {
    /// Serve several of the plugin's devices: `all`, or indices such as `0,2`. One plugin load
    /// and one PJRT client; per device its own engine thread, prefix cache and worker (id
    /// `<id>-dev<N>`, own queue). Instead of --device.
    #[arg(long, env = "SCORER_DEVICES", conflicts_with = "device",
        value_parser = parse_devices)]
    devices: Option<DeviceSelection>,
}

fn parse_devices(s: &str) -> Result<DeviceSelection, String> {
    s.parse()
        .map_err(|e: scorer_engine::pjrt::DeviceError| e.to_string())
}

/// Where the service listens and which external services it uses.
#[derive(Args, Clone)]
struct ServiceArgs {
    #[arg(long, env = "SCORER_LISTEN", default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// RabbitMQ, e.g. amqp://guest:guest@127.0.0.1:5672/%2f (unset: in-process queue).
    #[arg(long, env = "AMQP_URL")]
    amqp_url: Option<String>,
    /// Redis, e.g. redis://127.0.0.1:6379 (unset: in-process result store).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/test (unset: in-process audit).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Prefix of the AMQP exchanges/queues and the Redis keys.
    #[arg(long, env = "SCORER_NAMESPACE", default_value = "scorer")]
    namespace: String,
    /// Seconds `POST /v1/score` waits when the caller does not say.
    #[arg(long, env = "SCORER_SYNC_TIMEOUT", default_value_t = 60)]
    sync_timeout: u64,
    /// Queued messages per model beyond which submissions get 429.
    #[arg(long, env = "SCORER_MAX_QUEUE_DEPTH", default_value_t = 10_000)]
    max_queue_depth: u64,
    /// Unfinished sync and async jobs one tenant may have before its submissions get 429
    /// (0: no per-tenant bound).
    #[arg(long, env = "SCORER_MAX_TENANT_JOBS", default_value_t = 1_000)]
    max_tenant_jobs: u64,
    /// Seconds any one broker, Redis or Postgres call may take while answering a request
    /// before the request fails with 503.
    #[arg(long, env = "SCORER_STORE_TIMEOUT", default_value_t = 3.0)]
    store_timeout: f64,
    /// `off`: no API keys, one tenant; `required`: every /v1 request needs a Bearer key (from
    /// --api-keys or `scorer keys create`). --api-keys alone also turns it on.
    #[arg(long, env = "SCORER_AUTH", default_value = "off", value_parser = parse_auth)]
    auth: AuthMode,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "SCORER_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Tokens a worker batch may hold while it carries bulk (batch-file) jobs; bounds how long a
    /// sync request waits behind bulk work on the engine.
    #[arg(long, env = "SCORER_MAX_BULK_BATCH_TOKENS", default_value_t = scorer_worker::DEFAULT_MAX_BULK_BATCH_TOKENS)]
    max_bulk_batch_tokens: usize,
    /// API keys as KEY=TENANT, comma-separated (unset: no authentication, one tenant).
    #[arg(long, env = "SCORER_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// Send jobs that share a token prefix to the same worker (`false`: all to the shared queue).
    #[arg(long, env = "SCORER_LOCALITY", default_value_t = true, action = clap::ArgAction::Set)]
    locality: bool,
    /// Milliseconds a job waits in its worker's queue before any worker may take it (workers
    /// declare their queue with it).
    #[arg(long, env = "SCORER_WORKER_QUEUE_TTL_MS", default_value_t = 5_000)]
    worker_queue_ttl_ms: u64,
    /// Starts a job is allowed (redeliveries after worker crashes count) before it fails.
    #[arg(long, env = "SCORER_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: i32,
    /// Seconds a worker's forward pass may run; past them its jobs are requeued once, then fail.
    #[arg(long, env = "SCORER_JOB_RUN_TIMEOUT", default_value_t = 300)]
    job_run_timeout: u64,
    /// HTTP connections served at once; more wait in the listen backlog.
    #[arg(long, env = "SCORER_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a connection may sit with no request in progress and no traffic before it is
    /// closed.
    #[arg(long, env = "SCORER_IDLE_TIMEOUT", default_value_t = 60.0)]
    idle_timeout: f64,
    /// Seconds from a request's first byte to the end of its head.
    #[arg(long, env = "SCORER_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    header_read_timeout: f64,
    /// Seconds a request body may take to arrive whole (408 past it), batch uploads excepted.
    #[arg(long, env = "SCORER_BODY_READ_TIMEOUT", default_value_t = 60.0)]
    body_read_timeout: f64,
    /// Seconds a batch upload (POST /v1/batches) may take to arrive whole.
    #[arg(long, env = "SCORER_UPLOAD_READ_TIMEOUT", default_value_t = 3600.0)]
    upload_read_timeout: f64,
    #[command(flatten)]
    lifecycle: LifecycleArgs,
    #[command(flatten)]
    names: ModelNameArgs,
}

/// Shutdown and queue type (docs/OPERATIONS.md, "Graceful shutdown" and "Queue types").
#[derive(Args, Clone)]
struct LifecycleArgs {
    /// Seconds a process has after SIGTERM: the API to answer the requests in progress (sync
    /// waits answer 504 with their job just before), a worker to finish the pass it is
    /// running. `scorer serve` drains the API, then the worker, each within it.
    #[arg(long, env = "SCORER_SHUTDOWN_GRACE",
        default_value_t = scorer_jobs::deadline::DEFAULT_SHUTDOWN_GRACE.as_secs_f64())]
    shutdown_grace: f64,
    /// RabbitMQ queue type: `classic` (message priorities) or `quorum` (replicated, with a
    /// delivery limit; no priorities before RabbitMQ 4.0). An existing queue keeps its type.
    #[arg(long, env = "SCORER_QUEUE_TYPE", default_value = "classic",
        value_parser = parse_queue_type)]
    queue_type: scorer_jobs::QueueType,
    /// Quorum queues: returns of a message before the broker dead-letters it.
    #[arg(long, env = "SCORER_QUEUE_DELIVERY_LIMIT",
        default_value_t = scorer_jobs::DEFAULT_DELIVERY_LIMIT)]
    queue_delivery_limit: u32,
}

impl LifecycleArgs {
    fn apply(&self, service: &mut ServiceConfig, worker: &mut WorkerConfig) -> Result<()> {
        let grace = seconds("shutdown-grace", self.shutdown_grace)?;
        service.http.shutdown_grace = grace;
        worker.shutdown_grace = grace;
        anyhow::ensure!(
            self.queue_delivery_limit >= 1,
            "--queue-delivery-limit must be at least 1"
        );
        service.queue_type = self.queue_type;
        service.queue_delivery_limit = self.queue_delivery_limit;
        Ok(())
    }
}

fn parse_queue_type(s: &str) -> Result<scorer_jobs::QueueType, String> {
    scorer_jobs::QueueType::parse(s)
        .ok_or_else(|| format!("--queue-type is `classic` or `quorum`, not `{s}`"))
}

/// Which model names requests may use (issue 17: clients migrating from SGLang send the name the
/// old server served).
#[derive(Args, Clone)]
struct ModelNameArgs {
    /// A name requests may use for the model, repeatable (comma-separated in the environment):
    /// the first is the id `/v1/models` lists, the rest are aliases; `default` is always
    /// accepted (unset: the model's own id). Answers echo the name the request used.
    #[arg(
        long = "served-model-name",
        env = "SCORER_SERVED_MODEL_NAME",
        value_delimiter = ','
    )]
    served_model_names: Vec<String>,
    /// Serve requests whatever model they name and echo the name (SGLang's behaviour).
    #[arg(long, env = "SCORER_ACCEPT_ANY_MODEL_NAME")]
    accept_any_model_name: bool,
}

impl ModelNameArgs {
    fn apply(&self, cfg: &mut ServiceConfig) {
        cfg.served_model_names = self.served_model_names.clone();
        cfg.accept_any_model_name = self.accept_any_model_name;
    }
}

/// A positive number of seconds, for the flag named.
fn seconds(flag: &str, secs: f64) -> Result<Duration> {
    anyhow::ensure!(
        secs.is_finite() && secs > 0.0,
        "--{flag} must be a positive number of seconds, got {secs}"
    );
    Duration::try_from_secs_f64(secs).with_context(|| format!("--{flag} is too large: {secs}"))
}

impl ServiceArgs {
    fn config(&self, engine: &EngineConfig) -> Result<(ServiceConfig, WorkerConfig)> {
        let mut cfg = ServiceConfig {
            listen: self.listen,
            namespace: self.namespace.clone(),
            sync_timeout: Duration::from_secs(self.sync_timeout),
            max_queue_depth: self.max_queue_depth,
            max_tenant_active: self.max_tenant_jobs,
            auth: self.auth,
            ..ServiceConfig::default()
        };
        cfg.store_timeout = seconds("store-timeout", self.store_timeout)?;
        anyhow::ensure!(
            self.max_connections >= 1,
            "--max-connections must be at least 1"
        );
        cfg.http = scorer_api::HttpLimits {
            max_connections: self.max_connections,
            idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
            header_read_timeout: seconds("header-read-timeout", self.header_read_timeout)?,
            body_read_timeout: seconds("body-read-timeout", self.body_read_timeout)?,
            upload_read_timeout: seconds("upload-read-timeout", self.upload_read_timeout)?,
            ..scorer_api::HttpLimits::default()
        };
        cfg.stores.amqp_url = self.amqp_url.clone().filter(|u| !u.is_empty());
        cfg.stores.redis_url = self.redis_url.clone().filter(|u| !u.is_empty());
        cfg.stores.database_url = self.database_url.clone().filter(|u| !u.is_empty());
        cfg.max_body_bytes = self.max_body_bytes;
        self.names.apply(&mut cfg);
        let mut worker = WorkerConfig {
            max_batch_tokens: engine.max_batch_tokens,
            ..WorkerConfig::default()
        };
        cfg.locality.enabled = self.locality;
        cfg.locality.worker_queue_ttl = Duration::from_millis(self.worker_queue_ttl_ms.max(1));
        anyhow::ensure!(self.max_attempts >= 1, "--max-attempts must be at least 1");
        anyhow::ensure!(
            self.job_run_timeout >= 1,
            "--job-run-timeout must be at least 1 s"
        );
        worker.max_attempts = self.max_attempts;
        worker.run_timeout = Duration::from_secs(self.job_run_timeout);
        worker.max_bulk_batch_tokens = self.max_bulk_batch_tokens;
        self.lifecycle.apply(&mut cfg, &mut worker)?;
        for pair in &self.api_keys {
            let (key, tenant) = pair
                .split_once('=')
                .with_context(|| format!("--api-keys wants KEY=TENANT pairs, got '{pair}'"))?;
            cfg.api_keys.insert(key.to_string(), tenant.to_string());
        }
        Ok((cfg, worker))
    }
}

/// Loads what the role needs and runs it on a Tokio runtime: the engine (weights on the device)
/// for `serve` and `worker`; only the tokenizer and the model's metadata for `api`.
fn run_role(engine: &EngineArgs, service: &ServiceArgs, role: Role) -> Result<()> {
    // `scorer api` opens no PJRT client, so it needs no plugin to be found.
    let engine_cfg = engine.config(!matches!(role, Role::Api))?;
    let (config, worker) = service.config(&engine_cfg)?;
    if !config.stores.any() {
        tracing::info!("embedded mode: in-process queue, result store and audit log");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let shutdown = roles::shutdown_signal();
    let ran = match role {
        Role::Api => {
            let frontend: Arc<dyn Preparer> = Arc::new(Frontend::load(&engine_cfg)?);
            runtime.block_on(roles::run_api(config, frontend, shutdown))
        }
        Role::Serve => {
            let engine = Arc::new(Engine::load(engine_cfg)?);
            runtime.block_on(roles::serve(config, worker, engine, shutdown))
        }
        Role::Worker(devices) => {
            let engines = match devices {
                Some(devices) => Engine::load_devices(engine_cfg, &devices)?,
                None => vec![Engine::load(engine_cfg)?],
            };
            let backends = engines
                .into_iter()
                .map(|engine| roles::DeviceBackend {
                    device: engine.device(),
                    backend: Arc::new(engine) as Arc<dyn ScoreBackend>,
                })
                .collect();
            runtime.block_on(roles::run_worker(config, worker, backends, shutdown))
        }
    };
    // A pass the shutdown grace gave up on still runs on a blocking thread: dropping the
    // runtime would wait for it.
    runtime.shutdown_background();
    ran
}

enum Role {
    Serve,
    Api,
    /// With the devices of `--devices` (else the one of `--device`).
    Worker(Option<DeviceSelection>),
}

fn parse_auth(s: &str) -> Result<AuthMode, String> {
    AuthMode::parse(s).ok_or_else(|| format!("--auth is `off` or `required`, not `{s}`"))
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s).map_err(|e| e.to_string())
}

fn parse_attention(s: &str) -> Result<Attention, String> {
    Attention::parse(s).map_err(|e| e.to_string())
}

impl EngineArgs {
    /// The engine's configuration; `device`: the PJRT plugin is resolved too (a role that runs
    /// the model), else `--pjrt-plugin` is not looked at.
    fn config(&self, device: bool) -> Result<EngineConfig> {
        let path = home::resolve_model(&self.model)?;
        let mut cfg = EngineConfig::new(path, self.model.clone());
        if let Some(plugin) = self.pjrt_plugin.as_ref().filter(|_| device) {
            cfg.plugin_path = scorer_engine::pjrt::discover::resolve_plugin(plugin)?;
        }
        let options = &mut cfg.client_options;
        if let Some(f) = self.gpu_memory_fraction {
            options.set_gpu_memory_fraction(f)?;
        }
        options.gpu_preallocate = self.gpu_preallocate;
        options.gpu_allocator = self.gpu_allocator;
        for flag in &self.pjrt_options {
            options.push_flag(flag)?;
        }
        cfg.dtype = self.dtype;
        cfg.attention = self.attention;
        cfg.device = self.device;
        cfg.limits = Limits {
            max_items: self.max_items,
            max_prompt_tokens: self.max_prompt_tokens,
            max_request_tokens: self.max_request_tokens,
            max_labels: self.max_labels,
        };
        cfg.prefix_cache_bytes = self.prefix_cache_mb << 20;
        cfg.prefix_min_tokens = self.prefix_min_tokens;
        anyhow::ensure!(
            self.prefill_chunk_tokens >= 1,
            "--prefill-chunk-tokens must be at least 1"
        );
        cfg.prefill_chunk_tokens = self.prefill_chunk_tokens;
        cfg.compile_cache = Some(scorer_engine::home::executable_cache());
        cfg.weight_cache = (!self.no_weight_cache).then(scorer_engine::home::weight_cache);
        if let Some(template) = &self.rerank_template {
            cfg.rerank_template = RerankTemplateChoice::parse(template);
        }
        Ok(cfg)
    }
}

fn main() {
    if let Err(err) = run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Fetch { only, plugin, home } => {
            let home = home.unwrap_or_else(home::scorer_home);
            if let Some(name) = plugin {
                let (outcome, path) = scorer::plugins::fetch_plugin(&home, &name)?;
                println!("{name}: {outcome:?} ({})", path.display());
                return Ok(());
            }
            for (alias, outcome) in fetch::fetch(&home, &only)? {
                println!("{alias}: {outcome:?}");
            }
            Ok(())
        }
        Command::Bulk(args) => scorer::bulk::main(args),
        Command::Keys(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(scorer::keys::main(args))
        }
        Command::Prune(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(scorer::prune::main(args))
        }
        Command::Serve { engine, service } => run_role(&engine, &service, Role::Serve),
        Command::Api { engine, service } => run_role(&engine, &service, Role::Api),
        Command::Worker {
            engine,
            service,
            devices,
        } => run_role(&engine, &service, Role::Worker(devices.devices)),
        Command::Migrate { database_url } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(scorer_api::migrate(&database_url))?;
            println!("migrations applied");
            Ok(())
        }
        Command::Score {
            engine,
            query,
            items,
            labels,
            apply_softmax,
            item_first,
            temperature,
        } => {
            let engine = Engine::load(engine.config(true)?)?;
            let request = ScoreRequest {
                model: None,
                query: Some(TextOrTokens::Text(query)),
                items: Some(Items::Texts(items)),
                label_token_ids: Some(LabelIds::Shared(labels)),
                apply_softmax,
                item_first,
                temperature,
                ..Default::default()
            };
            let response = engine.score(&request)?;
            println!("{}", serde_json::to_string_pretty(&response)?);
            Ok(())
        }
    }
}
