//! Every architecture without a fetchable checkpoint, against Hugging Face transformers on tiny
//! random checkpoints (`tests/reference/tiny_archs.py`, goldens in `tiny_archs.json`): the full
//! last-position log-softmax of each prompt within 1e-4 (f32), through the three paths a request
//! can take — every prompt its own segment (plain), the shared-prefix packing, and the prefix cache
//! (the query's keys/values computed by a prefix pass, whole or in part, and the rest attending
//! them). Prompts are longer than the sliding windows, so windows are crossed inside the batch,
//! across the shared prefix and across cached columns.
//!
//! `return_pooled_hidden_states` too: the pooled program variant's second result is the
//! final-norm hidden state at each scored position, equal to transformers' last
//! `output_hidden_states` there within 1e-4 (`tiny_pooled.json`, written by
//! `tests/reference/tiny_pooled.py` for the Qwen3 and Gemma 3 checkpoints), through the same three
//! paths; the label values are those of the program without it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use scorer_engine::coalesce::shareable_prefix;
use scorer_engine::model::{HeadRows, HeadVariant, LayerLayout, LoadOptions, Model};
use scorer_engine::packing::{Packing, Pass, plan, plan_at};
use scorer_engine::weights::{self, ModelWeights};
use scorer_protocol::{Outputs, ScoreJob};
use scorer_testkit::tiny::client;
use serde_json::Value;

const TOL: f64 = 1e-4;

fn goldens_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens")
}

fn read_golden(name: &str) -> Value {
    let path = goldens_dir().join(name);
    serde_json::from_slice(&std::fs::read(&path).expect(name)).expect("json")
}

fn golden() -> &'static Value {
    static GOLD: OnceLock<Value> = OnceLock::new();
    GOLD.get_or_init(|| read_golden("tiny_archs.json"))
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
        outputs: Default::default(),
    }
}

/// Runs `passes` and puts each row at its (job, item).
fn collect(
    passes: Vec<Pass>,
    jobs: &[&ScoreJob],
    run: impl Fn(&Pass) -> Vec<Vec<f32>>,
) -> Vec<Vec<Vec<f32>>> {
    let mut rows: Vec<Vec<Vec<f32>>> = jobs
        .iter()
        .map(|j| vec![Vec::new(); j.prompts.len()])
        .collect();
    for pass in passes {
        let values = run(&pass);
        for (target, row) in pass.rows.iter().zip(values) {
            rows[target.job][target.item] = row;
        }
    }
    rows
}

fn assert_close(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: width");
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

/// One golden prompt: its ids and Hugging Face's last-position log-softmax.
struct Golden {
    what: String,
    prompt: Vec<u32>,
    want: Vec<f64>,
}

/// The model's golden prompts as jobs: first one job of the whole prompts (`cases`), then one
/// job per `multi_item` entry (its items after its query).
fn golden_jobs(name: &str, gold: &Value, vocab: usize) -> (Vec<ScoreJob>, Vec<Vec<Golden>>) {
    let mut jobs = Vec::new();
    let mut wants = Vec::new();
    let cases: Vec<Golden> = gold["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Golden {
            what: format!("{name}/{}", c["name"].as_str().unwrap_or("?")),
            prompt: ids(&c["ids"]),
            want: floats(&c["last_logprobs"]),
        })
        .collect();
    jobs.push(job(cases.iter().map(|g| g.prompt.clone()).collect(), vocab));
    wants.push(cases);
    for (m, mi) in gold["multi_item"]
        .as_array()
        .expect("multi_item")
        .iter()
        .enumerate()
    {
        let query = ids(&mi["query_ids"]);
        let items = mi["items"].as_array().expect("items");
        let want = mi["item_last_logprobs"]
            .as_array()
            .expect("item_last_logprobs");
        let goldens: Vec<Golden> = items
            .iter()
            .zip(want)
            .enumerate()
            .map(|(k, (item, want))| Golden {
                what: format!("{name}/multi {m} item {k}"),
                prompt: [query.clone(), ids(item)].concat(),
                want: floats(want),
            })
            .collect();
        jobs.push(job(
            goldens.iter().map(|g| g.prompt.clone()).collect(),
            vocab,
        ));
        wants.push(goldens);
    }
    (jobs, wants)
}

