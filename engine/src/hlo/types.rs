//! Tensor types and SSA values carried by the builder.

use std::fmt;

/// Element types the model programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    BF16,
    I32,
    /// Booleans (`i1`), produced by `compare`.
    Pred,
}

impl ElemType {
    pub fn is_float(self) -> bool {
        matches!(self, ElemType::F32 | ElemType::BF16)
    }

    pub fn mlir(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::BF16 => "bf16",
            ElemType::I32 => "i32",
            ElemType::Pred => "i1",
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mlir())
    }
}

/// A ranked tensor type with static dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dims: Vec<i64>,
    pub elem: ElemType,
}

impl TensorType {
    pub fn new(dims: &[i64], elem: ElemType) -> Self {
        TensorType {
            dims: dims.to_vec(),
            elem,
        }
    }

    pub fn scalar(elem: ElemType) -> Self {
        TensorType {
            dims: Vec::new(),
            elem,
        }
    }

    pub fn f32(dims: &[i64]) -> Self {
        Self::new(dims, ElemType::F32)
    }

    pub fn i32(dims: &[i64]) -> Self {
        Self::new(dims, ElemType::I32)
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn num_elements(&self) -> i64 {
        self.dims.iter().product()
    }

    pub fn with_elem(&self, elem: ElemType) -> Self {
        TensorType {
            dims: self.dims.clone(),
            elem,
        }
    }

    pub fn with_dims(&self, dims: &[i64]) -> Self {
        TensorType::new(dims, self.elem)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.dims {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.elem)
    }
}

/// An SSA value of the function being built: its textual name and its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub(crate) name: String,
    pub(crate) ty: TensorType,
}

impl Value {
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    pub fn dims(&self) -> &[i64] {
        &self.ty.dims
    }

    pub fn elem(&self) -> ElemType {
        self.ty.elem
    }

    pub fn rank(&self) -> usize {
        self.ty.dims.len()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Errors found while building a program: shape or type mismatches that would
/// otherwise surface as an opaque compile error from the plugin.
#[derive(Debug, thiserror::Error)]
pub enum HloError {
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, HloError>;

pub(crate) fn invalid<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(HloError::Invalid {
        op,
        msg: msg.into(),
    })
}
