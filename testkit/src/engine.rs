//! Engine-level test support, shared by the test-plan binaries (`score_api`, `xla_features`,
//! `http_score`, `prefix_cache`, ...): the real models (found through the one home module), their
//! Hugging Face goldens, requests from JSON, and the checks every score obeys. Each binary loads
//! each engine once (a `LazyLock`) because a load costs seconds of CPU.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use scorer_engine::model::DType;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::ScoreRequest;
use serde_json::Value;

/// The default model (Qwen2 architecture); "Yes" and "No" in its vocabulary.
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
pub const QWEN_YES: i64 = 9454;
pub const QWEN_NO: i64 = 2753;
pub const QWEN_VOCAB: usize = 151_936;

/// The second architecture (Llama) and the small model the many-shape sweeps run on.
pub const SMOL: &str = "smollm2-135m-instruct-q4_1";
pub const SMOL_YES: i64 = 10539;
pub const SMOL_NO: i64 = 5230;
pub const SMOL_VOCAB: usize = 49_152;

pub use scorer_engine::home::scorer_home;

/// The GGUF `scorer fetch` writes for `alias`.
pub fn model_path(alias: &str) -> PathBuf {
    scorer_engine::home::model_file(alias)
}

/// An engine for `alias` with the default settings (f32, device 0, shared-prefix packing) as
/// changed by `tweak`, logging how long the load took.
pub fn load(alias: &str, tweak: impl FnOnce(&mut EngineConfig)) -> Engine {
    let started = std::time::Instant::now();
    let mut cfg = EngineConfig::new(model_path(alias), alias.to_string());
    tweak(&mut cfg);
    let (dtype, device) = (cfg.dtype, cfg.device);
    let engine = Engine::load(cfg).expect("engine loads (run `scorer fetch` first)");
    eprintln!(
        "[load] {alias} {} device {device}: {:.1} s",
        dtype_name(dtype),
        started.elapsed().as_secs_f64()
    );
    engine
}

fn dtype_name(d: DType) -> &'static str {
    d.as_str()
}

/// One test at a time per binary. The engine counters and the device→host byte counter are
/// process-wide, so a test reading their deltas must not share the engine with a running
/// neighbour; the engine thread runs one pass at a time anyway, so little parallelism is lost.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the others still deserve to run.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn golden(alias: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests/reference/goldens")
        .join(format!("{alias}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("golden file")).expect("golden json")
}

/// The golden case called `name`.
pub fn golden_case(gold: &Value, name: &str) -> Value {
    gold["score_cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no golden case {name}"))
        .clone()
}

/// The request a golden case describes: exactly its request fields.
pub fn case_request(case: &Value) -> ScoreRequest {
    let mut body = serde_json::Map::new();
    for key in [
        "query",
        "items",
        "label_token_ids",
        "apply_softmax",
        "item_first",
        "temperature",
    ] {
        if !case[key].is_null() {
            body.insert(key.to_string(), case[key].clone());
        }
    }
    req(Value::Object(body))
}

pub fn req(body: Value) -> ScoreRequest {
    serde_json::from_value(body).expect("a well-formed request")
}

pub fn matrix(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).expect("matrix of numbers")
}

/// Rows and columns as asked, every score a probability, softmax rows summing to 1.
pub fn assert_well_formed(scores: &[Vec<f64>], items: usize, labels: usize, softmax: bool) {
    assert_eq!(scores.len(), items, "one row per item");
    for row in scores {
        assert_eq!(row.len(), labels, "one column per label");
        for &s in row {
            assert!(
                s.is_finite() && (0.0..=1.0).contains(&s),
                "score {s} outside [0, 1]"
            );
        }
        let sum: f64 = row.iter().sum();
        if softmax {
            assert!((sum - 1.0).abs() <= 1e-6, "softmax row sums to {sum}");
        } else {
            // Probabilities of distinct tokens under one distribution.
            assert!(sum <= 1.0 + 1e-6, "probability row sums to {sum}");
        }
    }
}

/// Largest absolute difference between two score matrices of the same shape.
pub fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len(), "same number of rows");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "same number of columns");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// The plan's comparison: within `abs` absolute and 1% relative (with a 1e-2 floor, so scores
/// near zero are not held to an impossible relative bar).
pub fn assert_close_to_reference(got: &[Vec<f64>], want: &[Vec<f64>], abs: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (g_row, w_row) in got.iter().zip(want) {
        assert_eq!(g_row.len(), w_row.len(), "{what}: columns");
        for (g, w) in g_row.iter().zip(w_row) {
            let diff = (g - w).abs();
            assert!(
                diff <= abs,
                "{what}: got {g}, reference {w} (|diff| {diff:.2e} > {abs:e})"
            );
            assert!(
                diff <= 0.01 * w.abs().max(1e-2),
                "{what}: got {g}, reference {w}: over the plan's 1% tolerance"
            );
        }
    }
}

/// Resident and peak resident memory of this process, KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How many devices the CPU plugin exposes (4 here).
pub fn plugin_device_count() -> usize {
    use scorer_engine::pjrt::{Client, Plugin};
    let plugin =
        Plugin::load(&scorer_engine::pjrt::default_plugin_path()).expect("the PJRT plugin loads");
    let client = Client::new(&plugin).expect("a PJRT client");
    client.device_count()
}

/// Deterministic pseudo-random token ids in `lo..hi` (xorshift from `seed`): requests of token
/// ids need no tokenizer and share exactly the prefixes a test builds.
pub fn token_ids(seed: u64, n: usize, lo: u32, hi: u32) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (x % u64::from(hi - lo)) as u32
        })
        .collect()
}
