//! A file of device-ready weight tensors, written once and memory-mapped on every later start.
//!
//! Reading a GGUF and dequantizing it to f32 costs seconds at every start, and so does copying
//! the result into device buffers. This file keeps the tensors exactly as the program takes them
//! (dequantized, stacked, in the program's element type), each at a page-aligned offset so a
//! read-only `mmap` of the file can be handed to the plugin without a copy
//! ([`crate::pjrt::Client::buffer_from_shared`]).
//!
//! Layout: the tensors' bytes, each starting at a multiple of [`ALIGN`]; then a JSON index
//! (`key`, free-form `meta`, per tensor `name`, `dims`, `dtype`, `offset`, `len`, `crc32`); then
//! a fixed trailer: index length (u64 LE), CRC-32 of the index (u32 LE), format version (u32 LE),
//! [`MAGIC`]. A writer fills a temporary file, syncs it and renames it into place, so a reader
//! never sees a partial file under the final name; a file torn or altered anyway fails the
//! trailer, index or per-tensor CRC check in [`WeightFile::open`], and the caller rebuilds it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

/// Tensor data offsets are multiples of this (a page: the plugin aliases aligned memory only).
pub const ALIGN: u64 = 4096;
pub const MAGIC: &[u8; 8] = b"SCORWTS\0";
/// Bumped whenever the file layout changes; a file of another version is rebuilt.
pub const FORMAT_VERSION: u32 = 1;
const TRAILER: usize = 8 + 4 + 4 + 8;

/// Why a cache file cannot be used (the caller rebuilds it) or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("weight cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("weight cache {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, CacheError>;

/// One tensor's entry in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<i64>,
    /// The element type's spelling (`f32`, `bf16`): the reader's to interpret.
    pub dtype: String,
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    key: String,
    meta: BTreeMap<String, String>,
    tensors: Vec<TensorEntry>,
}

/// A cache file being written. Nothing appears under the final path until [`Writer::finish`].
pub struct Writer {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    offset: u64,
    index: Index,
    renamed: bool,
}

impl Writer {
    /// Starts `path` (its directory is created) for the cache entry `key`.
    pub fn create(path: &Path, key: &str) -> Result<Writer> {
        let io = |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let file = File::create(&tmp).map_err(io)?;
        Ok(Writer {
            out: BufWriter::with_capacity(8 << 20, file),
            tmp,
            path: path.to_path_buf(),
            offset: 0,
            index: Index {
                key: key.to_string(),
                meta: BTreeMap::new(),
                tensors: Vec::new(),
            },
            renamed: false,
        })
    }

