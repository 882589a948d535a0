//! Latency summaries, process memory, and the human-readable table.

use serde::Serialize;

use crate::ceiling::median;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles by nearest rank: with a handful of samples p90/p99 are the slowest ones.
    pub fn of(samples_ms: &[f64]) -> Latency {
        let mut v = samples_ms.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).copied().unwrap_or(f64::NAN)
        };
        Latency {
            p50_ms: median(&v),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            mean_ms: v.iter().sum::<f64>() / v.len().max(1) as f64,
            min_ms: v.first().copied().unwrap_or(f64::NAN),
            max_ms: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// Peak resident set (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Resident set now (VmRSS), bytes.
    pub rss_bytes: u64,
}

/// VmHWM and VmRSS of this process (Linux); zeros elsewhere.
pub fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    Memory {
        peak_rss_bytes: field("VmHWM:"),
        rss_bytes: field("VmRSS:"),
    }
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
