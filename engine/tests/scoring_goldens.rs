//! `/v1/score` on the real models (Qwen2, SmolLM2, Gemma 3) and the real CPU plugin, against
//! Hugging Face transformers goldens (tests/reference/hf_scores.py). Every score within 1e-3
//! absolute in f32, softmax rows summing to 1 within 1e-6, prompt token ids identical to Hugging
//! Face; the packed multi-item path equal to the per-item path within 1e-4.

use std::path::Path;

use scorer_engine::home;
use scorer_engine::packing::Packing;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::{ScoreBackend, ScoreJob, ScoreRequest};
use serde_json::Value;

fn golden(alias: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/goldens")
        .join(format!("{alias}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("golden file")).expect("golden json")
}

fn engine(alias: &str, packing: Packing) -> Engine {
    let mut cfg = EngineConfig::new(home::model_file(alias), alias.to_string());
    cfg.compile_cache = Some(home::executable_cache());
    cfg.packing = packing;
    Engine::load(cfg).expect("engine loads")
}

/// The request a golden case describes: exactly its JSON fields.
fn request(case: &Value) -> ScoreRequest {
    let mut body = serde_json::Map::new();
    for key in [
        "query",
        "items",
        "label_token_ids",
        "apply_softmax",
        "item_first",
        "temperature",
    ] {
        body.insert(key.to_string(), case[key].clone());
    }
    serde_json::from_value(Value::Object(body)).expect("case is a valid request")
}

fn f64s(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).expect("matrix of numbers")
}

fn check_against_goldens(alias: &str) {
    let gold = golden(alias);
    let engine = engine(alias, Packing::SharedPrefix);
    let mut worst = 0.0f64;
    for case in gold["score_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let req = request(case);
        let job = engine.prepare(&req).expect("prepare");
        let want_ids: Vec<Vec<u32>> =
            serde_json::from_value(case["prompt_token_ids"].clone()).expect("ids");
        assert_eq!(
            job.prompts, want_ids,
            "{alias}/{name}: prompt token ids differ from Hugging Face"
        );

        let resp = engine.score(&req).expect("score");
        let want = f64s(&case["scores"]);
        assert_eq!(
            resp.scores.len(),
            want.len(),
            "{alias}/{name}: one row per item"
        );
        assert_eq!(
            resp.usage.prompt_tokens,
            case["prompt_tokens"].as_u64().expect("n") as usize
        );
        assert_eq!(resp.usage.completion_tokens, 0);
        for (got_row, want_row) in resp.scores.iter().zip(&want) {
            assert_eq!(
                got_row.len(),
                want_row.len(),
                "{alias}/{name}: one column per label"
            );
            for (g, w) in got_row.iter().zip(want_row) {
                let diff = (g - w).abs();
                worst = worst.max(diff);
                assert!(diff <= 1e-3, "{alias}/{name}: got {g}, Hugging Face {w}");
                // The seed plan's own bar: 1% relative (with an absolute floor for tiny values).
                assert!(
                    diff <= 0.01 * w.abs().max(1e-2),
                    "{alias}/{name}: 1% tolerance, got {g} vs {w}"
                );
                assert!(
                    (0.0..=1.0).contains(g),
                    "{alias}/{name}: score {g} outside [0, 1]"
                );
            }
            if case["apply_softmax"].as_bool() == Some(true) {
                let sum: f64 = got_row.iter().sum();
                assert!(
                    (sum - 1.0).abs() <= 1e-6,
                    "{alias}/{name}: softmax row sums to {sum}"
                );
            }
        }
    }
    eprintln!("{alias}: worst |ours - HF| = {worst:.2e}");
}

#[test]
fn qwen2_scores_match_hugging_face() {
    check_against_goldens("qwen2.5-coder-0.5b-instruct-q4_k_m");
}

#[test]
fn llama_scores_match_hugging_face() {
    check_against_goldens("smollm2-135m-instruct-q4_1");
}

/// The packed multi-item pass (query once, items after it) gives what scoring each prompt alone gives.
#[test]
fn packed_equals_per_item() {
    let alias = "smollm2-135m-instruct-q4_1";
    let gold = golden(alias);
    let packed = engine(alias, Packing::SharedPrefix);
    let per_item = engine(alias, Packing::PerItem);
    let jobs: Vec<_> = gold["score_cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| packed.prepare(&request(c)).expect("prepare"))
        .collect();
    // All jobs in one call: several requests share each forward pass.
    let a = packed.score_batch(&jobs).expect("engine up");
    let b = per_item.score_batch(&jobs).expect("engine up");
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (x.as_ref().expect("packed"), y.as_ref().expect("per item"));
        for (rx, ry) in x.scores.iter().zip(&y.scores) {
            for (p, q) in rx.iter().zip(ry) {
                assert!((p - q).abs() <= 1e-4, "packed {p} vs per-item {q}");
            }
        }
    }
    let stats = packed.stats().expect("stats");
    let per = per_item.stats().expect("stats");
    assert!(
        stats.tokens_real < per.tokens_real,
        "sharing the query computes fewer tokens"
    );
}

/// Gemma 3 270M through the whole request path: text tokenized by the SentencePiece GGUF
/// tokenizer (prompt ids equal to HF's), every score within 1e-3.
#[test]
fn gemma3_text_scores_match_hugging_face() {
    check_against_goldens("gemma-3-270m-q4_k_m");
}

/// The jobs of an alias's score cases, built from Hugging Face's own prompt token ids (so the
/// comparison is of the model alone), with HF's scores per case.
fn jobs_from_prompt_ids(gold: &Value) -> Vec<(String, ScoreJob, Vec<Vec<f64>>)> {
    gold["score_cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|case| {
            let prompts: Vec<Vec<u32>> =
                serde_json::from_value(case["prompt_token_ids"].clone()).expect("ids");
            let labels: Vec<Vec<u32>> = match &case["label_token_ids"] {
                Value::Array(a) if a.first().is_some_and(Value::is_array) => {
                    serde_json::from_value(case["label_token_ids"].clone()).expect("labels")
                }
                v => {
                    let one: Vec<u32> = serde_json::from_value(v.clone()).expect("labels");
                    vec![one; prompts.len()]
                }
            };
            let job = ScoreJob {
                prompts,
                labels,
                apply_softmax: case["apply_softmax"].as_bool().unwrap_or(false),
                temperature: case["temperature"].as_f64().unwrap_or(1.0),
                outputs: Default::default(),
            };
            let name = case["name"].as_str().expect("name").to_string();
            (name, job, f64s(&case["scores"]))
        })
        .collect()
}

