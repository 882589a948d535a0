//! Text <-> token ids, identical to Hugging Face's tokenizer for the same model.
//!
//! Hugging Face directories ship `tokenizer.json`, which the `tokenizers` crate reads as is. A GGUF
//! file only stores the vocabulary, merges, token types and the name of its pre-tokenizer; from those
//! we rebuild the same byte-level BPE that transformers builds in
//! `integrations/gguf/gguf_tokenizer_mapping.py` (vocabulary respelled into the byte alphabet,
//! control tokens added as special tokens, user-defined ones as plain added tokens, the split regex
//! chosen by `tokenizer.ggml.pre`).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::weights::gguf::GgufFile;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

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

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (byte-level BPE, `tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(path: &Path) -> Result<Tokenizer> {
        let g = GgufFile::open(path)?;
        let model = g.meta_string("tokenizer.ggml.model")?.unwrap_or_default();
        if model != "gpt2" {
            bail!(
                "GGUF tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            );
        }
        let tokens = g
            .meta_strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("GGUF has no tokenizer.ggml.tokens"))?;
        let merges_raw = g
            .meta_strings("tokenizer.ggml.merges")?
            .ok_or_else(|| anyhow!("GGUF has no tokenizer.ggml.merges"))?;
        let types = g
            .meta_i64s("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        let pre = g.meta_string("tokenizer.ggml.pre")?.unwrap_or_default();
        let id = |k: &str| -> Result<Option<u32>> {
            g.meta_u64(k)?
                .map(u32::try_from)
                .transpose()
                .map_err(Into::into)
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let add_bos = g
            .meta_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);

        let alphabet = byte_alphabet();
        let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
        let spelled = |t: &str| t.chars().all(|c| in_alphabet.contains(&c));
        let vocab: Vocab = tokens
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
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("build BPE: {e}"))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
        let pre_tokenizer: PreTokenizerWrapper = match split_regex_for(&pre) {
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
        if add_bos {
            let bos_id =
                bos.ok_or_else(|| anyhow!("add_bos_token is set but there is no bos id"))?;
            let bos_tok = tokens
                .get(bos_id as usize)
                .ok_or_else(|| anyhow!("bos id {bos_id} outside the vocabulary"))?;
            let template = TemplateProcessing::builder()
                .try_single(format!("{bos_tok} $A"))
                .map_err(|e| anyhow!("bos template: {e}"))?
                .special_tokens(vec![((*bos_tok).to_owned(), bos_id)])
                .build()
                .map_err(|e| anyhow!("bos template: {e}"))?;
            inner.with_post_processor(Some(PostProcessorWrapper::Template(template)));
        }

        // Control tokens spelled outside the byte alphabet are llama.cpp mislabels that
        // transformers skips; user-defined ones must match whole in text but are not special.
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(t, ty)| **ty == TOKEN_TYPE_CONTROL && spelled(t))
            .map(|(t, _)| AddedToken::from(*t, true).normalized(false))
            .collect();
        inner.add_special_tokens(&control);
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, _)| AddedToken::from(*t, false).normalized(false))
            .collect();
        inner.add_tokens(&user);

        tracing::debug!(pre = %pre, vocab = tokens.len(), control = control.len(), "GGUF tokenizer built");
        Ok(Self {
            inner,
            bos_token_id: bos,
            eos_token_id: eos,
        })
    }

    /// Reads `tokenizer.json` (and bos/eos ids from `config.json` when present).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("load {}: {e}", path.display()))?;
        let config: Option<serde_json::Value> = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let id = |k: &str| -> Option<u32> {
            match config.as_ref()?.get(k)? {
                serde_json::Value::Array(a) => a.first()?.as_u64().map(|v| v as u32),
                v => v.as_u64().map(|v| v as u32),
            }
        };
        Ok(Self {
            bos_token_id: id("bos_token_id"),
            eos_token_id: id("eos_token_id"),
            inner,
        })
    }

    /// Loads the tokenizer that belongs to a model path (GGUF file or HF directory).
    pub fn for_model(model_path: &Path) -> Result<Tokenizer> {
        if model_path.is_dir() {
            Self::from_hf_dir(model_path)
        } else {
            Self::from_gguf(model_path)
        }
    }

    /// Token ids of `text` with the model's default special-token handling (a BOS only if the
    /// model adds one); special tokens written in the text become their single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included (transformers' `decode` default).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("detokenize: {e}"))
    }

    /// Number of ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine thread and request handlers share one tokenizer.
    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Tokenizer>();
    }

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
