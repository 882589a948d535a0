//! The request limits: one definition for the engine (which enforces them while it validates and
//! tokenizes), the API process (which validates with the same code) and the CLI flags.
//!
//! How a limit is answered is decided here, once: a request over any of these limits is a
//! validation error, HTTP 400 naming the limit (SGLang answers an over-long prompt the same way).
//! Only the size of the HTTP body itself, a transport limit (`--max-body-bytes`), is 413.

/// Request limits, explicit and documented (docs/CONFIGURATION.md, "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Items in one request (`--max-items`).
    pub max_items: usize,
    /// Tokens in one prompt, query and item together (`--max-prompt-tokens`), capped at the
    /// model's context length ([`Limits::within_context`]).
    pub max_prompt_tokens: usize,
    /// Tokens over all prompts of one request (`--max-request-tokens`).
    pub max_request_tokens: usize,
    /// Label ids per item (`--max-labels`).
    pub max_labels: usize,
}

impl Limits {
    /// These limits with the prompt limit capped at a model's context length
    /// (`max_position_embeddings`): positions past it were never trained, and some RoPE
    /// scalings change there. Longer prompts than a pass holds are computed by chunked prefill.
    pub fn within_context(self, context_length: usize) -> Limits {
        Limits {
            max_prompt_tokens: self.max_prompt_tokens.min(context_length.max(1)),
            ..self
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items: 1024,
            max_prompt_tokens: 32768,
            max_request_tokens: 1_048_576,
            max_labels: 128,
        }
    }
}
