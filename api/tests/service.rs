//! The service end to end: HTTP API, queue, worker, engine, result and audit stores. The tests
//! named in issue 5's "Done when" run against the real RabbitMQ, Redis and Postgres; the ones
//! that also make sense in-process run against the embedded mode too.

mod common;

use std::time::Duration;

use common::{Backing, Harness, MODEL, assert_same_scores, direct, score_body};
use reqwest::StatusCode;

use serde_json::{Value, json};

fn assert_error(body: &Value, code: u16, kind: &str) {
    assert_eq!(body["object"], "error", "{body}");
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["param"], Value::Null, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn sync_happy_path(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let body = score_body();
    let (status, _, resp) = h.post("/v1/score", &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_same_scores(&resp, &direct(&h.engine, &body).await);
    assert_eq!(resp["object"], "scoring");
    assert_eq!(resp["model"], MODEL);
    let scores = resp["scores"].as_array().expect("scores");
    assert_eq!(scores.len(), 3);
    for row in scores {
        let row: Vec<f64> = serde_json::from_value(row.clone()).expect("row");
        assert_eq!(row.len(), 2);
        assert!(
            (row.iter().sum::<f64>() - 1.0).abs() < 1e-6,
            "softmax rows sum to 1"
        );
    }
    let usage = &resp["usage"];
    assert!(usage["prompt_tokens"].as_u64().expect("usage") > 0);
    assert_eq!(usage["completion_tokens"], 0);
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"]);

    // `items: []` is valid and answers no rows.
    let (status, _, empty) = h
        .post(
            "/v1/score",
            &json!({"query": "q", "items": [], "label_token_ids": [1]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["scores"], json!([]));
    h.finish().await;
}

async fn async_submit_and_poll(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let body = score_body();
    let (status, headers, job) = h.post("/v1/score/jobs", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    assert_eq!(job["object"], "score.job");
    assert_eq!(job["kind"], "async");
    assert_eq!(job["priority"], "async");
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/score/jobs/{id}").as_str())
    );
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_same_scores(&done["result"], &direct(&h.engine, &body).await);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    assert!(
        done["timings"]["queue_ms"]
            .as_i64()
            .is_some_and(|ms| ms >= 0),
        "{done}"
    );
    assert!(
        done["timings"]["inference_ms"]
            .as_i64()
            .is_some_and(|ms| ms >= 0),
        "{done}"
    );
    assert_eq!(done["attempts"], 1);

    // The audit store has the same outcome and the request as sent.
    let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
    let row = h.stores.audit.get(uuid).await.expect("audit").expect("row");
    assert_eq!(row.status.as_str(), "succeeded");
    assert_eq!(row.request, Some(body));
    assert_eq!(
        serde_json::to_value(&row.result).expect("json"),
        done["result"]
    );
    h.finish().await;
}

async fn cancel_before_it_runs(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    // No worker yet: the job waits in the queue.
    let (status, _, job) = h.post("/v1/score/jobs", &score_body()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    let (status, _, cancelled) = h
        .post(&format!("/v1/score/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (status, _, again) = h
        .post(&format!("/v1/score/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_error(&again, 409, "ConflictError");

    // A worker now takes the message and drops it without running it.
    h.start_worker();
    let model = MODEL;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.stores.queue.depth(model).await.expect("depth") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the queue drains");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then a job submitted after it completes, which shows the cancelled one was consumed.
    let (_, _, later) = h.post("/v1/score/jobs", &score_body()).await;
    let later = h.wait_terminal(later["id"].as_str().expect("id")).await;
    assert_eq!(later["status"], "succeeded");
    let (_, _, job) = h.get(&format!("/v1/score/jobs/{id}")).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job.get("result").is_none(), "never ran: {job}");

    let (status, _, missing) = h
        .post(
            &format!("/v1/score/jobs/{}/cancel", uuid::Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    h.finish().await;
}

async fn idempotency_key(backing: Backing) {
    let h = Harness::start(backing, |_| {}).await;
    let key = format!("key-{}", uuid::Uuid::new_v4());
    let headers = [("idempotency-key", key.as_str())];
    let body = score_body();
    let (s1, l1, first) = h.post_with("/v1/score/jobs", &body, &headers).await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{first}");
    let (s2, l2, second) = h.post_with("/v1/score/jobs", &body, &headers).await;
    assert_eq!(s2, StatusCode::ACCEPTED, "{second}");
    assert_eq!(first["id"], second["id"], "same key and body: same job");
    assert_eq!(l1.get("location"), l2.get("location"));

    let mut other = body.clone();
    other["items"] = json!([" banana"]);
    let (s3, _, conflict) = h.post_with("/v1/score/jobs", &other, &headers).await;
    assert_eq!(s3, StatusCode::CONFLICT, "{conflict}");
    assert_error(&conflict, 409, "ConflictError");
    assert!(
        conflict["message"]
            .as_str()
            .expect("msg")
            .contains(first["id"].as_str().expect("id")),
        "{conflict}"
    );
    // Only one job was queued.
    assert_eq!(h.stores.queue.depth(MODEL).await.expect("depth"), 1);
    h.finish().await;
}

async fn deadline_then_retrieval(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    // No worker: the deadline passes.
    let (status, headers, err) = h
        .post_with("/v1/score", &score_body(), &[("x-request-timeout", "0.3")])
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{err}");
    assert_error(&err, 504, "TimeoutError");
    let id = headers
        .get("x-job-id")
        .and_then(|v| v.to_str().ok())
        .expect("job id header")
        .to_string();
    assert!(err["message"].as_str().expect("msg").contains(&id));
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/score/jobs/{id}").as_str())
    );
    // The job goes on once a worker is there.
    h.start_worker();
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["kind"], "sync");
    assert_same_scores(&done["result"], &direct(&h.engine, &score_body()).await);
    h.finish().await;
}

async fn webhook_delivered(backing: Backing) {
    use axum::routing::post;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let receiver = axum::Router::new().route(
        "/hook",
        post({
            let calls = calls.clone();
            move |axum::Json(job): axum::Json<Value>| {
                let tx = tx.clone();
                let calls = calls.clone();
                async move {
                    // The first delivery is refused, to exercise the retry.
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let _ = tx.send(job);
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let mut body = score_body();
    body["webhook"] = json!(hook);
    body["priority"] = json!("bulk");
    let (status, _, job) = h.post("/v1/score/jobs", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["priority"], "bulk");
    let delivered = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("webhook in time")
        .expect("webhook");
    assert_eq!(delivered["id"], job["id"]);
    assert_eq!(delivered["status"], "succeeded");
    assert_eq!(delivered["object"], "score.job");
    let (_, _, polled) = h
        .get(&format!(
            "/v1/score/jobs/{}",
            job["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(
        delivered, polled,
        "the webhook carries the final job object"
    );
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "retried once"
    );
    server.abort();
    h.finish().await;
}

async fn validation_errors(backing: Backing) {
    let h = Harness::start(backing, |_| {}).await;
    let vocab = 49152;
    let cases = [
        (
            json!({"query": "q", "items": ["a"]}),
            "label_token_ids must be provided",
        ),
        (
            json!({"query": "q", "label_token_ids": [1]}),
            "items must be provided",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [999999]}),
            "Token ID 999999 is out of vocabulary",
        ),
        (
            json!({"query": [1, 2], "items": [[vocab]], "label_token_ids": [1]}),
            "out of vocabulary",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [-1]}),
            "negative",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [5, 5]}),
            "unique",
        ),
        (
            json!({"query": "q", "items": [[1, 2]], "label_token_ids": [1]}),
            "Invalid combination",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [1], "apply_softmax": true, "temperature": 0}),
            "temperature",
        ),
        (
            json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1], [2], [3]]}),
            "per item",
        ),
    ];
    for (body, message) in cases {
        let expected = match serde_json::from_value::<scorer_protocol::ScoreRequest>(body.clone())
            .expect("parses")
            .validate()
        {
            Err(e) => Some(e.message),
            Ok(_) => None,
        };
        for path in ["/v1/score", "/v1/score/jobs"] {
            let (status, _, err) = h.post(path, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {err}");
            assert_error(&err, 400, "BadRequestError");
            let got = err["message"].as_str().expect("message");
            assert!(got.contains(message), "{body}: {got}");
            if let Some(expected) = &expected {
                assert_eq!(got, expected, "the protocol's message, unchanged");
            }
        }
    }
    let (status, _, err) = h
        .post(
            "/v1/score",
            &json!({"model": "nope", "query": "q", "items": ["a"], "label_token_ids": [1]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_error(&err, 404, "NotFoundError");
    let raw = h
        .http
        .post(format!("{}/v1/score", h.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let err: Value = raw.json().await.expect("json");
    assert_error(&err, 400, "BadRequestError");
    assert_eq!(
        h.stores.queue.depth(MODEL).await.expect("depth"),
        0,
        "nothing invalid queued"
    );
    h.finish().await;
}

/// The body size is the transport's limit (413); what the request asks for — items, tokens per
/// prompt — is validated against the engine's `Limits` (400 naming the limit): decided once, in
/// `scorer_protocol::limits`.
async fn limits_answer_413_and_400(backing: Backing) {
    let h = Harness::start(backing, |c| c.max_body_bytes = 64 << 10).await;
    let big = json!({"query": "x".repeat(100 << 10), "items": ["a"], "label_token_ids": [1]});
    for path in ["/v1/score", "/v1/score/jobs"] {
        let (status, _, err) = h.post(path, &big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {err}");
        assert_error(&err, 413, "RequestTooLargeError");
    }
    let limits = scorer_protocol::Limits::default();
    let items: Vec<String> = (0..=limits.max_items).map(|i| format!(" {i}")).collect();
    let many = json!({"query": "q", "items": items, "label_token_ids": [1]});
    // Over the prompt limit (the model's 8,192-token context caps the default 32,768) and
    // under the 64 KiB body bound.
    let over = limits.within_context(8192).max_prompt_tokens + 10;
    let long = json!({"query": "word ".repeat(over), "items": ["a"], "label_token_ids": [1]});
    for path in ["/v1/score", "/v1/score/jobs"] {
        let (status, _, err) = h.post(path, &many).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {err}");
        assert_error(&err, 400, "BadRequestError");
        let msg = err["message"].as_str().expect("msg");
        assert!(msg.contains("items"), "{err}");
        let (status, _, err) = h.post(path, &long).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {err}");
        let msg = err["message"].as_str().expect("msg");
        assert!(msg.contains("tokens"), "{err}");
    }
    h.finish().await;
}

async fn queue_bound_answers_429(backing: Backing) {
    let h = Harness::start(backing, |c| {
        c.max_queue_depth = 2;
        c.retry_after = Duration::from_secs(3);
    })
    .await;
    for _ in 0..2 {
        let (status, _, job) = h.post("/v1/score/jobs", &score_body()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    }
    for path in ["/v1/score/jobs", "/v1/score"] {
        let (status, headers, err) = h.post(path, &score_body()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}: {err}");
        assert_error(&err, 429, "RateLimitError");
        assert_eq!(
            headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }
    h.finish().await;
}

async fn meta_endpoints(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    let (status, _, health) = h.get("/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _, models) = h.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"][0]["id"], MODEL);
    // No worker yet: not ready.
    let (status, _, ready) = h.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["ready"], false);
    assert_ne!(ready["checks"]["workers"], "ok");
    h.start_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, ready) = h.get("/ready").await;
        if status == StatusCode::OK {
            assert_eq!(ready["ready"], true);
            assert_eq!(ready["workers"], json!([h.worker_id(0)]));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready once a worker beats: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = h.post("/v1/score", &score_body()).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("scorer_jobs_accepted_total"), "{metrics}");
    assert!(metrics.contains("scorer_score_seconds"), "{metrics}");
    let (status, _, spec) = h.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/score",
        "/v1/score/jobs",
        "/v1/score/jobs/{id}",
        "/v1/score/jobs/{id}/cancel",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} documented");
    }
    assert!(spec["components"]["schemas"]["ScoreRequest"].is_object());
    let docs = h
        .http
        .get(format!("{}/docs", h.base))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.expect("html").contains("/openapi.json"));
    let (status, _, missing) = h.get("/v1/score/jobs/not-a-job").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&missing, 404, "NotFoundError");
    h.finish().await;
}

async fn graceful_shutdown_drains(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    let w = h.start_worker();
    let (_, _, job) = h.post("/v1/score/jobs", &score_body()).await;
    let id = job["id"].as_str().expect("id").to_string();
    h.wait_job(&id, Duration::from_secs(60), |j| j["status"] != "queued")
        .await;
    // Stop while it may be mid-batch: the batch in hand is finished and stored first.
    h.stop_worker(w).await;
    let (_, _, job) = h.get(&format!("/v1/score/jobs/{id}")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    h.finish().await;
}

async fn ttl_expires_a_job_not_started_in_time(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    let mut body = score_body();
    body["ttl_seconds"] = json!(1);
    let (status, _, job) = h.post("/v1/score/jobs", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert!(job["expires_at"].is_string(), "{job}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    h.start_worker();
    let done = h.wait_terminal(job["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert!(done.get("result").is_none(), "{done}");
    let mut bad = score_body();
    bad["ttl_seconds"] = json!(0);
    let (status, _, err) = h.post("/v1/score/jobs", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    h.finish().await;
}

async fn api_keys_and_tenants(backing: Backing) {
    let h = Harness::start(backing, |c| {
        c.api_keys.insert("key-a".into(), "tenant-a".into());
        c.api_keys.insert("key-b".into(), "tenant-b".into());
    })
    .await;
    let (status, _, err) = h.post("/v1/score/jobs", &score_body()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_error(&err, 401, "AuthenticationError");
    let (status, _, err) = h
        .post_with(
            "/v1/score/jobs",
            &score_body(),
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    let (status, _, job) = h
        .post_with(
            "/v1/score/jobs",
            &score_body(),
            &[("authorization", "Bearer key-a")],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let path = format!("/v1/score/jobs/{}", job["id"].as_str().expect("id"));
    let get_as = |key: &'static str| {
        h.http
            .get(format!("{}{path}", h.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };
    let mine = get_as("key-a").await.expect("get");
    assert_eq!(mine.status(), StatusCode::OK);
    // Another tenant's job answers as if it did not exist.
    let theirs = get_as("key-b").await.expect("get");
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let err: Value = theirs.json().await.expect("json");
    assert_error(&err, 404, "NotFoundError");
    let (status, _, err) = h
        .post_with(
            &format!("{path}/cancel"),
            &json!({}),
            &[("authorization", "Bearer key-b")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    h.finish().await;
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backing::Real).await;
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backing::InProcess).await;
                }
            )*
        }
    };
}

on_both!(
    sync_happy_path,
    async_submit_and_poll,
    cancel_before_it_runs,
    idempotency_key,
    deadline_then_retrieval,
    webhook_delivered,
    validation_errors,
    limits_answer_413_and_400,
    queue_bound_answers_429,
    meta_endpoints,
    graceful_shutdown_drains,
    api_keys_and_tenants,
    ttl_expires_a_job_not_started_in_time,
);
