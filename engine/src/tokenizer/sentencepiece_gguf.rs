//! SentencePiece vocabularies from a GGUF (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2,
//! Mistral, Phi-3 ...), rebuilt the way transformers 5 does (`gguf_tokenizer_mapping.py`):
//! not SentencePiece's own algorithm, but a BPE with byte fallback whose merges are *derived*
//! from the vocabulary when the file has none (`tokenization_utils_base.generate_merges`), plus the
//! normalizer / pre-tokenizer / decoder of the family's tokenizer class. Matching transformers
//! (the reference the scores are checked against) matters more than matching sentencepiece.
//!
//! Three variants, picked by `general.architecture` as transformers picks them:
//! - Gemma (`gemma`, `gemma2`, `gemma3`): `GemmaTokenizer` — spaces replaced by "▁" in a
//!   normalizer, nothing prepended; tokens that are runs of spaces are respelled as runs of "▁";
//!   merges ordered by the tokens' position in the file (Gemma's scores do not follow its merges);
//! - Phi-3: a "▁" prepended by a normalizer, then spaces replaced, no pre-tokenizer;
//! - any other (`llama`, `mistral` ...): `LlamaTokenizer` — Metaspace pre-tokenizer prepending
//!   "▁" to the first piece only, merges ordered by the file's scores, the decoder strips the
//!   leading space again. `tokenizer.ggml.add_space_prefix` is not read: transformers ignores it
//!   (checked: a tiny file with it false tokenizes the same).
//!
//! Gemma 3's 262,144-token vocabulary yields 514,906 merges; deriving them and building the BPE
//! takes a few seconds at load, once.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::GgufVocab;

/// SentencePiece's word-boundary mark, "▁" (U+2581).
const SPACE_MARK: char = '\u{2581}';

/// Which tokenizer class transformers hands a SentencePiece GGUF to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    Gemma,
    Phi3,
    Llama,
}

impl Flavour {
    fn of(architecture: &str) -> Self {
        match architecture {
            "gemma" | "gemma2" | "gemma3" => Flavour::Gemma,
            "phi3" => Flavour::Phi3,
            _ => Flavour::Llama,
        }
    }
}

/// Python's `str.isspace` (Rust's `is_whitespace` plus the four ASCII separators 0x1C..0x1F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// A token written as real spaces ("  ") where `GemmaTokenizer` looks it up as "▁▁": a token
/// containing a space and nothing but whitespace becomes that many "▁".
fn gemma_respelling(token: &str) -> String {
    if token.contains(' ') && token.chars().all(py_isspace) {
        std::iter::repeat_n(SPACE_MARK, token.chars().count()).collect()
    } else {
        token.to_owned()
    }
}

/// A Python dict built from `(key, value)` pairs in order: a repeated key keeps its first
/// position and takes its last value.
fn py_dict<'a, V>(
    pairs: impl Iterator<Item = (&'a str, V)>,
) -> (Vec<(&'a str, V)>, HashMap<&'a str, usize>) {
    let mut entries: Vec<(&'a str, V)> = Vec::new();
    let mut slot: HashMap<&'a str, usize> = HashMap::new();
    for (k, v) in pairs {
        match slot.get(k) {
            Some(&i) => entries[i].1 = v,
            None => {
                slot.insert(k, entries.len());
                entries.push((k, v));
            }
        }
    }
    (entries, slot)
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every scored token into
/// two vocabulary pieces, sorted by (score, left length, right length) descending; ties keep the
/// order of the scores, then of the pieces' ids. Lengths count code points, as Python does.
fn generate_merges(ids: &HashMap<&str, u32>, scores: &[(&str, f64)]) -> Merges {
    struct Candidate<'a> {
        left: &'a str,
        right: &'a str,
        score: f64,
        left_len: usize,
        right_len: usize,
    }
    let mut all: Vec<Candidate<'_>> = Vec::new();
    let mut local: Vec<(u32, u32, Candidate<'_>)> = Vec::new();
    for &(merged, score) in scores {
        local.clear();
        for (at, _) in merged.char_indices().skip(1) {
            let (left, right) = merged.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                let left_len = left.chars().count();
                let right_len = merged.chars().count() - left_len;
                local.push((
                    l,
                    r,
                    Candidate {
                        left,
                        right,
                        score,
                        left_len,
                        right_len,
                    },
                ));
            }
        }
        local.sort_by_key(|(l, r, _)| (*l, *r));
        all.extend(local.drain(..).map(|(_, _, c)| c));
    }
    // Python's `sorted(..., reverse=True)` is stable: equal keys keep their order. -0.0 == 0.0.
    all.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_len.cmp(&a.left_len))
            .then(b.right_len.cmp(&a.right_len))
    });
    all.into_iter()
        .map(|c| (c.left.to_owned(), c.right.to_owned()))
        .collect()
}

