//! scorer-engine
pub mod pjrt;
