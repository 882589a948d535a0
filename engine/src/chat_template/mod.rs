//! A model's chat template, rendered the way Hugging Face's `apply_chat_template` renders it.
//!
//! Small instruct models answer far better when a prompt is laid out in the turns they were tuned on,
//! and that layout is a Jinja program shipped with the model (GGUF `tokenizer.chat_template`, or an HF
//! directory's `chat_template.jinja` / `tokenizer_config.json` `chat_template`). It is rendered with
//! `minijinja` under transformers' conventions (`utils/chat_template_utils.py`):
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline dropped, loop controls on;
//! - variables `messages`, `add_generation_prompt`, `tools` and `documents` (`none`), and the special
//!   tokens `bos_token`, `eos_token`, `unk_token`, `pad_token` the tokenizer defines;
//! - `raise_exception(msg)` ([`ChatTemplateError::Raised`]), `strftime_now(fmt)`, a `tojson` that is
//!   Python's `json.dumps(..., ensure_ascii=False)` ([`pyjson`]), and Python's string/dict/list methods
//!   (`.strip()`, `.startswith()`, `.items()`, ...) through minijinja-contrib's `pycompat`.
//!
//! One deliberate difference: undefined values are semi-strict. Jinja prints an undefined variable as
//! `""`; here printing, iterating or reading an attribute of one is [`ChatTemplateError::Undefined`]
//! (a 400 for the request that caused it), while testing it (`{% if tools %}`, `is defined`) is
//! allowed, which every template relies on. A template that needs something minijinja lacks (an unknown
//! filter, test, function or method) is [`ChatTemplateError::Unsupported`], found by a trial render at
//! load time so the model refuses to load instead of failing on the first request.
//!
//! `/v1/score`'s `query_messages` rule is [`ChatTemplate::score_prompt`]: see there and docs/RERANK.md.

mod pyjson;

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error as JinjaError, ErrorKind, UndefinedBehavior, Value, context};
use scorer_protocol::chat::ChatMessage;

use crate::weights::gguf::GgufFile;

/// Why a chat template cannot be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The model ships no chat template (e.g. a base model such as Gemma 3 270M).
    #[error("the model has no chat template ({0})")]
    Missing(String),
    #[error("cannot read the chat template from {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// The template needs a feature minijinja does not have (named in the message).
    #[error("the chat template uses a feature that is not supported: {0}")]
    Unsupported(String),
    /// The template called `raise_exception(message)`: it refuses this conversation.
    #[error("the chat template refused the conversation: {0}")]
    Raised(String),
    /// The template read a variable or attribute that the conversation does not define.
    #[error("the chat template reads an undefined value: {0}")]
    Undefined(String),
    #[error("cannot apply the chat template to an empty conversation")]
    EmptyConversation,
    #[error("chat template rendering failed: {0}")]
    Render(String),
}

impl ChatTemplateError {
    /// Whether the error comes from what a request sent (HTTP 400) rather than from the model's
    /// files (a load-time error).
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            ChatTemplateError::Raised(_)
                | ChatTemplateError::Undefined(_)
                | ChatTemplateError::EmptyConversation
                | ChatTemplateError::Render(_)
                | ChatTemplateError::Missing(_)
        )
    }
}

/// The special-token strings a template sees as `bos_token`, `eos_token`, `unk_token`, `pad_token`
/// (transformers' `special_tokens_map`); `None` leaves the variable undefined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

