//! The engine as a service: tokenizer on the caller's side, PJRT on one dedicated thread.
//!
//! PJRT handles are owned by a single engine thread (one actor per concern); callers send it work
//! over a channel and block on the reply. Tokenization and validation happen on the caller's thread
//! so the device thread only ever runs forward passes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use scorer_protocol::{
    ScoreBackend, ScoreJob, ScoreOutput, ScoreRequest, ScoreResponse, ValidationError,
};

use crate::model::{DType, DirStore, HeadVariant, Model, ModelStats};
use crate::packing::{Packing, plan};
use crate::pjrt::{Client, Plugin};
use crate::scoring::{Limits, RowValues, finish_row, prepare};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, ModelConfig};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A GGUF file or a Hugging Face model directory.
    pub model_path: PathBuf,
    /// The name answered in responses and `/v1/models`.
    pub model_id: String,
    pub plugin_path: PathBuf,
    pub dtype: DType,
    /// Which of the plugin's addressable devices holds the weights.
    pub device: usize,
    pub limits: Limits,
    pub packing: Packing,
    /// Tokens per forward pass (the largest token bucket used).
    pub max_batch_tokens: usize,
    /// Directory of serialized executables, so a warm start compiles nothing (None: memory only).
    pub compile_cache: Option<PathBuf>,
}

impl EngineConfig {
    pub fn new(model_path: PathBuf, model_id: String) -> Self {
        EngineConfig {
            model_path,
            model_id,
            plugin_path: crate::pjrt::default_plugin_path(),
            dtype: DType::F32,
            device: 0,
            limits: Limits::default(),
            packing: Packing::default(),
            max_batch_tokens: 2048,
            compile_cache: None,
        }
    }
}

/// Why a scoring call failed: the caller's fault (400) or ours.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    Engine(String),
}

type Reply<T> = mpsc::SyncSender<T>;

enum Command {
    Score(Vec<ScoreJob>, Reply<Vec<Result<ScoreOutput, String>>>),
    Stats(Reply<ModelStats>),
}

pub struct Engine {
    model_id: String,
    tokenizer: Arc<Tokenizer>,
    config: ModelConfig,
    limits: Limits,
    tx: mpsc::Sender<Command>,
}

