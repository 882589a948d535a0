//! Callers and their tenants: a Bearer API key names the tenant; with no keys configured every
//! caller is tenant `default`.

use axum::http::{HeaderMap, header};

use crate::{ApiError, AppState};

pub const DEFAULT_TENANT: &str = "default";

pub fn tenant(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let keys = &state.config.api_keys;
    if keys.is_empty() {
        return Ok(DEFAULT_TENANT.to_string());
    }
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("missing API key: send Authorization: Bearer <key>".into())
        })?;
    keys.get(key.trim())
        .cloned()
        .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
}
