//! A safe layer over the PJRT C API (XLA's plugin interface), written against
//! `pjrt_c_api.h` 0.113 and tested on the `xla-cpu-pjrt` plugin (0.81); the CUDA plugin
//! (`jax-cuda13-pjrt`, 0.115) and libtpu load through the same code.
//!
//! `discover` turns a `--pjrt-plugin` value (a path or `cpu`, `cuda13`, `cuda12`, `tpu`)
//! into a plugin file, looking in `SCORER_HOME` and the user's Python environments, and
//! preloads the NVIDIA libraries a CUDA plugin needs before it is opened.
//!
//! `Plugin` loads the shared library; `Client` owns devices, uploads buffers and compiles
//! StableHLO (MLIR text); `LoadedExecutable` runs on a chosen device; `Buffer` copies
//! results back. Executables are compiled portable, so one client compiles a program once
//! for all its devices (`shared`), and `DeviceSelection` says which devices a process
//! serves (`select`). Every PJRT handle is destroyed when its owner drops; buffers and
//! executables keep their client alive.
//!
//! Thread safety: PJRT clients, buffers and executables are thread-safe C++ objects and
//! these wrappers add no unsynchronized state, so `Client`, `Buffer` and
//! `LoadedExecutable` are `Send + Sync`.

mod buffer;
mod client;
pub mod discover;
mod error;
mod executable;
pub mod ffi;
mod options;
mod plugin;
mod select;
mod shared;
mod types;
mod zero_copy;

pub use buffer::{Buffer, HostOwner, d2h_bytes_thread, d2h_bytes_total, h2d_bytes_total};
pub use client::{Client, ClientOption, Device};
pub use error::{Error, Result, code};
pub use executable::LoadedExecutable;
pub use options::{ClientOptions, GpuAllocator, OptionError, parse_option};
pub use plugin::{
    AttributeValue, HEADER_API_VERSION, MIN_MINOR_VERSION, Plugin, VersionMismatch,
    check_api_version, default_plugin_path,
};
pub use select::{DeviceError, DeviceSelection};
pub use shared::{ExecutableCounts, executable_counts};
pub use types::{ElementType, NativeType};
