//! scorer-jobs
