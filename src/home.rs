//! Where fetched artifacts live (`SCORER_HOME`) and what `--model` names resolve to.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use scorer_engine::home::scorer_home;

/// The model served when none is named.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";

/// Resolve `--model`: a fetched alias, a GGUF file, a Hugging Face directory, or a hub id.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    if let Some(artifact) = crate::fetch::model_artifact(spec) {
        let path = artifact.path(&scorer_home());
        if !path.exists() {
            bail!(
                "model '{spec}' is not fetched yet ({} is missing): run `scorer fetch --model {spec}`",
                path.display()
            );
        }
        return Ok(path);
    }
    let path = Path::new(spec);
    if path.is_file() || path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!(
            "'{spec}' is neither a GGUF file nor a Hugging Face model directory (no config.json)"
        );
    }
    if spec.contains('/') && !spec.starts_with(['.', '/']) {
        return fetch_from_hub(spec);
    }
    bail!(
        "unknown model '{spec}': use one of {}, a GGUF path, a Hugging Face directory or a hub id",
        crate::fetch::model_aliases().join(", ")
    )
}

/// Download a hub repository's config, tokenizer and safetensors into the hub cache.
fn fetch_from_hub(repo_id: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(false)
        .build()
        .context("could not set up the Hugging Face hub client")?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").with_context(|| {
        format!("could not fetch {repo_id}/config.json from the hub (is it reachable?)")
    })?;
    repo.get("tokenizer.json")
        .with_context(|| format!("could not fetch {repo_id}/tokenizer.json"))?;
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let index: serde_json::Value = serde_json::from_str(&text)?;
            let mut files: Vec<&str> = index["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            files.sort_unstable();
            files.dedup();
            for file in files {
                repo.get(file)
                    .with_context(|| format!("could not fetch {repo_id}/{file}"))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors")
                .with_context(|| format!("could not fetch {repo_id}/model.safetensors"))?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .context("hub cache path has no parent directory")
}
