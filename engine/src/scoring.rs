//! `/v1/score` semantics on top of the tokenizer and the model (brief §1).
//!
//! [`prepare`] turns a request into complete prompt token ids (text is joined as strings and
//! tokenized once, token ids are joined as lists, a `query_messages` chat is rendered with the
//! model's template and each item appended to it) plus labels per item, checking everything that
//! needs the vocabulary. [`finish_row`] turns one scored position's label values into scores.

use std::path::Path;

use scorer_protocol::{ScoreJob, ScoreRequest, ValidatedInput, ValidationError};

use crate::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// A model's chat template, or the 400 a `query_messages` request gets when it has none (or one
/// this server cannot render: the model still serves every other request).
pub type ChatSupport = Result<ChatTemplate, ValidationError>;

/// Loads the chat template of `model_path` for `prepare`; `model_id` names the model in the
/// refusal when there is none.
pub fn load_chat_support(model_path: &Path, model_id: &str) -> ChatSupport {
    match ChatTemplate::for_model(model_path) {
        Ok(Some(template)) => Ok(template),
        Ok(None) => Err(ValidationError::new(format!(
            "the model `{model_id}` has no chat template, so query_messages cannot be used with \
             it: send the prompt as query text"
        ))),
        Err(e) => {
            tracing::warn!(model = %model_id, error = %e,
                "the chat template cannot be used; query_messages will be refused");
            Err(ValidationError::new(format!(
                "the chat template of the model `{model_id}` cannot be used ({e}), so \
                 query_messages is not available: send the prompt as query text"
            )))
        }
    }
}

pub use scorer_protocol::Limits;

/// Validates and tokenizes a request. `vocab_size` is the model's (embedding rows), which bounds
/// every id the request may name.
pub fn prepare(
    req: &ScoreRequest,
    tokenizer: &Tokenizer,
    chat: &ChatSupport,
    vocab_size: usize,
    limits: &Limits,
) -> Result<ScoreJob, ValidationError> {
    let v = req.validate()?;
    let prompts: Vec<Vec<u32>> = match &v.input {
        ValidatedInput::Chat { messages, items } => {
            let template = chat.as_ref().map_err(Clone::clone)?;
            check_items(items.len(), limits)?;
            items
                .iter()
                .map(|item| {
                    let text = template
                        .score_prompt(messages, item)
                        .map_err(|e| ValidationError::new(format!("query_messages: {e}")))?;
                    // The template writes the special tokens the model wants.
                    tokenizer
                        .encode_without_specials(&text)
                        .map_err(|e| ValidationError::new(format!("could not tokenize: {e:#}")))
                })
                .collect::<Result<_, _>>()?
        }
        ValidatedInput::Text { query, items } => {
            check_items(items.len(), limits)?;
            items
                .iter()
                .map(|item| {
                    let text = if v.item_first {
                        format!("{item}{query}")
                    } else {
                        format!("{query}{item}")
                    };
                    tokenizer
                        .encode(&text)
                        .map_err(|e| ValidationError::new(format!("could not tokenize: {e:#}")))
                })
                .collect::<Result<_, _>>()?
        }
        ValidatedInput::Tokens { query, items } => {
            check_items(items.len(), limits)?;
            check_vocab(query, vocab_size)?;
            items
                .iter()
                .map(|item| {
                    check_vocab(item, vocab_size)?;
                    let (first, second) = if v.item_first {
                        (item, query)
                    } else {
                        (query, item)
                    };
                    Ok([first.as_slice(), second.as_slice()].concat())
                })
                .collect::<Result<_, ValidationError>>()?
        }
    };
    for labels in &v.labels {
        check_vocab(labels, vocab_size)?;
        if labels.len() > limits.max_labels {
            return Err(ValidationError::new(format!(
                "label_token_ids has {} ids; the limit is {} per item",
                labels.len(),
                limits.max_labels
            )));
        }
    }
    let mut total = 0usize;
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ValidationError::new(format!(
                "item {i}: the prompt (query + item) is empty; there is no position to score"
            )));
        }
        if prompt.len() > limits.max_prompt_tokens {
            return Err(ValidationError::new(format!(
                "item {i}: the prompt has {} tokens; the limit is {} tokens per prompt",
                prompt.len(),
                limits.max_prompt_tokens
            )));
        }
        total += prompt.len();
    }
    if total > limits.max_request_tokens {
        return Err(ValidationError::new(format!(
            "the request has {total} prompt tokens; the limit is {} per request",
            limits.max_request_tokens
        )));
    }
    Ok(ScoreJob {
        prompts,
        labels: v.labels,
        apply_softmax: v.apply_softmax,
        temperature: v.temperature,
        outputs: v.outputs,
    })
}

