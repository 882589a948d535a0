//! Batches end to end (issue 7): upload, validation into the error file, progress from the jobs,
//! output and error files, cancel, pagination. Against the real RabbitMQ, Redis and Postgres,
//! and the ones that make sense in-process against the embedded mode too.

mod common;

use std::time::Duration;

use common::batches::{Caller, audit_rows, body, by_custom_id, jsonl};
use common::{Backing, Harness, MODEL, assert_same_scores, direct};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn happy_path(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let c = Caller::new(&h);
    let items = [" apple", " truck", " pear"];
    let file = jsonl(
        &items
            .iter()
            .enumerate()
            .map(|(i, it)| json!({"custom_id": format!("req-{i}"), "body": body(it)}))
            .collect::<Vec<_>>(),
    );
    let (status, batch) = c.upload(file).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["endpoint"], "/v1/score");
    assert_eq!(batch["model"], MODEL);
    assert_eq!(batch["completion_window"], "24h");
    assert_eq!(batch["request_counts"]["total"], 3);
    assert!(
        matches!(
            batch["status"].as_str(),
            Some("in_progress" | "finalizing" | "completed")
        ),
        "{batch}"
    );
    let created = batch["created_at"].as_i64().expect("created_at");
    assert_eq!(
        batch["expires_at"].as_i64().expect("expires_at"),
        created + 24 * 3600
    );
    let id = batch["id"].as_str().expect("id").to_string();

    let done = c.wait_status(&id, "completed").await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    for stamp in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[stamp].as_i64().is_some_and(|t| t >= created), "{done}");
    }
    assert_eq!(done["errors"], Value::Null);

    let out = by_custom_id(c.lines(&format!("/v1/batches/{id}/output")).await);
    assert_eq!(out.len(), 3);
    for (i, it) in items.iter().enumerate() {
        let line = &out[&format!("req-{i}")];
        assert_eq!(line["error"], Value::Null, "{line}");
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert!(
            line["id"]
                .as_str()
                .is_some_and(|s| s.starts_with("batch_req_"))
        );
        assert_same_scores(
            &line["response"]["body"],
            &direct(&h.engine, &body(it)).await,
        );
        // Each line is an ordinary job too, retrievable by its id.
        let job_id = line["response"]["request_id"].as_str().expect("request_id");
        let (status, _, job) = h.get(&format!("/v1/score/jobs/{job_id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        assert_eq!(job["priority"], "bulk");
        assert_eq!(job["status"], "succeeded");
    }
    assert!(
        c.lines(&format!("/v1/batches/{id}/errors"))
            .await
            .is_empty()
    );

    if backing == Backing::Real {
        let rows = audit_rows(&id).await;
        assert_eq!(
            rows,
            (0..3)
                .map(|i| (format!("req-{i}"), "bulk".into(), "succeeded".into()))
                .collect::<Vec<_>>(),
            "one audit row per line"
        );
    }
    h.finish().await;
}

#[tokio::test]
async fn happy_path_real() {
    happy_path(Backing::Real).await;
}

#[tokio::test]
async fn happy_path_in_process() {
    happy_path(Backing::InProcess).await;
}

/// The OpenAI line form, uploaded as a multipart form with the options as fields.
#[tokio::test]
async fn openai_form_multipart() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    h.start_worker();
    let c = Caller::new(&h);
    let file = jsonl(&[
        json!({"custom_id": "a", "method": "POST", "url": "/v1/score", "body": body(" apple")}),
        json!({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": body(" pear")}),
        json!({"custom_id": "c", "method": "GET", "url": "/v1/score", "body": body(" pear")}),
    ]);
    let (status, batch) = c
        .json(c.multipart(&[
            ("completion_window", "2h", None),
            ("metadata", r#"{"job":"nightly"}"#, None),
            ("file", &file, Some("input.jsonl")),
        ]))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["completion_window"], "2h");
    assert_eq!(batch["metadata"], json!({"job": "nightly"}));
    let id = batch["id"].as_str().expect("id").to_string();
    let done = c.wait_status(&id, "completed").await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 3, "completed": 1, "failed": 2})
    );
    let out = c.lines(&format!("/v1/batches/{id}/output")).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["custom_id"], "a");
    assert_same_scores(
        &out[0]["response"]["body"],
        &direct(&h.engine, &body(" apple")).await,
    );
    let errs = by_custom_id(c.lines(&format!("/v1/batches/{id}/errors")).await);
    assert!(
        errs["b"]["error"]["message"]
            .as_str()
            .expect("message")
            .contains("url must be \"/v1/score\""),
        "{errs:?}"
    );
    assert_eq!(errs["b"]["line"], 2);
    assert!(
        errs["c"]["error"]["message"]
            .as_str()
            .expect("message")
            .contains("method must be \"POST\"")
    );

    // A form without a file part, and a bad window, are refused outright.
    let (status, err) = c
        .json(c.multipart(&[("completion_window", "24h", None)]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, err) = c
        .json(
            c.req(reqwest::Method::POST, "/v1/batches?completion_window=soon")
                .body(jsonl(&[json!({"custom_id": "a", "body": body(" apple")})])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    h.finish().await;
}

/// Bad lines of every kind land in the error file with their line number and custom_id; the
/// good ones run; the counts add up.
async fn bad_lines(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    let c = Caller::new(&h);
    let mut bad_label = body(" apple");
    bad_label["label_token_ids"] = json!([999_999]);
    let mut other_model = body(" apple");
    other_model["model"] = json!("gpt-4");
    let file = [
        json!({"custom_id": "ok-1", "body": body(" apple")}).to_string(),
        "{not json".to_string(),
        json!({"body": body(" pear")}).to_string(),
        json!({"custom_id": "vocab", "body": bad_label}).to_string(),
        String::new(), // blank lines are not lines
        json!({"custom_id": "model", "body": other_model}).to_string(),
        json!({"custom_id": "ok-1", "body": body(" pear")}).to_string(),
        json!({"custom_id": "nobody"}).to_string(),
        json!({"custom_id": "ok-2", "body": body(" pear")}).to_string(),
    ]
    .join("\n"); // and no newline after the last line
    let (status, batch) = c.upload(file).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let id = batch["id"].as_str().expect("id").to_string();
    let done = c.wait_status(&id, "completed").await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 8, "completed": 2, "failed": 6}),
        "{done}"
    );
    let out = by_custom_id(c.lines(&format!("/v1/batches/{id}/output")).await);
    let mut keys: Vec<_> = out.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, vec!["ok-1", "ok-2"]);
    // The first ok-1 is the one that ran.
    assert_same_scores(
        &out["ok-1"]["response"]["body"],
        &direct(&h.engine, &body(" apple")).await,
    );

    let errs = c.lines(&format!("/v1/batches/{id}/errors")).await;
    let got: Vec<(Value, Value)> = errs
        .iter()
        .map(|e| (e["line"].clone(), e["custom_id"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!(2), Value::Null),
            (json!(3), Value::Null),
            (json!(4), json!("vocab")),
            (json!(6), json!("model")),
            (json!(7), json!("ok-1")),
            (json!(8), json!("nobody")),
        ],
        "{errs:?}"
    );
    let message = |i: usize| errs[i]["error"]["message"].as_str().expect("message");
    assert!(errs.iter().all(|e| e["error"]["code"] == "invalid_request"));
    assert!(
        message(2).starts_with("Token ID 999999 is out of vocabulary"),
        "{}",
        message(2)
    );
    assert!(message(3).contains("gpt-4"), "{}", message(3));
    assert!(message(4).contains("duplicate custom_id"), "{}", message(4));
    assert!(message(5).contains("no `body`"), "{}", message(5));
    h.finish().await;
}

