//! The output and error files, streamed a page at a time. A line whose stored job cannot be
//! read back is written to the error file (the store hands it over as failed), so one bad row
//! never aborts a download or loses the valid lines around it.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use scorer_jobs::{LineError, LineResult};
use scorer_protocol::job::JobStatus;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{call, find};
use crate::{ApiError, AppState};

/// Lines per page when streaming the output and error files.
const PAGE_LINES: usize = 500;

/// Stream the output file: one JSONL line per succeeded line, with its custom_id, in custom_id
/// order; lines still running appear once they finish.
#[utoipa::path(
    get, path = "/v1/batches/{id}/output", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "JSONL: {id, custom_id, response: {status_code, request_id, body}, error: null}", content_type = "application/jsonl", body = String),
        (status = 404, description = "No such batch", body = crate::ErrorBody),
    )
)]
pub async fn output(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let batch = find(&state, &headers, &id).await?;
    Ok(jsonl(stream_results(state, batch.id, true, None)))
}

/// Stream the error file: lines rejected at upload (in file order, with their line number),
/// then lines that failed, were cancelled or expired, or whose stored result could not be read
/// back (in custom_id order).
#[utoipa::path(
    get, path = "/v1/batches/{id}/errors", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "JSONL: {id, custom_id, line?, response: null, error: {code, message}}", content_type = "application/jsonl", body = String),
        (status = 404, description = "No such batch", body = crate::ErrorBody),
    )
)]
pub async fn errors(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let batch = find(&state, &headers, &id).await?;
    let rejected = futures::stream::unfold(Some(0i64), {
        let state = state.clone();
        let id = batch.id;
        move |after| {
            let state = state.clone();
            async move {
                let after = after?;
                let page = state.stores.batches.line_errors(id, after, PAGE_LINES);
                match call(&state, "batches", page).await {
                    Ok(page) if page.is_empty() => None,
                    Ok(page) => {
                        let next = page.last().map(|e| e.line);
                        let mut out = Vec::new();
                        for e in &page {
                            push_line(&mut out, &rejected_line(e));
                        }
                        Some((Ok(Bytes::from(out)), next))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e)), None)),
                }
            }
        }
    });
    let failed = stream_results(state, batch.id, false, None);
    Ok(jsonl(rejected.chain(failed)))
}

type Chunks = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Pages through a batch's finished lines (succeeded, or not), one chunk per page.
fn stream_results(state: AppState, id: Uuid, succeeded: bool, start: Option<String>) -> Chunks {
    futures::stream::unfold(Some(start), move |after| {
        let state = state.clone();
        async move {
            let after = after?;
            let page = state
                .stores
                .batches
                .results(id, succeeded, after.as_deref(), PAGE_LINES);
            match call(&state, "batches", page).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = page.last().map(|r| r.custom_id.clone());
                    let mut out = Vec::new();
                    for r in &page {
                        push_line(&mut out, &result_line(r));
                    }
                    Some((Ok(Bytes::from(out)), Some(next)))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        }
    })
    .boxed()
}

fn push_line(out: &mut Vec<u8>, line: &Value) {
    // Serializing a Value cannot fail.
    let _ = serde_json::to_writer(&mut *out, line);
    out.push(b'\n');
}

fn jsonl(
    stream: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    response
}

fn rejected_line(e: &LineError) -> Value {
    json!({
        "id": null,
        "custom_id": e.custom_id,
        "line": e.line,
        "response": null,
        "error": {"code": "invalid_request", "message": e.message},
    })
}

/// A finished line in the OpenAI batch output shape; a rerank line's body in its endpoint's shape.
fn result_line(r: &LineResult) -> Value {
    let job = &r.record;
    let id = format!("batch_req_{}", job.id.simple());
    let outcome = match (&job.result, job.status) {
        (Some(body), JobStatus::Succeeded) => match crate::routes::rerank::render_record(job) {
            Some(rendered) => rendered.map_err(|message| ("request_failed", message)),
            None => Ok(serde_json::to_value(body).unwrap_or(Value::Null)),
        },
        _ => {
            let code = match job.status {
                JobStatus::Cancelled => "batch_cancelled",
                JobStatus::Expired => "batch_expired",
                _ => "request_failed",
            };
            let message = job
                .error
                .clone()
                .unwrap_or_else(|| format!("the request was {}", job.status.as_str()));
            Err((code, message))
        }
    };
    match outcome {
        Ok(body) => json!({
            "id": id,
            "custom_id": r.custom_id,
            "response": {"status_code": 200, "request_id": job.id, "body": body},
            "error": null,
        }),
        Err((code, message)) => json!({
            "id": id,
            "custom_id": r.custom_id,
            "response": null,
            "error": {"code": code, "message": message},
        }),
    }
}
