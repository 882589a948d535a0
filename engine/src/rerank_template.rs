//! Rerank templates: how a causal LM turns (instruction, query, document) into a relevance score.
//!
//! LLM rerankers such as Qwen3-Reranker are plain causal LMs read after a fixed prompt: the score of a
//! document is P("yes") = softmax over the logits of the two label words. So a rerank request is a
//! `/v1/score` request in disguise, and this module says how to write it:
//! - the prompt is `prefix` + `template` (with `{instruction}`, `{query}`, `{document}` filled in) +
//!   `suffix`; `{{` / `}}` write literal braces, any other `{name}` is refused when the template loads;
//! - the label words must each be exactly one token of the model's tokenizer (else a load error):
//!   their ids are the `label_token_ids` `[yes, no]`, scored with `apply_softmax = true`;
//! - [`RerankTemplate::prompts`] splits each prompt before `{document}`, after the template's last
//!   line break there: everything before (system prefix, instruction, query) is the same for every
//!   document and becomes the `/v1/score` query, the rest (`<Document>: {document}` + suffix) is each
//!   document's item, so shared-prefix packing and the prefix cache apply.
//!
//! Built in: [`RerankTemplate::qwen3_reranker`], the Qwen3-Reranker model card's prompt verbatim.
//! Others come from a `--rerank-template` JSON file ([`RerankTemplateSpec`], docs/RERANK.md).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;
use crate::weights::Arch;

mod prepare;

pub use prepare::prepare_rerank;

/// Which rerank template a server uses (`--rerank-template`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RerankTemplateChoice {
    /// No flag: the built-in Qwen3-Reranker template for a Qwen3 reranker
    /// ([`is_qwen3_reranker`]), else none (the rerank routes answer 400).
    #[default]
    Auto,
    /// `--rerank-template qwen3-reranker`: the built-in template, whatever the model.
    Qwen3Reranker,
    /// `--rerank-template FILE`: a JSON [`RerankTemplateSpec`].
    File(PathBuf),
}

impl RerankTemplateChoice {
    /// The flag value that names the built-in template (anything else is a file path).
    pub const QWEN3_RERANKER: &'static str = "qwen3-reranker";

    pub fn parse(value: &str) -> Self {
        if value == Self::QWEN3_RERANKER {
            RerankTemplateChoice::Qwen3Reranker
        } else {
            RerankTemplateChoice::File(PathBuf::from(value))
        }
    }
}

/// The rule for the built-in template: the architecture is Qwen3 and the model's name (the
/// served model id, or the last component of its path) contains `reranker`, in any case.
/// Qwen3-Reranker's `config.json` names the same `Qwen3ForCausalLM` as the base Qwen3 models, and
/// its GGUF conversions the same `qwen3` architecture, so the name is all that tells them apart.
pub fn is_qwen3_reranker(arch: Arch, model_path: &Path, model_id: &str) -> bool {
    let named = |s: &str| s.to_ascii_lowercase().contains("reranker");
    arch == Arch::Qwen3
        && (named(model_id)
            || model_path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(named))
}

/// The Qwen3-Reranker model card's `prefix` (Qwen/Qwen3-Reranker-0.6B, "Transformers Usage").
pub const QWEN3_RERANKER_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";
/// The card's `format_instruction` body.
pub const QWEN3_RERANKER_TEMPLATE: &str =
    "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}";
/// The card's `suffix`: an empty thinking block, then the answer.
pub const QWEN3_RERANKER_SUFFIX: &str =
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
/// The card's instruction when none is given.
pub const QWEN3_RERANKER_DEFAULT_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// Why a rerank template cannot be loaded or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RerankTemplateError {
    #[error("cannot read rerank template {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("rerank template: {0}")]
    Invalid(String),
    #[error(
        "rerank template: unknown placeholder {{{name}}} in \"template\" (known: {{instruction}}, {{query}}, {{document}}; write {{{{ and }}}} for literal braces)"
    )]
    UnknownPlaceholder { name: String },
    #[error("rerank template: the {which} label word {word:?} is {} tokens ({ids:?}) for this model's tokenizer; it must be exactly one", ids.len())]
    LabelNotOneToken {
        which: &'static str,
        word: String,
        ids: Vec<u32>,
    },
    /// A request error (400): the template reads `{instruction}`, has no default, and none was sent.
    #[error(
        "this model's rerank template needs an \"instruction\" (it has no default instruction)"
    )]
    MissingInstruction,
    /// A request error (400): an instruction was sent to a template without `{instruction}`.
    #[error("this model's rerank template takes no \"instruction\"")]
    UnexpectedInstruction,
}

/// The `--rerank-template` file (JSON). Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankTemplateSpec {
    /// Literal text before the per-document template (braces are not special here).
    #[serde(default)]
    pub prefix: String,
    /// Per-document text with `{instruction}`, `{query}` and exactly one `{document}`.
    pub template: String,
    /// Literal text after it, ending where the model writes its answer.
    #[serde(default)]
    pub suffix: String,
    /// The label word whose probability is the relevance score.
    pub yes: String,
    /// The competing label word.
    pub no: String,
    /// Used when a request sends no `instruction`.
    #[serde(default)]
    pub default_instruction: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Instruction,
    Query,
    Document,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A loaded rerank template: the prompt pieces and the label ids for one tokenizer.
