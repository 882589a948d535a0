//! Reading an upload: lines are cut from the stream, each validated and tokenized like a
//! `/v1/score/jobs` body (or, for a line whose `url` is a rerank endpoint, like that endpoint's
//! job body; its audit `request` is then the rerank call, which the output file renders); a chunk's valid lines are recorded (one audit row each) and published
//! at the bulk priority, its bad lines recorded for the error file. Memory holds one chunk.

use std::time::Duration;

use futures::StreamExt;
use scorer_jobs::batches::lifecycle::{self, UploadEnd};
use scorer_jobs::{BatchLine, BatchRecord, BatchStatus, LineError};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, now_millis};
use scorer_protocol::rerank::{RerankCall, RerankEndpoint};
use scorer_protocol::{ScoreJob, ScoreRequest};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::upload::{parse_metadata, parse_window, too_large};
use super::wire::BatchObject;
use super::{ENDPOINT, call};
use crate::submit::{check_model, check_model_name, envelope, prepare, prepare_rerank, publish};
use crate::{ApiError, AppState};

/// Lines validated, recorded and published together.
const CHUNK_LINES: usize = 256;
/// Publishes in flight at once within a chunk (each waits for its broker confirm).
const PUBLISH_CONCURRENCY: usize = 32;
/// How often a paused upload looks at the queue again.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(100);

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

/// A line's custom_id, its body as sent, and the body as a request.
pub type ParsedLine = (String, Value, LineRequest);

/// What a line asks for, by its `url`: `/v1/score` (also when absent) or a rerank endpoint.
#[derive(Debug, Clone)]
pub enum LineRequest {
    Score(ScoreRequest),
    Rerank(RerankCall),
}
/// Why a line is refused, with its custom_id when it has one.
pub type RefusedLine = (Option<String>, String);

/// A line's custom_id, its body as sent, and the body as a request; or why the line is refused
/// (with its custom_id when it has one). Structural only: the model, the vocabulary and the
/// limits are checked after. Faces the uploaded bytes as they come: never panics
/// (`fuzz/fuzz_targets/batch_line.rs`).
pub fn parse_line(text: &[u8]) -> Result<ParsedLine, RefusedLine> {
    let parsed: InputLine = match serde_json::from_slice(text) {
        Ok(p) => p,
        Err(e) => {
            // Name the custom_id if the line has one, even though the rest is wrong.
            let custom_id = serde_json::from_slice::<Value>(text)
                .ok()
                .and_then(|v| v.get("custom_id")?.as_str().map(str::to_string));
            return Err((
                custom_id,
                format!("the line is not a valid batch request: {e}"),
            ));
        }
    };
    let custom_id = match parsed.custom_id {
        // Postgres cannot store U+0000 in text: refused here, like a NUL in a request body.
        Value::String(s) if s.contains('\0') => {
            return Err((None, "custom_id contains a NUL character (U+0000)".into()));
        }
        Value::String(s) if !s.is_empty() => s,
        _ => return Err((None, "custom_id must be a non-empty string".into())),
    };
    if let Some(m) = parsed.method.as_deref()
        && m != "POST"
    {
        return Err((
            Some(custom_id),
            format!("method must be \"POST\", got {m:?}"),
        ));
    }
    let rerank = match parsed.url.as_deref() {
        None | Some(ENDPOINT) => None,
        Some(u) => match RerankEndpoint::parse(u) {
            Some(e) => Some(e),
            None => {
                return Err((
                    Some(custom_id),
                    format!(
                        "url must be \"{ENDPOINT}\", \"/v1/rerank\", \"/v2/rerank\" or \"/rerank\", got {u:?}"
                    ),
                ));
            }
        },
    };
    let Some(body) = parsed.body else {
        return Err((Some(custom_id), "the line has no `body`".into()));
    };
    if let Err(e) = scorer_protocol::refuse_nul_in_json(&body) {
        return Err((Some(custom_id), e.message));
    }
    if let Some(endpoint) = rerank {
        return match RerankCall::parse(endpoint, &body) {
            Ok(call) => Ok((custom_id, body, LineRequest::Rerank(call))),
            Err(e) => Err((Some(custom_id), e.message)),
        };
    }
    match serde_json::from_value::<ScoreRequest>(body.clone()) {
        Ok(req) => Ok((custom_id, body, LineRequest::Score(req))),
        Err(e) => Err((Some(custom_id), format!("invalid request: {e}"))),
    }
}

