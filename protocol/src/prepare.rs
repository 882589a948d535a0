//! The API's view of a model: its name and how to validate and tokenize a request. An API
//! process (`scorer api`) holds only this — the tokenizer and the model's metadata (vocabulary
//! size, limits, special tokens) — never the weights or a device client; workers score.
//! Every [`ScoreBackend`] is a `Preparer` too, so the embedded `serve` shares its one engine.

use crate::{ScoreBackend, ScoreJob, ScoreRequest, ValidationError};

/// Validation and tokenization without scoring. Blocks (tokenization): call it from
/// `spawn_blocking`.
pub trait Preparer: Send + Sync + 'static {
    /// The name answered in `model` and listed by `/v1/models`.
    fn model_id(&self) -> &str;
    /// Validate and tokenize a request.
    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError>;
}

impl<T: ScoreBackend + ?Sized> Preparer for T {
    fn model_id(&self) -> &str {
        ScoreBackend::model_id(self)
    }

    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError> {
        ScoreBackend::prepare(self, req)
    }
}