impl Engine {
    /// Loads the tokenizer and weights, starts the engine thread and uploads the weights to the
    /// device once. Returns when the engine can score.
    pub fn load(cfg: EngineConfig) -> Result<Engine> {
        let started = Instant::now();
        let tokenizer =
            Arc::new(Tokenizer::for_model(&cfg.model_path).with_context(|| {
                format!("loading the tokenizer of {}", cfg.model_path.display())
            })?);
        let host = weights::load(&cfg.model_path)
            .with_context(|| format!("loading weights from {}", cfg.model_path.display()))?;
        let config = host.config.clone();
        tracing::info!(model = %cfg.model_id, arch = %config.arch, layers = config.num_layers,
            elapsed_ms = started.elapsed().as_millis() as u64, "weights loaded");

        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let thread_cfg = cfg.clone();
        thread::Builder::new()
            .name("scorer-engine".into())
            .spawn(move || {
                let model = match start_device(&thread_cfg, host) {
                    Ok(model) => {
                        let _ = ready_tx.send(Ok(()));
                        model
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                serve(&model, &thread_cfg, rx);
            })
            .context("could not start the engine thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the engine thread exited during start-up"))??;
        tracing::info!(model = %cfg.model_id, elapsed_ms = started.elapsed().as_millis() as u64,
            "engine ready");
        Ok(Engine {
            model_id: cfg.model_id,
            tokenizer,
            config,
            limits: cfg.limits,
            tx,
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

    /// Validate, tokenize and score one request end to end.
    pub fn score(&self, req: &ScoreRequest) -> Result<ScoreResponse, ScoreError> {
        let job = self.prepare(req)?;
        let out = self
            .score_batch(std::slice::from_ref(&job))
            .pop()
            .unwrap_or_else(|| Err("the engine returned no result".to_string()))
            .map_err(ScoreError::Engine)?;
        Ok(ScoreResponse::new(
            out.scores,
            self.model_id.clone(),
            out.prompt_tokens,
        ))
    }

    /// Counters of the device side: forward passes, tokens computed, compiles, decode steps.
    pub fn stats(&self) -> Result<ModelStats> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Command::Stats(reply))
            .map_err(|_| anyhow!("the engine thread has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow!("the engine thread has stopped"))
    }
}

impl ScoreBackend for Engine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn prepare(&self, req: &ScoreRequest) -> Result<ScoreJob, ValidationError> {
        prepare(req, &self.tokenizer, self.config.vocab_size, &self.limits)
    }

    fn score_batch(&self, jobs: &[ScoreJob]) -> Vec<Result<ScoreOutput, String>> {
        let (reply, rx) = mpsc::sync_channel(1);
        let stopped = || vec![Err("the engine thread has stopped".to_string()); jobs.len()];
        if self.tx.send(Command::Score(jobs.to_vec(), reply)).is_err() {
            return stopped();
        }
        rx.recv().unwrap_or_else(|_| stopped())
    }
}

fn start_device(cfg: &EngineConfig, host: weights::ModelWeights) -> Result<Model> {
    let started = Instant::now();
    let plugin = Plugin::load(&cfg.plugin_path)
        .with_context(|| format!("loading the PJRT plugin {}", cfg.plugin_path.display()))?;
    let client = Client::new(&plugin).context("creating the PJRT client")?;
    let mut model =
        Model::load(client, &host, cfg.dtype, cfg.device).context("uploading the weights")?;
    model.set_max_tokens(cfg.max_batch_tokens);
    if let Some(dir) = &cfg.compile_cache {
        let store = DirStore::new(dir.clone())
            .with_context(|| format!("opening the executable cache {}", dir.display()))?;
        model.set_store(Arc::new(store));
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, dtype = ?cfg.dtype,
        "weights on the device");
    Ok(model)
}

fn serve(model: &Model, cfg: &EngineConfig, rx: mpsc::Receiver<Command>) {
    for command in rx {
        match command {
            Command::Score(jobs, reply) => {
                let _ = reply.send(run_jobs(model, cfg, &jobs));
            }
            Command::Stats(reply) => {
                let _ = reply.send(model.stats());
            }
        }
    }
}

/// Scores jobs with as few forward passes as the batch limit allows. A failing pass fails only the
/// jobs that had rows in it.
fn run_jobs(
    model: &Model,
    cfg: &EngineConfig,
    jobs: &[ScoreJob],
) -> Vec<Result<ScoreOutput, String>> {
    let mut rows: Vec<Vec<Option<Vec<f64>>>> =
        jobs.iter().map(|j| vec![None; j.prompts.len()]).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
    // Probabilities need the full-vocabulary normaliser; a pass of softmax-only jobs needs only
    // the label rows of the head.
    let (softmax_jobs, full_jobs): (Vec<usize>, Vec<usize>) =
        (0..jobs.len()).partition(|&j| jobs[j].apply_softmax);
    for (group, head, kind) in [
        (softmax_jobs, HeadVariant::LabelLogits, RowValues::Logits),
        (full_jobs, HeadVariant::FullLogprobs, RowValues::Logprobs),
    ] {
        let refs: Vec<&ScoreJob> = group.iter().map(|&j| &jobs[j]).collect();
        for pass in plan(&refs, cfg.packing, cfg.max_batch_tokens) {
            match model.run(&pass.batch, head) {
                Ok(values) => {
                    for (target, row) in pass.rows.iter().zip(values) {
                        let job = &jobs[group[target.job]];
                        let width = job.labels[target.item].len();
                        rows[group[target.job]][target.item] = Some(finish_row(
                            &row[..width.min(row.len())],
                            kind,
                            job.apply_softmax,
                            job.temperature,
                        ));
                    }
                }
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "forward pass failed");
                    for target in &pass.rows {
                        failed[group[target.job]] = Some(format!("forward pass failed: {err:#}"));
                    }
                }
            }
        }
    }
    jobs.iter()
        .zip(rows)
        .zip(failed)
        .map(|((job, rows), failed)| match failed {
            Some(err) => Err(err),
            None => rows
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(|scores| ScoreOutput {
                    scores,
                    prompt_tokens: job.prompt_tokens(),
                })
                .ok_or_else(|| "an item was not scored".to_string()),
        })
        .collect()
}
