//! The `/v1/score` contract (SGLang semantics, see the brief §1).
//!
//! Structural validation lives here so every entry point (HTTP, CLI, bulk) answers the same message;
//! checks that need the tokenizer (vocabulary range, tokenization) live in the engine's `prepare`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::chat::ChatMessage;

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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScoreRequest {
    /// A name this server serves (`--served-model-name`, `default`, or any with
    /// `--accept-any-model-name`); echoed in the response's `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<TextOrTokens>,
    /// Instead of `query`: a chat, rendered with the model's chat template and
    /// `add_generation_prompt=true`; each item (text) is appended to it as the start of the
    /// assistant's answer. Not with `query`, `item_first` or token-id items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_messages: Option<Vec<ChatMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_token_ids: Option<LabelIds>,
    #[serde(default)]
    pub apply_softmax: bool,
    #[serde(default)]
    pub item_first: bool,
    /// Divides the label log-probabilities before the softmax over the labels: finite, > 0, and
    /// other than 1 only with `apply_softmax` (SGLang's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Also answer `token_logprobs`: per item, each label's full-vocabulary log-probability.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub return_token_logprobs: bool,
    /// Also answer `pooled_hidden_states`: per item, the final-norm hidden state at the scored
    /// position (the input of the LM head).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub return_pooled_hidden_states: bool,
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
    /// With `return_token_logprobs`: per item, per label (in `label_token_ids` order), the label's
    /// log-probability under the full-vocabulary softmax at the scored position (temperature 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<Vec<f64>>>,
    /// With `return_pooled_hidden_states`: per item, the hidden state after the final norm at the
    /// scored position (`hidden_size` floats; what the LM head multiplies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled_hidden_states: Option<Vec<Vec<f32>>>,
}

impl ScoreResponse {
    pub fn new(scores: Vec<Vec<f64>>, model: impl Into<String>, prompt_tokens: usize) -> Self {
        ScoreResponse {
            scores,
            model: model.into(),
            usage: Usage::prompt_only(prompt_tokens),
            object: "scoring".to_string(),
            token_logprobs: None,
            pooled_hidden_states: None,
        }
    }

    /// The answer to a scored job, `model` being the name the request used.
    pub fn from_output(out: ScoreOutput, model: impl Into<String>) -> Self {
        ScoreResponse {
            token_logprobs: out.token_logprobs,
            pooled_hidden_states: out.pooled_hidden_states,
            ..ScoreResponse::new(out.scores, model, out.prompt_tokens)
        }
    }
}

/// What a job answers besides its scores. Each is computed only when asked for: token
/// log-probabilities need the full-vocabulary head, hidden states leave the device only then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Outputs {
    #[serde(default)]
    pub token_logprobs: bool,
    #[serde(default)]
    pub pooled_hidden_states: bool,
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
    /// Absent in messages from older producers: scores only.
    #[serde(default)]
    pub outputs: Outputs,
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
    /// Per item and label, when the job asked for them ([`Outputs::token_logprobs`]).
    #[serde(default)]
    pub token_logprobs: Option<Vec<Vec<f64>>>,
    /// Per item, when the job asked for them ([`Outputs::pooled_hidden_states`]).
    #[serde(default)]
    pub pooled_hidden_states: Option<Vec<Vec<f32>>>,
}

impl ScoreOutput {
    /// The output of a job with no items: empty rows of everything it asked for.
    pub fn empty(outputs: Outputs) -> Self {
        ScoreOutput {
            scores: Vec::new(),
            prompt_tokens: 0,
            token_logprobs: outputs.token_logprobs.then(Vec::new),
            pooled_hidden_states: outputs.pooled_hidden_states.then(Vec::new),
        }
    }

    /// Scores are probabilities: NaN or infinity is an engine fault, and JSON cannot carry it
    /// (serde_json writes `null`, which no reader decodes as a score). Such an output is never
    /// stored; the job fails instead. The same holds for log-probabilities and hidden states.
    pub fn check_finite(&self) -> Result<(), JobFailure> {
        let bad = |what: &str, v: f64| {
            JobFailure::new(format!(
                "the engine produced a non-finite {what} ({v}); nothing was stored"
            ))
        };
        if let Some(s) = self.scores.iter().flatten().find(|s| !s.is_finite()) {
            return Err(bad("score", *s));
        }
        let logprobs = self.token_logprobs.iter().flatten().flatten();
        if let Some(s) = logprobs.into_iter().find(|s| !s.is_finite()) {
            return Err(bad("token log-probability", *s));
        }
        let hidden = self.pooled_hidden_states.iter().flatten().flatten();
        if let Some(s) = hidden.into_iter().find(|s| !s.is_finite()) {
            return Err(bad("hidden state", f64::from(*s)));
        }
        Ok(())
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
    /// `query_messages`: a chat each item (text) continues as the assistant's answer.
    Chat {
        messages: &'a [ChatMessage],
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
    pub outputs: Outputs,
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
        if temperature != 1.0 && !self.apply_softmax {
            return Err(ValidationError::new(format!(
                "temperature {temperature} needs apply_softmax=true: without it the scores are the \
                 model's own probabilities, at temperature 1"
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
        if let Some(messages) = &self.query_messages {
            return self.validated(chat_input(messages, self, items)?, labels, temperature);
        }
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
            refuse_nul_items(items)?;
        }
        self.validated(input, labels, temperature)
    }

    /// The checks common to every kind of input: labels per item, unique within an item.
    fn validated<'a>(
        &'a self,
        input: ValidatedInput<'a>,
        labels: LabelsSpec,
        temperature: f64,
    ) -> Result<Validated<'a>, ValidationError> {
        let n_items = match &input {
            ValidatedInput::Text { items, .. } | ValidatedInput::Chat { items, .. } => items.len(),
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
            outputs: Outputs {
                token_logprobs: self.return_token_logprobs,
                pooled_hidden_states: self.return_pooled_hidden_states,
            },
        })
    }
}

/// `query_messages` with text items; the combinations that have no meaning are refused.
fn chat_input<'a>(
    messages: &'a [ChatMessage],
    req: &ScoreRequest,
    items: &'a Items,
) -> Result<ValidatedInput<'a>, ValidationError> {
    if req.query.is_some() {
        return Err(ValidationError::new(
            "query and query_messages cannot both be given: send the prompt as one of them",
        ));
    }
    if req.item_first {
        return Err(ValidationError::new(
            "item_first cannot be combined with query_messages: each item is the start of the \
             assistant's answer, after the chat",
        ));
    }
    if messages.is_empty() {
        return Err(ValidationError::new("query_messages must not be empty"));
    }
    for (i, m) in messages.iter().enumerate() {
        refuse_nul(&format!("query_messages[{i}].role"), &m.role)?;
        refuse_nul(&format!("query_messages[{i}].content"), &m.content)?;
    }
    let items = match items {
        Items::One(item) => vec![item.as_str()],
        Items::Texts(list) => list.iter().map(String::as_str).collect(),
        Items::Tokens(_) => {
            return Err(ValidationError::new(
                "with query_messages the items must be text, not token ids",
            ));
        }
    };
    refuse_nul_items(&items)?;
    Ok(ValidatedInput::Chat { messages, items })
}

fn refuse_nul_items(items: &[&str]) -> Result<(), ValidationError> {
    for (i, item) in items.iter().enumerate() {
        refuse_nul(&format!("items[{i}]"), item)?;
    }
    Ok(())
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
mod tests;
