//! The rerank APIs reranking clients speak, as views of `/v1/score`.
//!
//! - Jina / vLLM `POST /v1/rerank` and Cohere `POST /v2/rerank`: [`RerankRequest`] →
//!   [`RerankResponse`] (`results` sorted by score, `usage`; Cohere's `meta.billed_units` on v2);
//! - TEI `POST /rerank`: [`TeiRerankRequest`] → `[`[`TeiRank`]`]`.
//!
//! A rerank request becomes a `/v1/score` request through the model's rerank template (the engine's
//! `rerank_template`: shared query part, one item per document, labels `[yes, no]`, softmax on), and
//! the score rows come back here: [`rank_rows`] reads P(yes) from each row and sorts (stable: equal
//! scores keep the documents' order), then the response builders apply `top_n` and the document echo.
//! Validation answers the same [`ValidationError`] (HTTP 400) as `/v1/score`. [`RerankCall`] is the
//! request with its endpoint, as jobs and batch lines carry it (`call.rs`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::score::ValidationError;

mod call;

pub use call::{
    RerankBody, RerankCall, RerankEndpoint, RerankInput, RerankJobObject, RerankOutput,
    RerankRenderError,
};

/// The 400 of a rerank request to a model served without a rerank template.
pub fn no_rerank_template(model: &str) -> ValidationError {
    ValidationError::new(format!(
        "the model `{model}` has no rerank template, so the rerank endpoints cannot score it: \
         serve a Qwen3 reranker (built-in template) or start the server with \
         --rerank-template FILE (docs/RERANK.md)"
    ))
}

/// A document: a plain string, or Jina's `{"text": ...}` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object(DocumentText),
}

impl RerankDocument {
    pub fn text(&self) -> &str {
        match self {
            RerankDocument::Text(t) => t,
            RerankDocument::Object(o) => &o.text,
        }
    }
}

/// `{"text": ...}`: how documents are echoed back, and one of the shapes they may be sent in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DocumentText {
    pub text: String,
}

/// `POST /v1/rerank` (Jina, vLLM) and `POST /v2/rerank` (Cohere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub query: String,
    pub documents: Vec<RerankDocument>,
    /// How many of the best documents to return (all when absent); must be ≥ 1, larger is clamped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<i64>,
    /// Echo each result's document text; default `true` on `/v1/rerank`, `false` on `/v2/rerank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_documents: Option<bool>,
    /// The task instruction of instruction-aware rerankers (Qwen3-Reranker's `<Instruct>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
}

/// Which endpoint a [`RerankRequest`] came in on: it decides the defaults and the `meta` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerankFlavor {
    /// `/v1/rerank`: Jina / vLLM; documents echoed by default, no `meta`.
    Jina,
    /// `/v2/rerank`: Cohere; documents not echoed by default, `meta.billed_units`.
    Cohere,
}

/// A [`RerankRequest`] that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedRerank<'a> {
    pub query: &'a str,
    pub documents: Vec<&'a str>,
    /// `top_n`, clamped to the number of documents.
    pub top_n: usize,
    pub return_documents: bool,
    pub instruction: Option<&'a str>,
}

impl RerankRequest {
    pub fn validate(&self, flavor: RerankFlavor) -> Result<ValidatedRerank<'_>, ValidationError> {
        if self.documents.is_empty() {
            return Err(ValidationError::new("documents must not be empty"));
        }
        let top_n = validate_top_n(self.top_n, self.documents.len())?;
        Ok(ValidatedRerank {
            query: &self.query,
            documents: self.documents.iter().map(RerankDocument::text).collect(),
            top_n,
            return_documents: self
                .return_documents
                .unwrap_or(flavor == RerankFlavor::Jina),
            instruction: self.instruction.as_deref(),
        })
    }
}

