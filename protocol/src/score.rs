//! The `/v1/score` contract (SGLang semantics, see the brief §1).
//!
//! Structural validation lives here so every entry point (HTTP, CLI, bulk) answers the same message;
//! checks that need the tokenizer (vocabulary range, tokenization) live in the engine's `prepare`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The model name a request may use to mean "whatever this server serves".
pub const DEFAULT_MODEL_NAME: &str = "default";

/// A prompt part given either as text or as token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TextOrTokens {
    Text(String),
    /// Signed so that a negative id reaches validation and gets SGLang's message instead of a
    /// generic JSON error.
    Tokens(Vec<i64>),
}

/// `items`: one string, a list of strings, or a list of token-id lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Items {
    One(String),
    Texts(Vec<String>),
    Tokens(Vec<Vec<i64>>),
}

/// `label_token_ids`: one list shared by every item, or one list per item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LabelIds {
    Shared(Vec<i64>),
    PerItem(Vec<Vec<i64>>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScoreRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<TextOrTokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_token_ids: Option<LabelIds>,
    #[serde(default)]
    pub apply_softmax: bool,
    #[serde(default)]
    pub item_first: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    /// Scoring is prefill-only: no completion tokens, ever.
    pub fn prompt_only(prompt_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens: 0,
            total_tokens: prompt_tokens,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScoreResponse {
    /// One row per item, one column per label token.
    pub scores: Vec<Vec<f64>>,
    pub model: String,
    pub usage: Usage,
    /// Always `"scoring"`.
    pub object: String,
}

impl ScoreResponse {
    pub fn new(scores: Vec<Vec<f64>>, model: impl Into<String>, prompt_tokens: usize) -> Self {
        ScoreResponse {
            scores,
            model: model.into(),
            usage: Usage::prompt_only(prompt_tokens),
            object: "scoring".to_string(),
        }
    }
}

/// A request after validation and tokenization: what travels to the worker.
///
/// Prompts are complete (query and item already joined in the requested order) because text is
/// joined as strings and tokenized once; splitting it back into query and item tokens would not
/// reproduce Hugging Face's ids at the boundary. Shared prefixes are found again by the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreJob {
    pub prompts: Vec<Vec<u32>>,
    /// Label ids per item (a shared list is repeated).
    pub labels: Vec<Vec<u32>>,
    pub apply_softmax: bool,
    pub temperature: f64,
}

impl ScoreJob {
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }

    /// What the engine needs of a job, checked again where a job arrives from outside the
    /// process (the queue): a payload that fails this would fail the same way on every
    /// delivery, so it is a permanent failure, never a retry.
    pub fn check(&self) -> Result<(), ValidationError> {
        if !self.temperature.is_finite() || self.temperature <= 0.0 {
            return Err(ValidationError::new(format!(
                "temperature must be a positive number, got {}",
                self.temperature
            )));
        }
        if self.labels.len() != self.prompts.len() {
            return Err(ValidationError::new(format!(
                "{} label lists for {} prompts",
                self.labels.len(),
                self.prompts.len()
            )));
        }
        if self.prompts.iter().any(Vec::is_empty) {
            return Err(ValidationError::new("a prompt is empty"));
        }
        if self.labels.iter().any(Vec::is_empty) {
            return Err(ValidationError::new("a label list is empty"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreOutput {
    pub scores: Vec<Vec<f64>>,
    pub prompt_tokens: usize,
}

impl ScoreOutput {
    /// Scores are probabilities: NaN or infinity is an engine fault, and JSON cannot carry it
    /// (serde_json writes `null`, which no reader decodes as a score). Such an output is never
    /// stored; the job fails instead.
    pub fn check_finite(&self) -> Result<(), JobFailure> {
        match self.scores.iter().flatten().find(|s| !s.is_finite()) {
            None => Ok(()),
            Some(bad) => Err(JobFailure::new(format!(
                "the engine produced a non-finite score ({bad}); nothing was stored"
            ))),
        }
    }
}

/// Why one job of a batch failed in the engine (the others are unaffected). Permanent for this
/// job: running it again would fail again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailure {
    pub message: String,
}

impl JobFailure {
    pub fn new(message: impl Into<String>) -> Self {
        JobFailure {
            message: message.into(),
        }
    }
}

/// The engine cannot score anything any more (its device thread is gone). Not a property of any
/// job: the jobs go back to the queue and the process that holds the dead engine stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the engine is unavailable: {reason}")]
pub struct EngineUnavailable {
    pub reason: String,
}

/// A request the server refuses as written (HTTP 400). The message is the user-facing text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub message: String,
}

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        ValidationError {
            message: message.into(),
        }
    }
}

/// The engine, seen from the service. Both methods block (tokenization, device work): call them
/// from `spawn_blocking` or a dedicated thread.
pub trait ScoreBackend: Send + Sync + 'static {
    /// The name answered in `model` and listed by `/v1/models`.
    fn model_id(&self) -> &str;
    /// Validate and tokenize a request (API side).
    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError>;
    /// Validate and tokenize a rerank request (API side); see `Preparer::prepare_rerank`.
    fn prepare_rerank(
        &self,
        req: &crate::rerank::RerankInput,
    ) -> Result<ScoreJob, ValidationError> {
        let _ = req;
        Err(crate::rerank::no_rerank_template(self.model_id()))
    }
    /// Score prepared jobs, one result per job (worker side). One failing job fails alone;
    /// `Err` means the engine itself is gone and no job was scored.
    fn score_batch(
        &self,
        jobs: &[ScoreJob],
    ) -> Result<Vec<Result<ScoreOutput, JobFailure>>, EngineUnavailable>;
}