/// A line that passed validation, waiting for its chunk to be recorded and published.
struct Valid {
    line: i64,
    job: ScoreJob,
    /// The name the line's result answers in `model`.
    served: String,
}

/// The state of one upload being read.
pub(super) struct Ingest<'a> {
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
    pub(super) async fn start(
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
        call(state, "batches", state.stores.batches.create(&batch)).await?;
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
    pub(super) async fn feed(&mut self, chunk: &[u8]) -> Result<bool, ApiError> {
        self.bytes += chunk.len();
        if self.bytes > self.state.config.batches.max_upload_bytes {
            self.abort(too_large(self.state).to_string()).await;
            return Err(too_large(self.state));
        }
        let max_line = self.state.config.max_body_bytes;
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
            let max = self.state.config.max_body_bytes;
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
        let (custom_id, body, req) = match parse_line(text) {
            Ok(parsed) => parsed,
            Err((custom_id, message)) => return self.reject(custom_id, message),
        };
        let prepared = match req {
            LineRequest::Score(req) => match check_model(self.state, &req) {
                Ok(served) => prepare(self.state, req)
                    .await
                    .map(|job| (job, body, served)),
                Err(e) => Err(e),
            },
            LineRequest::Rerank(call) => match check_model_name(self.state, call.model())
                .and_then(|served| call.input().map(|i| (i, served)).map_err(ApiError::from))
            {
                Ok((input, served)) => prepare_rerank(self.state, input)
                    .await
                    .map(|job| (job, call.stored(body), served)),
                Err(e) => Err(e),
            },
        };
        let (job, body, served) = match prepared {
            Ok(prepared) => prepared,
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
            served,
        });
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
            let repeats = match call(
                self.state,
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
                    publish.push(envelope(&l.record, v.job, &v.served));
                    self.accepted += 1;
                }
            }
            self.publish(publish).await?;
        }
        let errors = std::mem::take(&mut self.errors);
        if let Err(e) = call(
            self.state,
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
                let result = call(state, "queue", publish(state, &env)).await;
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
                    call(self.state, "audit", self.state.stores.audit.get(id)).await
                {
                    record.fail(message.clone());
                    let _ =
                        call(self.state, "audit", self.state.stores.audit.finish(&record)).await;
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
            match call(
                self.state,
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
            if call(self.state, "queue", self.state.stores.queue.depth(model)).await? < high_water {
                return Ok(());
            }
            tokio::time::sleep(BACKPRESSURE_POLL).await;
        }
    }

    /// Reading the upload failed with `error`: the batch fails with it (its jobs not started
    /// cancelled), and `error` is handed back for the caller.
    pub(super) async fn fail(&mut self, error: ApiError) -> ApiError {
        self.abort(error.to_string()).await;
        error
    }

    /// The upload cannot go on: the batch fails, and its jobs not started are cancelled.
    async fn abort(&mut self, why: impl Into<String>) {
        let failed = lifecycle::fail_upload(
            self.state.stores.batches.as_ref(),
            self.batch.id,
            why.into(),
            now_millis(),
        );
        if let Err(e) = call(self.state, "batches", failed).await {
            tracing::warn!(batch = %self.batch.id, error = %e, "could not mark the upload failed");
        }
        self.stopped = true;
    }

    /// The whole file is read: the last line (even without a newline), the last chunk, then
    /// `in_progress`, or `failed` when no line was valid.
    pub(super) async fn end(mut self) -> Result<BatchObject, ApiError> {
        if !self.stopped && (!self.partial.is_empty() || self.overlong) {
            self.end_line().await?;
        }
        if !self.stopped {
            self.flush().await?;
        }
        let end = if self.stopped {
            UploadEnd::Stopped
        } else {
            UploadEnd::Read {
                accepted: self.accepted,
                lines: self.line as u64,
            }
        };
        let store = self.state.stores.batches.as_ref();
        let now = now_millis();
        let batch = call(
            self.state,
            "batches",
            lifecycle::end_upload(store, self.batch.id, end, now),
        )
        .await?
        .ok_or_else(|| ApiError::Internal(format!("batch {} vanished", self.batch.id)))?;
        super::lifecycle::advanced(self.state, batch).await
    }
}
