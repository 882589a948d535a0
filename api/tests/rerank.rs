//! The rerank routes on the real services (RabbitMQ, Redis, Postgres) and the real engine
//! (SmolLM2, served with a `--rerank-template` file): `/v1/rerank` (Jina), `/v2/rerank` (Cohere)
//! and `/rerank` (TEI), sync, as async jobs and as batch lines, each scoring exactly what
//! `/v1/score` scores for the template's prompts; the clients' request shapes over plain HTTP;
//! bad input answered 400 (never a 5xx).

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use reqwest::StatusCode;
use scorer_engine::rerank_template::RerankTemplateChoice;
use scorer_engine::runtime::{Engine, EngineConfig};
use serde_json::{Value, json};

/// A template whose label words are single tokens of SmolLM2's vocabulary.
const TEMPLATE: &str = r#"{
  "prefix": "<|im_start|>system\nJudge whether the Document answers the Query. Answer only \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n",
  "template": "<Query>: {query}\n<Document>: {document}",
  "suffix": "<|im_end|>\n<|im_start|>assistant\n",
  "yes": "yes",
  "no": "no"
}"#;

/// Prompt limit of this binary's engine: small, so an over-long document is cheap to write.
const MAX_PROMPT_TOKENS: usize = 160;

const QUERY: &str = "Which fruit grows on trees?";
const DOCS: [&str; 3] = [
    "Trucks carry goods on highways.",
    "Apples grow on apple trees.",
    "Pears are fruit that grow on trees.",
];

/// SmolLM2 with the template above, loaded once for the binary.
async fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        ENGINE
            .get_or_init(|| {
                let path = std::env::temp_dir()
                    .join(format!("rerank-{}.json", uuid::Uuid::new_v4().simple()));
                std::fs::write(&path, TEMPLATE).expect("write template");
                let mut cfg =
                    EngineConfig::new(scorer_engine::home::model_file(MODEL), MODEL.to_string());
                cfg.rerank_template = RerankTemplateChoice::File(path.clone());
                cfg.limits.max_prompt_tokens = MAX_PROMPT_TOKENS;
                let engine = Engine::load(cfg).expect("engine loads (run `scorer fetch` first)");
                let _ = std::fs::remove_file(&path);
                Arc::new(engine)
            })
            .clone()
    })
    .await
    .expect("engine loader")
}

async fn harness() -> Harness {
    let mut h = Harness::start_on(engine().await, Backing::Real, |_| {}).await;
    h.start_worker();
    h
}

/// The `/v1/score` request a rerank of `documents` is, written from the template by hand.
fn score_body(engine: &Engine, documents: &[&str]) -> Value {
    let t = engine.rerank_template().expect("served with a template");
    let p = t.prompts(QUERY, documents, None).expect("prompts");
    json!({
        "query": p.query,
        "items": p.items,
        "label_token_ids": p.label_token_ids,
        "apply_softmax": true,
    })
}

