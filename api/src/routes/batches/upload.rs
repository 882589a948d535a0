//! `POST /v1/batches`: the upload, as a raw JSONL body or a multipart form whose `file` part is
//! the JSONL (options may come as form fields before it). The lines themselves are read by
//! [`Ingest`].

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::ingest::Ingest;
use super::wire::BatchObject;
use crate::{ApiError, AppState, auth};

const DEFAULT_WINDOW: &str = "24h";

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// How long the batch may take, as `<hours>h` (default `24h`); lines not started by then
    /// expire.
    pub completion_window: Option<String>,
    /// A JSON object kept with the batch and shown on it.
    pub metadata: Option<String>,
}

pub(super) fn parse_window(
    state: &AppState,
    window: Option<&str>,
) -> Result<(String, Duration), ApiError> {
    let window = window.unwrap_or(DEFAULT_WINDOW);
    let max = state.config.batches.max_completion_window;
    let bad = || {
        ApiError::BadRequest(format!(
            "completion_window must be a whole number of hours like \"24h\", at most {}h; got {window:?}",
            max.as_secs() / 3600
        ))
    };
    let hours: u64 = window
        .strip_suffix('h')
        .and_then(|h| h.parse().ok())
        .ok_or_else(bad)?;
    let span = Duration::from_secs(hours.saturating_mul(3600));
    if hours == 0 || span > max {
        return Err(bad());
    }
    Ok((window.to_string(), span))
}

pub(super) fn parse_metadata(raw: Option<&str>) -> Result<Option<Value>, ApiError> {
    raw.map(|m| match serde_json::from_str::<Value>(m) {
        Ok(v @ Value::Object(_)) => match scorer_protocol::refuse_nul_in_json(&v) {
            Ok(()) => Ok(v),
            Err(e) => Err(ApiError::BadRequest(format!("metadata: {}", e.message))),
        },
        _ => Err(ApiError::BadRequest(
            "metadata must be a JSON object".into(),
        )),
    })
    .transpose()
}

/// Create a batch from a JSONL upload.
///
/// The body is the JSONL file itself, or a `multipart/form-data` form whose `file` part is.
/// Each line is `{"custom_id": ..., "body": <score request>}`, or the OpenAI form
/// `{"custom_id": ..., "method": "POST", "url": "/v1/score", "body": ...}`. Lines that do not
/// parse or validate, and repeated custom_ids, go to the error file; the batch fails only when
/// no line is valid. Answers once the whole file is read, with the batch `in_progress` (or
/// `failed`). While the model's queue is over its high-water mark the upload waits for it.
#[utoipa::path(
    post, path = "/v1/batches", tag = "batches",
    params(CreateParams),
    request_body(content = String, content_type = "application/jsonl",
        description = "JSONL lines {custom_id, body} or {custom_id, method, url, body}"),
    responses(
        (status = 200, description = "The batch, read and queued", body = BatchObject),
        (status = 400, description = "Bad parameters or not an upload", body = crate::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::ErrorBody),
        (status = 413, description = "Upload over its size limit", body = crate::ErrorBody),
        (status = 503, description = "A dependency is down", body = crate::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<CreateParams>,
    req: Request,
) -> Result<Json<BatchObject>, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    let mut window = params.completion_window;
    let mut metadata = params.metadata;
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let mut ingest =
            Ingest::start(&state, tenant, window.as_deref(), metadata.as_deref()).await?;
        let mut body = req.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // The body stopped (client gone, read deadline): the batch fails rather than
                // stay `validating` with some of its lines published.
                Err(e) => return Err(ingest.fail(read_error(&state, e)).await),
            };
            if !ingest.feed(&chunk).await? {
                break;
            }
        }
        return ingest.end().await.map(Json);
    }
    let mut form = Multipart::from_request(req, &state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(&state, e))?
    {
        match field.name() {
            Some("file") => {
                let mut ingest =
                    Ingest::start(&state, tenant, window.as_deref(), metadata.as_deref()).await?;
                loop {
                    let chunk = match field.chunk().await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => break,
                        Err(e) => return Err(ingest.fail(multipart_error(&state, e)).await),
                    };
                    if !ingest.feed(&chunk).await? {
                        break;
                    }
                }
                return ingest.end().await.map(Json);
            }
            // Options may come as form fields, before the file.
            Some("completion_window") => {
                window = Some(field.text().await.map_err(|e| multipart_error(&state, e))?);
            }
            Some("metadata") => {
                metadata = Some(field.text().await.map_err(|e| multipart_error(&state, e))?);
            }
            _ => {}
        }
    }
    Err(ApiError::BadRequest(
        "the multipart form has no `file` part holding the JSONL".into(),
    ))
}

pub(super) fn too_large(state: &AppState) -> ApiError {
    ApiError::TooLarge(format!(
        "the upload is larger than the limit of {} bytes",
        state.config.batches.max_upload_bytes
    ))
}

fn read_error(state: &AppState, e: axum::Error) -> ApiError {
    // The body limit surfaces as a read error; anything else is the client going away.
    if e.to_string().contains("length limit") {
        too_large(state)
    } else {
        ApiError::BadRequest(format!("could not read the upload: {e}"))
    }
}

fn multipart_error(state: &AppState, e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(state)
    } else {
        ApiError::BadRequest(e.body_text())
    }
}
