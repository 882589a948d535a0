//! The requests a scenario sends: a query of exactly N tokens cut from real text, real product
//! titles as items, and L distinct label ids. Everything is token ids, so this bench and the
//! Hugging Face baseline (which reads them from `--dump-inputs`) feed the model the same tokens.

use anyhow::{Context, Result, bail};
use scorer_engine::tokenizer::Tokenizer;
use scorer_protocol::{Items, LabelIds, ScoreRequest, TextOrTokens};
use serde::Serialize;

const QUERY_TEXT: &str = include_str!("../data/query.txt");
const ITEM_TITLES: &str = include_str!("../data/items.txt");
/// Common single words; their ids (after "Yes"/"No") are the label sets of 8 and 32.
const LABEL_WORDS: &str = " Yes No yes no maybe true false good bad high low red blue green \
    one two three four five six seven eight nine ten cat dog house water fire tree book door \
    hand city light sound";

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    /// Requested query length (the query is exactly this many tokens).
    pub query_tokens: usize,
    pub items: usize,
    pub labels: usize,
    pub query_ids: Vec<u32>,
    pub item_ids: Vec<Vec<u32>>,
    pub label_ids: Vec<u32>,
    pub apply_softmax: bool,
}

impl Scenario {
    pub fn request(&self) -> ScoreRequest {
        let ids = |v: &[u32]| v.iter().map(|&t| i64::from(t)).collect::<Vec<i64>>();
        ScoreRequest {
            model: None,
            query: Some(TextOrTokens::Tokens(ids(&self.query_ids))),
            items: Some(Items::Tokens(
                self.item_ids.iter().map(|item| ids(item)).collect(),
            )),
            label_token_ids: Some(LabelIds::Shared(ids(&self.label_ids))),
            apply_softmax: self.apply_softmax,
            item_first: false,
            temperature: None,
            ..Default::default()
        }
    }

    /// Prompt tokens as the API counts them: every item with its own copy of the query.
    pub fn prompt_tokens(&self) -> usize {
        self.item_ids
            .iter()
            .map(|item| self.query_ids.len() + item.len())
            .sum()
    }

    /// The prompts the model sees, one per item.
    pub fn prompts(&self) -> Vec<Vec<u32>> {
        self.item_ids
            .iter()
            .map(|item| [self.query_ids.as_slice(), item].concat())
            .collect()
    }
}

pub struct Workload {
    query: Vec<u32>,
    items: Vec<Vec<u32>>,
    labels: Vec<u32>,
}

impl Workload {
    pub fn new(tokenizer: &Tokenizer) -> Result<Workload> {
        let query = tokenizer
            .encode(QUERY_TEXT)
            .context("tokenizing the query text")?;
        let items = ITEM_TITLES
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|title| tokenizer.encode(&format!("\nProduct: {title}\nRelevant:")))
            .collect::<Result<Vec<_>>>()
            .context("tokenizing the item titles")?;
        let mut labels: Vec<u32> = Vec::new();
        for word in LABEL_WORDS.split_whitespace() {
            let ids = tokenizer.encode(&format!(" {word}"))?;
            // Single-token words only, each id once: a label is one vocabulary entry.
            if let [id] = ids[..]
                && !labels.contains(&id)
            {
                labels.push(id);
            }
        }
        if query.is_empty() || items.is_empty() {
            bail!("the bench corpus tokenized to nothing");
        }
        Ok(Workload {
            query,
            items,
            labels,
        })
    }

    pub fn max_labels(&self) -> usize {
        self.labels.len()
    }

    pub fn scenario(
        &self,
        query_tokens: usize,
        items: usize,
        labels: usize,
        item_tokens: Option<usize>,
        apply_softmax: bool,
    ) -> Result<Scenario> {
        if labels > self.labels.len() {
            bail!(
                "at most {} distinct single-token labels are available, {labels} asked",
                self.labels.len()
            );
        }
        let item_ids = (0..items)
            .map(|i| {
                let item = &self.items[i % self.items.len()];
                match item_tokens {
                    Some(n) => cycle(item, n),
                    None => item.clone(),
                }
            })
            .collect();
        Ok(Scenario {
            name: format!("q{query_tokens}_i{items}_l{labels}"),
            query_tokens,
            items,
            labels,
            query_ids: cycle(&self.query, query_tokens),
            item_ids,
            label_ids: self.labels[..labels].to_vec(),
            apply_softmax,
        })
    }

    /// One item whose prompt is exactly `total` tokens: a prefill of known length.
    pub fn prefill(&self, total: usize, apply_softmax: bool) -> Result<Scenario> {
        let item = self.items[0].clone();
        if total <= item.len() {
            bail!("a prefill of {total} tokens is shorter than its item");
        }
        let query_tokens = total - item.len();
        Ok(Scenario {
            name: format!("prefill{total}"),
            query_tokens,
            items: 1,
            labels: 2,
            query_ids: cycle(&self.query, query_tokens),
            item_ids: vec![item],
            label_ids: self.labels[..2].to_vec(),
            apply_softmax,
        })
    }
}

/// The first `n` tokens of `ids` repeated as often as needed.
fn cycle(ids: &[u32], n: usize) -> Vec<u32> {
    ids.iter().copied().cycle().take(n).collect()
}
