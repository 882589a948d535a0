//! Issue 17, a drop-in for SGLang clients, over HTTP on the real RabbitMQ, Redis and Postgres:
//! served model names and their echo (sync, async jobs, batch lines), SGLang's newest
//! `/v1/score` fields (`temperature`'s rule, `return_token_logprobs`,
//! `return_pooled_hidden_states`), and `query_messages` scored exactly as transformers'
//! `apply_chat_template` ids (goldens `tests/reference/goldens/chat_templates.json`).

mod common;

use std::path::Path;

use common::batches::{Caller, by_custom_id, jsonl};
use common::{Backing, Harness, MODEL, direct, score_body};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CANONICAL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const SMOL_YES: i64 = 10539;
const SMOL_NO: i64 = 5230;

fn rows(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

fn with_model(model: &str) -> Value {
    let mut body = score_body();
    body["model"] = json!(model);
    body
}

/// A request naming a served name or alias is answered under that name, one naming none (or
/// `default`) under the canonical one, anything else is 404 — for sync calls, async jobs and
/// batch lines alike; `/v1/models` lists the canonical name. With `--accept-any-model-name`
/// every name is served and echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_names_are_accepted_and_echoed() {
    let mut h = Harness::start(Backing::Real, |c| {
        c.served_model_names = vec![CANONICAL.into(), "smol".into()];
    })
    .await;
    h.start_worker();
    let (status, _, models) = h.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"][0]["id"], CANONICAL, "{models}");
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1));

    let want = rows(&direct(&h.engine, &score_body()).await["scores"]);
    for (asked, answered) in [
        (Some("smol"), "smol"),
        (Some(CANONICAL), CANONICAL),
        (Some("default"), CANONICAL),
        (None, CANONICAL),
    ] {
        let body = asked.map_or_else(score_body, with_model);
        let (status, _, resp) = h.post("/v1/score", &body).await;
        assert_eq!(status, StatusCode::OK, "{asked:?}: {resp}");
        assert_eq!(resp["model"], answered, "{asked:?}");
        assert!(max_diff(&rows(&resp["scores"]), &want) <= 1e-6);
    }
    for unknown in [MODEL, "gpt-4o"] {
        let (status, _, resp) = h.post("/v1/score", &with_model(unknown)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {resp}");
        let msg = resp["message"].as_str().unwrap_or_default();
        assert!(msg.contains(unknown) && msg.contains(CANONICAL), "{msg}");
    }

    // Async job: the result answers the name the submission used.
    let (status, _, job) = h.post("/v1/score/jobs", &with_model("smol")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = h.wait_terminal(job["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["model"], "smol", "{done}");
    let (status, _, refused) = h.post("/v1/score/jobs", &with_model("nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");

    // Batch lines, one name each.
    let line = |id: &str, model: &str| json!({"custom_id": id, "method": "POST", "url": "/v1/score", "body": with_model(model)});
    let c = Caller::new(&h);
    let file = jsonl(&[
        line("alias", "smol"),
        line("canonical", CANONICAL),
        line("unknown", "nope"),
    ]);
    let (status, batch) = c.upload(file).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let id = batch["id"].as_str().expect("id").to_string();
    c.wait(&id, |b| b["status"] == "completed").await;
    let out = by_custom_id(c.lines(&format!("/v1/batches/{id}/output")).await);
    assert_eq!(out["alias"]["response"]["body"]["model"], "smol");
    assert_eq!(out["canonical"]["response"]["body"]["model"], CANONICAL);
    let errors = by_custom_id(c.lines(&format!("/v1/batches/{id}/errors")).await);
    let msg = errors["unknown"].to_string();
    assert!(
        msg.contains("nope") && msg.contains("does not exist"),
        "{msg}"
    );
    h.finish().await;

    let mut any = Harness::start(Backing::Real, |c| c.accept_any_model_name = true).await;
    any.start_worker();
    let (status, _, resp) = any.post("/v1/score", &with_model("gpt-4o")).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["model"], "gpt-4o");
    let (_, _, models) = any.get("/v1/models").await;
    assert_eq!(
        models["data"][0]["id"], MODEL,
        "without the flag: the model's id"
    );
    any.finish().await;
}

fn fields_body(softmax: bool, temperature: f64) -> Value {
    json!({
        "query": "Is the following a fruit? Answer yes or no.",
        "items": [" apple", " truck", " pear"],
        "label_token_ids": [SMOL_YES, SMOL_NO, 28],
        "apply_softmax": softmax,
        "temperature": temperature,
        "return_token_logprobs": true,
    })
}

/// `temperature` other than 1 needs `apply_softmax` (400 otherwise); `token_logprobs` are the
/// labels' full-vocabulary log-probabilities in both modes (`exp` of them are the probability
/// scores; the softmax scores are their tempered softmax); `pooled_hidden_states` has one
/// hidden-size row per item, the same however the item was packed, and changes no score. Each
/// field is absent unless asked for, and travels through async jobs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_score_fields() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    h.start_worker();
    let (status, _, resp) = h.post("/v1/score", &fields_body(false, 0.5)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let msg = resp["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("temperature") && msg.contains("apply_softmax"),
        "{msg}"
    );
    for bad in [json!(0.0), json!(-1.0), json!("hot")] {
        let mut body = fields_body(true, 1.0);
        body["temperature"] = bad.clone();
        let (status, _, resp) = h.post("/v1/score", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {resp}");
    }

    let (status, _, probs) = h.post("/v1/score", &fields_body(false, 1.0)).await;
    assert_eq!(status, StatusCode::OK, "{probs}");
    assert!(probs.get("pooled_hidden_states").is_none(), "{probs}");
    let lp = rows(&probs["token_logprobs"]);
    let scores = rows(&probs["scores"]);
    assert_eq!((lp.len(), lp[0].len()), (3, 3));
    for (l, s) in lp.iter().flatten().zip(scores.iter().flatten()) {
        assert!(*l < 0.0 && (l.exp() - s).abs() <= 1e-12, "{l} vs {s}");
    }
    let t = 0.5;
    let (status, _, soft) = h.post("/v1/score", &fields_body(true, t)).await;
    assert_eq!(status, StatusCode::OK, "{soft}");
    let soft_lp = rows(&soft["token_logprobs"]);
    assert!(
        max_diff(&soft_lp, &lp) <= 1e-5,
        "the same log-probabilities"
    );
    for (row, s) in soft_lp.iter().zip(rows(&soft["scores"])) {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = row.iter().map(|x| ((x - m) / t).exp()).sum();
        for (x, sj) in row.iter().zip(&s) {
            assert!(
                (((x - m) / t).exp() / z - sj).abs() <= 1e-9,
                "tempered softmax"
            );
        }
    }
    let (_, _, plain) = h.post("/v1/score", &score_body()).await;
    assert!(plain.get("token_logprobs").is_none(), "{plain}");

    // Hidden states: the three items together, then the second alone.
    let mut pooled_body = score_body();
    pooled_body["return_pooled_hidden_states"] = json!(true);
    let (status, _, pooled) = h.post("/v1/score", &pooled_body).await;
    assert_eq!(status, StatusCode::OK, "{pooled}");
    assert!(max_diff(&rows(&pooled["scores"]), &rows(&plain["scores"])) <= 1e-6);
    let hidden: Vec<Vec<f32>> =
        serde_json::from_value(pooled["pooled_hidden_states"].clone()).expect("hidden states");
    let size = h.engine.model_config().hidden_size;
    assert_eq!(hidden.len(), 3);
    assert!(
        hidden
            .iter()
            .all(|r| r.len() == size && r.iter().all(|x| x.is_finite()))
    );
    assert!(hidden[0] != hidden[1], "items differ");
    let mut alone_body = pooled_body.clone();
    alone_body["items"] = json!([" truck"]);
    let (_, _, alone) = h.post("/v1/score", &alone_body).await;
    let alone: Vec<Vec<f32>> =
        serde_json::from_value(alone["pooled_hidden_states"].clone()).expect("hidden states");
    let d = hidden[1]
        .iter()
        .zip(&alone[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-4, "packed with others vs alone: {d}");

    // Through an async job (the envelope carries the flags).
    let mut job_body = fields_body(true, t);
    job_body["return_pooled_hidden_states"] = json!(true);
    let (status, _, job) = h.post("/v1/score/jobs", &job_body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = h.wait_terminal(job["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(max_diff(&rows(&done["result"]["token_logprobs"]), &lp) <= 1e-5);
    assert_eq!(
        done["result"]["pooled_hidden_states"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    h.finish().await;
}

fn chat_goldens() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/goldens/chat_templates.json");
    serde_json::from_slice(&std::fs::read(&path).expect("chat_templates.json")).expect("json")
}

/// `query_messages`: each item is appended to the chat rendered with `add_generation_prompt`
/// (the start of the assistant's answer); the prompt scored is transformers' ids for it, so the
/// scores equal those of those ids sent as tokens. `query` with it, `item_first` with it, and
/// token items with it are 400s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_messages_score_the_rendered_chat() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    h.start_worker();
    let gold = &chat_goldens()["models"][MODEL];
    let convs = gold["conversations"].as_array().expect("conversations");
    let prompts = gold["score_prompts"].as_array().expect("score_prompts");
    assert!(prompts.len() >= 3);
    for sp in prompts {
        let conv = convs
            .iter()
            .find(|c| c["name"] == sp["conversation"])
            .expect("conversation");
        let labels = json!([SMOL_YES, SMOL_NO]);
        let chat = json!({"query_messages": conv["messages"], "items": [sp["item"]],
            "label_token_ids": labels, "apply_softmax": true});
        let tokens =
            json!({"items": [sp["ids"]], "label_token_ids": labels, "apply_softmax": true});
        let (status, _, got) = h.post("/v1/score", &chat).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        let (_, _, want) = h.post("/v1/score", &tokens).await;
        let what = format!("{} + {}", sp["conversation"], sp["item"]);
        assert_eq!(
            got["usage"]["prompt_tokens"].as_u64(),
            sp["ids"].as_array().map(|a| a.len() as u64),
            "{what}: the golden's ids"
        );
        assert!(
            max_diff(&rows(&got["scores"]), &rows(&want["scores"])) <= 1e-6,
            "{what}"
        );
    }
    let messages = json!([{"role": "user", "content": "Is a pear a fruit?"}]);
    for (extra, msg) in [
        (json!({"query": "q"}), "cannot both be given"),
        (json!({"item_first": true}), "item_first"),
        (json!({"items": [[1, 2]]}), "must be text"),
    ] {
        let mut body = json!({"query_messages": messages, "items": [" Yes"],
            "label_token_ids": [SMOL_YES]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, _, resp) = h.post("/v1/score", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
        let text = resp["message"].as_str().unwrap_or_default();
        assert!(text.contains(msg), "{text}");
    }
    h.finish().await;
}
