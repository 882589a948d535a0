//! scorer-worker