/// `results` are every document once, sorted best first, each P(yes) of its `/v1/score` row.
fn assert_ranked(results: &Value, want: &Value, n: usize) {
    let results = results.as_array().expect("results");
    assert_eq!(results.len(), n, "{results:?}");
    let scores = want["scores"].as_array().expect("scores");
    let mut last = f64::INFINITY;
    for r in results {
        let i = r["index"].as_u64().expect("index") as usize;
        let got = r["relevance_score"]
            .as_f64()
            .or(r["score"].as_f64())
            .expect("score");
        let p_yes = scores[i][0].as_f64().expect("P(yes)");
        assert!(
            (got - p_yes).abs() <= 1e-4,
            "document {i}: {got} vs {p_yes}"
        );
        assert!(got <= last, "sorted best first: {results:?}");
        last = got;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_reranks_equal_v1_score_in_each_clients_shape() {
    let h = harness().await;
    let (status, _, want) = h.post("/v1/score", &score_body(&h.engine, &DOCS)).await;
    assert_eq!(status, StatusCode::OK, "{want}");
    let prompt_tokens = want["usage"]["prompt_tokens"].clone();

    // Jina: documents as strings or {text}; echoed by default; no meta.
    let jina = json!({"model": MODEL, "query": QUERY,
        "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]]});
    let (status, _, v1) = h.post("/v1/rerank", &jina).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_ranked(&v1["results"], &want, 3);
    assert_eq!(v1["model"], MODEL);
    assert_eq!(v1["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v1["usage"]["total_tokens"], prompt_tokens);
    assert!(v1["id"].as_str().is_some_and(|s| !s.is_empty()), "{v1}");
    assert!(v1.get("meta").is_none(), "{v1}");
    for r in v1["results"].as_array().expect("results") {
        let i = r["index"].as_u64().expect("index") as usize;
        assert_eq!(r["document"]["text"], DOCS[i]);
    }

    // Cohere: top_n, no echo by default, meta.billed_units; "default" names the served model.
    let cohere = json!({"model": "default", "query": QUERY, "documents": DOCS, "top_n": 2});
    let (status, _, v2) = h.post("/v2/rerank", &cohere).await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    assert_eq!(v2["results"].as_array().map(Vec::len), Some(2), "{v2}");
    assert_eq!(
        v2["results"][0]["index"], v1["results"][0]["index"],
        "{v2} vs {v1}"
    );
    assert!(v2["results"][0].get("document").is_none(), "{v2}");
    assert_eq!(v2["meta"]["billed_units"]["search_units"], 1);
    assert_eq!(v2["meta"]["billed_units"]["input_tokens"], prompt_tokens);
    assert_eq!(v2["model"], "default");
    // top_n larger than the documents is clamped; return_documents echoes.
    let (status, _, all) = h
        .post(
            "/v2/rerank",
            &json!({"query": QUERY, "documents": DOCS, "top_n": 10, "return_documents": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_ranked(&all["results"], &want, 3);
    assert!(all["results"][2]["document"]["text"].is_string(), "{all}");

    // TEI: a list; return_text; raw_scores is ln(P(yes)/P(no)).
    let (status, _, tei) = h
        .post(
            "/rerank",
            &json!({"query": QUERY, "texts": DOCS, "return_text": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tei}");
    assert_ranked(&tei, &want, 3);
    assert_eq!(
        tei[0]["text"],
        DOCS[tei[0]["index"].as_u64().expect("i") as usize]
    );
    let (status, _, raw) = h
        .post(
            "/rerank",
            &json!({"query": QUERY, "texts": DOCS, "raw_scores": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    for r in raw.as_array().expect("list") {
        let i = r["index"].as_u64().expect("index") as usize;
        let row = &want["scores"][i];
        let logit = row[0].as_f64().expect("yes").ln() - row[1].as_f64().expect("no").ln();
        let got = r["score"].as_f64().expect("score");
        assert!((got - logit).abs() <= 1e-3, "{got} vs {logit}");
        assert!(r.get("text").is_none());
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rerank_requests_are_400_with_a_clear_message() {
    let h = harness().await;
    let long = "apples and pears ".repeat(MAX_PROMPT_TOKENS);
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/v1/rerank",
            json!({"query": "q", "documents": []}),
            StatusCode::BAD_REQUEST,
            "documents must not be empty",
        ),
        (
            "/v2/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": 0}),
            StatusCode::BAD_REQUEST,
            "top_n must be a positive integer, got 0",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": -2}),
            StatusCode::BAD_REQUEST,
            "got -2",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": []}),
            StatusCode::BAD_REQUEST,
            "texts must not be empty",
        ),
        (
            "/v1/rerank",
            json!({"documents": ["a"]}),
            StatusCode::BAD_REQUEST,
            "query",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [3]}),
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "instruction": "x"}),
            StatusCode::BAD_REQUEST,
            "takes no \"instruction\"",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["ok", long]}),
            StatusCode::BAD_REQUEST,
            "document 1: its prompt has",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": [long]}),
            StatusCode::BAD_REQUEST,
            "\"truncate\": true",
        ),
        (
            "/v1/rerank",
            json!({"model": "other", "query": "q", "documents": ["a"]}),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "/v1/rerank/jobs",
            json!({"query": "q", "documents": ["a"], "priority": "sync"}),
            StatusCode::BAD_REQUEST,
            "priority",
        ),
        (
            "/rerank/jobs",
            json!({"query": "q", "texts": ["a"], "top_n": 0, "ttl_seconds": 0}),
            StatusCode::BAD_REQUEST,
            "ttl_seconds",
        ),
    ];
    for (path, body, want, message) in cases {
        let (status, _, answer) = h.post(path, &body).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        let got = answer["message"].as_str().unwrap_or_default();
        assert!(got.contains(message), "{path} {body}: {answer}");
    }
    let resp = h
        .http
        .post(format!("{}/v2/rerank", h.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // With truncate the long text is cut to the limit and scored.
    let (status, _, tei) = h
        .post(
            "/rerank",
            &json!({"query": "q", "texts": [long, "pears"], "truncate": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tei}");
    assert_eq!(tei.as_array().map(Vec::len), Some(2), "{tei}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rerank_jobs_and_batch_lines_render_the_rerank_shape() {
    let h = harness().await;
    let (status, _, want) = h.post("/v1/score", &score_body(&h.engine, &DOCS)).await;
    assert_eq!(status, StatusCode::OK, "{want}");

    // Async: 202, Location under /v1/rerank/jobs, the result rendered there.
    let (status, headers, job) = h
        .post(
            "/v1/rerank/jobs",
            &json!({"query": QUERY, "documents": DOCS, "top_n": 1, "priority": "bulk"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    assert_eq!(
        headers["location"],
        format!("/v1/rerank/jobs/{id}").as_str()
    );
    assert_eq!(h.wait_terminal(&id).await["status"], "succeeded");
    let (status, _, done) = h.get(&format!("/v1/rerank/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["object"], "score.job");
    let best = &done["result"]["results"];
    assert_eq!(best.as_array().map(Vec::len), Some(1), "{done}");
    assert_eq!(done["result"]["id"], id.as_str());
    let top = best[0]["index"].as_u64().expect("index") as usize;
    assert_eq!(best[0]["document"]["text"], DOCS[top]);
    let p = |i: usize| want["scores"][i][0].as_f64().expect("p");
    assert!((0..3).all(|i| p(i) <= p(top)), "{done} vs {want}");

    let (status, _, tei_job) = h
        .post("/rerank/jobs", &json!({"query": QUERY, "texts": DOCS}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{tei_job}");
    let tei_id = tei_job["id"].as_str().expect("id").to_string();
    h.wait_terminal(&tei_id).await;
    let (_, _, tei_done) = h.get(&format!("/v1/rerank/jobs/{tei_id}")).await;
    assert_ranked(&tei_done["result"], &want, 3);

    // A /v1/score job is not a rerank job.
    let (status, _, score_job) = h
        .post("/v1/score/jobs", &score_body(&h.engine, &DOCS))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{score_job}");
    let score_id = score_job["id"].as_str().expect("id");
    let (status, _, answer) = h.get(&format!("/v1/rerank/jobs/{score_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    // Batch lines: /v1/score, the three rerank endpoints, and two bad lines.
    let line = |id: &str, url: &str, body: Value| json!({"custom_id": id, "method": "POST", "url": url, "body": body});
    let file = scorer_testkit::batches::jsonl(&[
        line("score", "/v1/score", score_body(&h.engine, &DOCS)),
        line(
            "jina",
            "/v1/rerank",
            json!({"query": QUERY, "documents": DOCS}),
        ),
        line(
            "cohere",
            "/v2/rerank",
            json!({"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 2}),
        ),
        line(
            "tei",
            "/rerank",
            json!({"query": QUERY, "texts": DOCS, "return_text": true}),
        ),
        line(
            "empty",
            "/v1/rerank",
            json!({"query": QUERY, "documents": []}),
        ),
        line(
            "elsewhere",
            "/v3/rerank",
            json!({"query": QUERY, "documents": DOCS}),
        ),
    ]);
    let caller = scorer_testkit::batches::Caller::new(&h);
    let (status, batch) = caller.upload(file).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let batch_id = batch["id"].as_str().expect("id");
    let finished = caller.wait_status(batch_id, "completed").await;
    assert_eq!(finished["request_counts"]["completed"], 4, "{finished}");
    assert_eq!(finished["request_counts"]["failed"], 2, "{finished}");
    let out = scorer_testkit::batches::by_custom_id(
        caller
            .lines(&format!("/v1/batches/{batch_id}/output"))
            .await,
    );
    let body = |id: &str| out[id]["response"]["body"].clone();
    assert_same_scores(&body("score"), &want);
    assert_ranked(&body("jina")["results"], &want, 3);
    assert!(body("jina")["results"][0]["document"]["text"].is_string());
    let cohere = body("cohere");
    assert_eq!(
        cohere["results"].as_array().map(Vec::len),
        Some(2),
        "{cohere}"
    );
    assert_eq!(cohere["meta"]["billed_units"]["search_units"], 1);
    assert_eq!(cohere["model"], MODEL);
    assert_ranked(&body("tei"), &want, 3);
    let errors = scorer_testkit::batches::by_custom_id(
        caller
            .lines(&format!("/v1/batches/{batch_id}/errors"))
            .await,
    );
    let message = |id: &str| {
        errors[id]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        message("empty").contains("documents must not be empty"),
        "{errors:?}"
    );
    assert!(message("elsewhere").contains("url must be"), "{errors:?}");
    h.finish().await;
}