/// Every golden prompt through the plain path (all in one pass, a segment each), the
/// shared-prefix packing (every multi-item job's query once, its items after it, all jobs in one
/// pass), and the prefix cache (each query's keys/values from a prefix pass, then its items
/// attending all of them, or only the first half with the rest recomputed).
fn check(name: &str, layout: LayerLayout) {
    let started = Instant::now();
    let (w, gold) = load(name);
    let model = Model::load_with(
        client(),
        &w,
        LoadOptions {
            layout,
            ..Default::default()
        },
    )
    .expect("model loads");
    let (jobs, wants) = golden_jobs(name, gold, w.config.vocab_size);
    let refs: Vec<&ScoreJob> = jobs.iter().collect();
    let head = HeadVariant::FullLogprobs;
    let max = model.max_tokens();
    let run = |p: &Pass| model.run(&p.batch, head).expect("forward pass");
    let mut worst = 0.0f64;
    let mut compare = |rows: &[Vec<f32>], goldens: &[Golden], path: &str| {
        assert_eq!(
            rows.len(),
            goldens.len(),
            "{name} {path}: one row per prompt"
        );
        for (row, g) in rows.iter().zip(goldens) {
            worst = worst.max(assert_close(row, &g.want, &format!("{} ({path})", g.what)));
        }
    };
    for (rows, goldens) in collect(plan(&refs, Packing::PerItem, max), &refs, run)
        .iter()
        .zip(&wants)
    {
        compare(rows, goldens, "plain");
    }
    let multi = &refs[1..];
    let shared = collect(plan(multi, Packing::SharedPrefix, max), multi, run);
    for (rows, goldens) in shared.iter().zip(&wants[1..]) {
        compare(rows, goldens, "shared prefix");
    }
    for (job, goldens) in multi.iter().zip(&wants[1..]) {
        let prefix = shareable_prefix(job).to_vec();
        assert!(
            prefix.len() > 8,
            "{name}: the query is longer than the window"
        );
        let kv = model.prefix_kv(&prefix).expect("prefix pass");
        for (path, len) in [
            ("prefix cache", prefix.len()),
            ("part of a cached prefix", prefix.len() / 2),
        ] {
            let rest = ScoreJob {
                prompts: job.prompts.iter().map(|p| p[len..].to_vec()).collect(),
                ..(*job).clone()
            };
            let passes = plan_at(&[&rest], Packing::SharedPrefix, max, len);
            let rows = collect(passes, &[&rest], |p| {
                model
                    .run_cached(&p.batch, head, &kv, len)
                    .expect("cached pass")
            });
            compare(&rows[0], goldens, path);
        }
    }
    let st = model.stats();
    eprintln!(
        "{name} ({layout:?}): worst |ours - HF| = {worst:.2e}, {:.1} s ({} compiles, {} ms)",
        started.elapsed().as_secs_f64(),
        st.compiles,
        st.compile_ms_total,
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

/// Runs `passes` with the pooled variant and puts each (values, hidden) at its item.
fn run_all(
    passes: Vec<Pass>,
    items: usize,
    run: impl Fn(&Pass) -> HeadRows,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut out = vec![(Vec::new(), Vec::new()); items];
    for pass in passes {
        let rows = run(&pass);
        let hidden = rows
            .hidden
            .expect("the pooled variant returns hidden states");
        assert_eq!(hidden.len(), rows.values.len(), "one hidden state per row");
        for ((target, values), h) in pass.rows.iter().zip(rows.values).zip(hidden) {
            out[target.item] = (values, h);
        }
    }
    out
}

fn check_pooled(name: &str) {
    let pooled = read_golden("tiny_pooled.json");
    let gold = &pooled["models"][name];
    let (w, arch) = load(name);
    assert_eq!(gold["dir"], arch["dir"]);
    let model = Model::load_with(client(), &w, LoadOptions::default()).expect("model loads");
    let hidden_size = gold["hidden_size"].as_u64().expect("hidden_size") as usize;
    let max = model.max_tokens();
    let head = HeadVariant::FullLogprobs;
    let cases = gold["cases"].as_array().expect("cases");
    let want = |k: usize| -> Vec<f64> {
        serde_json::from_value(cases[k]["hidden"].clone()).expect("hidden")
    };
    let labels: Vec<u32> = vec![3, 17, 200];
    let job = |prompts: Vec<Vec<u32>>| ScoreJob {
        labels: vec![labels.clone(); prompts.len()],
        prompts,
        apply_softmax: false,
        temperature: 1.0,
        outputs: Outputs {
            token_logprobs: true,
            pooled_hidden_states: true,
        },
    };
    let mut worst = 0.0f64;

    // Plain: every golden prompt its own segment, in one pass.
    let plain = job(cases.iter().map(|c| ids(&c["ids"])).collect());
    let rows = run_all(plan(&[&plain], Packing::PerItem, max), cases.len(), |p| {
        model.run_with(&p.batch, head, true, None).expect("pass")
    });
    let mut without = vec![Vec::new(); cases.len()];
    for pass in plan(&[&plain], Packing::PerItem, max) {
        let values = model.run(&pass.batch, head).expect("pass");
        for (target, v) in pass.rows.iter().zip(values) {
            without[target.item] = v;
        }
    }
    for (k, (values, hidden)) in rows.iter().enumerate() {
        assert_eq!(hidden.len(), hidden_size);
        worst = worst.max(assert_close(hidden, &want(k), &format!("{name} plain {k}")));
        assert_eq!(values.len(), labels.len());
        for (a, b) in values.iter().zip(&without[k]) {
            assert!(
                (a - b).abs() <= 1e-5,
                "{name} plain {k}: values change with pooling"
            );
        }
    }

    // Shared prefix and cached prefix: the first multi-item group, whose item 0 has a golden.
    let group = &arch["multi_item"][0];
    let query = ids(&group["query_ids"]);
    let items: Vec<Vec<u32>> = group["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| [query.clone(), ids(i)].concat())
        .collect();
    let n = items.len();
    let multi = job(items);
    let want0 = want(cases.len() - 1);
    assert_eq!(
        cases[cases.len() - 1]["ids"],
        serde_json::json!(multi.prompts[0])
    );
    let shared = run_all(plan(&[&multi], Packing::SharedPrefix, max), n, |p| {
        model.run_with(&p.batch, head, true, None).expect("pass")
    });
    worst = worst.max(assert_close(
        &shared[0].1,
        &want0,
        &format!("{name} shared"),
    ));
    let prefix = shareable_prefix(&multi).to_vec();
    let kv = model.prefix_kv(&prefix).expect("prefix pass");
    let len = prefix.len();
    let rest = ScoreJob {
        prompts: multi.prompts.iter().map(|p| p[len..].to_vec()).collect(),
        ..multi.clone()
    };
    let cached = run_all(plan_at(&[&rest], Packing::SharedPrefix, max, len), n, |p| {
        model
            .run_with(&p.batch, head, true, Some((&kv, len)))
            .expect("cached pass")
    });
    worst = worst.max(assert_close(
        &cached[0].1,
        &want0,
        &format!("{name} cached"),
    ));
    for (k, (s, c)) in shared.iter().zip(&cached).enumerate() {
        let d =
            s.1.iter()
                .zip(&c.1)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
        assert!(
            d <= 1e-4,
            "{name} item {k}: shared vs cached hidden states differ by {d}"
        );
    }
    eprintln!("{name}: worst |ours - HF| hidden state = {worst:.2e}");
}

#[test]
fn qwen3_pooled_hidden_states_match_hugging_face() {
    check_pooled("qwen3");
}

#[test]
fn gemma3_pooled_hidden_states_match_hugging_face() {
    check_pooled("gemma3-sw");
}
