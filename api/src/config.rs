//! Service settings. Every limit the API enforces is here, with its default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::{HttpLimits, LocalityConfig};

/// Where the queue and stores live. A missing URL means "in-process" (embedded mode).
#[derive(Debug, Clone, Default)]
pub struct StoreUrls {
    pub amqp_url: Option<String>,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
}

impl StoreUrls {
    pub fn any(&self) -> bool {
        self.amqp_url.is_some() || self.redis_url.is_some() || self.database_url.is_some()
    }

    pub fn all(&self) -> bool {
        self.amqp_url.is_some() && self.redis_url.is_some() && self.database_url.is_some()
    }
}

/// Whether callers must present an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No authentication: every caller is tenant `default`, unless static keys are configured
    /// (`api_keys`), which turn authentication on by themselves.
    #[default]
    Off,
    /// Every `/v1` request needs `Authorization: Bearer <key>`: a static key or a key made with
    /// `scorer keys create` (stored hashed in Postgres).
    Required,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "off" | "none" => Some(AuthMode::Off),
            "required" | "on" => Some(AuthMode::Required),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `--listen` / `SCORER_LISTEN`.
    pub listen: SocketAddr,
    pub stores: StoreUrls,
    /// Prefix of the AMQP exchanges and queues and of the Redis keys.
    pub namespace: String,
    /// RabbitMQ queue type (`--queue-type`; docs/OPERATIONS.md, "Queue types").
    pub queue_type: scorer_jobs::QueueType,
    /// Quorum queues: returns a message may have before the broker dead-letters it
    /// (`--queue-delivery-limit`).
    pub queue_delivery_limit: u32,
    /// Largest request body in bytes (`--max-body-bytes`): 413 beyond. The limits on what a
    /// request asks for (items, tokens, labels) are the engine's (`scorer_protocol::Limits`).
    pub max_body_bytes: usize,
    /// Connections, idle and read timeouts of the HTTP server.
    pub http: HttpLimits,
    /// How long `POST /v1/score` waits for its result when the caller does not say (default 60 s).
    pub sync_timeout: Duration,
    /// The most a caller may ask for with `X-Request-Timeout` (default 300 s).
    pub max_sync_timeout: Duration,
    /// How long results stay in the result store (default 24 h); Postgres keeps them for good.
    pub result_ttl: Duration,
    /// Largest `ttl_seconds` an async job may ask for (default 7 days).
    pub max_job_ttl: Duration,
    /// Messages waiting in a model's queue beyond which new work is refused with 429.
    pub max_queue_depth: u64,
    /// Unfinished sync and async jobs one tenant may have; past it its submissions get 429.
    /// Soft: concurrent submissions may overshoot it by their number. 0: no per-tenant bound.
    pub max_tenant_active: u64,
    /// The `Retry-After` given with a 429.
    pub retry_after: Duration,
    /// Deadline of each broker, Redis and Postgres call made while answering a request: past
    /// it the request fails with 503 instead of waiting on a hung dependency (default 3 s).
    pub store_timeout: Duration,
    /// `Required`: every `/v1` request needs a key (static or from Postgres).
    pub auth: AuthMode,
    /// Static Bearer API keys and the tenant each stands for (`--api-keys`); any makes
    /// authentication required. Keys made with `scorer keys` live in Postgres instead.
    pub api_keys: HashMap<String, String>,
    /// How long a key looked up in Postgres is trusted without asking again: a revoked key keeps
    /// working at most this long on an API process that saw it (default 10 s).
    pub key_cache_ttl: Duration,
    /// `/ready` needs a worker heartbeat at most this old (default 3 s: three of a worker's
    /// default 1 s heartbeats).
    pub worker_liveness: Duration,
    pub webhook_attempts: u32,
    pub webhook_backoff: Duration,
    pub batches: BatchConfig,
    /// Steering jobs that share a prefix to one worker.
    pub locality: LocalityConfig,
    /// `--served-model-name` (repeatable): the names requests may use, the first being the id
    /// `/v1/models` lists; empty: the model's own id. `default` is always accepted.
    pub served_model_names: Vec<String>,
    /// `--accept-any-model-name`: serve a request whatever model it names, and echo the name.
    pub accept_any_model_name: bool,
}

/// Limits of `POST /v1/batches`.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Bytes of one uploaded JSONL file (default 1 GiB; it is streamed, never held whole).
    pub max_upload_bytes: usize,
    /// Batch lines are published only while the model's queue holds fewer messages than this
    /// (default 5,000, half the default queue bound), so a large upload waits for the workers
    /// instead of filling the queue and turning sync and async callers away with 429.
    pub queue_high_water: u64,
    /// Longest `completion_window` accepted (default 7 days).
    pub max_completion_window: Duration,
    /// How often the API moves batches whose jobs have finished (`completed`, `cancelled`) or
    /// whose window has passed (`expired`); a `GET` shows what is stored (default 1 s).
    pub sweep_interval: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_upload_bytes: 1 << 30,
            queue_high_water: 5_000,
            max_completion_window: Duration::from_secs(7 * 24 * 3600),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl ServiceConfig {
    /// Whether requests must carry a key: asked for, or implied by static keys.
    pub fn auth_required(&self) -> bool {
        self.auth == AuthMode::Required || !self.api_keys.is_empty()
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            stores: StoreUrls::default(),
            namespace: "scorer".to_string(),
            queue_type: scorer_jobs::QueueType::Classic,
            queue_delivery_limit: scorer_jobs::DEFAULT_DELIVERY_LIMIT,
            max_body_bytes: 4 << 20,
            http: HttpLimits::default(),
            sync_timeout: Duration::from_secs(60),
            max_sync_timeout: Duration::from_secs(300),
            result_ttl: Duration::from_secs(24 * 3600),
            max_job_ttl: Duration::from_secs(7 * 24 * 3600),
            max_queue_depth: 10_000,
            max_tenant_active: 1_000,
            retry_after: Duration::from_secs(1),
            store_timeout: Duration::from_secs(3),
            auth: AuthMode::Off,
            api_keys: HashMap::new(),
            key_cache_ttl: Duration::from_secs(10),
            worker_liveness: Duration::from_secs(3),
            webhook_attempts: 5,
            webhook_backoff: Duration::from_millis(500),
            batches: BatchConfig::default(),
            locality: LocalityConfig::default(),
            served_model_names: Vec::new(),
            accept_any_model_name: false,
        }
    }
}