/// The parts of a request after the structural checks that need no tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidatedInput<'a> {
    Text {
        query: &'a str,
        items: Vec<&'a str>,
    },
    Tokens {
        query: Vec<u32>,
        items: Vec<Vec<u32>>,
    },
}

/// Structurally validated request: inputs, labels per item, and the sampling flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated<'a> {
    pub input: ValidatedInput<'a>,
    pub labels: Vec<Vec<u32>>,
    pub apply_softmax: bool,
    pub item_first: bool,
    pub temperature: f64,
}

fn to_ids(ids: &[i64]) -> Result<Vec<u32>, ValidationError> {
    ids.iter()
        .map(|&id| {
            u32::try_from(id).map_err(|_| {
                if id < 0 {
                    ValidationError::new(format!("Token ID {id} is negative"))
                } else {
                    ValidationError::new(format!("Token ID {id} is out of vocabulary"))
                }
            })
        })
        .collect()
}

impl ScoreRequest {
    /// Checks that need no tokenizer, with SGLang's messages. The vocabulary bound is checked by
    /// the engine, which knows the vocabulary size.
    pub fn validate(&self) -> Result<Validated<'_>, ValidationError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !temperature.is_finite() || temperature <= 0.0 {
            return Err(ValidationError::new(format!(
                "temperature must be a positive number, got {temperature}"
            )));
        }
        let labels = match &self.label_token_ids {
            None => return Err(ValidationError::new("label_token_ids must be provided")),
            Some(LabelIds::Shared(ids)) if ids.is_empty() => {
                return Err(ValidationError::new("label_token_ids must not be empty"));
            }
            Some(LabelIds::Shared(ids)) => LabelsSpec::Shared(to_ids(ids)?),
            Some(LabelIds::PerItem(lists)) => LabelsSpec::PerItem(
                lists
                    .iter()
                    .map(|l| {
                        if l.is_empty() {
                            Err(ValidationError::new("label_token_ids must not be empty"))
                        } else {
                            to_ids(l)
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let items = self
            .items
            .as_ref()
            .ok_or_else(|| ValidationError::new("items must be provided"))?;
        let query = self.query.as_ref();
        let input = match (query, items) {
            (None | Some(TextOrTokens::Text(_)), Items::One(item)) => ValidatedInput::Text {
                query: text_of(query),
                items: vec![item.as_str()],
            },
            (None | Some(TextOrTokens::Text(_)), Items::Texts(list)) => ValidatedInput::Text {
                query: text_of(query),
                items: list.iter().map(String::as_str).collect(),
            },
            (Some(TextOrTokens::Tokens(q)), Items::Tokens(list)) => ValidatedInput::Tokens {
                query: to_ids(q)?,
                items: list.iter().map(|i| to_ids(i)).collect::<Result<_, _>>()?,
            },
            // `items: []` deserializes as an empty text list; it pairs with a token query too.
            (Some(TextOrTokens::Tokens(q)), Items::Texts(list)) if list.is_empty() => {
                ValidatedInput::Tokens {
                    query: to_ids(q)?,
                    items: Vec::new(),
                }
            }
            (None, Items::Tokens(list)) => ValidatedInput::Tokens {
                query: Vec::new(),
                items: list.iter().map(|i| to_ids(i)).collect::<Result<_, _>>()?,
            },
            _ => {
                return Err(ValidationError::new(
                    "Invalid combination of query/items types for score_request: query and items \
                     must both be text or both be token ids",
                ));
            }
        };
        if let ValidatedInput::Text { query, items } = &input {
            refuse_nul("query", query)?;
            for (i, item) in items.iter().enumerate() {
                refuse_nul(&format!("items[{i}]"), item)?;
            }
        }
        let n_items = match &input {
            ValidatedInput::Text { items, .. } => items.len(),
            ValidatedInput::Tokens { items, .. } => items.len(),
        };
        let labels = labels.per_item(n_items)?;
        for list in &labels {
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = list.iter().find(|id| !seen.insert(**id)) {
                return Err(ValidationError::new(format!(
                    "label_token_ids must be unique, but token ID {dup} appears more than once"
                )));
            }
        }
        Ok(Validated {
            input,
            labels,
            apply_softmax: self.apply_softmax,
            item_first: self.item_first,
            temperature,
        })
    }
}

/// The NUL character (U+0000) is refused in every text the service accepts: PostgreSQL cannot
/// store it in `text` or `jsonb`, so a job holding one could be accepted by neither mode the same
/// way. Refusing it here (400) makes the embedded and the distributed deployment agree.
pub fn refuse_nul(field: &str, text: &str) -> Result<(), ValidationError> {
    if text.contains('\0') {
        return Err(ValidationError::new(format!(
            "{field} contains a NUL character (\\u0000), which is not accepted"
        )));
    }
    Ok(())
}

/// [`refuse_nul`] over every string and key of a JSON value (a whole request body, batch-line
/// `metadata`), naming the first offending field by its path (`$.items[1]`).
pub fn refuse_nul_in_json(value: &serde_json::Value) -> Result<(), ValidationError> {
    fn walk(value: &serde_json::Value, path: &mut String) -> Result<(), ValidationError> {
        match value {
            serde_json::Value::String(s) => refuse_nul(path, s),
            serde_json::Value::Array(list) => {
                for (i, v) in list.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(v, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    refuse_nul(&format!("a key of {}", &path[..len]), k)?;
                    walk(v, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(value, &mut String::from("$"))
}

fn text_of(query: Option<&TextOrTokens>) -> &str {
    match query {
        Some(TextOrTokens::Text(q)) => q,
        _ => "",
    }
}

enum LabelsSpec {
    Shared(Vec<u32>),
    PerItem(Vec<Vec<u32>>),
}

impl LabelsSpec {
    fn per_item(self, n_items: usize) -> Result<Vec<Vec<u32>>, ValidationError> {
        match self {
            LabelsSpec::Shared(ids) => Ok(vec![ids; n_items]),
            LabelsSpec::PerItem(lists) if lists.len() == n_items => Ok(lists),
            LabelsSpec::PerItem(lists) => Err(ValidationError::new(format!(
                "label_token_ids has {} lists but there are {} items: give one list per item, \
                 or one list for all items",
                lists.len(),
                n_items
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> ScoreRequest {
        serde_json::from_value(json).expect("request parses")
    }

    #[test]
    fn text_request_validates() {
        let r = req(serde_json::json!({
            "query": "I pledge allegiance", "items": ["", " to"], "label_token_ids": [1, 2]
        }));
        let v = r.validate().expect("valid");
        assert_eq!(
            v.input,
            ValidatedInput::Text {
                query: "I pledge allegiance",
                items: vec!["", " to"]
            }
        );
        assert_eq!(v.labels, vec![vec![1, 2], vec![1, 2]]);
        assert!(!v.apply_softmax);
        assert_eq!(v.temperature, 1.0);
    }

    #[test]
    fn errors_carry_sglang_messages() {
        let cases = [
            (
                serde_json::json!({"query": "q", "items": ["a"]}),
                "label_token_ids must be provided",
            ),
            (
                serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": []}),
                "must not be empty",
            ),
            (
                serde_json::json!({"query": "q", "label_token_ids": [1]}),
                "items must be provided",
            ),
            (
                serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [-1]}),
                "Token ID -1 is negative",
            ),
            (
                serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1, 1]}),
                "must be unique",
            ),
            (
                serde_json::json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1], [2], [3]]}),
                "one list per item",
            ),
            (
                serde_json::json!({"query": "q", "items": [[1, 2]], "label_token_ids": [1]}),
                "Invalid combination",
            ),
            (
                serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1], "temperature": 0.0}),
                "temperature",
            ),
        ];
        for (body, msg) in cases {
            let err = req(body.clone()).validate().expect_err("invalid");
            assert!(err.message.contains(msg), "{body}: {}", err.message);
        }
    }

    #[test]
    fn nul_characters_are_refused_where_they_are() {
        let cases = [
            (
                serde_json::json!({"query": "a\u{0}", "items": ["x"], "label_token_ids": [1]}),
                "query",
            ),
            (
                serde_json::json!({"query": "a", "items": ["x", "\u{0}"], "label_token_ids": [1]}),
                "items[1]",
            ),
            (
                serde_json::json!({"query": "a", "items": "\u{0}", "label_token_ids": [1]}),
                "items[0]",
            ),
        ];
        for (body, field) in cases {
            let err = req(body.clone()).validate().expect_err("NUL refused");
            assert!(err.message.starts_with(field), "{body}: {}", err.message);
            assert!(err.message.contains("NUL"), "{}", err.message);
        }
        let body = serde_json::json!({"metadata": {"k": ["ok", "b\u{0}"]}, "x": 1});
        let err = refuse_nul_in_json(&body).expect_err("NUL refused");
        assert!(
            err.message.starts_with("$.metadata.k[1]"),
            "{}",
            err.message
        );
        let key = serde_json::json!({"a\u{0}": 1});
        assert!(refuse_nul_in_json(&key).is_err());
        assert!(refuse_nul_in_json(&serde_json::json!({"a": ["b", {"c": "d"}]})).is_ok());
    }

    #[test]
    fn a_job_from_the_queue_is_checked_again() {
        let good = ScoreJob {
            prompts: vec![vec![1, 2]],
            labels: vec![vec![3]],
            apply_softmax: true,
            temperature: 1.0,
        };
        assert!(good.check().is_ok());
        for (bad, what) in [
            (
                ScoreJob {
                    temperature: 0.0,
                    ..good.clone()
                },
                "temperature",
            ),
            (
                ScoreJob {
                    temperature: f64::NAN,
                    ..good.clone()
                },
                "temperature",
            ),
            (
                ScoreJob {
                    labels: vec![],
                    ..good.clone()
                },
                "label lists",
            ),
            (
                ScoreJob {
                    prompts: vec![vec![]],
                    ..good.clone()
                },
                "prompt is empty",
            ),
            (
                ScoreJob {
                    labels: vec![vec![]],
                    ..good.clone()
                },
                "label list is empty",
            ),
        ] {
            let err = bad.check().expect_err("refused");
            assert!(err.message.contains(what), "{}", err.message);
        }
        let nan = ScoreOutput {
            scores: vec![vec![0.5, f64::NAN]],
            prompt_tokens: 2,
        };
        assert!(nan.check_finite().is_err());
        let fine = ScoreOutput {
            scores: vec![vec![0.5, 0.5]],
            prompt_tokens: 2,
        };
        assert!(fine.check_finite().is_ok());
    }

    #[test]
    fn empty_items_is_not_an_error() {
        for body in [
            serde_json::json!({"query": "q", "items": [], "label_token_ids": [1]}),
            serde_json::json!({"query": [1, 2], "items": [], "label_token_ids": [1]}),
        ] {
            let r = req(body);
            let v = r.validate().expect("valid");
            assert!(v.labels.is_empty());
        }
    }

    #[test]
    fn response_serializes_in_sglang_shape() {
        let r = ScoreResponse::new(vec![vec![0.25, 0.75]], "m", 7);
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({"scores": [[0.25, 0.75]], "model": "m", "object": "scoring",
                "usage": {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}})
        );
    }
}
