//! Callers and their tenants. With authentication off every caller is tenant `default`. With it
//! on, `Authorization: Bearer <key>` names the tenant: a static key (`--api-keys`) or a key made
//! with `scorer keys create`, found in Postgres by its SHA-256 and trusted for `key_cache_ttl`.
//! A key may carry a rate limit (requests per minute, per API process).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use scorer_jobs::PostgresKeyStore;
use scorer_jobs::keys::{ApiKey, hash_key};
use uuid::Uuid;

use crate::{ApiError, AppState, ServiceConfig, deadline};

pub const DEFAULT_TENANT: &str = "default";

/// Lookups remembered at most; past it the cache starts over (unknown keys sent in bulk must
/// not grow memory).
const CACHE_ENTRIES: usize = 10_000;

/// A token bucket: `per_minute` tokens a minute, holding at most `per_minute`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Authenticator {
    required: bool,
    static_keys: HashMap<String, String>,
    store: Option<PostgresKeyStore>,
    ttl: Duration,
    /// Key hash → the live key (or `None`: no such live key) and when it was looked up.
    cache: Mutex<HashMap<String, (Option<ApiKey>, Instant)>>,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Authenticator {
    pub fn new(config: &ServiceConfig, store: Option<PostgresKeyStore>) -> Self {
        Authenticator {
            required: config.auth_required(),
            static_keys: config.api_keys.clone(),
            store,
            ttl: config.key_cache_ttl,
            cache: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    async fn lookup(&self, key: &str, limit: Duration) -> Result<Option<ApiKey>, ApiError> {
        let hash = hash_key(key);
        if let Some((found, at)) = lock(&self.cache).get(&hash)
            && at.elapsed() < self.ttl
        {
            return Ok(found.clone());
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let found = deadline(limit, "postgres", store.find_by_hash(&hash)).await?;
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(hash, (found.clone(), Instant::now()));
        Ok(found)
    }

    /// Takes one request from the key's bucket, or says how long until one is there.
    fn take(&self, key: &ApiKey) -> Result<(), ApiError> {
        let Some(per_minute) = key.rate_limit_per_minute else {
            return Ok(());
        };
        let capacity = f64::from(per_minute.max(1));
        let per_sec = capacity / 60.0;
        let mut buckets = lock(&self.buckets);
        let now = Instant::now();
        let bucket = buckets.entry(key.id).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_sec).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / per_sec).ceil().max(1.0) as u64;
        metrics::counter!("scorer_rate_limited_total").increment(1);
        Err(ApiError::Overloaded {
            message: format!(
                "rate limit of {per_minute} requests per minute for this API key reached; \
                 retry after {wait} s"
            ),
            retry_after_secs: wait,
        })
    }
}

/// The caller's tenant (401 without a valid key when keys are required; 429 over the key's rate
/// limit; 503 when the key cannot be checked because Postgres does not answer).
pub async fn tenant(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let auth = &state.auth;
    if !auth.required {
        return Ok(DEFAULT_TENANT.to_string());
    }
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("missing API key: send Authorization: Bearer <key>".into())
        })?;
    if let Some(tenant) = auth.static_keys.get(key) {
        return Ok(tenant.clone());
    }
    let found = auth
        .lookup(key, state.config.store_timeout)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid or revoked API key".into()))?;
    auth.take(&found)?;
    Ok(found.tenant)
}