#[tokio::test]
async fn bad_lines_real() {
    bad_lines(Backing::Real).await;
}

#[tokio::test]
async fn bad_lines_in_process() {
    bad_lines(Backing::InProcess).await;
}

/// No valid line: the batch fails, and says why.
#[tokio::test]
async fn all_bad_fails() {
    let h = Harness::start(Backing::Real, |_| {}).await;
    let c = Caller::new(&h);
    let file = jsonl(&[
        json!({"custom_id": "x", "body": {"query": "q", "items": ["a"]}}),
        json!("just a string"),
    ]);
    let (status, batch) = c.upload(file).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].as_i64().is_some());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 0, "failed": 2})
    );
    assert!(
        batch["errors"]["data"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no line")),
        "{batch}"
    );
    let id = batch["id"].as_str().expect("id");
    let errs = c.lines(&format!("/v1/batches/{id}/errors")).await;
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0]["custom_id"], "x");
    assert_eq!(
        errs[0]["error"]["message"],
        "label_token_ids must be provided"
    );
    assert_eq!(errs[1]["custom_id"], Value::Null);

    // An empty file fails too.
    let (status, empty) = c.upload(String::new()).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["status"], "failed");
    assert_eq!(empty["request_counts"]["total"], 0);
    h.finish().await;
}

