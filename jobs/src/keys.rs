//! API keys in Postgres (table `api_keys`, migration 0003). A key is shown once, when it is
//! created; only its SHA-256 is stored, and a request's key is found by hashing what it sent.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

use crate::StoreError;

const SERVICE: &str = "postgres";

/// What every key starts with, so a leaked one is easy to recognise (and to grep for).
pub const KEY_PREFIX: &str = "sk-scorer-";

/// Characters of a key kept in clear (`prefix`) to tell keys apart in listings.
const SHOWN: usize = KEY_PREFIX.len() + 8;

/// A key's row; never holds the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant: String,
    pub name: Option<String>,
    /// The first characters of the key.
    pub prefix: String,
    /// Requests per minute this key may make (per API process); `None`: unlimited.
    pub rate_limit_per_minute: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The SHA-256 of a key, as stored.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::unavailable(SERVICE, e)
}

fn from_row(row: &PgRow) -> Result<ApiKey, StoreError> {
    let bad = |e: sqlx::Error| StoreError::corrupt("api_keys row", e);
    let limit: Option<i32> = row.try_get("rate_limit_per_minute").map_err(bad)?;
    Ok(ApiKey {
        id: row.try_get("id").map_err(bad)?,
        tenant: row.try_get("tenant").map_err(bad)?,
        name: row.try_get("name").map_err(bad)?,
        prefix: row.try_get("prefix").map_err(bad)?,
        rate_limit_per_minute: limit.map(|n| n.max(1) as u32),
        created_at: row.try_get("created_at").map_err(bad)?,
        revoked_at: row.try_get("revoked_at").map_err(bad)?,
    })
}

const COLUMNS: &str = "id, tenant, name, prefix, rate_limit_per_minute, created_at, revoked_at";

/// Keys over a Postgres pool (the audit store's: `PostgresAuditStore::pool`).
#[derive(Clone)]
pub struct PostgresKeyStore {
    pool: PgPool,
}

impl PostgresKeyStore {
    pub fn new(pool: PgPool) -> Self {
        PostgresKeyStore { pool }
    }

    /// Makes a key for `tenant`; returns its row and the key itself (shown once).
    pub async fn create(
        &self,
        tenant: &str,
        name: Option<&str>,
        rate_limit_per_minute: Option<u32>,
    ) -> Result<(ApiKey, String), StoreError> {
        if tenant.is_empty() {
            return Err(StoreError::corrupt("tenant", "must not be empty"));
        }
        // Two v4 UUIDs: 244 bits from the OS generator.
        let secret = format!(
            "{KEY_PREFIX}{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        );
        let limit = rate_limit_per_minute
            .map(|n| i32::try_from(n.max(1)).unwrap_or(i32::MAX))
            .filter(|n| *n > 0);
        let sql = format!(
            "INSERT INTO api_keys (id, tenant, name, prefix, key_hash, rate_limit_per_minute, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::now_v7())
            .bind(tenant)
            .bind(name)
            .bind(&secret[..SHOWN])
            .bind(hash_key(&secret))
            .bind(limit)
            .bind(Utc::now())
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok((from_row(&row)?, secret))
    }

    /// The live (not revoked) key whose hash this is.
    pub async fn find_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL");
        sqlx::query(&sql)
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|row| from_row(&row))
            .transpose()
    }

    /// Keys, oldest first; one tenant's or all; revoked ones only when asked.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        include_revoked: bool,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM api_keys WHERE ($1::text IS NULL OR tenant = $1) \
             AND ($2 OR revoked_at IS NULL) ORDER BY created_at, id"
        );
        sqlx::query(&sql)
            .bind(tenant)
            .bind(include_revoked)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(from_row)
            .collect()
    }

    /// Revokes a key by id; `None` when there is no such live key.
    pub async fn revoke(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
             RETURNING {COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(id)
            .bind(Utc::now())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|row| from_row(&row))
            .transpose()
    }
}