#[derive(Debug, Clone)]
pub struct RerankTemplate {
    spec: RerankTemplateSpec,
    /// `template` before `{document}`, up to and including its last line break: the shared query.
    head: Vec<Piece>,
    /// The rest of `template` before `{document}` (e.g. `<Document>: `): starts every item.
    item_head: Vec<Piece>,
    /// `template` after `{document}`.
    tail: Vec<Piece>,
    uses_instruction: bool,
    yes_id: u32,
    no_id: u32,
}

/// A rerank request written as a `/v1/score` request: `query` + `items[i]` is document i's prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerankPrompts {
    /// System prefix, instruction and query: shared by every document.
    pub query: String,
    /// Each document's remainder (document text, the rest of the template, the suffix).
    pub items: Vec<String>,
    /// `label_token_ids`: `[yes, no]`; the relevance score is the softmax's first column.
    pub label_token_ids: [u32; 2],
}

impl RerankTemplate {
    /// The Qwen3-Reranker template, label words "yes" / "no".
    pub fn qwen3_reranker(tokenizer: &Tokenizer) -> Result<Self, RerankTemplateError> {
        Self::new(RerankTemplate::qwen3_reranker_spec(), tokenizer)
    }

    pub fn qwen3_reranker_spec() -> RerankTemplateSpec {
        RerankTemplateSpec {
            prefix: QWEN3_RERANKER_PREFIX.to_string(),
            template: QWEN3_RERANKER_TEMPLATE.to_string(),
            suffix: QWEN3_RERANKER_SUFFIX.to_string(),
            yes: "yes".to_string(),
            no: "no".to_string(),
            default_instruction: Some(QWEN3_RERANKER_DEFAULT_INSTRUCTION.to_string()),
        }
    }

    /// The template a model is served with under `choice` (`None`: the model has none).
    pub fn for_model(
        choice: &RerankTemplateChoice,
        arch: Arch,
        model_path: &Path,
        model_id: &str,
        tokenizer: &Tokenizer,
    ) -> Result<Option<Self>, RerankTemplateError> {
        match choice {
            RerankTemplateChoice::File(path) => Self::from_file(path, tokenizer).map(Some),
            RerankTemplateChoice::Qwen3Reranker => Self::qwen3_reranker(tokenizer).map(Some),
            RerankTemplateChoice::Auto if is_qwen3_reranker(arch, model_path, model_id) => {
                Self::qwen3_reranker(tokenizer).map(Some)
            }
            RerankTemplateChoice::Auto => Ok(None),
        }
    }

