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
    /// Tokens in one prompt, query and item together (`--max-prompt-tokens`).
    pub max_prompt_tokens: usize,
    /// Tokens over all prompts of one request (`--max-request-tokens`).
    pub max_request_tokens: usize,
    /// Label ids per item (`--max-labels`).
    pub max_labels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items: 1024,
            max_prompt_tokens: 2048,
            max_request_tokens: 262_144,
            max_labels: 128,
        }
    }
}
