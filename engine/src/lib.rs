//! scorer-engine
pub mod pjrt;
pub mod hlo;
