//! The error type of the PJRT layer: the plugin's own message and status code, or a
//! message raised by this crate before reaching the plugin.

use std::fmt;

use super::ffi;
use super::plugin::Api;

/// Status codes, as in `PJRT_Error_Code` (the abseil codes).
pub mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
}

/// A failed PJRT call: the plugin's message and code, or one of this layer's own checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: i32,
    message: String,
    from_plugin: bool,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error raised by this layer (bad arguments, missing plugin, ...).
    pub(crate) fn local(code: i32, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            from_plugin: false,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::local(code::INVALID_ARGUMENT, message)
    }

    /// Takes ownership of a non-null `PJRT_Error*`: reads its message and code, then
    /// destroys it.
    ///
    /// # Safety
    /// `raw` must be a live error returned by a function of `api`, not yet destroyed.
    pub(crate) unsafe fn from_raw(api: &Api, raw: *mut ffi::PJRT_Error) -> Error {
        let t = api.table();
        let mut message = String::from("(no message)");
        if let Some(f) = t.PJRT_Error_Message {
            let mut a = ffi::PJRT_Error_Message_Args {
                struct_size: ffi::PJRT_Error_Message_Args::STRUCT_SIZE,
                extension_start: std::ptr::null_mut(),
                error: raw,
                message: std::ptr::null(),
                message_size: 0,
            };
            // SAFETY: `raw` is live; the message lives as long as `raw`, and is copied
            // out before `raw` is destroyed below.
            unsafe {
                f(&mut a);
                if !a.message.is_null() {
                    let bytes = std::slice::from_raw_parts(a.message.cast::<u8>(), a.message_size);
                    message = String::from_utf8_lossy(bytes).into_owned();
                }
            }
        }
        let mut code = code::UNKNOWN;
        if let Some(f) = t.PJRT_Error_GetCode {
            let mut a = ffi::PJRT_Error_GetCode_Args {
                struct_size: ffi::PJRT_Error_GetCode_Args::STRUCT_SIZE,
                extension_start: std::ptr::null_mut(),
                error: raw,
                code: code::UNKNOWN,
            };
            // SAFETY: `raw` is live. GetCode never fails in practice; if it returned an
            // error we would have to destroy that one as well.
            let e = unsafe { f(&mut a) };
            if e.is_null() {
                code = a.code;
            } else {
                // SAFETY: `e` is a fresh error from the same API.
                unsafe { api.destroy_error(e) };
            }
        }
        // SAFETY: `raw` is live and destroyed exactly once, here.
        unsafe { api.destroy_error(raw) };
        Error {
            code,
            message,
            from_plugin: true,
        }
    }

    /// The `PJRT_Error_Code` value (see [`code`]).
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The plugin's message, verbatim (or this layer's own).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the plugin raised the error (as opposed to a check in this layer).
    pub fn from_plugin(&self) -> bool {
        self.from_plugin
    }

    pub fn code_name(&self) -> &'static str {
        match self.code {
            0 => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            3 => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            5 => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            7 => "PERMISSION_DENIED",
            8 => "RESOURCE_EXHAUSTED",
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            12 => "UNIMPLEMENTED",
            13 => "INTERNAL",
            14 => "UNAVAILABLE",
            15 => "DATA_LOSS",
            16 => "UNAUTHENTICATED",
            _ => "UNRECOGNIZED",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = if self.from_plugin {
            "PJRT"
        } else {
            "pjrt layer"
        };
        write!(f, "{origin} error {}: {}", self.code_name(), self.message)
    }
}

impl std::error::Error for Error {}