fn check_items(n: usize, limits: &Limits) -> Result<(), ValidationError> {
    if n > limits.max_items {
        return Err(ValidationError::new(format!(
            "the request has {n} items; the limit is {} items per request",
            limits.max_items
        )));
    }
    Ok(())
}

fn check_vocab(ids: &[u32], vocab_size: usize) -> Result<(), ValidationError> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(id) => Err(ValidationError::new(format!(
            "Token ID {id} is out of vocabulary (vocab size: {vocab_size})"
        ))),
        None => Ok(()),
    }
}

/// What the device returned for one scored position's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowValues {
    /// Log-probabilities under the full-vocabulary softmax.
    Logprobs,
    /// Raw logits of the label rows only (the full-vocabulary normaliser was never computed).
    Logits,
}

/// Scores of one item from its label values. With `apply_softmax` a softmax over the labels
/// (values divided by the temperature) — the same whether the values are logits or logprobs, since
/// they differ by a constant per row. Without it, the full-vocabulary probability `exp(logprob)`.
pub fn finish_row(
    values: &[f32],
    kind: RowValues,
    apply_softmax: bool,
    temperature: f64,
) -> Vec<f64> {
    if apply_softmax {
        // The maximum is subtracted before dividing by the temperature: every exponent is then
        // `<= 0` and the largest is exactly 0, so the sum is at least 1 and no temperature,
        // however small (5e-324 included), can overflow to inf/inf = NaN. A tiny temperature
        // gives the arg-max one-hot (ties share it), as its limit should.
        let max = values
            .iter()
            .map(|&v| f64::from(v))
            .fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = values
            .iter()
            .map(|&v| {
                let gap = f64::from(v) - max;
                // 0 / t is 0 for the maximum itself, whatever t is.
                if gap == 0.0 {
                    1.0
                } else {
                    (gap / temperature).exp()
                }
            })
            .collect();
        let sum: f64 = exps.iter().sum();
        exps.into_iter().map(|e| e / sum).collect()
    } else {
        debug_assert_eq!(
            kind,
            RowValues::Logprobs,
            "probabilities need full-vocabulary logprobs"
        );
        values.iter().map(|&v| f64::from(v).exp()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_ignore_shifts() {
        let a = finish_row(&[1.0, 2.0, 3.0], RowValues::Logits, true, 1.0);
        let b = finish_row(&[-9.0, -8.0, -7.0], RowValues::Logprobs, true, 1.0);
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-9);
        }
        // A higher temperature flattens the distribution.
        let hot = finish_row(&[1.0, 2.0, 3.0], RowValues::Logits, true, 10.0);
        assert!(hot[2] < a[2]);
    }

    #[test]
    fn tiny_temperatures_give_the_arg_max_not_nan() {
        for t in [5e-324, 1e-308, 1e-300, 1e-30] {
            let row = finish_row(&[-1.5, -0.25, -3.0], RowValues::Logits, true, t);
            assert_eq!(row, vec![0.0, 1.0, 0.0], "temperature {t}");
            let tie = finish_row(&[2.0, 2.0], RowValues::Logprobs, true, t);
            assert_eq!(tie, vec![0.5, 0.5], "temperature {t}");
        }
        // Huge temperatures flatten to uniform, still finite.
        let flat = finish_row(&[1.0, 9.0], RowValues::Logits, true, 1e308);
        assert!(flat.iter().all(|p| (p - 0.5).abs() < 1e-12), "{flat:?}");
    }

    #[test]
    fn probabilities_are_exp_logprobs() {
        let p = finish_row(&[0.0, (0.25f32).ln()], RowValues::Logprobs, false, 1.0);
        assert!((p[0] - 1.0).abs() < 1e-12);
        assert!((p[1] - 0.25).abs() < 1e-6);
    }
}
