//! What an API process loads of a model: the tokenizer and the metadata that validation needs
//! (vocabulary size, limits, special tokens), read from the GGUF header or `config.json`. No
//! tensor is read, no weight dequantized, no PJRT plugin or client opened: an API replica costs
//! a tokenizer's memory, not a model's (issue 14). Validation is the same function the engine
//! uses ([`crate::scoring::prepare`]), so both sides refuse the same requests; so is the rerank
//! preparation ([`crate::rerank_template::prepare_rerank`]) over the model's rerank template,
//! loaded here by the same rule as the engine's.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use scorer_protocol::rerank::RerankInput;
use scorer_protocol::{Preparer, ScoreJob, ScoreRequest, ValidationError};

use crate::chat_template::ChatTemplate;
use crate::rerank_template::{RerankTemplate, prepare_rerank};
use crate::runtime::EngineConfig;
use crate::scoring::{ChatSupport, Limits, load_chat_support, prepare};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, ModelConfig};

pub struct Frontend {
    model_id: String,
    tokenizer: Arc<Tokenizer>,
    config: ModelConfig,
    limits: Limits,
    chat: ChatSupport,
    rerank: Option<RerankTemplate>,
}

impl Frontend {
    /// Reads the tokenizer and the model's metadata of `cfg.model_path`; `cfg`'s device
    /// settings are not used.
    pub fn load(cfg: &EngineConfig) -> Result<Frontend> {
        let started = Instant::now();
        let tokenizer =
            Arc::new(Tokenizer::for_model(&cfg.model_path).with_context(|| {
                format!("loading the tokenizer of {}", cfg.model_path.display())
            })?);
        let config = weights::load_config(&cfg.model_path).with_context(|| {
            format!("reading the model metadata of {}", cfg.model_path.display())
        })?;
        let rerank = cfg.load_rerank_template(config.arch, &tokenizer)?;
        tracing::info!(model = %cfg.model_id, arch = %config.arch, vocab = config.vocab_size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tokenizer and model metadata loaded (no weights)");
        Ok(Frontend {
            chat: load_chat_support(&cfg.model_path, &cfg.model_id),
            model_id: cfg.model_id.clone(),
            tokenizer,
            limits: cfg.limits.within_context(config.context_length),
            config,
            rerank,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The model's chat template, if it has one this server can render.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref().ok()
    }

    pub fn rerank_template(&self) -> Option<&RerankTemplate> {
        self.rerank.as_ref()
    }
}

impl Preparer for Frontend {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError> {
        let vocab = self.config.vocab_size;
        prepare(req, &self.tokenizer, &self.chat, vocab, &self.limits)
    }

    fn prepare_rerank(&self, req: &RerankInput) -> Result<ScoreJob, ValidationError> {
        prepare_rerank(
            self.rerank.as_ref(),
            &self.model_id,
            req,
            &self.tokenizer,
            self.config.vocab_size,
            &self.limits,
        )
    }
}
