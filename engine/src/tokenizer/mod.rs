//! Text <-> token ids, identical to Hugging Face's tokenizer for the same model.
//!
//! Hugging Face directories ship `tokenizer.json`, which the `tokenizers` crate reads as is. A GGUF
//! file only stores the vocabulary (with scores and token types), perhaps merges, and a few flags;
//! from those we rebuild the tokenizer transformers builds in
//! `integrations/gguf/gguf_tokenizer_mapping.py`, chosen by `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE ([`bpe_gguf`]: Qwen2, SmolLM2, Llama 3 ...);
//! - `llama`: SentencePiece BPE with byte fallback ([`sentencepiece_gguf`]: Gemma, Llama 2,
//!   Mistral, Phi-3 ...).
//!
//! Any other model (`t5`'s Unigram, `bert`'s WordPiece, `rwkv` ...) is refused by name: a
//! tokenizer that almost matches would score the wrong tokens without any sign of it.
//! Both builders share the GGUF vocabulary reading, the control / user-defined tokens and the
//! BOS/EOS post-processor, which live here.

mod bpe_gguf;
mod sentencepiece_gguf;

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessorWrapper};

use crate::weights::gguf::GgufFile;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The tokenizer models a GGUF file may name in `tokenizer.ggml.model` that are implemented.
const SUPPORTED_GGUF_MODELS: &str = "\"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)";