    fn io(&self, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: self.tmp.clone(),
            source,
        }
    }

    pub fn set_meta(&mut self, key: &str, value: &str) {
        self.index.meta.insert(key.to_string(), value.to_string());
    }

    /// Appends one tensor at the next aligned offset.
    pub fn add(&mut self, name: &str, dims: &[i64], dtype: &str, bytes: &[u8]) -> Result<()> {
        let start = self.offset.div_ceil(ALIGN) * ALIGN;
        let pad = vec![0u8; (start - self.offset) as usize];
        self.out.write_all(&pad).map_err(|e| self.io(e))?;
        self.out.write_all(bytes).map_err(|e| self.io(e))?;
        self.offset = start + bytes.len() as u64;
        self.index.tensors.push(TensorEntry {
            name: name.to_string(),
            dims: dims.to_vec(),
            dtype: dtype.to_string(),
            offset: start,
            len: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
        Ok(())
    }

    /// Writes the index and trailer, syncs, and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        let index = serde_json::to_vec(&self.index).map_err(|e| CacheError::Invalid {
            path: self.tmp.clone(),
            reason: format!("encoding the index: {e}"),
        })?;
        let mut trailer = Vec::with_capacity(TRAILER);
        trailer.extend((index.len() as u64).to_le_bytes());
        trailer.extend(crc32fast::hash(&index).to_le_bytes());
        trailer.extend(FORMAT_VERSION.to_le_bytes());
        trailer.extend(MAGIC);
        self.out.write_all(&index).map_err(|e| self.io(e))?;
        self.out.write_all(&trailer).map_err(|e| self.io(e))?;
        self.out.flush().map_err(|e| self.io(e))?;
        self.out.get_ref().sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| self.io(e))?;
        self.renamed = true;
        Ok(self.path.clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // An abandoned write leaves no temporary file behind.
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The memory map of a cache file, shared by the device buffers that alias it.
pub struct MappedFile(Mmap);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A verified cache file, mapped read-only.
pub struct WeightFile {
    map: Arc<MappedFile>,
    key: String,
    meta: BTreeMap<String, String>,
    tensors: Vec<TensorEntry>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile")
            .field("key", &self.key)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl WeightFile {
    /// Maps `path` and checks the trailer, the index, that it is the entry `key`, and every
    /// tensor's bounds and CRC-32. Any failure means the file must be rebuilt.
    pub fn open(path: &Path, key: &str) -> Result<WeightFile> {
        let invalid = |reason: String| CacheError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let io = |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is only ever replaced by rename, never written in place, so the
        // mapped pages do not change under us (a process that truncated it anyway would be
        // rewriting a cache it does not own).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(io)?;
        let bytes: &[u8] = &map;
        if bytes.len() < TRAILER {
            return Err(invalid(format!(
                "{} bytes, shorter than a trailer",
                bytes.len()
            )));
        }
        let t = &bytes[bytes.len() - TRAILER..];
        let word = |r: std::ops::Range<usize>| t.get(r).unwrap_or_default();
        if word(16..24) != MAGIC {
            return Err(invalid("no trailer (torn or not a weight cache)".into()));
        }
        let version = u32::from_le_bytes(word(12..16).try_into().unwrap_or_default());
        if version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {version}, expected {FORMAT_VERSION}"
            )));
        }
        let index_len = u64::from_le_bytes(word(0..8).try_into().unwrap_or_default());
        let index_crc = u32::from_le_bytes(word(8..12).try_into().unwrap_or_default());
        let index_end = bytes.len() - TRAILER;
        let index_start = usize::try_from(index_len)
            .ok()
            .and_then(|n| index_end.checked_sub(n))
            .ok_or_else(|| invalid(format!("index length {index_len} exceeds the file")))?;
        let raw_index = &bytes[index_start..index_end];
        if crc32fast::hash(raw_index) != index_crc {
            return Err(invalid("index checksum mismatch".into()));
        }
        let index: Index = serde_json::from_slice(raw_index)
            .map_err(|e| invalid(format!("index unreadable: {e}")))?;
        if index.key != key {
            return Err(invalid(format!("holds entry {}, not {key}", index.key)));
        }
        for t in &index.tensors {
            let data = t
                .offset
                .checked_add(t.len)
                .filter(|&end| end <= index_start as u64)
                .and_then(|end| bytes.get(t.offset as usize..end as usize))
                .ok_or_else(|| invalid(format!("tensor {} lies outside the data", t.name)))?;
            if t.offset % ALIGN != 0 {
                return Err(invalid(format!("tensor {} is not aligned", t.name)));
            }
            if crc32fast::hash(data) != t.crc32 {
                return Err(invalid(format!("tensor {} checksum mismatch", t.name)));
            }
        }
        Ok(WeightFile {
            map: Arc::new(MappedFile(map)),
            key: index.key,
            meta: index.meta,
            tensors: index.tensors,
        })
    }

    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    /// The mapping, to hand to buffers that alias it.
    pub fn mapping(&self) -> Arc<MappedFile> {
        self.map.clone()
    }

    /// Bytes of all tensors.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path) {
        let mut w = Writer::create(path, "k1").unwrap();
        w.set_meta("tied", "true");
        w.add("a", &[2, 3], "f32", &[1u8; 24]).unwrap();
        w.add("b", &[5], "bf16", &[2u8; 10]).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn round_trip_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        write(&path);
        let f = WeightFile::open(&path, "k1").unwrap();
        assert_eq!(f.meta("tied"), Some("true"));
        let t = f.tensors();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].offset, t[0].len), (0, 24));
        assert_eq!(
            (t[1].offset, t[1].len, t[1].dtype.as_str()),
            (ALIGN, 10, "bf16")
        );
        let map = f.mapping();
        let bytes: &[u8] = (*map).as_ref();
        assert_eq!(&bytes[ALIGN as usize..ALIGN as usize + 10], &[2u8; 10]);
        assert_eq!(f.data_bytes(), 34);
        // No temporary file left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn wrong_key_torn_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        write(&path);
        assert!(WeightFile::open(&path, "other").is_err());

        let good = std::fs::read(&path).unwrap();
        // A flipped data byte fails that tensor's checksum.
        let mut bad = good.clone();
        bad[ALIGN as usize + 3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = WeightFile::open(&path, "k1").unwrap_err().to_string();
        assert!(err.contains("tensor b checksum"), "{err}");
        // A file cut short has no trailer.
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        let err = WeightFile::open(&path, "k1").unwrap_err().to_string();
        assert!(err.contains("no trailer"), "{err}");
        // A flipped index byte fails the index checksum.
        let mut bad = good.clone();
        let at = good.len() - TRAILER - 3;
        bad[at] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = WeightFile::open(&path, "k1").unwrap_err().to_string();
        assert!(err.contains("index checksum"), "{err}");
        // Another format version is refused.
        let mut bad = good;
        let at = bad.len() - 12;
        bad[at] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let err = WeightFile::open(&path, "k1").unwrap_err().to_string();
        assert!(err.contains("format version"), "{err}");
    }
}
