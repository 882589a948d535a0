//! Test support shared by the service tests (a dev-dependency only, never shipped): the
//! service harness (the API on a random port over the real or in-process queue and stores,
//! workers started, stopped and killed at will) and a TCP fault proxy. It lives in a crate of
//! its own because the harness composes the API with workers, which the API crate itself must
//! not depend on.

pub mod batches;
pub mod engine;
pub mod jobs;
pub mod process;
pub mod proxy;
pub mod service;
pub mod tiny;

/// The worker types a service test builds by hand (the API crate does not depend on the worker).
pub use scorer_worker::{Worker, WorkerConfig, WorkerError};
pub use service::*;
