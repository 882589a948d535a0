//! Every architecture without a fetchable checkpoint, against Hugging Face transformers on tiny
//! random checkpoints (`tests/reference/tiny_archs.py`, goldens in `tiny_archs.json`): the full
//! last-position log-softmax of each prompt within 1e-4 (f32), through the three paths a request
//! can take — every prompt its own segment (plain), the shared-prefix packing, and the prefix cache
//! (the query's keys/values computed by a prefix pass, whole or in part, and the rest attending
//! them). Prompts are longer than the sliding windows, so windows are crossed inside the batch,
//! across the shared prefix and across cached columns.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use scorer_engine::coalesce::shareable_prefix;
use scorer_engine::model::{HeadVariant, LayerLayout, LoadOptions, Model};
use scorer_engine::packing::{Packing, Pass, plan, plan_at};
use scorer_engine::pjrt::{Client, Plugin, default_plugin_path};
use scorer_engine::weights::{self, ModelWeights};
use scorer_protocol::ScoreJob;
use serde_json::Value;

const TOL: f64 = 1e-4;

fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let plugin =
                Plugin::load(&default_plugin_path()).expect("CPU PJRT plugin (run `scorer fetch`)");
            Client::new(&plugin).expect("PJRT client")
        })
        .clone()
}

fn goldens_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens")
}

fn golden() -> &'static Value {
    static GOLD: OnceLock<Value> = OnceLock::new();
    GOLD.get_or_init(|| {
        let path = goldens_dir().join("tiny_archs.json");
        serde_json::from_slice(&std::fs::read(&path).expect("tiny_archs.json")).expect("json")
    })
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("token ids")
}

fn floats(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).expect("numbers")
}

/// A job whose every label list is the whole vocabulary (the goldens hold the full log-softmax).
fn job(prompts: Vec<Vec<u32>>, vocab: usize) -> ScoreJob {
    let all: Vec<u32> = (0..vocab as u32).collect();
    ScoreJob {
        labels: vec![all; prompts.len()],
        prompts,
        apply_softmax: false,
        temperature: 1.0,
    }
}

/// Runs `passes` and puts each row at its item.
fn collect(
    model: &Model,
    passes: Vec<Pass>,
    n: usize,
    run: impl Fn(&Pass) -> Vec<Vec<f32>>,
) -> Vec<Vec<f32>> {
    let _ = model;
    let mut rows = vec![Vec::new(); n];
    for pass in passes {
        let values = run(&pass);
        for (target, row) in pass.rows.iter().zip(values) {
            rows[target.item] = row;
        }
    }
    rows
}

