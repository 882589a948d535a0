//! The machine's practical matmul ceiling on the same plugin: an f32 2048x896x4864 dot_general
//! (tokens x hidden x ffn, the largest matmul of the default model), compiled through the engine's
//! own PJRT layer and timed. Both weight layouts are timed; the faster one is the ceiling.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use scorer_engine::hlo::{DotDims, ElemType, FuncBuilder, Precision, TensorType};
use scorer_engine::pjrt::{Client, Plugin};
use serde::Serialize;

const T: i64 = 2048;
const H: i64 = 896;
const F: i64 = 4864;

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// GFLOP/s of each timed run, `[h, f]` weight layout.
    pub runs_hf: Vec<f64>,
    /// GFLOP/s of each timed run, `[f, h]` weight layout (contracting the minor dims).
    pub runs_fh: Vec<f64>,
    pub median_hf: f64,
    pub median_fh: f64,
    /// The larger median: what a well-laid-out matmul of this size achieves here.
    pub gflops: f64,
}

pub fn measure(plugin_path: &Path, runs: usize) -> Result<Ceiling> {
    let plugin = Plugin::load(plugin_path)?;
    let client = Client::new(&plugin)?;
    let runs_hf = time_layout(&client, false, runs)?;
    let runs_fh = time_layout(&client, true, runs)?;
    let (median_hf, median_fh) = (median(&runs_hf), median(&runs_fh));
    Ok(Ceiling {
        runs_hf,
        runs_fh,
        median_hf,
        median_fh,
        gflops: median_hf.max(median_fh),
    })
}

fn time_layout(client: &Client, transposed: bool, runs: usize) -> Result<Vec<f64>> {
    let mut b = FuncBuilder::new();
    let x = b.param(TensorType::f32(&[T, H]));
    let wdims = if transposed { [F, H] } else { [H, F] };
    let w = b.param(TensorType::f32(&wdims));
    let dims = if transposed {
        DotDims::contract(&[1], &[1])
    } else {
        DotDims::contract(&[1], &[0])
    };
    let y = b.dot_general(&x, &w, &dims, ElemType::F32, Precision::Highest)?;
    // A scalar result keeps the device-to-host copy out of the timing.
    let s = b.reduce_sum(&y, &[0, 1])?;
    let exe = client.compile(&b.finish(&[s])?)?;
    let xs: Vec<f32> = (0..T * H)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let ws: Vec<f32> = (0..H * F)
        .map(|i| ((i % 89) as f32 - 44.0) * 1e-3)
        .collect();
    let xb = client.buffer_from_host(&xs, &[T, H], 0)?;
    let wb = client.buffer_from_host(&ws, &wdims, 0)?;
    let flop = 2.0 * (T * H * F) as f64;
    let mut out = Vec::with_capacity(runs);
    for i in 0..runs + 1 {
        let t0 = Instant::now();
        let r = exe.execute(&[&xb, &wb])?;
        r[0].to_host::<f32>()?;
        // The first run warms caches and thread pools; it is not timed.
        if i > 0 {
            out.push(flop / t0.elapsed().as_secs_f64() / 1e9);
        }
    }
    Ok(out)
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
