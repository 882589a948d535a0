//! Callers and their tenants. With authentication off every caller is tenant `default`. With it
//! on, `Authorization: Bearer <key>` names the tenant: a static key (`--api-keys`) or a key made
//! with `scorer keys create`, found in Postgres by its SHA-256 and trusted for `key_cache_ttl`.
//! A key may carry a rate limit (requests per minute, per API process).
//!
//! Static keys are compared in constant time: the presented key's SHA-256 is compared with every
//! static key's SHA-256, all of them, byte by byte without an early exit, so the time taken says
//! nothing about how much of a key was right (a `HashMap` lookup on the key itself would). The
//! scheme (`Bearer`) is case-insensitive, as RFC 9110 says of every authentication scheme.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use scorer_jobs::PostgresKeyStore;
use scorer_jobs::keys::{ApiKey, hash_key};
use sha2::{Digest, Sha256};
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
    /// SHA-256 of each static key, and its tenant.
    static_keys: Vec<([u8; 32], String)>,
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
            static_keys: config
                .api_keys
                .iter()
                .map(|(key, tenant)| (digest(key), tenant.clone()))
                .collect(),
            store,
            ttl: config.key_cache_ttl,
            cache: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant of a static key, looked at in constant time (every key is compared).
    fn static_tenant(&self, key: &str) -> Option<&str> {
        let presented = digest(key);
        let mut found = None;
        for (candidate, tenant) in &self.static_keys {
            if constant_time_eq(&presented, candidate) {
                found = Some(tenant.as_str());
            }
        }
        found
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
        .and_then(bearer_key)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing API key: send Authorization: Bearer <key>".into())
        })?;
    if let Some(tenant) = auth.static_tenant(key) {
        return Ok(tenant.to_string());
    }
    let found = auth
        .lookup(key, state.config.store_timeout)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid or revoked API key".into()))?;
    auth.take(&found)?;
    Ok(found.tenant)
}

/// The key of an `Authorization: Bearer <key>` value; the scheme in any case.
fn bearer_key(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim_start().split_once([' ', '\t'])?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality of two digests that looks at every byte whatever the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer k1", "bearer k1", "BEARER  k1 ", "bEaReR\tk1"] {
            assert_eq!(bearer_key(v), Some("k1"), "{v:?}");
        }
        for v in ["Bearer", "Bearer ", "Basic k1", "Bearerk1", "k1"] {
            assert_eq!(bearer_key(v), None, "{v:?}");
        }
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = digest("secret");
        assert!(constant_time_eq(&a, &digest("secret")));
        assert!(!constant_time_eq(&a, &digest("secreT")));
    }
}