/// Each prompt through the plain path, the shared-prefix packing and the prefix cache (the whole
/// shareable prefix cached, and only part of it).
fn all_paths(model: &Model, job: &ScoreJob) -> Vec<(&'static str, Vec<Vec<f32>>)> {
    let head = HeadVariant::FullLogprobs;
    let n = job.prompts.len();
    let max = model.max_tokens();
    let run = |p: &Pass| model.run(&p.batch, head).expect("forward pass");
    let mut out = vec![
        (
            "plain",
            collect(model, plan(&[job], Packing::PerItem, max), n, run),
        ),
        (
            "shared prefix",
            collect(model, plan(&[job], Packing::SharedPrefix, max), n, run),
        ),
    ];
    let prefix = shareable_prefix(job).to_vec();
    if prefix.len() >= 2 {
        let kv = model.prefix_kv(&prefix).expect("prefix pass");
        for (what, len) in [
            ("prefix cache", prefix.len()),
            ("part of a cached prefix", prefix.len() / 2),
        ] {
            let rest = ScoreJob {
                prompts: job.prompts.iter().map(|p| p[len..].to_vec()).collect(),
                ..job.clone()
            };
            let passes = plan_at(&[&rest], Packing::SharedPrefix, max, len);
            let rows = collect(model, passes, n, |p| {
                model
                    .run_cached(&p.batch, head, &kv, len)
                    .expect("cached pass")
            });
            out.push((what, rows));
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: vocabulary width");
    let mut worst = 0.0f64;
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (*g as f64 - w).abs();
        assert!(d <= TOL, "{what}: token {k}: ours {g}, Hugging Face {w}");
        worst = worst.max(d);
    }
    worst
}

fn load(name: &str) -> (ModelWeights, &'static Value) {
    let gold = &golden()["models"][name];
    let dir = gold["dir"].as_str().expect("dir");
    let w = weights::load(&goldens_dir().join(dir))
        .unwrap_or_else(|e| panic!("{name}: loading {dir}: {e:#}"));
    (w, gold)
}

fn check(name: &str, layout: LayerLayout) {
    let started = Instant::now();
    let (w, gold) = load(name);
    let vocab = w.config.vocab_size;
    let model = Model::load_with(
        client(),
        &w,
        LoadOptions {
            layout,
            ..Default::default()
        },
    )
    .expect("model loads");
    let mut worst = 0.0f64;
    let cases = gold["cases"].as_array().expect("cases");
    // Whole prompts: all of them in one job (one segment each on the plain path), and each alone
    // for the cache path (its prefix is all but its last token).
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["ids"])).collect();
    let together = job(prompts.clone(), vocab);
    let head = HeadVariant::FullLogprobs;
    let plain = collect(
        &model,
        plan(&[&together], Packing::PerItem, model.max_tokens()),
        prompts.len(),
        |p| model.run(&p.batch, head).expect("forward pass"),
    );
    for (case, row) in cases.iter().zip(&plain) {
        let cname = case["name"].as_str().unwrap_or("?");
        worst = worst.max(assert_close(
            row,
            &floats(&case["last_logprobs"]),
            &format!("{name}/{cname} plain"),
        ));
    }
    for case in cases {
        let cname = case["name"].as_str().unwrap_or("?");
        let one = job(vec![ids(&case["ids"])], vocab);
        let want = floats(&case["last_logprobs"]);
        for (path, rows) in all_paths(&model, &one).into_iter().skip(2) {
            worst = worst.max(assert_close(
                &rows[0],
                &want,
                &format!("{name}/{cname} {path}"),
            ));
        }
    }
    for (m, mi) in gold["multi_item"]
        .as_array()
        .expect("multi_item")
        .iter()
        .enumerate()
    {
        let query = ids(&mi["query_ids"]);
        let items: Vec<Vec<u32>> = mi["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(ids)
            .collect();
        let prompts: Vec<Vec<u32>> = items
            .iter()
            .map(|i| [query.clone(), i.clone()].concat())
            .collect();
        let want: Vec<Vec<f64>> = mi["item_last_logprobs"]
            .as_array()
            .expect("item_last_logprobs")
            .iter()
            .map(floats)
            .collect();
        for (path, rows) in all_paths(&model, &job(prompts, vocab)) {
            for (k, (row, want)) in rows.iter().zip(&want).enumerate() {
                worst = worst.max(assert_close(
                    row,
                    want,
                    &format!("{name}/multi {m} item {k} {path}"),
                ));
            }
        }
    }
    eprintln!(
        "{name} ({layout:?}): worst |ours - HF| = {worst:.2e}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn qwen3_matches_hugging_face() {
    check("qwen3", LayerLayout::Stacked);
}

#[test]
fn llama3_rope_scaling_matches_hugging_face() {
    check("llama3-rope", LayerLayout::Stacked);
}

#[test]
fn llama_linear_rope_matches_hugging_face() {
    check("llama-linear", LayerLayout::Stacked);
}

#[test]
fn llama_dynamic_rope_matches_hugging_face() {
    check("llama-dynamic", LayerLayout::Stacked);
}

#[test]
fn llama_yarn_rope_matches_hugging_face() {
    check("llama-yarn", LayerLayout::Stacked);
}

#[test]
fn mistral_sliding_window_matches_hugging_face() {
    check("mistral-sw", LayerLayout::Stacked);
}

#[test]
fn phi3_matches_hugging_face() {
    check("phi3", LayerLayout::Stacked);
}

#[test]
fn gemma3_matches_hugging_face() {
    check("gemma3-sw", LayerLayout::Stacked);
}

/// The unrolled program reads the same descriptor: local/global layers chosen statically.
#[test]
fn gemma3_per_layer_layout_matches_hugging_face() {
    check("gemma3-sw", LayerLayout::PerLayer);
}

/// Dynamic RoPE is exact only up to max_position_embeddings; past it the engine refuses.
#[test]
fn dynamic_rope_refuses_positions_past_its_exact_range() {
    let (w, _) = load("llama-dynamic");
    let model = Model::load(client(), &w, Default::default(), 0).expect("model loads");
    let limit = match &w.config.features.rope_scaling {
        weights::RopeScaling::Dynamic {
            max_position_embeddings,
            ..
        } => *max_position_embeddings,
        other => panic!("tiny-llama-dynamic has {other:?}"),
    };
    let ok = job(vec![vec![1; limit]], 4);
    let too_long = job(vec![vec![1; limit + 1]], 4);
    let max = model.max_tokens();
    for pass in plan(&[&ok], Packing::PerItem, max) {
        model
            .run(&pass.batch, HeadVariant::FullLogprobs)
            .expect("within the range");
    }
    for pass in plan(&[&too_long], Packing::PerItem, max) {
        let e = model
            .run(&pass.batch, HeadVariant::FullLogprobs)
            .expect_err("past the range");
        assert!(
            format!("{e:#}").contains("max_position_embeddings"),
            "{e:#}"
        );
    }
}
