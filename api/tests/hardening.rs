//! Regression tests for the defects of issue 14 that live in the service layer (jobs, worker,
//! protocol), each on the real RabbitMQ, Redis and PostgreSQL and, where the embedded mode can
//! meet the same input, on the in-process queue and stores too. docs/RELIABILITY.md's adversarial
//! table names each probe, what is expected and what was observed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backing, Harness, MODEL, database_url, load_engine, score_body};
use common::{Worker, WorkerError};
use reqwest::StatusCode;
use scorer_jobs::{DeadLetter, JobQueue, PostgresAuditStore};
use scorer_protocol::job::{JobEnvelope, JobKind, JobPriority, JobRecord};
use serde_json::{Value, json};
use uuid::Uuid;

fn terminal(j: &Value) -> bool {
    matches!(
        j["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled" | "expired")
    )
}

async fn wait_dead_letter(queue: &dyn JobQueue) -> DeadLetter {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(d) = queue.pop_dead_letter(MODEL).await.expect("dlq") {
            return d;
        }
        assert!(Instant::now() < deadline, "nothing was dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Defect 1: a temperature so small that `logit / t` overflows used to make every score NaN
/// (embedded: `[[null, null]]`; distributed: a result the worker could not read back, requeued
/// for ever). The softmax subtracts the maximum before dividing, so it is the arg-max one-hot.
async fn tiny_temperature_scores_the_arg_max(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let mut body = score_body();
    body["temperature"] = json!(5e-324);
    let started = Instant::now();
    let (status, _, resp) = h
        .post_with("/v1/score", &body, &[("x-request-timeout", "30")])
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let rows: Vec<Vec<f64>> =
        serde_json::from_value(resp["scores"].clone()).expect("finite scores, not null");
    assert_eq!(rows.len(), 3, "{resp}");
    for row in &rows {
        assert!(row.iter().all(|p| *p == 0.0 || *p == 1.0), "{resp}");
        assert_eq!(row.iter().sum::<f64>(), 1.0, "{resp}");
    }
    println!(
        "[hardening] {backing:?}: temperature 5e-324 answered 200 in {:?}",
        started.elapsed()
    );
    // The same job through the async path: stored, read back, one attempt.
    let (status, _, job) = h.post("/v1/score/jobs", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id");
    let done = h.wait_job(id, Duration::from_secs(60), terminal).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(done["result"]["scores"], resp["scores"], "{done}");
    h.finish().await;
}

#[tokio::test]
async fn real_tiny_temperature_scores_the_arg_max() {
    tiny_temperature_scores_the_arg_max(Backing::Real).await;
}

#[tokio::test]
async fn in_process_tiny_temperature_scores_the_arg_max() {
    tiny_temperature_scores_the_arg_max(Backing::InProcess).await;
}

/// Defect 1: a message that decodes but cannot be scored (here temperature 0, which no API
/// accepts) fails on its first attempt and is dead-lettered, instead of being scored into NaN
/// and retried for ever.
async fn invalid_payload_fails_once(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let record = JobRecord::queued(
        Uuid::now_v7(),
        "default",
        JobKind::Async,
        MODEL,
        JobPriority::Async,
    );
    h.stores.audit.insert(&record).await.expect("insert");
    let envelope = JobEnvelope {
        job_id: record.id,
        tenant: record.tenant.clone(),
        priority: JobPriority::Async,
        deadline_ms: None,
        model: MODEL.to_string(),
        prompts: vec![vec![1, 2, 3]],
        labels: vec![vec![10539, 5230]],
        apply_softmax: true,
        temperature: 0.0,
        attempt: 1,
        enqueued_at_ms: record.created_at.timestamp_millis(),
        locality: None,
        outputs: Default::default(),
        served_as: None,
    };
    h.stores.queue.publish(&envelope).await.expect("publish");
    let done = h
        .wait_job(&record.id.to_string(), Duration::from_secs(30), terminal)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("invalid") && message.contains("temperature"),
        "{done}"
    );
    let dead = wait_dead_letter(h.stores.queue.as_ref()).await;
    assert_eq!(dead.job_id, Some(record.id));
    h.finish().await;
}

#[tokio::test]
async fn real_invalid_payload_fails_once() {
    invalid_payload_fails_once(Backing::Real).await;
}

#[tokio::test]
async fn in_process_invalid_payload_fails_once() {
    invalid_payload_fails_once(Backing::InProcess).await;
}

/// Defect 1: a stored record that does not decode is a permanent failure. The worker used to
/// call it "store unavailable" and requeue the message about once a second for ever; now the
/// message is dead-lettered once and the result cache says `failed`.
#[tokio::test]
async fn undecodable_record_is_dead_lettered_not_retried() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    let pg = PostgresAuditStore::connect(&database_url())
        .await
        .expect("pg");
    let record = JobRecord::queued(
        Uuid::now_v7(),
        "default",
        JobKind::Async,
        MODEL,
        JobPriority::Async,
    );
    h.stores.audit.insert(&record).await.expect("insert");
    // What a NaN score used to leave behind: a result no reader decodes.
    sqlx::query("UPDATE jobs SET result = '{\"scores\": [[null]]}' WHERE id = $1")
        .bind(record.id)
        .execute(pg.pool())
        .await
        .expect("corrupt the row");
    let mut envelope_source = score_body();
    envelope_source["items"] = json!([" apple"]);
    let req = serde_json::from_value(envelope_source).expect("request");
    let engine = h.engine.clone();
    let job = tokio::task::spawn_blocking(move || {
        scorer_protocol::ScoreBackend::prepare(engine.as_ref(), &req)
    })
    .await
    .expect("join")
    .expect("prepare");
    let envelope = JobEnvelope {
        job_id: record.id,
        tenant: record.tenant.clone(),
        priority: JobPriority::Async,
        deadline_ms: None,
        model: MODEL.to_string(),
        prompts: job.prompts,
        labels: job.labels,
        apply_softmax: true,
        temperature: 1.0,
        attempt: 1,
        enqueued_at_ms: record.created_at.timestamp_millis(),
        locality: None,
        outputs: Default::default(),
        served_as: None,
    };
    h.stores.queue.publish(&envelope).await.expect("publish");
    h.start_worker();
    let dead = wait_dead_letter(h.stores.queue.as_ref()).await;
    assert_eq!(dead.job_id, Some(record.id));
    let cached = h
        .stores
        .results
        .get(record.id)
        .await
        .expect("redis")
        .expect("the failure is cached");
    assert_eq!(cached.status.as_str(), "failed", "{cached:?}");
    assert!(
        cached.error.as_deref().unwrap_or("").contains("unusable"),
        "{cached:?}"
    );
    // Not requeued: the queue stays empty.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.stores.queue.depth(MODEL).await.expect("depth"), 0);
    assert!(
        h.stores
            .queue
            .pop_dead_letter(MODEL)
            .await
            .expect("dlq")
            .is_none(),
        "dead-lettered once"
    );
    h.finish().await;
}

/// Defect 3: text Postgres cannot store (U+0000) is refused with 400 at validation, in both
/// modes, wherever it is in the body, the message naming the field; it used to be 503
/// (distributed) and 200 (embedded).
async fn nul_characters_are_refused(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let mut cases = Vec::new();
    let mut query = score_body();
    query["query"] = json!("Is it\u{0} a fruit?");
    cases.push(("query", query));
    let mut item = score_body();
    item["items"] = json!([" apple", " tr\u{0}uck"]);
    cases.push(("items[1]", item));
    let mut one = score_body();
    one["items"] = json!("\u{0}");
    // One string item: the whole-body check names the field as sent.
    cases.push(("$.items", one));
    let mut extra = score_body();
    extra["note"] = json!({"deep": ["\u{0}"]});
    cases.push(("$.note.deep[0]", extra));
    let mut key = score_body();
    key["n\u{0}te"] = json!(1);
    cases.push(("a key", key));
    for path in ["/v1/score", "/v1/score/jobs"] {
        for (field, body) in &cases {
            let (status, _, err) = h.post(path, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {field}: {err}");
            let message = err["message"].as_str().expect("message");
            assert!(
                message.contains("NUL") && message.contains(field),
                "{path} {field}: {err}"
            );
        }
    }
    // The same request without the NUL is fine.
    let (status, _, ok) = h.post("/v1/score", &score_body()).await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    h.finish().await;
}

#[tokio::test]
async fn real_nul_characters_are_refused() {
    nul_characters_are_refused(Backing::Real).await;
}

#[tokio::test]
async fn in_process_nul_characters_are_refused() {
    nul_characters_are_refused(Backing::InProcess).await;
}

/// Defect 10: when the engine thread dies, the worker does not fail its jobs one by one and
/// carry on: it hands them back, leaves the live set and stops with `WorkerError::Engine` (the
/// process exits non-zero), and another worker runs them.
#[tokio::test]
async fn engine_death_stops_the_worker_and_loses_nothing() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    let doomed = Arc::new(
        tokio::task::spawn_blocking(load_engine)
            .await
            .expect("load"),
    );
    let mut config = h.config.worker.clone();
    config.worker_id = "doomed".into();
    let worker = Worker {
        queue: h.stores.queue.clone(),
        results: h.stores.results.clone(),
        registry: h.stores.workers.clone(),
        audit: h.stores.audit.clone(),
        backend: doomed.clone(),
        webhooks: scorer_jobs::webhook::WebhookSender::new(
            1,
            Duration::from_millis(10),
            Duration::from_secs(1),
        ),
        config,
    };
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker.run(rx));
    let live = |h: &Harness| {
        let workers = h.stores.workers.clone();
        let within = h.config.worker_liveness;
        async move {
            workers
                .live_model_workers(MODEL, within)
                .await
                .expect("live")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !live(&h).await.contains(&"doomed".to_string()) {
        assert!(Instant::now() < deadline, "the worker never beat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.stop();
    let (status, _, job) = h.post("/v1/score/jobs", &score_body()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    let stopped = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the worker stops by itself")
        .expect("join");
    assert!(
        matches!(stopped, Err(WorkerError::Engine(_))),
        "{stopped:?}"
    );
    assert!(
        !live(&h).await.contains(&"doomed".to_string()),
        "a worker with a dead engine leaves the live set"
    );
    let row = h
        .stores
        .audit
        .get(Uuid::parse_str(&id).expect("uuid"))
        .await
        .expect("audit")
        .expect("row");
    assert!(!row.status.is_terminal(), "not failed: {row:?}");
    // A worker with a live engine takes the job that was handed back.
    h.start_worker();
    let done = h.wait_job(&id, Duration::from_secs(60), terminal).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    h.finish().await;
}

/// Holds a transaction that has inserted a row with the tenant's idempotency key `key`, so the
/// API's insert of the same key waits on it past its store deadline (503), then lets go: the
/// API's insert then commits, and nobody published the job. This is defect 2's "Postgres
/// commits the insert but answers after --store-timeout", made deterministic with a real lock.
async fn strand(h: &Harness, pg: &PostgresAuditStore, body: &Value, key: &str) -> Uuid {
    let mut blocker = pg.pool().begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, status, model, priority, created_at, \
         idempotency_key) VALUES ($1, 'default', 'async', 'queued', $2, 'async', now(), $3)",
    )
    .bind(Uuid::now_v7())
    .bind(MODEL)
    .bind(key)
    .execute(&mut *blocker)
    .await
    .expect("blocking insert");
    let (status, _, err) = h
        .post_with("/v1/score/jobs", body, &[("idempotency-key", key)])
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    blocker.rollback().await.expect("rollback");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row: Option<(Uuid, String, bool)> = sqlx::query_as(
            "SELECT id, status, published_at IS NOT NULL FROM jobs \
             WHERE tenant = 'default' AND idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(pg.pool())
        .await
        .expect("select");
        if let Some((id, status, published)) = row {
            assert_eq!(status, "queued");
            assert!(!published);
            return id;
        }
        assert!(Instant::now() < deadline, "the late insert never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Defect 2: a job whose insert committed after its submission was answered 503 is published
/// by a replay of its idempotency key (it used to get 202 and never run), and one that is never
/// replayed is failed by the acceptance sweeper (it used to stay `queued` for ever).
#[tokio::test]
async fn stranded_acceptance_is_replayed_or_swept() {
    let grace = Duration::from_secs(3);
    let mut h = Harness::start(Backing::Real, |c| {
        c.store_timeout = Duration::from_secs(1);
        c.max_tenant_active = 0;
        c.worker.unpublished_grace = grace;
    })
    .await;
    let pg = PostgresAuditStore::connect(&database_url())
        .await
        .expect("pg");
    let body = |tag: &str| {
        let mut b = score_body();
        b["query"] = json!(format!("Is the following a fruit? ({tag})"));
        b
    };
    let replayed_key = format!("replay-{}", Uuid::new_v4());
    let replayed_body = body(&replayed_key);
    let replayed = strand(&h, &pg, &replayed_body, &replayed_key).await;
    let (status, _, job) = h
        .post_with(
            "/v1/score/jobs",
            &replayed_body,
            &[("idempotency-key", replayed_key.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["id"], replayed.to_string(), "the same job");

    let swept_key = format!("swept-{}", Uuid::new_v4());
    let swept = strand(&h, &pg, &body(&swept_key), &swept_key).await;
    let stranded_at = Instant::now();

    h.start_worker();
    let done = h
        .wait_job(&replayed.to_string(), Duration::from_secs(60), terminal)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let failed = h
        .wait_job(&swept.to_string(), Duration::from_secs(30), terminal)
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("never queued"),
        "{failed}"
    );
    println!(
        "[hardening] stranded job failed by the sweeper {:?} after its insert (grace {grace:?})",
        stranded_at.elapsed()
    );
    h.finish().await;
}

/// Defect 5: 200 concurrent submissions against `--max-queue-depth 20` and no worker: the
/// depth check and the publish used to race, and all were accepted.
async fn queue_bound_holds_under_a_burst(backing: Backing) {
    let bound = 20;
    let h = Harness::start(backing, |c| {
        c.max_queue_depth = bound;
        c.max_tenant_active = 0;
    })
    .await;
    let mut burst = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..200 {
        let http = h.http.clone();
        let url = format!("{}/v1/score/jobs", h.base);
        burst.spawn(async move {
            let resp = http
                .post(url)
                .json(&score_body())
                .send()
                .await
                .expect("send");
            resp.status()
        });
    }
    let (mut accepted, mut refused) = (0u64, 0u64);
    while let Some(status) = burst.join_next().await {
        match status.expect("join") {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    println!(
        "[hardening] {backing:?}: burst of 200 at bound {bound}: {accepted} accepted, {refused} \
         refused (429), {:?}",
        started.elapsed()
    );
    assert!(
        accepted <= bound,
        "{accepted} accepted over a bound of {bound}"
    );
    assert!(accepted > 0, "nothing accepted");
    let depth = h.stores.queue.depth(MODEL).await.expect("depth");
    assert!(depth <= bound, "queue depth {depth}");
    h.finish().await;
}

#[tokio::test]
async fn real_queue_bound_holds_under_a_burst() {
    queue_bound_holds_under_a_burst(Backing::Real).await;
}

#[tokio::test]
async fn in_process_queue_bound_holds_under_a_burst() {
    queue_bound_holds_under_a_burst(Backing::InProcess).await;
}