fn validate_top_n(top_n: Option<i64>, documents: usize) -> Result<usize, ValidationError> {
    match top_n {
        None => Ok(documents),
        Some(n) if n <= 0 => Err(ValidationError::new(format!(
            "top_n must be a positive integer, got {n}"
        ))),
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(documents)),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResult {
    /// Position of the document in the request.
    pub index: usize,
    /// P(yes) under the model's rerank template, in [0, 1].
    pub relevance_score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RerankUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// Cohere's `meta.billed_units`: one search unit per query and up to 100 documents, and the tokens read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BilledUnits {
    pub search_units: usize,
    pub input_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RerankMeta {
    pub billed_units: BilledUnits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResponse {
    pub id: String,
    pub model: String,
    /// Sorted by `relevance_score`, best first; ties keep the request's order. At most `top_n`.
    pub results: Vec<RerankResult>,
    pub usage: RerankUsage,
    /// Present on `/v2/rerank` (Cohere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RerankMeta>,
}

/// `POST /rerank` (Text Embeddings Inference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeiRerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    /// Return `ln(P(yes) / P(no))` (the logit the probability is the sigmoid of) instead of P(yes).
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default)]
    pub return_text: bool,
    /// Cut documents over the length limit at a token boundary instead of refusing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
}

impl TeiRerankRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.texts.is_empty() {
            return Err(ValidationError::new("texts must not be empty"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeiRank {
    pub index: usize,
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One document's score, read from its `/v1/score` row `[P(yes), P(no)]` (softmax over the labels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub index: usize,
    /// P(yes).
    pub score: f64,
    /// `ln(P(yes)) - ln(P(no))`.
    pub raw_score: f64,
}

/// A score row that is not `[P(yes), P(no)]`: the scoring request was not built by a rerank template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rerank: score row {index} has {len} columns, expected 2 ([yes, no])")]
pub struct ScoreRowShapeError {
    pub index: usize,
    pub len: usize,
}

/// Reads each row's P(yes) and sorts best first; equal scores keep the documents' order.
pub fn rank_rows(rows: &[Vec<f64>]) -> Result<Vec<Ranked>, ScoreRowShapeError> {
    let mut ranked = rows
        .iter()
        .enumerate()
        .map(|(index, row)| match row.as_slice() {
            [yes, no] => Ok(Ranked {
                index,
                score: *yes,
                raw_score: yes.ln() - no.ln(),
            }),
            _ => Err(ScoreRowShapeError {
                index,
                len: row.len(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `sort_by` is stable, so ties stay in request order.
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(ranked)
}

impl RerankResponse {
    /// The `/v1/rerank` / `/v2/rerank` answer from the `/v1/score` rows of a validated request.
    pub fn from_scores(
        id: impl Into<String>,
        model: impl Into<String>,
        request: &ValidatedRerank<'_>,
        rows: &[Vec<f64>],
        prompt_tokens: usize,
        flavor: RerankFlavor,
    ) -> Result<Self, ScoreRowShapeError> {
        let results = rank_rows(rows)?
            .into_iter()
            .take(request.top_n)
            .map(|r| RerankResult {
                index: r.index,
                relevance_score: r.score,
                document: request.return_documents.then(|| DocumentText {
                    text: request
                        .documents
                        .get(r.index)
                        .copied()
                        .unwrap_or_default()
                        .to_string(),
                }),
            })
            .collect();
        Ok(RerankResponse {
            id: id.into(),
            model: model.into(),
            results,
            usage: RerankUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
            meta: (flavor == RerankFlavor::Cohere).then_some(RerankMeta {
                billed_units: BilledUnits {
                    search_units: request.documents.len().div_ceil(100).max(1),
                    input_tokens: prompt_tokens,
                },
            }),
        })
    }
}

/// The TEI `/rerank` answer from the `/v1/score` rows: every text, best first.
pub fn tei_ranks(
    request: &TeiRerankRequest,
    rows: &[Vec<f64>],
) -> Result<Vec<TeiRank>, ScoreRowShapeError> {
    Ok(rank_rows(rows)?
        .into_iter()
        .map(|r| TeiRank {
            index: r.index,
            score: if request.raw_scores {
                r.raw_score
            } else {
                r.score
            },
            text: request
                .return_text
                .then(|| request.texts.get(r.index).cloned().unwrap_or_default()),
        })
        .collect())
}

#[cfg(test)]
mod tests;
