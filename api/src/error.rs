//! The one place where failures become HTTP answers: a status and an OpenAI-style body
//! `{"object":"error","message":...,"type":...,"param":null,"code":<status>}`.

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
    /// 413: body, items or tokens over the configured limits.
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

    fn kind(&self) -> &'static str {
        match self {
            // SGLang's name for validation failures.
            ApiError::BadRequest(_) => "BadRequestError",
            ApiError::Unauthorized(_) => "AuthenticationError",
            ApiError::Forbidden(_) => "PermissionDeniedError",
            ApiError::NotFound(_) => "NotFoundError",
            ApiError::Conflict(_) => "ConflictError",
            ApiError::TooLarge(_) => "RequestTooLargeError",
            ApiError::Overloaded { .. } => "RateLimitError",
            ApiError::Internal(_) => "InternalServerError",
            ApiError::Unavailable(_) => "ServiceUnavailableError",
            ApiError::Timeout { .. } => "TimeoutError",
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::BadRequest(e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
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
        let body = ErrorBody {
            object: "error",
            message: self.to_string(),
            kind: self.kind(),
            param: None,
            code: status.as_u16(),
        };
        let mut response = (status, axum::Json(body)).into_response();
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
