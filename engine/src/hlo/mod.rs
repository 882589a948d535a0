//! A small typed builder that writes StableHLO programs as MLIR text.
//!
//! Each op checks its operand types and infers its result type, so shape
//! mistakes fail while building (with the op named) rather than as a compile
//! error from the PJRT plugin. The text uses MLIR's generic op form; the
//! spec is openxla/stablehlo `docs/spec.md`.

mod builder;
mod composite;
mod literal;
mod ops;
mod structured;
mod types;

pub use builder::FuncBuilder;
pub use ops::{Cmp, DotDims, GatherDims, Precision, ReduceOp};
pub use types::{ElemType, HloError, Result, TensorType, Value};
