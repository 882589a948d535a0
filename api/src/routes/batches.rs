//! Batches in the shape of the OpenAI Batch API: upload a JSONL file of scoring requests, poll
//! the batch, download the output and error files.
//!
//! The upload is read as a stream and handled a chunk of lines at a time: each line is validated
//! and tokenized like a `/v1/score/jobs` body, the chunk's jobs are recorded (one audit row per
//! line) and published at the bulk priority, and bad lines are recorded for the error file. So a
//! file of any length needs memory for one chunk only. Progress is counted from the jobs.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use scorer_jobs::{BatchCounts, BatchLine, BatchRecord, BatchStatus, LineError, LineResult};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus, now_millis};
use scorer_protocol::{ScoreJob, ScoreRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::submit::{check_model, envelope, prepare, publish};
use crate::{ApiError, AppState, auth, bounded, deadline};

/// The only endpoint a line may name.
pub const ENDPOINT: &str = "/v1/score";
/// Lines validated, recorded and published together.
const CHUNK_LINES: usize = 256;
/// Publishes in flight at once within a chunk (each waits for its broker confirm).
const PUBLISH_CONCURRENCY: usize = 32;
/// Lines per page when streaming the output and error files.
const PAGE_LINES: usize = 500;
const DEFAULT_WINDOW: &str = "24h";
/// How often a paused upload looks at the queue again.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(100);

/// A batch as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchObject {
    pub id: Uuid,
    /// Always `"batch"`.
    pub object: String,
    /// Always `"/v1/score"`.
    pub endpoint: String,
    pub model: String,
    /// `validating`, `in_progress`, `finalizing`, `completed`, `failed`, `cancelling`,
    /// `cancelled` or `expired`.
    pub status: String,
    /// Why the batch failed as a whole (`{object: "list", data: [{code, message}]}`), or null.
    #[schema(value_type = Object)]
    pub errors: Option<Value>,
    pub completion_window: String,
    /// Where the output file (succeeded lines) is streamed from.
    pub output_url: String,
    /// Where the error file (rejected, failed, cancelled and expired lines) is streamed from.
    pub error_url: String,
    /// Unix seconds, like every timestamp here.
    pub created_at: i64,
    pub expires_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
}

/// `total` counts every line of the file; `completed + failed == total` once the batch is done
/// (lines rejected at upload count as failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

impl From<BatchCounts> for RequestCounts {
    fn from(c: BatchCounts) -> Self {
        RequestCounts {
            total: c.total(),
            completed: c.succeeded,
            failed: c.failed + c.invalid,
        }
    }
}

/// A page of batches, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchList {
    /// Always `"list"`.
    pub object: String,
    pub data: Vec<BatchObject>,
    pub first_id: Option<Uuid>,
    pub last_id: Option<Uuid>,
    pub has_more: bool,
}

