//! Plugin-specific client creation options as a typed struct, and their flag syntax.
//!
//! Why typed: `PJRT_Client_Create` takes untyped `PJRT_NamedValue`s, and a plugin that
//! knows a name but gets the wrong value type throws a C++ exception through the C API,
//! which aborts the process. The GPU plugin also refuses names it does not know, so GPU
//! options are only sent when set. The names and types follow XLA's GPU plugin
//! (`pjrt_c_api_gpu_internal.cc`) and what JAX sends it (`XLA_PYTHON_CLIENT_*`).

use std::fmt;
use std::str::FromStr;

use super::client::ClientOption;

/// The GPU plugin's device-memory allocator (`allocator` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuAllocator {
    /// The plugin's default (BFC, preallocating `memory_fraction` of the device).
    Default,
    /// XLA's best-fit-with-coalescing pool.
    Bfc,
    /// `cudaMallocAsync` (the CUDA stream-ordered allocator).
    Cuda,
    /// Allocate and free on demand (slow; for debugging memory use).
    Platform,
}

impl GpuAllocator {
    fn as_str(self) -> &'static str {
        match self {
            GpuAllocator::Default => "default",
            GpuAllocator::Bfc => "bfc",
            GpuAllocator::Cuda => "cuda",
            GpuAllocator::Platform => "platform",
        }
    }
}

impl FromStr for GpuAllocator {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<Self, OptionError> {
        match s {
            "default" => Ok(GpuAllocator::Default),
            "bfc" => Ok(GpuAllocator::Bfc),
            "cuda" => Ok(GpuAllocator::Cuda),
            "platform" => Ok(GpuAllocator::Platform),
            other => Err(OptionError(format!(
                "unknown GPU allocator '{other}' (expected default, bfc, cuda or platform)"
            ))),
        }
    }
}

/// A malformed option value or `--pjrt-option` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(String);

/// Options for `PJRT_Client_Create`. Unset fields are not sent, so the plugin's defaults
/// apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientOptions {
    /// GPU: fraction of device memory the allocator reserves (`memory_fraction`, Float;
    /// the plugin's default is 0.75).
    pub gpu_memory_fraction: Option<f32>,
    /// GPU: reserve that memory at client creation (`preallocate`, Bool; default true).
    pub gpu_preallocate: Option<bool>,
    /// GPU: which allocator (`allocator`, String).
    pub gpu_allocator: Option<GpuAllocator>,
    /// Any other option, typed explicitly (`--pjrt-option name:type=value`), e.g. the CPU
    /// plugin's `cpu_device_count:int=4` or the GPU plugin's `visible_devices:ints=0,1`.
    pub extra: Vec<(String, ClientOption)>,
}

impl ClientOptions {
    /// Options asking the CPU plugin for `count` devices (`cpu_device_count`, Int64; the
    /// plugin's default is 4): how the multi-device path is tested without accelerators.
    pub fn cpu_devices(count: i64) -> ClientOptions {
        ClientOptions {
            extra: vec![("cpu_device_count".to_string(), ClientOption::Int64(count))],
            ..ClientOptions::default()
        }
    }

