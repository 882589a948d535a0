//! A rerank request prepared as a `/v1/score` job, by the one `/v1/score` validation
//! ([`crate::scoring::prepare`]): the template writes the shared query and one item per document,
//! the labels are `[yes, no]` with `apply_softmax`, so a rerank scores exactly what the same
//! `/v1/score` request would (same prompts, packing, prefix cache and limits).
//!
//! The one rerank-specific rule is the document length: a prompt over `--max-prompt-tokens` is a
//! 400 naming the document, unless the request asks for `truncate`, in which case the document is
//! cut after its first `k` tokens (tokenized alone, cut at the end of token `k`), `k` the most
//! that keeps the whole prompt within the limit. Other limits (items, tokens per request) are
//! answered by `/v1/score`'s own checks.

use scorer_protocol::rerank::{RerankInput, no_rerank_template};
use scorer_protocol::{
    Items, LabelIds, Limits, ScoreJob, ScoreRequest, TextOrTokens, ValidationError,
};

use super::{RerankPrompts, RerankTemplate};
use crate::scoring::prepare;
use crate::tokenizer::Tokenizer;

/// How many times a cut is tightened when the joined prompt still tokenizes over the limit
/// (tokens can merge across the cut; each round removes at least the excess).
const MAX_CUT_ROUNDS: usize = 8;

/// Validates and tokenizes a rerank request for a model served with `template` (`None`: it has
/// none, 400).
pub fn prepare_rerank(
    template: Option<&RerankTemplate>,
    model_id: &str,
    input: &RerankInput,
    tokenizer: &Tokenizer,
    vocab_size: usize,
    limits: &Limits,
) -> Result<ScoreJob, ValidationError> {
    let template = template.ok_or_else(|| no_rerank_template(model_id))?;
    let prompts = template.prompts(&input.query, &input.documents, input.instruction.as_deref())?;
    let first = match prepare(
        &score_request(&prompts),
        tokenizer,
        &no_chat(),
        vocab_size,
        limits,
    ) {
        Ok(job) => return Ok(job),
        Err(e) => e,
    };
    // Refused: say which document is too long, or cut the long ones when asked.
    let tokens = |text: &str| {
        tokenizer
            .encode(text)
            .map(|ids| ids.len())
            .map_err(|e| ValidationError::new(format!("could not tokenize: {e:#}")))
    };
    let max = limits.max_prompt_tokens;
    let mut documents = input.documents.clone();
    let mut cut_any = false;
    for (i, item) in prompts.items.iter().enumerate() {
        let len = tokens(&format!("{}{item}", prompts.query))?;
        if len <= max {
            continue;
        }
        if !input.truncate {
            return Err(ValidationError::new(format!(
                "document {i}: its prompt has {len} tokens; the limit is {max} tokens per prompt \
                 (--max-prompt-tokens); send \"truncate\": true to cut long documents"
            )));
        }
        documents[i] = cut(template, input, i, tokenizer, max)?;
        cut_any = true;
    }
    if !cut_any {
        return Err(first);
    }
    let prompts = template.prompts(&input.query, &documents, input.instruction.as_deref())?;
    prepare(
        &score_request(&prompts),
        tokenizer,
        &no_chat(),
        vocab_size,
        limits,
    )
}

/// Document `i` of `input` cut so that its whole prompt is at most `max` tokens.
fn cut(
    template: &RerankTemplate,
    input: &RerankInput,
    i: usize,
    tokenizer: &Tokenizer,
    max: usize,
) -> Result<String, ValidationError> {
    let bad = |e: anyhow::Error| ValidationError::new(format!("could not tokenize: {e:#}"));
    let instruction = input.instruction.as_deref();
    let prompt_len = |doc: &str| -> Result<usize, ValidationError> {
        let text = template.prompt(&input.query, doc, instruction)?;
        Ok(tokenizer.encode(&text).map_err(bad)?.len())
    };
    let fixed = prompt_len("")?;
    if fixed >= max {
        return Err(ValidationError::new(format!(
            "document {i}: the prompt without the document already has {fixed} tokens; the limit \
             is {max} tokens per prompt (--max-prompt-tokens), so truncating cannot help"
        )));
    }
    let doc = &input.documents[i];
    let ends = tokenizer.token_ends(doc).map_err(bad)?;
    let mut keep = (max - fixed).min(ends.len());
    for _ in 0..MAX_CUT_ROUNDS {
        let text = match keep {
            0 => "",
            k => &doc[..ends[k - 1]],
        };
        let len = prompt_len(text)?;
        if len <= max {
            return Ok(text.to_string());
        }
        keep = keep.saturating_sub(len - max);
    }
    Ok(String::new())
}

/// The `/v1/score` request a rerank is.
fn score_request(prompts: &RerankPrompts) -> ScoreRequest {
    ScoreRequest {
        model: None,
        query: Some(TextOrTokens::Text(prompts.query.clone())),
        items: Some(Items::Texts(prompts.items.clone())),
        label_token_ids: Some(LabelIds::Shared(
            prompts
                .label_token_ids
                .iter()
                .map(|&id| i64::from(id))
                .collect(),
        )),
        apply_softmax: true,
        item_first: false,
        temperature: None,
        ..ScoreRequest::default()
    }
}

/// A rerank prompt is plain text around the template: it never goes through a chat template.
fn no_chat() -> crate::scoring::ChatSupport {
    Err(ValidationError::new(
        "a rerank prompt is built by its rerank template, not a chat template",
    ))
}

impl From<super::RerankTemplateError> for ValidationError {
    fn from(e: super::RerankTemplateError) -> Self {
        ValidationError::new(e.to_string())
    }
}
