//! Byte-level BPE from a GGUF (`tokenizer.ggml.model = "gpt2"`: Qwen2, SmolLM2, Llama 3 ...),
//! rebuilt as transformers' `byte_level_tokenizer` does: the vocabulary respelled into GPT-2's
//! byte alphabet, the file's merges, the split regex chosen by `tokenizer.ggml.pre`, a ByteLevel
//! decoder; control tokens spelled outside the byte alphabet are llama.cpp mislabels that
//! transformers skips.

use std::collections::HashSet;

use anyhow::{Result, anyhow};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::GgufVocab;

/// Qwen2's split regex (transformers `models/qwen2/tokenization_qwen2.py`): digits one at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split regex: digits in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers pairs with a `tokenizer.ggml.pre` name; `None` keeps GPT-2's
/// built-in ByteLevel regex (what transformers does for names it does not list, `smollm` included).
fn split_regex_for(pre: &str) -> Option<&'static str> {
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => Some(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => Some(LLAMA3_SPLIT),
        _ => None,
    }
}

/// GPT-2's reversible byte -> printable char map (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// The byte-level BPE tokenizer of `vocab` (whose file must carry merges).
pub(super) fn build(vocab: &GgufVocab<'_>, pre: &str) -> Result<tokenizers::Tokenizer> {
    let merges_raw = vocab
        .merges
        .as_ref()
        .ok_or_else(|| anyhow!("GGUF has no tokenizer.ggml.merges"))?;
    let alphabet = byte_alphabet();
    let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
    let spelled = |t: &str| t.chars().all(|c| in_alphabet.contains(&c));
    let bpe_vocab: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = if spelled(t) {
                (*t).to_owned()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            };
            (key, i as u32)
        })
        .collect();
    let merges: Merges = merges_raw
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| anyhow!("malformed merge {m:?}"))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .build()
        .map_err(|e| anyhow!("build BPE: {e}"))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let pre_tokenizer: PreTokenizerWrapper = match split_regex_for(pre) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("split regex for {pre:?}: {e}"))?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        None => byte_level(true).into(),
    };
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    inner.with_post_processor(vocab.post_processor()?);
    vocab.add_special_tokens(&mut inner, spelled);
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], '\u{120}'); // "Ġ"
        assert_eq!(a[b'\n' as usize], '\u{10A}'); // "Ċ"
        assert_eq!(a[0xAD], '\u{143}');
        let unique: HashSet<char> = a.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }
}
