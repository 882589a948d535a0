//! The API's view of a model: its name and how to validate and tokenize a request. An API
//! process (`scorer api`) holds only this — the tokenizer and the model's metadata (vocabulary
//! size, limits, special tokens) — never the weights or a device client; workers score.
//! Every [`ScoreBackend`] is a `Preparer` too, so the embedded `serve` shares its one engine.

use crate::rerank::{RerankInput, no_rerank_template};
use crate::{ScoreBackend, ScoreJob, ScoreRequest, ValidationError};

/// Validation and tokenization without scoring. Blocks (tokenization): call it from
/// `spawn_blocking`.
pub trait Preparer: Send + Sync + 'static {
    /// The name answered in `model` and listed by `/v1/models`.
    fn model_id(&self) -> &str;
    /// Validate and tokenize a request.
    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError>;
    /// Validate and tokenize a rerank request through the model's rerank template: a `/v1/score`
    /// job (shared instruction and query, one item per document, labels `[yes, no]`, softmax).
    /// Without a template: refused (400).
    fn prepare_rerank(&self, req: &RerankInput) -> Result<ScoreJob, ValidationError> {
        let _ = req;
        Err(no_rerank_template(self.model_id()))
    }
}

impl<T: ScoreBackend + ?Sized> Preparer for T {
    fn model_id(&self) -> &str {
        ScoreBackend::model_id(self)
    }

    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError> {
        ScoreBackend::prepare(self, req)
    }

    fn prepare_rerank(&self, req: &RerankInput) -> Result<ScoreJob, ValidationError> {
        ScoreBackend::prepare_rerank(self, req)
    }
}
