//! Where fetched artifacts live: `SCORER_HOME` (default `~/.cache/scorer`), as `scorer fetch`
//! lays it out. One definition for the binary, the benches and the tests.

use std::path::PathBuf;

/// `SCORER_HOME`, default `$HOME/.cache/scorer`.
pub fn scorer_home() -> PathBuf {
    if let Some(home) = std::env::var_os("SCORER_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    user_home.join(".cache").join("scorer")
}

/// The GGUF file `scorer fetch` writes for a model alias.
pub fn model_file(alias: &str) -> PathBuf {
    scorer_home().join("models").join(format!("{alias}.gguf"))
}

/// The on-disk cache of compiled executables.
pub fn executable_cache() -> PathBuf {
    scorer_home().join("executables")
}

/// The on-disk cache of device-ready weights (`engine::model::Model::load_path`).
pub fn weight_cache() -> PathBuf {
    scorer_home().join("weights")
}