    /// Sets `gpu_memory_fraction` after checking it lies in (0, 1].
    pub fn set_gpu_memory_fraction(&mut self, fraction: f32) -> Result<(), OptionError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(OptionError(format!(
                "GPU memory fraction {fraction} is outside (0, 1]"
            )));
        }
        self.gpu_memory_fraction = Some(fraction);
        Ok(())
    }

    /// Adds one `name:type=value` option; `type` is `int`, `ints` (comma-separated),
    /// `float`, `bool` or `str`.
    pub fn push_flag(&mut self, flag: &str) -> Result<(), OptionError> {
        let (name, value) = parse_option(flag)?;
        self.extra.push((name, value));
        Ok(())
    }

    /// The named values to pass, in a stable order: GPU options first, then `extra`.
    pub fn named_values(&self) -> Vec<(String, ClientOption)> {
        let mut out = Vec::new();
        if let Some(f) = self.gpu_memory_fraction {
            out.push(("memory_fraction".to_string(), ClientOption::Float(f)));
        }
        if let Some(p) = self.gpu_preallocate {
            out.push(("preallocate".to_string(), ClientOption::Bool(p)));
        }
        if let Some(a) = self.gpu_allocator {
            out.push((
                "allocator".to_string(),
                ClientOption::String(a.as_str().to_string()),
            ));
        }
        out.extend(self.extra.iter().cloned());
        out
    }

    /// Whether any GPU-only option is set (the CPU plugin ignores them; this lets a
    /// caller warn instead).
    pub fn has_gpu_options(&self) -> bool {
        self.gpu_memory_fraction.is_some()
            || self.gpu_preallocate.is_some()
            || self.gpu_allocator.is_some()
    }
}

impl fmt::Display for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .named_values()
            .iter()
            .map(|(n, v)| format!("{n}={v:?}"))
            .collect();
        write!(f, "{}", parts.join(" "))
    }
}

/// Parses `name:type=value` into a typed option.
pub fn parse_option(flag: &str) -> Result<(String, ClientOption), OptionError> {
    let bad = |why: &str| {
        OptionError(format!(
            "PJRT option '{flag}': {why} (expected name:type=value, type one of int, ints, float, bool, str)"
        ))
    };
    let (lhs, value) = flag.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (name, ty) = lhs.split_once(':').ok_or_else(|| bad("no ':type'"))?;
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    let option = match ty {
        "int" => ClientOption::Int64(value.trim().parse().map_err(|_| bad("not an integer"))?),
        "ints" => ClientOption::Int64List(
            value
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<i64>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad("not a list of integers"))?,
        ),
        "float" => ClientOption::Float(value.trim().parse().map_err(|_| bad("not a number"))?),
        "bool" => ClientOption::Bool(match value.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad("not true/false")),
        }),
        "str" => ClientOption::String(value.to_string()),
        _ => return Err(bad("unknown type")),
    };
    Ok((name.to_string(), option))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_type() {
        assert_eq!(
            parse_option("cpu_device_count:int=4").unwrap(),
            ("cpu_device_count".into(), ClientOption::Int64(4))
        );
        assert_eq!(
            parse_option("visible_devices:ints=0, 1").unwrap().1,
            ClientOption::Int64List(vec![0, 1])
        );
        assert_eq!(
            parse_option("memory_fraction:float=0.5").unwrap().1,
            ClientOption::Float(0.5)
        );
        assert_eq!(
            parse_option("preallocate:bool=false").unwrap().1,
            ClientOption::Bool(false)
        );
        assert_eq!(
            parse_option("allocator:str=bfc").unwrap().1,
            ClientOption::String("bfc".into())
        );
    }

    #[test]
    fn refuses_malformed_options() {
        for bad in [
            "x",
            "x=1",
            ":int=1",
            "x:int=one",
            "x:float=",
            "x:bool=yes",
            "x:blob=1",
        ] {
            let err = parse_option(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn gpu_options_become_typed_named_values() {
        let mut o = ClientOptions::default();
        assert!(o.set_gpu_memory_fraction(1.5).is_err());
        o.set_gpu_memory_fraction(0.9).unwrap();
        o.gpu_preallocate = Some(false);
        o.gpu_allocator = Some("cuda".parse().unwrap());
        o.push_flag("visible_devices:ints=0").unwrap();
        assert_eq!(
            o.named_values(),
            vec![
                ("memory_fraction".into(), ClientOption::Float(0.9)),
                ("preallocate".into(), ClientOption::Bool(false)),
                ("allocator".into(), ClientOption::String("cuda".into())),
                ("visible_devices".into(), ClientOption::Int64List(vec![0])),
            ]
        );
        assert!(o.has_gpu_options());
        assert!("bogus".parse::<GpuAllocator>().is_err());
    }
}
