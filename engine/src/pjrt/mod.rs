//! A safe layer over the PJRT C API (XLA's plugin interface), written against
//! `pjrt_c_api.h` 0.81 and the `xla-cpu-pjrt` plugin.
//!
//! `Plugin` loads the shared library; `Client` owns devices, uploads buffers and compiles
//! StableHLO (MLIR text); `LoadedExecutable` runs on a chosen device; `Buffer` copies
//! results back. Every PJRT handle is destroyed when its owner drops; buffers and
//! executables keep their client alive.
//!
//! Thread safety: PJRT clients, buffers and executables are thread-safe C++ objects and
//! these wrappers add no unsynchronized state, so `Client`, `Buffer` and
//! `LoadedExecutable` are `Send + Sync`.

mod buffer;
mod client;
mod error;
mod executable;
pub mod ffi;
mod plugin;
mod types;

pub use buffer::{Buffer, d2h_bytes_thread, d2h_bytes_total, h2d_bytes_total};
pub use client::{Client, ClientOption, Device};
pub use error::{Error, Result, code};
pub use executable::LoadedExecutable;
pub use plugin::{AttributeValue, Plugin, default_plugin_path};
pub use types::{ElementType, NativeType};