fn secs(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn object(b: &BatchRecord, counts: BatchCounts) -> BatchObject {
    BatchObject {
        id: b.id,
        object: "batch".into(),
        endpoint: ENDPOINT.into(),
        model: b.model.clone(),
        status: b.status.as_str().into(),
        errors: b.error.as_ref().map(|message| {
            json!({"object": "list", "data": [{"code": "batch_failed", "message": message}]})
        }),
        completion_window: b.completion_window.clone(),
        output_url: format!("/v1/batches/{}/output", b.id),
        error_url: format!("/v1/batches/{}/errors", b.id),
        created_at: secs(b.created_at),
        expires_at: secs(b.expires_at),
        in_progress_at: b.in_progress_at.map(secs),
        finalizing_at: b.finalizing_at.map(secs),
        completed_at: b.completed_at.map(secs),
        failed_at: b.failed_at.map(secs),
        expired_at: b.expired_at.map(secs),
        cancelling_at: b.cancelling_at.map(secs),
        cancelled_at: b.cancelled_at.map(secs),
        request_counts: counts.into(),
        metadata: b.metadata.clone(),
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// How long the batch may take, as `<hours>h` (default `24h`); lines not started by then
    /// expire.
    pub completion_window: Option<String>,
    /// A JSON object kept with the batch and shown on it.
    pub metadata: Option<String>,
}

fn parse_window(state: &AppState, window: Option<&str>) -> Result<(String, Duration), ApiError> {
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

fn parse_metadata(raw: Option<&str>) -> Result<Option<Value>, ApiError> {
    raw.map(|m| match serde_json::from_str::<Value>(m) {
        Ok(v @ Value::Object(_)) => Ok(v),
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
            let chunk = chunk.map_err(|e| read_error(&state, e))?;
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
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(&state, e))?
                {
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

fn too_large(state: &AppState) -> ApiError {
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

/// One line of the input file.
#[derive(Deserialize)]
struct InputLine {
    custom_id: Value,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
    body: Option<Value>,
}

/// A line that passed validation, waiting for its chunk to be recorded and published.
struct Valid {
    line: i64,
    job: ScoreJob,
}

/// The state of one upload being read.
struct Ingest<'a> {
    state: &'a AppState,
    batch: BatchRecord,
    /// Bytes of a line not yet ended by a newline.
    partial: Vec<u8>,
    /// The current line is longer than a request body may be: skip to its end.
    overlong: bool,
    line: i64,
    bytes: usize,
    lines: Vec<BatchLine>,
    valid: Vec<Valid>,
    errors: Vec<LineError>,
    accepted: u64,
    /// Set when the batch was cancelled during the upload: stop reading.
    stopped: bool,
}

impl<'a> Ingest<'a> {
    async fn start(
        state: &'a AppState,
        tenant: String,
        window: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<Ingest<'a>, ApiError> {
        let (window, span) = parse_window(state, window)?;
        let metadata = parse_metadata(metadata)?;
        let now = now_millis();
        let batch = BatchRecord {
            id: Uuid::now_v7(),
            tenant,
            model: state.backend.model_id().to_string(),
            status: BatchStatus::Validating,
            completion_window: window,
            metadata,
            error: None,
            created_at: now,
            expires_at: now + chrono::Duration::seconds(span.as_secs() as i64),
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
        };
        deadline(
            state.config.store_timeout,
            "batches",
            state.stores.batches.create(&batch),
        )
        .await?;
        metrics::counter!("scorer_batches_created_total").increment(1);
        Ok(Ingest {
            state,
            batch,
            partial: Vec::new(),
            overlong: false,
            line: 0,
            bytes: 0,
            lines: Vec::new(),
            valid: Vec::new(),
            errors: Vec::new(),
            accepted: 0,
            stopped: false,
        })
    }

    /// Takes the next piece of the upload; `false` once reading should stop.
    async fn feed(&mut self, chunk: &[u8]) -> Result<bool, ApiError> {
        self.bytes += chunk.len();
        if self.bytes > self.state.config.batches.max_upload_bytes {
            self.abort(too_large(self.state).to_string()).await;
            return Err(too_large(self.state));
        }
        let max_line = self.state.config.limits.max_body_bytes;
        let mut rest = chunk;
        while !rest.is_empty() {
            let (piece, ended) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = &rest[piece.len() + usize::from(ended)..];
            if !self.overlong {
                if self.partial.len() + piece.len() > max_line {
                    self.overlong = true;
                    self.partial.clear();
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            if ended {
                self.end_line().await?;
                if self.stopped {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    async fn end_line(&mut self) -> Result<(), ApiError> {
        self.line += 1;
        let text = std::mem::take(&mut self.partial);
        if std::mem::take(&mut self.overlong) {
            let max = self.state.config.limits.max_body_bytes;
            self.reject(
                None,
                format!("the line is longer than the limit of {max} bytes"),
            );
        } else if !text.iter().all(u8::is_ascii_whitespace) {
            self.check(&text).await;
        }
        if self.valid.len() >= CHUNK_LINES || self.errors.len() >= CHUNK_LINES {
            self.flush().await?;
        }
        Ok(())
    }

    fn reject(&mut self, custom_id: Option<String>, message: String) {
        self.errors.push(LineError {
            line: self.line,
            custom_id,
            message,
        });
    }

    /// Validates and tokenizes one line; it joins the chunk's valid lines or its errors.
    async fn check(&mut self, text: &[u8]) {
        let parsed: InputLine = match serde_json::from_slice(text) {
            Ok(p) => p,
            Err(e) => {
                // Name the custom_id if the line has one, even though the rest is wrong.
                let custom_id = serde_json::from_slice::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("custom_id")?.as_str().map(str::to_string));
                return self.reject(
                    custom_id,
                    format!("the line is not a valid batch request: {e}"),
                );
            }
        };
        let custom_id = match parsed.custom_id {
            Value::String(s) if !s.is_empty() => s,
            _ => return self.reject(None, "custom_id must be a non-empty string".into()),
        };
        if let Some(m) = parsed.method.as_deref()
            && m != "POST"
        {
            return self.reject(
                Some(custom_id),
                format!("method must be \"POST\", got {m:?}"),
            );
        }
        if let Some(u) = parsed.url.as_deref()
            && u != ENDPOINT
        {
            return self.reject(
                Some(custom_id),
                format!("url must be \"{ENDPOINT}\", got {u:?}"),
            );
        }
        let Some(body) = parsed.body else {
            return self.reject(Some(custom_id), "the line has no `body`".into());
        };
        let req: ScoreRequest = match serde_json::from_value(body.clone()) {
            Ok(r) => r,
            Err(e) => return self.reject(Some(custom_id), format!("invalid request: {e}")),
        };
        if let Err(e) = check_model(self.state, &req) {
            return self.reject(Some(custom_id), e.to_string());
        }
        let job = match prepare(self.state, req).await {
            Ok(job) => job,
            Err(e) => return self.reject(Some(custom_id), e.to_string()),
        };
        let b = &self.batch;
        let mut record = JobRecord::queued(
            Uuid::now_v7(),
            b.tenant.clone(),
            JobKind::Async,
            b.model.clone(),
            JobPriority::Bulk,
        );
        record.prompt_tokens = Some(job.prompt_tokens() as i64);
        record.expires_at = Some(b.expires_at);
        record.request = Some(body);
        self.lines.push(BatchLine { custom_id, record });
        self.valid.push(Valid {
            line: self.line,
            job,
        });
    }

    fn limit(&self) -> std::time::Duration {
        self.state.config.store_timeout
    }

    /// Records and publishes the chunk's valid lines, records its bad ones.
    async fn flush(&mut self) -> Result<(), ApiError> {
        let stores = &self.state.stores;
        let lines = std::mem::take(&mut self.lines);
        let valid = std::mem::take(&mut self.valid);
        if !lines.is_empty() {
            self.wait_for_room().await?;
            if self.stopped {
                return Ok(());
            }
            let repeats = match bounded(
                self.limit(),
                "batches",
                stores.batches.add_lines(self.batch.id, &lines),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.abort(e.to_string()).await;
                    return Err(e.into());
                }
            };
            let mut publish = Vec::with_capacity(lines.len());
            let mut repeat = repeats.into_iter().peekable();
            for (i, (l, v)) in lines.into_iter().zip(valid).enumerate() {
                if repeat.next_if_eq(&i).is_some() {
                    self.errors.push(LineError {
                        line: v.line,
                        message: format!(
                            "duplicate custom_id {:?}: it is already used by an earlier line of this batch",
                            l.custom_id
                        ),
                        custom_id: Some(l.custom_id),
                    });
                } else {
                    publish.push(envelope(&l.record, v.job));
                    self.accepted += 1;
                }
            }
            self.publish(publish).await?;
        }
        let errors = std::mem::take(&mut self.errors);
        if let Err(e) = bounded(
            self.limit(),
            "batches",
            stores.batches.add_errors(self.batch.id, &errors),
        )
        .await
        {
            self.abort(e.to_string()).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Publishes a chunk's jobs at the bulk priority. A job the broker refuses is marked failed
    /// (it is never left queued with no message), and the batch stops.
    async fn publish(
        &mut self,
        envelopes: Vec<scorer_protocol::job::JobEnvelope>,
    ) -> Result<(), ApiError> {
        let state = &self.state;
        let published = envelopes.len() as u64;
        let outcomes: Vec<_> = futures::stream::iter(envelopes)
            .map(|env| async move {
                let result =
                    bounded(state.config.store_timeout, "queue", publish(state, &env)).await;
                (env.job_id, result)
            })
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .collect()
            .await;
        let mut first_error = None;
        for (id, result) in outcomes {
            if let Err(e) = result {
                let message = format!("could not be queued: {e}");
                if let Ok(Some(mut record)) =
                    bounded(self.limit(), "audit", self.state.stores.audit.get(id)).await
                {
                    record.status = JobStatus::Failed;
                    record.finished_at = Some(now_millis());
                    record.error = Some(message.clone());
                    let _ = bounded(
                        self.limit(),
                        "audit",
                        self.state.stores.audit.finish(&record),
                    )
                    .await;
                }
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            self.abort(format!("the queue refused lines: {e}")).await;
            return Err(e.into());
        }
        metrics::counter!("scorer_jobs_accepted_total", "kind" => "batch").increment(published);
        Ok(())
    }

    /// Waits while the model's queue is over the high-water mark (bulk work yields to the
    /// callers the queue bound protects); notices a cancel meanwhile.
    async fn wait_for_room(&mut self) -> Result<(), ApiError> {
        let model = self.state.backend.model_id();
        let high_water = self.state.config.batches.queue_high_water;
        loop {
            match bounded(
                self.limit(),
                "batches",
                self.state.stores.batches.get(self.batch.id),
            )
            .await?
            {
                Some(b) if b.status == BatchStatus::Validating => {}
                _ => {
                    self.stopped = true;
                    return Ok(());
                }
            }
            if bounded(self.limit(), "queue", self.state.stores.queue.depth(model)).await?
                < high_water
            {
                return Ok(());
            }
            tokio::time::sleep(BACKPRESSURE_POLL).await;
        }
    }

    /// The upload cannot go on: the batch fails, and its jobs not started are cancelled.
    async fn abort(&mut self, why: impl Into<String>) {
        let stores = &self.state.stores;
        let now = now_millis();
        let failed = stores.batches.transition(
            self.batch.id,
            &[BatchStatus::Validating],
            BatchStatus::Failed,
            now,
            Some(why.into()),
        );
        let _ = bounded(self.limit(), "batches", failed).await;
        let _ = bounded(
            self.limit(),
            "batches",
            stores.batches.cancel_queued(self.batch.id, now),
        )
        .await;
        self.stopped = true;
    }

    /// The whole file is read: the last line (even without a newline), the last chunk, then
    /// `in_progress`, or `failed` when no line was valid.
    async fn end(mut self) -> Result<BatchObject, ApiError> {
        if !self.stopped && (!self.partial.is_empty() || self.overlong) {
            self.end_line().await?;
        }
        if !self.stopped {
            self.flush().await?;
        }
        let stores = &self.state.stores;
        let now = now_millis();
        if self.stopped {
            // Cancelled while uploading: lines published after the cancel took effect must not
            // run either.
            bounded(
                self.limit(),
                "batches",
                stores.batches.cancel_queued(self.batch.id, now),
            )
            .await?;
        } else if self.accepted == 0 {
            let why = if self.line == 0 {
                "the input file has no lines"
            } else {
                "no line of the input file is a valid request (see the error file)"
            };
            stores
                .batches
                .transition(
                    self.batch.id,
                    &[BatchStatus::Validating],
                    BatchStatus::Failed,
                    now,
                    Some(why.into()),
                )
                .await?;
        } else {
            stores
                .batches
                .transition(
                    self.batch.id,
                    &[BatchStatus::Validating],
                    BatchStatus::InProgress,
                    now,
                    None,
                )
                .await?;
        }
        let batch = stores
            .batches
            .get(self.batch.id)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("batch {} vanished", self.batch.id)))?;
        current(self.state, batch).await
    }
}

/// The batch brought up to date from its jobs: `in_progress` with nothing left to run becomes
/// `completed` (through `finalizing`), `cancelling` becomes `cancelled`, and past its window it
/// becomes `expired` with its lines not started cancelled.
async fn current(state: &AppState, mut batch: BatchRecord) -> Result<BatchObject, ApiError> {
    let stores = &state.stores;
    let mut counts = deadline(
        state.config.store_timeout,
        "batches",
        stores.batches.counts(batch.id),
    )
    .await?;
    let now = now_millis();
    if batch.status == BatchStatus::InProgress && now > batch.expires_at {
        deadline(
            state.config.store_timeout,
            "batches",
            stores.batches.cancel_queued(batch.id, now),
        )
        .await?;
        if let Some(b) = stores
            .batches
            .transition(
                batch.id,
                &[BatchStatus::InProgress],
                BatchStatus::Expired,
                now,
                None,
            )
            .await?
        {
            batch = b;
        }
        counts = deadline(
            state.config.store_timeout,
            "batches",
            stores.batches.counts(batch.id),
        )
        .await?;
    }
    if counts.pending() == 0 {
        let moved = match batch.status {
            BatchStatus::InProgress => {
                stores
                    .batches
                    .transition(
                        batch.id,
                        &[BatchStatus::InProgress],
                        BatchStatus::Finalizing,
                        now,
                        None,
                    )
                    .await?;
                stores
                    .batches
                    .transition(
                        batch.id,
                        &[BatchStatus::Finalizing],
                        BatchStatus::Completed,
                        now,
                        None,
                    )
                    .await?
            }
            BatchStatus::Finalizing => {
                stores
                    .batches
                    .transition(
                        batch.id,
                        &[BatchStatus::Finalizing],
                        BatchStatus::Completed,
                        now,
                        None,
                    )
                    .await?
            }
            BatchStatus::Cancelling => {
                stores
                    .batches
                    .transition(
                        batch.id,
                        &[BatchStatus::Cancelling],
                        BatchStatus::Cancelled,
                        now,
                        None,
                    )
                    .await?
            }
            _ => None,
        };
        match moved {
            Some(b) => batch = b,
            // Someone else moved it: show what they left.
            None if !batch.status.is_terminal() => {
                if let Some(b) = deadline(
                    state.config.store_timeout,
                    "batches",
                    stores.batches.get(batch.id),
                )
                .await?
                {
                    batch = b;
                }
            }
            None => {}
        }
    }
    Ok(object(&batch, counts))
}

/// The caller's batch, or 404 (also for another tenant's: ids are not secrets to probe).
async fn find(state: &AppState, headers: &HeaderMap, id: &str) -> Result<BatchRecord, ApiError> {
    let tenant = auth::tenant(state, headers).await?;
    let not_found = || ApiError::NotFound(format!("no batch {id}"));
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    match deadline(
        state.config.store_timeout,
        "batches",
        state.stores.batches.get(id),
    )
    .await?
    {
        Some(b) if b.tenant == tenant => Ok(b),
        _ => Err(not_found()),
    }
}

/// Fetch a batch with its progress.
#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The batch", body = BatchObject),
        (status = 404, description = "No such batch", body = crate::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let batch = find(&state, &headers, &id).await?;
    current(&state, batch).await.map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only batches older than this batch id (the previous page's `last_id`).
    pub after: Option<Uuid>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
}

/// List the caller's batches, newest first.
#[utoipa::path(
    get, path = "/v1/batches", tag = "batches",
    params(ListParams),
    responses((status = 200, description = "A page of batches", body = BatchList))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Json<BatchList>, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 100".into(),
        ));
    }
    let mut page = deadline(
        state.config.store_timeout,
        "batches",
        state.stores.batches.list(&tenant, params.after, limit + 1),
    )
    .await?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    let mut data = Vec::with_capacity(page.len());
    for b in page {
        data.push(current(&state, b).await?);
    }
    Ok(Json(BatchList {
        object: "list".into(),
        first_id: data.first().map(|b| b.id),
        last_id: data.last().map(|b| b.id),
        has_more,
        data,
    }))
}

/// Cancel a batch: lines not started are cancelled (they go to the error file); running ones
/// finish. The batch is `cancelling` until they have, then `cancelled`.
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "Cancelling (or cancelled)", body = BatchObject),
        (status = 404, description = "No such batch", body = crate::ErrorBody),
        (status = 409, description = "Already finished", body = crate::ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let batch = find(&state, &headers, &id).await?;
    let stores = &state.stores;
    let now = now_millis();
    let from = [
        BatchStatus::Validating,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
    ];
    let batch = match deadline(
        state.config.store_timeout,
        "batches",
        stores
            .batches
            .transition(batch.id, &from, BatchStatus::Cancelling, now, None),
    )
    .await?
    {
        Some(b) => b,
        None => {
            let b = deadline(
                state.config.store_timeout,
                "batches",
                stores.batches.get(batch.id),
            )
            .await?
            .unwrap_or(batch);
            if b.status.is_terminal() {
                return Err(ApiError::Conflict(format!(
                    "batch {} is {} and can no longer be cancelled",
                    b.id,
                    b.status.as_str()
                )));
            }
            // Already cancelling.
            b
        }
    };
    let n = deadline(
        state.config.store_timeout,
        "batches",
        stores.batches.cancel_queued(batch.id, now),
    )
    .await?;
    metrics::counter!("scorer_batch_lines_cancelled_total").increment(n);
    current(&state, batch).await.map(Json)
}

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
/// then lines that failed, were cancelled or expired (in custom_id order).
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
                match state
                    .stores
                    .batches
                    .line_errors(id, after, PAGE_LINES)
                    .await
                {
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
            match state
                .stores
                .batches
                .results(id, succeeded, after.as_deref(), PAGE_LINES)
                .await
            {
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

/// A finished line in the OpenAI batch output shape.
fn result_line(r: &LineResult) -> Value {
    let job = &r.record;
    let id = format!("batch_req_{}", job.id.simple());
    match (&job.result, job.status) {
        (Some(body), JobStatus::Succeeded) => json!({
            "id": id,
            "custom_id": r.custom_id,
            "response": {"status_code": 200, "request_id": job.id, "body": body},
            "error": null,
        }),
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
            json!({
                "id": id,
                "custom_id": r.custom_id,
                "response": null,
                "error": {"code": code, "message": message},
            })
        }
    }
}
