//! `scorer`: one binary for every role (serve, api, worker) and the tools around it.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use scorer::{fetch, home};
use scorer_engine::model::DType;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::{Items, LabelIds, ScoreRequest, TextOrTokens};

#[derive(Parser)]
#[command(
    name = "scorer",
    version,
    about = "Score (query, item) pairs with a causal LM on XLA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download, verify and unpack the PJRT CPU plugin and the models into SCORER_HOME.
    Fetch {
        /// Only these artifacts (`xla-cpu-pjrt` or a model alias); all of them when omitted.
        #[arg(long = "model", value_name = "ALIAS")]
        only: Vec<String>,
        /// Only the PJRT plugin.
        #[arg(long, conflicts_with = "only")]
        plugin: bool,
        /// Cache directory (default ~/.cache/scorer).
        #[arg(long, env = "SCORER_HOME")]
        home: Option<PathBuf>,
    },
    /// Score one request on the engine directly and print the response JSON.
    Score {
        #[command(flatten)]
        engine: EngineArgs,
        /// The query text.
        #[arg(long, default_value = "")]
        query: String,
        /// An item text (repeat for several items).
        #[arg(long = "item", value_name = "TEXT")]
        items: Vec<String>,
        /// A label token id (repeat for several labels).
        #[arg(long = "label", value_name = "ID", required = true)]
        labels: Vec<i64>,
        #[arg(long)]
        apply_softmax: bool,
        #[arg(long)]
        item_first: bool,
        #[arg(long)]
        temperature: Option<f64>,
    },
}

/// What the engine runs: the model, the PJRT plugin, the precision.
#[derive(Args, Clone)]
struct EngineArgs {
    /// An alias (see `scorer fetch`), a GGUF path, a Hugging Face directory, or a hub id.
    #[arg(long, env = "SCORER_MODEL", default_value = home::DEFAULT_MODEL)]
    model: String,
    /// The PJRT plugin shared library (default: the fetched CPU plugin).
    #[arg(long, env = "SCORER_PJRT_PLUGIN")]
    pjrt_plugin: Option<PathBuf>,
    /// Compute precision: f32 (CPU default) or bf16 (the usual choice on TPU and GPU).
    #[arg(long, env = "SCORER_DTYPE", default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
    /// Which of the plugin's devices holds the weights.
    #[arg(long, env = "SCORER_DEVICE", default_value_t = 0)]
    device: usize,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s).map_err(|e| e.to_string())
}

impl EngineArgs {
    fn config(&self) -> Result<EngineConfig> {
        let path = home::resolve_model(&self.model)?;
        let mut cfg = EngineConfig::new(path, self.model.clone());
        if let Some(plugin) = &self.pjrt_plugin {
            cfg.plugin_path = plugin.clone();
        }
        cfg.dtype = self.dtype;
        cfg.device = self.device;
        cfg.compile_cache = Some(home::scorer_home().join("executables"));
        Ok(cfg)
    }
}

fn main() {
    if let Err(err) = run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Fetch { only, plugin, home } => {
            let home = home.unwrap_or_else(home::scorer_home);
            let only = if plugin {
                vec![fetch::PLUGIN_ALIAS.to_string()]
            } else {
                only
            };
            for (alias, outcome) in fetch::fetch(&home, &only)? {
                println!("{alias}: {outcome:?}");
            }
            Ok(())
        }
        Command::Score {
            engine,
            query,
            items,
            labels,
            apply_softmax,
            item_first,
            temperature,
        } => {
            let engine = Engine::load(engine.config()?)?;
            let request = ScoreRequest {
                model: None,
                query: Some(TextOrTokens::Text(query)),
                items: Some(Items::Texts(items)),
                label_token_ids: Some(LabelIds::Shared(labels)),
                apply_softmax,
                item_first,
                temperature,
            };
            let response = engine.score(&request)?;
            println!("{}", serde_json::to_string_pretty(&response)?);
            Ok(())
        }
    }
}
