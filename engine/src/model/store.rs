//! The hook for a persistent cache of compiled executables.
//!
//! A program's text determines its executable for a given plugin build (the
//! weights are parameters, not constants), so the key is a hash of the plugin
//! identity and the text: the same model shape compiled once is reused by any
//! process with the same plugin, and a plugin upgrade misses cleanly.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::pjrt::Client;

/// Somewhere serialized executables can be kept between processes.
pub trait ExecutableStore: Send + Sync {
    /// The bytes stored under `key`, if any.
    fn load(&self, key: &str) -> Option<Vec<u8>>;
    fn save(&self, key: &str, bytes: &[u8]) -> Result<()>;
}

pub(crate) fn key(client: &Client, program: &str) -> String {
    let mut h = Sha256::new();
    let plugin = client.plugin();
    let (major, minor) = plugin.api_version();
    h.update(plugin.path().to_string_lossy().as_bytes());
    h.update([0]);
    h.update(format!("{major}.{minor}").as_bytes());
    h.update([0]);
    h.update(client.platform_name().unwrap_or_default().as_bytes());
    h.update([0]);
    h.update(client.platform_version().unwrap_or_default().as_bytes());
    h.update([0]);
    if let Ok(meta) = std::fs::metadata(plugin.path()) {
        h.update(meta.len().to_le_bytes());
    }
    h.update(program.as_bytes());
    hex::encode(h.finalize())
}

/// Executables as files `<dir>/<key>.pjrt`.
#[derive(Clone, Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> Result<DirStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(DirStore { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.pjrt"))
    }
}

impl ExecutableStore for DirStore {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(key)).ok()
    }

    fn save(&self, key: &str, bytes: &[u8]) -> Result<()> {
        // Write then rename so a concurrent reader never sees a partial file.
        let tmp = self.dir.join(format!("{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.path(key))
            .with_context(|| format!("renaming {}", tmp.display()))?;
        Ok(())
    }
}