    /// Reads a `--rerank-template` JSON file.
    pub fn from_file(path: &Path, tokenizer: &Tokenizer) -> Result<Self, RerankTemplateError> {
        let read = |detail: String| RerankTemplateError::Read {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        let spec: RerankTemplateSpec =
            serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
        Self::new(spec, tokenizer)
    }

    /// Parses the placeholders and resolves the label words with `tokenizer`.
    pub fn new(
        spec: RerankTemplateSpec,
        tokenizer: &Tokenizer,
    ) -> Result<Self, RerankTemplateError> {
        let pieces = parse_template(&spec.template)?;
        let docs = pieces
            .iter()
            .filter(|p| **p == Piece::Field(Field::Document))
            .count();
        if docs != 1 {
            return Err(RerankTemplateError::Invalid(format!(
                "\"template\" must contain {{document}} exactly once (found {docs})"
            )));
        }
        let at = pieces
            .iter()
            .position(|p| *p == Piece::Field(Field::Document))
            .unwrap_or(0);
        let uses_instruction = pieces.contains(&Piece::Field(Field::Instruction));
        if spec.yes == spec.no {
            return Err(RerankTemplateError::Invalid(
                "\"yes\" and \"no\" must be different words".into(),
            ));
        }
        let yes_id = one_token(tokenizer, "yes", &spec.yes)?;
        let no_id = one_token(tokenizer, "no", &spec.no)?;
        let (head, item_head) = split_head(&pieces[..at]);
        Ok(RerankTemplate {
            head,
            item_head,
            tail: pieces[at + 1..].to_vec(),
            spec,
            uses_instruction,
            yes_id,
            no_id,
        })
    }

    pub fn spec(&self) -> &RerankTemplateSpec {
        &self.spec
    }

    /// `[yes, no]`.
    pub fn label_token_ids(&self) -> [u32; 2] {
        [self.yes_id, self.no_id]
    }

    /// The `/v1/score` form of a rerank request (see [`RerankPrompts`]).
    pub fn prompts<S: AsRef<str>>(
        &self,
        query: &str,
        documents: &[S],
        instruction: Option<&str>,
    ) -> Result<RerankPrompts, RerankTemplateError> {
        let instruction = self.instruction(instruction)?;
        let mut shared = self.spec.prefix.clone();
        fill(&mut shared, &self.head, instruction, query, "");
        let items = documents
            .iter()
            .map(|d| {
                let mut item = String::new();
                fill(&mut item, &self.item_head, instruction, query, "");
                item.push_str(d.as_ref());
                fill(&mut item, &self.tail, instruction, query, d.as_ref());
                item.push_str(&self.spec.suffix);
                item
            })
            .collect();
        Ok(RerankPrompts {
            query: shared,
            items,
            label_token_ids: self.label_token_ids(),
        })
    }

    /// The whole prompt text for one document (`query + item` of [`Self::prompts`]).
    pub fn prompt(
        &self,
        query: &str,
        document: &str,
        instruction: Option<&str>,
    ) -> Result<String, RerankTemplateError> {
        let p = self.prompts(query, &[document], instruction)?;
        Ok(format!("{}{}", p.query, p.items.concat()))
    }

    fn instruction<'a>(&'a self, given: Option<&'a str>) -> Result<&'a str, RerankTemplateError> {
        match (self.uses_instruction, given) {
            (true, Some(i)) => Ok(i),
            (true, None) => self
                .spec
                .default_instruction
                .as_deref()
                .ok_or(RerankTemplateError::MissingInstruction),
            (false, Some(_)) => Err(RerankTemplateError::UnexpectedInstruction),
            (false, None) => Ok(""),
        }
    }
}

/// Splits the template text before `{document}` into the shared query part and the start of each
/// item, after the last line break written by the template itself (never one inside a request's
/// query or instruction), so the query string ends where every tokenizer starts a new token and
/// tokenizing query and item apart gives the ids of the whole prompt. Without a line break, the
/// trailing whitespace moves to the item (a space before a word belongs to that word's token).
fn split_head(head: &[Piece]) -> (Vec<Piece>, Vec<Piece>) {
    let last_text = |pred: &dyn Fn(&str) -> Option<usize>| {
        head.iter().enumerate().rev().find_map(|(i, p)| match p {
            Piece::Text(t) => pred(t).map(|at| (i, at)),
            Piece::Field(_) => None,
        })
    };
    let cut = last_text(&|t: &str| t.rfind('\n').map(|at| at + 1)).or_else(|| match head.last() {
        Some(Piece::Text(t)) => Some((head.len() - 1, t.trim_end().len())),
        _ => None,
    });
    let Some((i, at)) = cut else {
        return (head.to_vec(), Vec::new());
    };
    let mut shared = head[..i].to_vec();
    let mut rest = Vec::new();
    if let Piece::Text(t) = &head[i] {
        let (a, b) = t.split_at(at);
        if !a.is_empty() {
            shared.push(Piece::Text(a.to_string()));
        }
        if !b.is_empty() {
            rest.push(Piece::Text(b.to_string()));
        }
    }
    rest.extend_from_slice(&head[i + 1..]);
    (shared, rest)
}

fn one_token(
    tokenizer: &Tokenizer,
    which: &'static str,
    word: &str,
) -> Result<u32, RerankTemplateError> {
    let ids = tokenizer.encode_without_specials(word).map_err(|e| {
        RerankTemplateError::Invalid(format!("tokenize the {which} label word {word:?}: {e}"))
    })?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(RerankTemplateError::LabelNotOneToken {
            which,
            word: word.to_string(),
            ids,
        }),
    }
}

fn fill(out: &mut String, pieces: &[Piece], instruction: &str, query: &str, document: &str) {
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(Field::Instruction) => out.push_str(instruction),
            Piece::Field(Field::Query) => out.push_str(query),
            Piece::Field(Field::Document) => out.push_str(document),
        }
    }
}

/// `{name}` placeholders with Python `str.format` escapes (`{{`, `}}`).
fn parse_template(t: &str) -> Result<Vec<Piece>, RerankTemplateError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => name.push(ch),
                        None => {
                            return Err(RerankTemplateError::Invalid(format!(
                                "unclosed placeholder {{{name} in \"template\""
                            )));
                        }
                    }
                }
                let field = match name.as_str() {
                    "instruction" => Field::Instruction,
                    "query" => Field::Query,
                    "document" => Field::Document,
                    _ => return Err(RerankTemplateError::UnknownPlaceholder { name }),
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(field));
            }
            '}' => {
                return Err(RerankTemplateError::Invalid(
                    "a single '}' in \"template\" (write '}}' for a literal brace)".into(),
                ));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_escapes() {
        let p = parse_template("a{{b}}{query}-{document}}}").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("a{b}".into()),
                Piece::Field(Field::Query),
                Piece::Text("-".into()),
                Piece::Field(Field::Document),
                Piece::Text("}".into()),
            ]
        );
        assert_eq!(
            parse_template("{query} {doc}").unwrap_err(),
            RerankTemplateError::UnknownPlaceholder { name: "doc".into() }
        );
        assert!(
            parse_template("{query")
                .unwrap_err()
                .to_string()
                .contains("unclosed")
        );
        assert!(
            parse_template("x } y")
                .unwrap_err()
                .to_string()
                .contains("'}}'")
        );
        let msg = RerankTemplateError::UnknownPlaceholder { name: "doc".into() }.to_string();
        assert!(msg.contains("{doc}") && msg.contains("{document}"), "{msg}");
    }
}
