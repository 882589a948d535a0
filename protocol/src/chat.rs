//! Chat messages, the `messages`-style input that `/v1/score`'s `query_messages` accepts and the
//! engine's chat-template rendering reads (`engine::chat_template`). One definition for the wire
//! and the renderer so that what a client sends is exactly what the template sees.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One turn of a conversation, as in OpenAI's and Hugging Face's `messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or whatever roles the model's template accepts).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}
