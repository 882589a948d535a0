//! One executable per program per client, whichever device runs it.
//!
//! Why: a worker serving several devices holds one model per device over one client, and
//! each model asks for its programs on its own. Executables are compiled portable
//! (`COMPILE_OPTIONS`), and `PJRT_LoadedExecutable_Execute` takes the device to run on
//! (`execute_device`), so one compilation serves every device; compiling it once per device
//! would multiply start-up and first-request time by the device count. The memo sits in the
//! client, below the model's own caches, so those need not know about each other.
//!
//! Entries are weak: an executable lives as long as some model holds it, never longer
//! because of the memo. Concurrent requests for one program wait for the first one to
//! finish compiling (a per-program lock) rather than compiling it again. Serialized bytes
//! are a second key for the same executable, so an engine that loads the on-disk copy of a
//! program another engine just compiled (and stored) gets the live one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use sha2::{Digest, Sha256};

use super::error::Result;
use super::executable::{ExecutableInner, LoadedExecutable};

static COMPILED: AtomicU64 = AtomicU64::new(0);
static DESERIALIZED: AtomicU64 = AtomicU64::new(0);
static SHARED: AtomicU64 = AtomicU64::new(0);

/// What the plugin was asked to build, by every client of this process since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutableCounts {
    /// `PJRT_Client_Compile` calls.
    pub compiled: u64,
    /// `PJRT_Executable_DeserializeAndLoad` calls.
    pub deserialized: u64,
    /// Requests answered with an executable the client already held (no plugin call).
    pub shared: u64,
}

/// See [`ExecutableCounts`].
pub fn executable_counts() -> ExecutableCounts {
    ExecutableCounts {
        compiled: COMPILED.load(Ordering::Relaxed),
        deserialized: DESERIALIZED.load(Ordering::Relaxed),
        shared: SHARED.load(Ordering::Relaxed),
    }
}

/// What identifies an executable: the program text it was compiled from (with the compile
/// options), or its serialized bytes.
pub(crate) enum Source<'a> {
    Mlir(&'a str, &'a [u8]),
    Serialized(&'a [u8]),
}

type Key = [u8; 32];
type Slot = Arc<Mutex<Weak<ExecutableInner>>>;

fn key(source: &Source<'_>) -> Key {
    let mut h = Sha256::new();
    match source {
        Source::Mlir(text, options) => {
            h.update(b"mlir\0");
            h.update((options.len() as u64).to_le_bytes());
            h.update(options);
            h.update(text.as_bytes());
        }
        Source::Serialized(bytes) => {
            h.update(b"serialized\0");
            h.update(bytes);
        }
    }
    h.finalize().into()
}

/// The client's executables by source (see the module docs).
#[derive(Default)]
pub(crate) struct ExecutableMemo {
    slots: Mutex<HashMap<Key, Slot>>,
}

impl ExecutableMemo {
    fn slot(&self, key: Key) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if !slots.contains_key(&key) {
            // Forget programs nobody holds any more (a slot being filled is locked: kept).
            slots.retain(|_, s| match s.try_lock() {
                Ok(held) => held.strong_count() > 0,
                Err(_) => true,
            });
        }
        slots.entry(key).or_default().clone()
    }

    /// The live executable of `source`, or the one `make` builds (then remembered).
    pub(crate) fn get_or_make(
        &self,
        source: Source<'_>,
        make: impl FnOnce() -> Result<LoadedExecutable>,
    ) -> Result<LoadedExecutable> {
        let counter = match source {
            Source::Mlir(..) => &COMPILED,
            Source::Serialized(_) => &DESERIALIZED,
        };
        let slot = self.slot(key(&source));
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(inner) = held.upgrade() {
            SHARED.fetch_add(1, Ordering::Relaxed);
            return Ok(LoadedExecutable { inner });
        }
        counter.fetch_add(1, Ordering::Relaxed);
        let exe = make()?;
        *held = Arc::downgrade(&exe.inner);
        Ok(exe)
    }

    /// Remembers `exe` under its serialized bytes too, unless they already name a live one.
    pub(crate) fn remember_serialized(&self, bytes: &[u8], exe: &LoadedExecutable) {
        let slot = self.slot(key(&Source::Serialized(bytes)));
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if held.strong_count() == 0 {
            *held = Arc::downgrade(&exe.inner);
        }
    }
}