impl SpecialTokens {
    /// From a GGUF's `tokenizer.ggml.{bos,eos,unknown,padding}_token_id` and its token list, as
    /// transformers' GGUF loader sets them.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ChatTemplateError> {
        let read = |e: anyhow::Error| ChatTemplateError::Read {
            path: g.path().display().to_string(),
            detail: e.to_string(),
        };
        let tokens = g
            .meta_strings("tokenizer.ggml.tokens")
            .map_err(read)?
            .unwrap_or_default();
        let token = |key: &str| -> Result<Option<String>, ChatTemplateError> {
            let id = g.meta_u64(key).map_err(read)?;
            Ok(id
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| tokens.get(i))
                .map(|s| s.to_string()))
        };
        Ok(SpecialTokens {
            bos_token: token("tokenizer.ggml.bos_token_id")?,
            eos_token: token("tokenizer.ggml.eos_token_id")?,
            unk_token: token("tokenizer.ggml.unknown_token_id")?,
            pad_token: token("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// From an HF `tokenizer_config.json` (each token a string or an `{"content": ...}` object).
    fn from_tokenizer_config(config: &serde_json::Value) -> Self {
        let token = |key: &str| match config.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        SpecialTokens {
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            unk_token: token("unk_token"),
            pad_token: token("pad_token"),
        }
    }
}

/// A compiled chat template with the special tokens it renders with.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: SpecialTokens,
}

const TEMPLATE_NAME: &str = "chat_template";

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` and trial-renders it once, so a template that needs an unsupported
    /// feature fails here ([`ChatTemplateError::Unsupported`]) rather than on a request.
    pub fn new(source: &str, special: SpecialTokens) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", pyjson::tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        let template = ChatTemplate { env, special };
        let probe = [
            ChatMessage::new("system", "You are a helpful assistant."),
            ChatMessage::new("user", "Hello."),
            ChatMessage::new("assistant", "Hi."),
            ChatMessage::new("user", "Is this a probe?"),
        ];
        // A template may legitimately refuse this conversation (no system role, ...): only a
        // missing feature or a syntax error found on the way is a load error.
        for generation in [false, true] {
            if let Err(e @ (ChatTemplateError::Unsupported(_) | ChatTemplateError::Syntax(_))) =
                template.render(&probe, generation)
            {
                return Err(e);
            }
        }
        Ok(template)
    }

    /// The chat template of a model path: an HF directory (`chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template`) or a GGUF file (`tokenizer.chat_template`).
    /// `Ok(None)` when the model has none.
    pub fn for_model(model_path: &Path) -> Result<Option<Self>, ChatTemplateError> {
        if model_path.is_dir() {
            Self::from_hf_dir(model_path)
        } else {
            Self::from_gguf(model_path)
        }
    }

    pub fn from_gguf(path: &Path) -> Result<Option<Self>, ChatTemplateError> {
        let read = |detail: String| ChatTemplateError::Read {
            path: path.display().to_string(),
            detail,
        };
        let g = GgufFile::open(path).map_err(|e| read(e.to_string()))?;
        let Some(source) = g
            .meta_string("tokenizer.chat_template")
            .map_err(|e| read(e.to_string()))?
        else {
            return Ok(None);
        };
        Self::new(&source, SpecialTokens::from_gguf(&g)?).map(Some)
    }

    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>, ChatTemplateError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ChatTemplateError::Read {
                path: config_path.display().to_string(),
                detail: e.to_string(),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.is_file() {
            Some(
                std::fs::read_to_string(&jinja_path).map_err(|e| ChatTemplateError::Read {
                    path: jinja_path.display().to_string(),
                    detail: e.to_string(),
                })?,
            )
        } else {
            config_template(&config).map_err(|detail| ChatTemplateError::Read {
                path: config_path.display().to_string(),
                detail,
            })?
        };
        match source {
            None => Ok(None),
            Some(s) => Self::new(&s, SpecialTokens::from_tokenizer_config(&config)).map(Some),
        }
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        if messages.is_empty() {
            return Err(ChatTemplateError::EmptyConversation);
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(describe(&e)))?;
        let s = &self.special;
        let ctx = context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            tools => Value::from(()),
            documents => Value::from(()),
            bos_token => s.bos_token.as_deref().map(Value::from).unwrap_or(Value::UNDEFINED),
            eos_token => s.eos_token.as_deref().map(Value::from).unwrap_or(Value::UNDEFINED),
            unk_token => s.unk_token.as_deref().map(Value::from).unwrap_or(Value::UNDEFINED),
            pad_token => s.pad_token.as_deref().map(Value::from).unwrap_or(Value::UNDEFINED),
        };
        template.render(ctx).map_err(classify)
    }

    /// The `/v1/score` prompt text for `query_messages` and one item:
    ///
    /// **the chat rendered with `add_generation_prompt = true`, then the item text appended verbatim**
    /// (no separator): the item is the start of the assistant's answer to the last turn. This is what
    /// transformers' `apply_chat_template(messages + [{"role": "assistant", "content": item}],
    /// continue_final_message=True)` gives for templates that keep the answer's text as is (checked by
    /// `tests/reference/chat_templates.py` for every golden). The text is tokenized as a whole
    /// **without** adding special tokens (as `apply_chat_template(tokenize=True)` does): the template
    /// writes the BOS itself when the model wants one. With `item_first` the rule does not apply (a
    /// chat cannot follow its answer); the API refuses that combination.
    pub fn score_prompt(
        &self,
        messages: &[ChatMessage],
        item: &str,
    ) -> Result<String, ChatTemplateError> {
        let mut prompt = self.render(messages, true)?;
        prompt.push_str(item);
        Ok(prompt)
    }
}

/// `tokenizer_config.json`'s `chat_template`: a string, or a list of `{name, template}` of which
/// transformers uses the one named `default`.
fn config_template(config: &serde_json::Value) -> Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(named)) => {
            for entry in named {
                if entry.get("name").and_then(|n| n.as_str()) == Some("default") {
                    return entry
                        .get("template")
                        .and_then(|t| t.as_str())
                        .map(|t| Some(t.to_string()))
                        .ok_or_else(|| {
                            "chat_template \"default\" entry has no \"template\" string".to_string()
                        });
                }
            }
            Err(
                "chat_template is a list of named templates without one named \"default\""
                    .to_string(),
            )
        }
        Some(other) => Err(format!(
            "chat_template must be a string or a list, found {other}"
        )),
    }
}

/// Marks an error raised by the template's own `raise_exception`.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `strftime_now(format)`: the local time, as Python's `datetime.now().strftime(format)`.
fn strftime_now(format: String) -> Result<Value, JinjaError> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// The message of a minijinja error with its template line, without the debug dump.
fn describe(e: &JinjaError) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

fn classify(e: JinjaError) -> ChatTemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return ChatTemplateError::Raised(r.0.clone());
        }
        source = s.source();
    }
    match e.kind() {
        ErrorKind::UndefinedError => ChatTemplateError::Undefined(describe(&e)),
        ErrorKind::UnknownFilter
        | ErrorKind::UnknownTest
        | ErrorKind::UnknownFunction
        | ErrorKind::UnknownMethod => ChatTemplateError::Unsupported(describe(&e)),
        ErrorKind::SyntaxError => ChatTemplateError::Syntax(describe(&e)),
        _ => ChatTemplateError::Render(describe(&e)),
    }
}

#[cfg(test)]
mod tests;
