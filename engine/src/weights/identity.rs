//! A cheap, stable identity for model files, used as a cache key (compiled programs, warm weights).
//!
//! Hashing a 500 MB file on every start costs seconds; instead we hash the size, the header (GGUF
//! metadata and safetensors headers live at the front), the tail, and evenly spaced samples. Mtime
//! is left out on purpose so that a copied or re-fetched identical file keeps its identity.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

const HEAD: u64 = 8 << 20;
const TAIL: u64 = 1 << 20;
const SAMPLES: u64 = 32;
const SAMPLE_LEN: u64 = 64 << 10;

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let size = f.metadata()?.len();
    hasher.update(size.to_le_bytes());
    let mut read_at = |offset: u64, len: u64| -> Result<()> {
        let len = len.min(size.saturating_sub(offset));
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf)?;
        hasher.update(&buf);
        Ok(())
    };
    if size <= HEAD + TAIL + SAMPLES * SAMPLE_LEN {
        return read_at(0, size);
    }
    read_at(0, HEAD)?;
    let span = size - HEAD - TAIL;
    for k in 0..SAMPLES {
        read_at(HEAD + span / SAMPLES * k, SAMPLE_LEN)?;
    }
    read_at(size - TAIL, TAIL)
}

/// Hex SHA-256 over the model's identifying bytes: a GGUF file, or the config, tokenizer and
/// safetensors files of a Hugging Face directory (names included, so renames change the identity).
pub fn content_hash(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    if path.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .with_context(|| format!("list {}", path.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors") || n.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hash_file(&mut hasher, &path.join(&name))?;
        }
    } else {
        hash_file(&mut hasher, path)?;
    }
    Ok(hex::encode(hasher.finalize()))
}
