//! Element types of device buffers and the host types that map onto them.

use super::ffi;

/// The element type of a device buffer (a subset of `PJRT_Buffer_Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    F32,
    BF16,
    F16,
    I32,
    I64,
    U32,
    U8,
    Pred,
}

impl ElementType {
    /// Bytes per element on the host (dense, major-to-minor layout).
    pub const fn size_bytes(self) -> usize {
        match self {
            ElementType::F32 | ElementType::I32 | ElementType::U32 => 4,
            ElementType::BF16 | ElementType::F16 => 2,
            ElementType::I64 => 8,
            ElementType::U8 | ElementType::Pred => 1,
        }
    }

    /// The StableHLO / MLIR spelling (`f32`, `bf16`, `i32`, `ui32`, `i1`, ...).
    pub fn mlir_name(self) -> &'static str {
        match self {
            ElementType::F32 => "f32",
            ElementType::BF16 => "bf16",
            ElementType::F16 => "f16",
            ElementType::I32 => "i32",
            ElementType::I64 => "i64",
            ElementType::U32 => "ui32",
            ElementType::U8 => "ui8",
            ElementType::Pred => "i1",
        }
    }

    pub(crate) fn to_raw(self) -> ffi::PJRT_Buffer_Type {
        match self {
            ElementType::F32 => ffi::PJRT_Buffer_Type_F32,
            ElementType::BF16 => ffi::PJRT_Buffer_Type_BF16,
            ElementType::F16 => ffi::PJRT_Buffer_Type_F16,
            ElementType::I32 => ffi::PJRT_Buffer_Type_S32,
            ElementType::I64 => ffi::PJRT_Buffer_Type_S64,
            ElementType::U32 => ffi::PJRT_Buffer_Type_U32,
            ElementType::U8 => ffi::PJRT_Buffer_Type_U8,
            ElementType::Pred => ffi::PJRT_Buffer_Type_PRED,
        }
    }

    pub(crate) fn from_raw(raw: ffi::PJRT_Buffer_Type) -> Option<ElementType> {
        Some(match raw {
            ffi::PJRT_Buffer_Type_F32 => ElementType::F32,
            ffi::PJRT_Buffer_Type_BF16 => ElementType::BF16,
            ffi::PJRT_Buffer_Type_F16 => ElementType::F16,
            ffi::PJRT_Buffer_Type_S32 => ElementType::I32,
            ffi::PJRT_Buffer_Type_S64 => ElementType::I64,
            ffi::PJRT_Buffer_Type_U32 => ElementType::U32,
            ffi::PJRT_Buffer_Type_U8 => ElementType::U8,
            ffi::PJRT_Buffer_Type_PRED => ElementType::Pred,
            _ => return None,
        })
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A host type whose values can be copied byte for byte to and from a device buffer of
/// element type `TY`. Sealed: every implementor is plain old data with no invalid bit
/// patterns, which is what lets `Buffer::to_host` write device bytes straight into a
/// `Vec<Self>`.
pub trait NativeType: sealed::Sealed + Copy + Send + Sync + 'static {
    const TY: ElementType;
}

macro_rules! native {
    ($($t:ty => $e:ident),* $(,)?) => {
        $(
            impl sealed::Sealed for $t {}
            impl NativeType for $t {
                const TY: ElementType = ElementType::$e;
            }
            const _: () = assert!(size_of::<$t>() == ElementType::$e.size_bytes());
        )*
    };
}

native! {
    f32 => F32,
    half::bf16 => BF16,
    half::f16 => F16,
    i32 => I32,
    i64 => I64,
    u32 => U32,
    u8 => U8,
}
