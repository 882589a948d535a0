//! `scorer`: one binary for every role (serve, api, worker) and the tools around it.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use scorer::{fetch, home};

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
    }
}
