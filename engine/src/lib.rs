//! scorer-engine
pub mod pjrt;
pub mod hlo;
pub mod tokenizer;
pub mod weights;
