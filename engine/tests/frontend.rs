//! What `scorer api` loads (issue 14, defect 9): the tokenizer and the model's metadata, no
//! weights and no PJRT client. A `Frontend` refuses and tokenizes every request exactly as the
//! engine does (one validation function), reads the same metadata as a full load, and costs a
//! small fraction of the engine's memory (printed, not asserted).

use scorer_engine::frontend::Frontend;
use scorer_engine::home;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_engine::weights;
use scorer_protocol::{Preparer, ScoreRequest};

const SMOL: &str = "smollm2-135m-instruct-q4_1";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn requests() -> Vec<ScoreRequest> {
    [
        serde_json::json!({"query": "Is it red?", "items": [" yes", " no"],
            "label_token_ids": [10539, 5230], "apply_softmax": true}),
        serde_json::json!({"query": [1, 2, 3], "items": [[4], [5, 6]],
            "label_token_ids": [7], "item_first": true}),
        serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [999999]}),
        serde_json::json!({"query": [49151], "items": [[49152]], "label_token_ids": [1]}),
        serde_json::json!({"query": "", "items": [""], "label_token_ids": [1]}),
        serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": []}),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).expect("request"))
    .collect()
}

/// One test, in this order, so each RSS difference is its own load's (tests of one binary run
/// on parallel threads of one process).
#[test]
fn frontend_loads_metadata_only_and_prepares_like_the_engine() {
    metadata_alone_is_read_for_the_default_model();
    frontend_prepares_like_the_engine_without_its_weights();
}

fn frontend_prepares_like_the_engine_without_its_weights() {
    let cfg = EngineConfig::new(home::model_file(SMOL), SMOL.to_string());
    let before = rss_kib();
    let frontend = Frontend::load(&cfg).expect("frontend loads");
    let frontend_kib = rss_kib().saturating_sub(before);
    let before = rss_kib();
    let engine = Engine::load(cfg).expect("engine loads");
    let engine_kib = rss_kib().saturating_sub(before);
    eprintln!("[frontend] {SMOL}: frontend +{frontend_kib} KiB RSS, engine +{engine_kib} KiB");
    assert_eq!(Preparer::model_id(&frontend), SMOL);
    assert_eq!(frontend.model_config(), engine.model_config());
    assert_eq!(frontend.limits(), engine.limits());
    for req in requests() {
        assert_eq!(
            Preparer::prepare(&frontend, &req),
            Preparer::prepare(&engine, &req),
            "{req:?}"
        );
    }
}

fn metadata_alone_is_read_for_the_default_model() {
    let path = home::model_file(QWEN);
    let before = rss_kib();
    let started = std::time::Instant::now();
    let config = weights::load_config(&path).expect("metadata");
    let frontend = Frontend::load(&EngineConfig::new(path, QWEN.to_string())).expect("frontend");
    eprintln!(
        "[frontend] {QWEN}: metadata and tokenizer in {:?}, +{} KiB RSS",
        started.elapsed(),
        rss_kib().saturating_sub(before)
    );
    assert_eq!(config.vocab_size, 151_936);
    assert_eq!(frontend.model_config(), &config);
    let job = Preparer::prepare(&frontend, &requests()[0]).expect("prepared");
    assert_eq!(job.prompts.len(), 2);
}

/// `query_messages` through a `Preparer`: rendered with the model's chat template, each item
/// appended, tokenized without special tokens: the ids transformers gives (goldens
/// `chat_templates.json`); a model without a template (Gemma 3 270M, a base model) refuses it
/// with a 400 naming the model, and still prepares every other request.
#[test]
fn query_messages_use_the_models_chat_template() {
    let gold: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/reference/goldens/chat_templates.json"),
        )
        .expect("chat_templates.json"),
    )
    .expect("json");
    let smol = Frontend::load(&EngineConfig::new(home::model_file(SMOL), SMOL.to_string()))
        .expect("frontend loads");
    assert!(smol.chat_template().is_some());
    let model = &gold["models"][SMOL];
    let convs = model["conversations"].as_array().expect("conversations");
    for sp in model["score_prompts"].as_array().expect("score_prompts") {
        let conv = convs
            .iter()
            .find(|c| c["name"] == sp["conversation"])
            .expect("conversation");
        let req: ScoreRequest = serde_json::from_value(serde_json::json!({
            "query_messages": conv["messages"], "items": [sp["item"], sp["item"]],
            "label_token_ids": [10539]}))
        .expect("request");
        let job = Preparer::prepare(&smol, &req).expect("prepared");
        let want: Vec<u32> = serde_json::from_value(sp["ids"].clone()).expect("ids");
        assert_eq!(job.prompts, vec![want.clone(), want], "{sp}");
    }

    let gemma = "gemma-3-270m-q4_k_m";
    let base = Frontend::load(&EngineConfig::new(
        home::model_file(gemma),
        gemma.to_string(),
    ))
    .expect("frontend loads");
    assert!(base.chat_template().is_none());
    let chat: ScoreRequest = serde_json::from_value(serde_json::json!({
        "query_messages": [{"role": "user", "content": "Hi"}], "items": ["a"],
        "label_token_ids": [1]}))
    .expect("request");
    let err = Preparer::prepare(&base, &chat).expect_err("refused");
    assert!(
        err.message.contains(gemma) && err.message.contains("no chat template"),
        "{}",
        err.message
    );
    let plain: ScoreRequest = serde_json::from_value(serde_json::json!({
        "query": "Hi", "items": ["a"], "label_token_ids": [1]}))
    .expect("request");
    assert!(Preparer::prepare(&base, &plain).is_ok());
}