/// What a GGUF file says about its tokenizer (the `tokenizer.ggml.*` keys transformers reads).
struct GgufVocab<'a> {
    /// `general.architecture`: picks the SentencePiece variant (Gemma, Phi-3, plain).
    architecture: String,
    tokens: Vec<&'a str>,
    /// Token types, one per token (empty when the file has none).
    types: Vec<i64>,
    /// `tokenizer.ggml.merges`, when the file has them.
    merges: Option<Vec<&'a str>>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl<'a> GgufVocab<'a> {
    fn read(g: &'a GgufFile, model: &str) -> Result<Self> {
        let tokens = g
            .meta_strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("GGUF has no tokenizer.ggml.tokens"))?;
        let types = g
            .meta_i64s("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        let id = |k: &str| -> Result<Option<u32>> {
            let Some(v) = g.meta_u64(k)? else {
                return Ok(None);
            };
            let v = u32::try_from(v)?;
            if v as usize >= tokens.len() {
                bail!(
                    "GGUF {k} = {v} is outside the vocabulary of {}",
                    tokens.len()
                );
            }
            Ok(Some(v))
        };
        // transformers: a SentencePiece ("llama") file without the flag adds a BOS, as llama.cpp does.
        let add_bos_default = model == "llama";
        Ok(Self {
            architecture: g.meta_string("general.architecture")?.unwrap_or_default(),
            merges: g.meta_strings("tokenizer.ggml.merges")?,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: g
                .meta_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(add_bos_default),
            add_eos: g
                .meta_bool("tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
            tokens,
            types,
        })
    }

    fn tokens_of_type(&self, ty: i64) -> impl Iterator<Item = &'a str> + '_ {
        self.tokens
            .iter()
            .zip(&self.types)
            .filter(move |(_, t)| **t == ty)
            .map(|(tok, _)| *tok)
    }

    /// Adds the tokens the file marks as control as special tokens, the user-defined ones (when
    /// the model's vocabulary holds them) as plain added tokens, then the named specials
    /// (bos/eos/unk/pad) not added yet — transformers' `add_gguf_special_tokens` followed by
    /// `TokenizersBackend.__init__`. All match whole in raw text (`normalized = false`).
    /// `keep_control` filters control tokens (the byte-level vocabulary skips mislabelled ones).
    fn add_special_tokens(
        &self,
        inner: &mut tokenizers::Tokenizer,
        keep_control: impl Fn(&str) -> bool,
    ) {
        let control: Vec<AddedToken> = self
            .tokens_of_type(TOKEN_TYPE_CONTROL)
            .filter(|t| keep_control(t))
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        inner.add_special_tokens(&control);
        let user: Vec<AddedToken> = self
            .tokens_of_type(TOKEN_TYPE_USER_DEFINED)
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t, false).normalized(false))
            .collect();
        inner.add_tokens(&user);
        let added: HashSet<String> = inner
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content)
            .collect();
        let named: Vec<AddedToken> = [self.bos, self.eos, self.unk, self.pad]
            .into_iter()
            .flatten()
            .map(|id| self.tokens[id as usize])
            .filter(|t| !added.contains(*t))
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        inner.add_special_tokens(&named);
    }

    /// transformers' `update_post_processor`: `<bos> $A <eos>` with each end only when its flag is
    /// set (a flag without its token is dropped, as transformers does).
    fn post_processor(&self) -> Result<Option<PostProcessorWrapper>> {
        let bos = self.bos.filter(|_| self.add_bos);
        let eos = self.eos.filter(|_| self.add_eos);
        if bos.is_none() && eos.is_none() {
            return Ok(None);
        }
        let mut single = Vec::new();
        let mut specials = Vec::new();
        if let Some(id) = bos {
            single.push(format!("{}:0", self.tokens[id as usize]));
            specials.push((self.tokens[id as usize].to_owned(), id));
        }
        single.push("$A:0".to_owned());
        if let Some(id) = eos {
            single.push(format!("{}:0", self.tokens[id as usize]));
            specials.push((self.tokens[id as usize].to_owned(), id));
        }
        let template = TemplateProcessing::builder()
            .try_single(single.join(" "))
            .map_err(|e| anyhow!("BOS/EOS template: {e}"))?
            .special_tokens(specials)
            .build()
            .map_err(|e| anyhow!("BOS/EOS template: {e}"))?;
        Ok(Some(PostProcessorWrapper::Template(template)))
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes; refuses a `tokenizer.ggml.model` not implemented.
    pub fn from_gguf(path: &Path) -> Result<Tokenizer> {
        let g = GgufFile::open(path)?;
        let model = g
            .meta_string("tokenizer.ggml.model")?
            .ok_or_else(|| anyhow!("GGUF {} has no tokenizer.ggml.model", path.display()))?;
        let vocab = match model.as_str() {
            "gpt2" | "llama" => GgufVocab::read(&g, &model)?,
            other => bail!(
                "GGUF tokenizer.ggml.model = {other:?} is not supported (supported: {SUPPORTED_GGUF_MODELS})"
            ),
        };
        let inner = if model == "gpt2" {
            let pre = g.meta_string("tokenizer.ggml.pre")?.unwrap_or_default();
            bpe_gguf::build(&vocab, &pre)?
        } else {
            let scores = gguf_f32s(&g, "tokenizer.ggml.scores")?;
            sentencepiece_gguf::build(&vocab, scores.as_deref())?
        };
        tracing::debug!(model = %model, arch = %vocab.architecture, vocab = vocab.tokens.len(),
            "GGUF tokenizer built");
        Ok(Self {
            inner,
            bos_token_id: vocab.bos,
            eos_token_id: vocab.eos,
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

    /// Token ids of `text` without the special tokens the model adds (no BOS even where `encode`
    /// adds one), as `tokenizer(text, add_special_tokens=False)`: for text that already carries its
    /// special tokens, such as a rendered chat template.
    pub fn encode_without_specials(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Where each token of `text` ends (a byte offset into `text`, on a char boundary), tokenized
    /// without added special tokens: what cutting a text "after its first k tokens" needs.
    pub fn token_ends(&self, text: &str) -> Result<Vec<usize>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenize: {e}"))?;
        Ok(enc
            .get_offsets()
            .iter()
            .map(|&(_, end)| {
                let mut end = end.min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                end
            })
            .collect())
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

/// A metadata array of floats (`tokenizer.ggml.scores`), read here so the weights module's GGUF
/// accessors stay about tensors and scalars.
fn gguf_f32s(g: &GgufFile, key: &str) -> Result<Option<Vec<f32>>> {
    use candle_core::quantized::gguf_file::Value;
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let arr = v.to_vec().map_err(|e| anyhow!("GGUF key {key}: {e}"))?;
    arr.iter()
        .map(|x| match x {
            Value::F32(f) => Ok(*f),
            Value::F64(f) => Ok(*f as f32),
            other => Err(anyhow!("GGUF key {key}: expected floats, found {other:?}")),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
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
}