/// The SentencePiece-derived BPE tokenizer of `vocab`; `scores` is `tokenizer.ggml.scores`.
pub(super) fn build(
    vocab: &GgufVocab<'_>,
    scores: Option<&[f32]>,
) -> Result<tokenizers::Tokenizer> {
    let flavour = Flavour::of(&vocab.architecture);
    let spelled: Vec<String> = match flavour {
        Flavour::Gemma => vocab.tokens.iter().map(|t| gemma_respelling(t)).collect(),
        Flavour::Phi3 | Flavour::Llama => vocab.tokens.iter().map(|t| (*t).to_owned()).collect(),
    };
    let (entries, _) = py_dict(
        spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32)),
    );
    let ids: HashMap<&str, u32> = entries.iter().copied().collect();

    let merges: Merges = match &vocab.merges {
        Some(raw) => raw
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| anyhow!("malformed merge {m:?}"))
            })
            .collect::<Result<_>>()?,
        None => {
            let order: Vec<(&str, f64)> = match flavour {
                // Gemma: the merge order is the file's token order (score = -position).
                Flavour::Gemma => {
                    py_dict(
                        spelled
                            .iter()
                            .enumerate()
                            .map(|(i, t)| (t.as_str(), -(i as f64))),
                    )
                    .0
                }
                Flavour::Phi3 | Flavour::Llama => {
                    let scores = scores.ok_or_else(|| {
                        anyhow!("GGUF has neither tokenizer.ggml.merges nor tokenizer.ggml.scores")
                    })?;
                    if scores.len() != spelled.len() {
                        bail!(
                            "GGUF tokenizer.ggml.scores has {} entries for {} tokens",
                            scores.len(),
                            spelled.len()
                        );
                    }
                    py_dict(
                        spelled
                            .iter()
                            .zip(scores)
                            .map(|(t, s)| (t.as_str(), f64::from(*s))),
                    )
                    .0
                }
            };
            generate_merges(&ids, &order)
        }
    };

    let bpe_vocab: Vocab = entries.iter().map(|(t, i)| ((*t).to_owned(), *i)).collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if flavour == Flavour::Gemma {
        // `GemmaTokenizer` names its unknown token; `LlamaTokenizer` leaves the BPE without one.
        builder = builder.unk_token("<unk>".to_owned());
    }
    let bpe = builder.build().map_err(|e| anyhow!("build BPE: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);

    let mark = SPACE_MARK.to_string();
    let replace_spaces =
        || Replace::new(" ", mark.as_str()).map_err(|e| anyhow!("space normalizer: {e}"));
    let decode_replace =
        Replace::new(mark.as_str(), " ").map_err(|e| anyhow!("space decoder: {e}"))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(decode_replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    match flavour {
        Flavour::Gemma => {
            inner.with_normalizer(Some(NormalizerWrapper::Replace(replace_spaces()?)));
            let split = Split::new(
                SplitPattern::String(" ".to_owned()),
                SplitDelimiterBehavior::MergedWithPrevious,
                false,
            )
            .map_err(|e| anyhow!("space split: {e}"))?;
            inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Split(split)));
        }
        Flavour::Phi3 => {
            let normalizer = NormalizerSequence::new(vec![
                NormalizerWrapper::Prepend(Prepend::new(mark.clone())),
                NormalizerWrapper::Replace(replace_spaces()?),
            ]);
            inner.with_normalizer(Some(NormalizerWrapper::Sequence(normalizer)));
            decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
        }
        Flavour::Llama => {
            let metaspace = Metaspace::new(SPACE_MARK, PrependScheme::First, false);
            inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(metaspace)));
            decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
        }
    }
    inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
        decoders,
    ))));
    inner.with_post_processor(vocab.post_processor()?);
    vocab.add_special_tokens(&mut inner, |_| true);
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_respells_only_runs_of_spaces() {
        assert_eq!(gemma_respelling("   "), "▁▁▁");
        assert_eq!(gemma_respelling(" \t"), "▁▁");
        assert_eq!(gemma_respelling("\t\t"), "\t\t");
        assert_eq!(gemma_respelling(" a"), " a");
        assert_eq!(gemma_respelling("\n"), "\n");
    }

    #[test]
    fn python_dict_keeps_first_position_and_last_value() {
        let (entries, slot) = py_dict([("a", 1), ("b", 2), ("a", 3)].into_iter());
        assert_eq!(entries, vec![("a", 3), ("b", 2)]);
        assert_eq!(slot["b"], 1);
    }

    /// The order transformers' `generate_merges` gives for a small vocabulary (checked by hand
    /// against the Python function): best score first, then the longer left piece.
    #[test]
    fn merges_follow_scores_then_left_length() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let ids: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, i as u32))
            .collect();
        let scores: Vec<(&str, f64)> = tokens
            .iter()
            .zip([0.0, 0.0, 0.0, -1.0, -2.0, -0.5])
            .map(|(t, s)| (*t, s))
            .collect();
        let merges = generate_merges(&ids, &scores);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]
        );
    }
}
