//! Command-line flags. Every scenario of the seed plan's Phase 5 (items 1/4/16/64, labels 2/8/32,
//! query 50/200/1000 tokens) is reachable: the lists are crossed into one scenario per triple.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use scorer_engine::model::{Attention, DType, LayerLayout};
use scorer_engine::packing::Packing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PackingArg {
    /// The query is computed once per request and shared by its items.
    Shared,
    /// Every query+item prompt is computed in full.
    PerItem,
}

impl From<PackingArg> for Packing {
    fn from(p: PackingArg) -> Packing {
        match p {
            PackingArg::Shared => Packing::SharedPrefix,
            PackingArg::PerItem => Packing::PerItem,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    Stacked,
    PerLayer,
}

impl From<LayoutArg> for LayerLayout {
    fn from(l: LayoutArg) -> LayerLayout {
        match l {
            LayoutArg::Stacked => LayerLayout::Stacked,
            LayoutArg::PerLayer => LayerLayout::PerLayer,
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "score_bench",
    about = "Throughput and latency of /v1/score on the engine"
)]
pub struct Args {
    /// GGUF file or HF model directory (default: the Qwen GGUF under $SCORER_HOME).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// PJRT plugin (default: the CPU plugin under $SCORER_HOME).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Items per request (comma list).
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub items: Vec<usize>,
    /// Label ids per item (comma list).
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub labels: Vec<usize>,
    /// Query length in tokens (comma list); queries are cut from real text, cycled if short.
    #[arg(long = "query-tokens", value_delimiter = ',', default_value = "200")]
    pub query_tokens: Vec<usize>,
    /// Force every item to exactly this many tokens (default: each item's natural length).
    #[arg(long = "item-tokens")]
    pub item_tokens: Option<usize>,
    /// Extra single-item scenarios whose one prompt is exactly N tokens (comma list), e.g. 1024:
    /// the prefill-efficiency scenario.
    #[arg(long, value_delimiter = ',')]
    pub prefill: Vec<usize>,
    /// Run only the --prefill scenarios (not the items x labels x query grid).
    #[arg(long = "only-prefill")]
    pub only_prefill: bool,
    /// Timed requests per scenario.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed requests per scenario before timing (the first one compiles its buckets).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = PackingArg::Shared)]
    pub packing: PackingArg,
    /// apply_softmax=true (label-only head). Default false, the API default (full-vocabulary
    /// logsumexp at scored positions).
    #[arg(long)]
    pub softmax: bool,
    /// Tokens per forward pass (the engine's largest bucket).
    #[arg(long = "max-batch-tokens", default_value_t = 2048)]
    pub max_batch_tokens: usize,
    /// Chunk of a chunked prefill (prompts longer than --max-batch-tokens).
    #[arg(long = "prefill-chunk-tokens",
        default_value_t = scorer_engine::runtime::DEFAULT_PREFILL_CHUNK_TOKENS)]
    pub prefill_chunk_tokens: usize,
    /// Weight layout of the program: per-layer (unrolled, one parameter per layer: the engine's
    /// default) or stacked (one `while` over stacked weights).
    #[arg(long, value_enum, default_value_t = LayoutArg::PerLayer)]
    pub layout: LayoutArg,
    /// Attention: tiled (the engine's default) or row-blocks (as `scorer --attention`).
    #[arg(long, default_value = "tiled", value_parser = |s: &str| Attention::parse(s).map_err(|e| e.to_string()))]
    pub attention: Attention,
    /// Precision: f32, bf16 or bf16-storage (as `scorer --dtype`).
    #[arg(long, default_value = "f32", value_parser = |s: &str| DType::parse(s).map_err(|e| e.to_string()))]
    pub dtype: DType,
    /// Timed runs of the matmul-ceiling program (median reported), at the start and at the end.
    #[arg(long = "ceiling-runs", default_value_t = 5)]
    pub ceiling_runs: usize,
    /// Skip the cold/warm start measurement (the engine then starts without a disk cache).
    #[arg(long = "no-start")]
    pub no_start: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write every scenario's token ids here (input of benches/hf_baseline.py) and exit.
    #[arg(long = "dump-inputs")]
    pub dump_inputs: Option<PathBuf>,
    /// Internal: run as the warm-start child on this populated executable cache, print JSON, exit.
    #[arg(long = "warm-start-child", hide = true)]
    pub warm_start_child: Option<PathBuf>,
    /// Ignored: `cargo bench` passes `--bench` to harness-less benches.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Args {
    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(|| scorer_home().join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    }

    pub fn plugin_path(&self) -> PathBuf {
        self.plugin
            .clone()
            .unwrap_or_else(scorer_engine::pjrt::default_plugin_path)
    }
}

fn scorer_home() -> PathBuf {
    if let Some(home) = std::env::var_os("SCORER_HOME") {
        return PathBuf::from(home);
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/scorer")
}
