//! The one place where failures become HTTP answers: a status and an OpenAI-style body
//! `{"object":"error","message":...,"type":...,"param":null,"code":<status>}`.
//!
//! Errors our handlers return are [`ApiError`]s. Those made before a handler runs (axum's
//! extractor rejections: a bad query string, path or form; an unknown route; a wrong method) are
//! plain text from axum; [`json_errors`] rewrites every such answer into the same body, so a
//! client parses one error shape whatever refused it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scorer_jobs::StoreError;
use scorer_protocol::ValidationError;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is invalid as written (SGLang's messages for /v1/score).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid API key.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key may not touch this resource.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 409: idempotency key reused with another body; cancelling a job that already ran.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over `--max-body-bytes` (items and tokens over their limits are 400).
    #[error("{0}")]
    TooLarge(String),
    /// 429: the model's queue is over its bound.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Internal(String),
    /// 503: a dependency (broker, Redis, Postgres) is down.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the sync deadline passed; the job goes on and can be fetched by id.
    #[error("{message}")]
    Timeout { message: String, job_id: Uuid },
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `"error"`.
    pub object: &'static str,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: u16,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// The error `type` answered with each status.
fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        // SGLang's name for validation failures.
        400 | 422 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        405 => "MethodNotAllowedError",
        408 => "RequestTimeoutError",
        409 => "ConflictError",
        413 => "RequestTooLargeError",
        415 => "UnsupportedMediaTypeError",
        429 => "RateLimitError",
        503 => "ServiceUnavailableError",
        504 => "TimeoutError",
        s if s >= 500 => "InternalServerError",
        _ => "BadRequestError",
    }
}

/// The error body for `status` and `message`, as a response.
pub(crate) fn error_response(status: StatusCode, message: String) -> Response {
    let body = ErrorBody {
        object: "error",
        message,
        kind: kind_of(status),
        param: None,
        code: status.as_u16(),
    };
    (status, axum::Json(body)).into_response()
}

/// The longest plain-text error body rewritten (axum's rejections are a line or two).
const REWRITE_LIMIT: usize = 64 << 10;

/// Middleware: an error answer that is not JSON (an extractor rejection, the router's 404 or
/// 405) becomes the JSON error body with the same status, its text as the message. Headers such
/// as `Allow` and `Retry-After` are kept.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, REWRITE_LIMIT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text
    };
    metrics::counter!("scorer_http_errors_total", "status" => status.as_str().to_string())
        .increment(1);
    let rewritten = error_response(status, message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let (new_parts, body) = rewritten.into_parts();
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, body)
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::BadRequest(e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A misconfigured broker is not the caller's fault either: the operator must act.
            StoreError::Unavailable { .. } | StoreError::Misconfigured { .. } => {
                ApiError::Unavailable(e.to_string())
            }
            StoreError::Corrupt { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, error = %self, "request failed");
        }
        metrics::counter!("scorer_http_errors_total", "status" => status.as_str().to_string())
            .increment(1);
        let mut response = error_response(status, self.to_string());
        let headers = response.headers_mut();
        match &self {
            ApiError::Overloaded {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Timeout { job_id, .. } => {
                if let Ok(v) = HeaderValue::from_str(&format!("/v1/score/jobs/{job_id}")) {
                    headers.insert(header::LOCATION, v);
                }
                if let Ok(v) = HeaderValue::from_str(&job_id.to_string()) {
                    headers.insert("x-job-id", v);
                }
            }
            _ => {}
        }
        response
    }
}
