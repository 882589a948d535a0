//! Types shared by the API, the worker and the engine: the SGLang-compatible `/v1/score` request and
//! response, the tokenized job the worker scores, and the backend trait the engine implements.

pub mod chat;
pub mod job;
pub mod limits;
pub mod prepare;
pub mod rerank;
pub mod score;

pub use limits::Limits;
pub use prepare::Preparer;

pub use score::{
    DEFAULT_MODEL_NAME, EngineUnavailable, Items, JobFailure, LabelIds, Outputs, ScoreBackend,
    ScoreJob, ScoreOutput, ScoreRequest, ScoreResponse, TextOrTokens, Usage, Validated,
    ValidatedInput, ValidationError, refuse_nul, refuse_nul_in_json,
};