/// Cancel before any worker runs: every line is cancelled into the error file, and a worker
/// started afterwards runs none of them.
async fn cancel(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    let c = Caller::new(&h);
    let file = jsonl(
        &(0..5)
            .map(|i| json!({"custom_id": format!("c{i}"), "body": body(" apple")}))
            .collect::<Vec<_>>(),
    );
    let (_, batch) = c.upload(file).await;
    let id = batch["id"].as_str().expect("id").to_string();
    assert_eq!(batch["status"], "in_progress", "{batch}");
    let (status, cancelled) = c
        .json(c.req(reqwest::Method::POST, &format!("/v1/batches/{id}/cancel")))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled["cancelling_at"].as_i64().is_some());
    assert!(cancelled["cancelled_at"].as_i64().is_some());
    assert_eq!(
        cancelled["request_counts"],
        json!({"total": 5, "completed": 0, "failed": 5})
    );
    h.start_worker();
    // Give the worker time to drain the queue; the cancelled lines must stay cancelled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.stores.queue.depth(MODEL).await.expect("depth") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "queue not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, after) = c.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["request_counts"]["completed"], 0, "{after}");
    assert!(
        c.lines(&format!("/v1/batches/{id}/output"))
            .await
            .is_empty()
    );
    let errs = by_custom_id(c.lines(&format!("/v1/batches/{id}/errors")).await);
    assert_eq!(errs.len(), 5);
    assert!(
        errs.values()
            .all(|e| e["error"]["code"] == "batch_cancelled")
    );
    // Cancelling a finished batch is a conflict; an unknown one is 404.
    let (status, _) = c
        .json(c.req(reqwest::Method::POST, &format!("/v1/batches/{id}/cancel")))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = c
        .get(&format!("/v1/batches/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.finish().await;
}

#[tokio::test]
async fn cancel_real() {
    cancel(Backing::Real).await;
}

#[tokio::test]
async fn cancel_in_process() {
    cancel(Backing::InProcess).await;
}

/// `GET /v1/batches` pages newest first with `after` and `limit`, and shows only the caller's
/// batches.
#[tokio::test]
async fn pagination() {
    let tenant = format!("tenant-{}", uuid::Uuid::new_v4().simple());
    let key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let other_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let (k1, t1, k2) = (key.clone(), tenant.clone(), other_key.clone());
    let h = Harness::start(Backing::Real, move |cfg| {
        cfg.api_keys.insert(k1, t1);
        cfg.api_keys
            .insert(k2, format!("other-{}", uuid::Uuid::new_v4().simple()));
    })
    .await;
    let c = Caller::with_key(&h, key);
    let mut ids = Vec::new();
    for i in 0..5 {
        // All-bad files: cheap, and they need no worker.
        let (status, b) = c.upload(format!("not json {i}\n")).await;
        assert_eq!(status, StatusCode::OK, "{b}");
        ids.push(b["id"].as_str().expect("id").to_string());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/batches?limit=2&after={a}"),
            None => "/v1/batches?limit=2".to_string(),
        };
        let (status, page) = c.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 2);
        seen.extend(
            data.iter()
                .map(|b| b["id"].as_str().expect("id").to_string()),
        );
        assert_eq!(
            page["first_id"],
            data.first().map_or(Value::Null, |b| b["id"].clone())
        );
        assert_eq!(
            page["last_id"],
            data.last().map_or(Value::Null, |b| b["id"].clone())
        );
        if page["has_more"] != true {
            break;
        }
        after = page["last_id"].as_str().map(str::to_string);
    }
    assert_eq!(seen, ids);

    let other = Caller::with_key(&h, other_key);
    let (_, page) = other.get("/v1/batches").await;
    assert_eq!(page["data"], json!([]));
    assert_eq!(page["has_more"], false);
    let (status, _) = other.get(&format!("/v1/batches/{}", ids[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's batch");
    let (status, _) = c.get("/v1/batches?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.finish().await;
}

/// A worker killed mid-batch: its unacknowledged lines are redelivered to the next worker, and
/// the batch still ends with every line in the output exactly once and one audit row per line.
#[tokio::test]
async fn worker_killed_mid_batch() {
    let mut h = Harness::start(Backing::Real, |cfg| {
        // Small engine batches, so the kill lands with lines both done and not.
        cfg.worker.prefetch = 2;
    })
    .await;
    let c = Caller::new(&h);
    let n = 16;
    let items = [" apple", " truck", " pear", " chair"];
    let file = jsonl(
        &(0..n)
            .map(|i| json!({"custom_id": format!("k{i:02}"), "body": body(items[i % 4])}))
            .collect::<Vec<_>>(),
    );
    let (status, batch) = c.upload(file).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let id = batch["id"].as_str().expect("id").to_string();
    let first = h.start_worker();
    c.wait(&id, |b| {
        b["request_counts"]["completed"].as_u64() >= Some(2)
    })
    .await;
    h.kill_worker(first).await;
    let (_, mid) = c.get(&format!("/v1/batches/{id}")).await;
    assert_ne!(mid["status"], "completed", "killed too late: {mid}");
    h.start_worker();
    let done = c.wait_status(&id, "completed").await;
    assert_eq!(
        done["request_counts"],
        json!({"total": n, "completed": n, "failed": 0}),
        "{done}"
    );
    let out = by_custom_id(c.lines(&format!("/v1/batches/{id}/output")).await);
    assert_eq!(out.len(), n);
    for (i, item) in items.iter().enumerate() {
        assert_same_scores(
            &out[&format!("k{i:02}")]["response"]["body"],
            &direct(&h.engine, &body(item)).await,
        );
    }
    let rows = audit_rows(&id).await;
    assert_eq!(rows.len(), n, "one audit row per line");
    assert!(rows.iter().all(|(_, p, s)| p == "bulk" && s == "succeeded"));
    h.finish().await;
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("rss field")
}

/// Measurement, not a routine test (`cargo test -p scorer-api --test batches -- --ignored
/// upload_100k`): a 100,000-line upload is streamed into Postgres and RabbitMQ without the API
/// process growing with the file. No worker runs; the batch is cancelled afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn upload_100k_lines_memory() {
    let h = Harness::start(Backing::Real, |cfg| {
        // Measure the upload path alone: nothing drains the queue here.
        cfg.batches.queue_high_water = u64::MAX;
        cfg.max_queue_depth = u64::MAX;
    })
    .await;
    let dir = std::env::temp_dir().join(format!("batch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("in.jsonl");
    let n = 100_000;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("file"));
        for i in 0..n {
            writeln!(
                f,
                "{}",
                json!({"custom_id": format!("r{i}"), "body": body(" apple")})
            )
            .expect("write");
        }
    }
    let c = Caller::new(&h);
    // Warm up the paths (tokenizer, pools), then take the baseline.
    let (status, _) = c
        .upload(jsonl(&[json!({"custom_id": "w", "body": body(" apple")})]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let base = rss_kib("VmRSS:");
    let started = std::time::Instant::now();
    let url = format!("{}/v1/batches", h.base);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-H",
                "content-type: application/jsonl",
                "--data-binary",
            ])
            .arg(format!("@{}", path.display()))
            .arg(url)
            .output()
            .expect("curl")
    })
    .await
    .expect("join");
    let secs = started.elapsed().as_secs_f64();
    let batch: Value = serde_json::from_slice(&out.stdout).expect("batch");
    let peak = rss_kib("VmHWM:");
    let after = rss_kib("VmRSS:");
    eprintln!(
        "100k-line upload: {secs:.1} s ({:.0} lines/s); RSS before {} MiB, after {} MiB, \
         process peak {} MiB; counts {}",
        n as f64 / secs,
        base / 1024,
        after / 1024,
        peak / 1024,
        batch["request_counts"]
    );
    assert_eq!(batch["request_counts"]["total"], n, "{batch}");
    let id = batch["id"].as_str().expect("id");
    let rows = audit_rows(id).await;
    assert_eq!(rows.len(), n, "one audit row per line");
    assert!(
        after.saturating_sub(base) < 256 * 1024,
        "RSS grew by {} MiB",
        (after - base) / 1024
    );
    c.json(c.req(reqwest::Method::POST, &format!("/v1/batches/{id}/cancel")))
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    h.finish().await;
}