/// Gemma 3 270M (sliding window 512, five local layers per global one): every score case within
/// 1e-3 of Hugging Face, fed HF's prompt token ids. The long cases (840+ tokens, past the window)
/// share their query, so they run through coalescing and the prefix cache: the second round
/// reads the cached query.
#[test]
fn gemma3_scores_match_hugging_face() {
    let alias = "gemma-3-270m-q4_k_m";
    let gold = golden(alias);
    let engine = engine(alias, Packing::SharedPrefix);
    let cases = jobs_from_prompt_ids(&gold);
    let jobs: Vec<ScoreJob> = cases.iter().map(|(_, j, _)| j.clone()).collect();
    let mut worst = 0.0f64;
    for round in ["first", "cached"] {
        for ((name, _, want), got) in cases
            .iter()
            .zip(engine.score_batch(&jobs).expect("engine up"))
        {
            let got = got.unwrap_or_else(|e| panic!("{alias}/{name}: {e}"));
            assert_eq!(
                got.scores.len(),
                want.len(),
                "{alias}/{name}: one row per item"
            );
            for (g_row, w_row) in got.scores.iter().zip(want) {
                assert_eq!(
                    g_row.len(),
                    w_row.len(),
                    "{alias}/{name}: one column per label"
                );
                for (g, w) in g_row.iter().zip(w_row) {
                    let diff = (g - w).abs();
                    worst = worst.max(diff);
                    assert!(
                        diff <= 1e-3,
                        "{alias}/{name} ({round}): got {g}, Hugging Face {w}"
                    );
                }
            }
        }
    }
    let stats = engine.stats().expect("stats");
    assert!(
        stats.prefix_hit_tokens > 0,
        "the long cases' shared query came from the prefix cache"
    );
    eprintln!("{alias}: worst |ours - HF| = {worst:.2e} (token-id prompts, two rounds)");
}
