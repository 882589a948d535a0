//! A rerank request as the service carries it: which endpoint it came in on and its body, the
//! tokenizer-free input the `Preparer` turns into a `/v1/score` job, and the answer rendered back
//! from that job's score rows.
//!
//! Why a wrapper: a rerank job is an ordinary scoring job (same queue, workers, audit row), and the
//! worker stores an ordinary `/v1/score` result. The rerank shape (sorted results, `top_n`, the
//! document echo, Cohere's `meta`, TEI's list) depends on the request, so the job's audit `request`
//! keeps `{"url": <endpoint>, "body": <body as received>}` ([`RerankCall::stored`]) — the shape of a
//! `/v1/batches` line — and every reader (sync answer, `GET /v1/rerank/jobs/{id}`, the batch output
//! file) renders the stored result through [`RerankCall::render`]. A `/v1/score` body is never
//! mistaken for one: its audit `request` is the body itself, which has no `url` and `body` pair only.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    RerankFlavor, RerankRequest, RerankResponse, ScoreRowShapeError, TeiRank, TeiRerankRequest,
    tei_ranks,
};
use crate::job::JobObject;
use crate::score::ValidationError;

/// The rerank endpoints, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerankEndpoint {
    /// `POST /v1/rerank`: Jina / vLLM.
    V1,
    /// `POST /v2/rerank`: Cohere.
    V2,
    /// `POST /rerank`: Text Embeddings Inference.
    Tei,
}

impl RerankEndpoint {
    pub const ALL: [RerankEndpoint; 3] =
        [RerankEndpoint::V1, RerankEndpoint::V2, RerankEndpoint::Tei];

    pub fn path(self) -> &'static str {
        match self {
            RerankEndpoint::V1 => "/v1/rerank",
            RerankEndpoint::V2 => "/v2/rerank",
            RerankEndpoint::Tei => "/rerank",
        }
    }

    pub fn parse(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// What the `Preparer` needs of a rerank request: no tokenizer has looked at it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerankInput {
    pub query: String,
    pub documents: Vec<String>,
    /// The request's instruction (`None`: the template's default, if it has one).
    pub instruction: Option<String>,
    /// Cut documents whose prompt is over `--max-prompt-tokens` instead of refusing them.
    pub truncate: bool,
}

/// The parsed body of a rerank request.
#[derive(Debug, Clone, PartialEq)]
pub enum RerankBody {
    /// `/v1/rerank` and `/v2/rerank`.
    Ranked(RerankRequest),
    /// `/rerank`.
    Tei(TeiRerankRequest),
}

/// A rerank request with the endpoint it came in on.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankCall {
    pub endpoint: RerankEndpoint,
    pub body: RerankBody,
}

/// The rerank answer of either shape (as JSON it is one or the other).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankOutput {
    Ranked(RerankResponse),
    Tei(Vec<TeiRank>),
}

/// Why a stored result cannot be rendered as a rerank answer: the job was not built from this
/// request (a server bug, never the client's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RerankRenderError {
    #[error(transparent)]
    Shape(#[from] ScoreRowShapeError),
    #[error("rerank: {rows} score rows for {documents} documents")]
    Count { rows: usize, documents: usize },
    #[error("rerank: the stored request no longer validates: {0}")]
    Invalid(ValidationError),
}

/// `GET /v1/rerank/jobs/{id}`: the job object with its result in the rerank shape of the
/// endpoint the job was submitted to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankJobObject {
    #[serde(flatten)]
    pub job: JobObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RerankOutput>,
}

impl RerankCall {
    /// Parses `body` as the request type of `endpoint` (unknown keys are ignored, as the
    /// reranking APIs do; an async job's `priority`, `ttl_seconds` and `webhook` sit among them).
    pub fn parse(endpoint: RerankEndpoint, body: &Value) -> Result<Self, ValidationError> {
        let invalid = |e: serde_json::Error| ValidationError::new(format!("invalid request: {e}"));
        let body = match endpoint {
            RerankEndpoint::V1 | RerankEndpoint::V2 => {
                RerankBody::Ranked(serde_json::from_value(body.clone()).map_err(invalid)?)
            }
            RerankEndpoint::Tei => {
                RerankBody::Tei(serde_json::from_value(body.clone()).map_err(invalid)?)
            }
        };
        Ok(RerankCall { endpoint, body })
    }

    /// What a job's audit `request` holds for a rerank request: `{"url", "body"}`.
    pub fn stored(&self, body: Value) -> Value {
        serde_json::json!({"url": self.endpoint.path(), "body": body})
    }

    /// The rerank call a job's audit `request` holds, if it holds one (see [`Self::stored`]).
    pub fn from_stored(request: &Value) -> Option<Self> {
        let map = request.as_object()?;
        if map.len() != 2 {
            return None;
        }
        let endpoint = RerankEndpoint::parse(map.get("url")?.as_str()?)?;
        Self::parse(endpoint, map.get("body")?).ok()
    }

    /// The model the request names (TEI requests name none).
    pub fn model(&self) -> Option<&str> {
        match &self.body {
            RerankBody::Ranked(r) => r.model.as_deref(),
            RerankBody::Tei(_) => None,
        }
    }

    fn flavor(&self) -> RerankFlavor {
        match self.endpoint {
            RerankEndpoint::V2 => RerankFlavor::Cohere,
            _ => RerankFlavor::Jina,
        }
    }

    /// The structural checks (400s: no documents, `top_n` ≤ 0), then the `Preparer`'s input.
    pub fn input(&self) -> Result<RerankInput, ValidationError> {
        match &self.body {
            RerankBody::Ranked(r) => {
                let v = r.validate(self.flavor())?;
                Ok(RerankInput {
                    query: v.query.to_string(),
                    documents: v.documents.iter().map(|d| d.to_string()).collect(),
                    instruction: v.instruction.map(str::to_string),
                    truncate: false,
                })
            }
            RerankBody::Tei(t) => {
                t.validate()?;
                Ok(RerankInput {
                    query: t.query.clone(),
                    documents: t.texts.clone(),
                    instruction: None,
                    truncate: t.truncate.unwrap_or(false),
                })
            }
        }
    }

    /// The answer from the job's `/v1/score` rows (`[P(yes), P(no)]`, one per document).
    pub fn render(
        &self,
        id: &str,
        model: &str,
        rows: &[Vec<f64>],
        prompt_tokens: usize,
    ) -> Result<RerankOutput, RerankRenderError> {
        let documents = match &self.body {
            RerankBody::Ranked(r) => r.documents.len(),
            RerankBody::Tei(t) => t.texts.len(),
        };
        if rows.len() != documents {
            return Err(RerankRenderError::Count {
                rows: rows.len(),
                documents,
            });
        }
        match &self.body {
            RerankBody::Ranked(r) => {
                let flavor = self.flavor();
                let v = r.validate(flavor).map_err(RerankRenderError::Invalid)?;
                Ok(RerankOutput::Ranked(RerankResponse::from_scores(
                    id,
                    model,
                    &v,
                    rows,
                    prompt_tokens,
                    flavor,
                )?))
            }
            RerankBody::Tei(t) => Ok(RerankOutput::Tei(tei_ranks(t, rows)?)),
        }
    }
}
