//! A batch download never aborts because of one bad stored result (issue 14): a line whose job
//! row no longer decodes (here: scores of `null`, what a non-finite score used to be stored as)
//! is written to the error file, and every valid line is still in the output file. Before, the
//! output stream ended at that page with zero lines. Real RabbitMQ, Redis and Postgres; and a
//! `GET` of the finished batch reads it without writing (the sweep completes it).

mod common;

use std::time::Duration;

use common::{Backing, Harness, database_url};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn line(custom_id: &str, item: &str) -> String {
    let body = json!({
        "query": "Is the following a fruit? Answer yes or no.",
        "items": [item],
        "label_token_ids": [10539, 5230],
        "apply_softmax": true
    });
    format!("{}\n", json!({"custom_id": custom_id, "body": body}))
}

async fn get_json(h: &Harness, path: &str) -> Value {
    let resp = h
        .http
        .get(format!("{}{path}", h.base))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.expect("json")
}

async fn jsonl(h: &Harness, path: &str) -> Vec<Value> {
    let resp = h
        .http
        .get(format!("{}{path}", h.base))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let text = resp.text().await.expect("the whole stream");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stored_result_goes_to_the_error_file() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    h.start_worker();
    let file = [("a", " apple"), ("b", " truck"), ("c", " pear")]
        .iter()
        .map(|(id, item)| line(id, item))
        .collect::<String>();
    let resp = h
        .http
        .post(format!("{}/v1/batches", h.base))
        .header("content-type", "application/jsonl")
        .body(file)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::OK);
    let batch: Value = resp.json().await.expect("batch");
    let id = batch["id"].as_str().expect("id").to_string();

    // Completed by the sweep, not by the GETs that poll it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let b = get_json(&h, &format!("/v1/batches/{id}")).await;
        if b["status"] == "completed" {
            assert_eq!(
                b["request_counts"],
                json!({"total": 3, "completed": 3, "failed": 0})
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Line b's stored result stops decoding.
    let pool = sqlx::PgPool::connect(&database_url()).await.expect("pg");
    let changed = sqlx::query(
        "UPDATE jobs SET result = jsonb_set(result, '{scores}', '[[null, null]]') \
         WHERE batch_id = $1 AND custom_id = 'b'",
    )
    .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
    .execute(&pool)
    .await
    .expect("update");
    assert_eq!(changed.rows_affected(), 1);

    let output = jsonl(&h, &format!("/v1/batches/{id}/output")).await;
    let ids: Vec<&str> = output
        .iter()
        .map(|l| l["custom_id"].as_str().expect("custom_id"))
        .collect();
    assert_eq!(ids, ["a", "c"], "the valid lines are all there");
    for l in &output {
        assert_eq!(l["response"]["status_code"], 200, "{l}");
    }
    let errors = jsonl(&h, &format!("/v1/batches/{id}/errors")).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "b");
    assert_eq!(errors[0]["error"]["code"], "request_failed");
    let message = errors[0]["error"]["message"].as_str().expect("message");
    assert!(message.contains("could not be read back"), "{message}");
    h.finish().await;
}

/// A NUL character (which Postgres cannot store in text) in one line's custom_id, body or the
/// batch's metadata fails that line, or answers 400 for the metadata: the other lines of the
/// upload are kept and run (issue 14, defect 3; before: 503 and the whole upload lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_fail_their_line_not_the_upload() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    h.start_worker();
    let nul_body = json!({"custom_id": "nul-body", "body": {
        "query": "Is the following a fruit?\u{0}", "items": [" pear"], "label_token_ids": [10539, 5230]
    }});
    let nul_id = json!({"custom_id": "nul\u{0}id", "body": {
        "query": "Is the following a fruit?", "items": [" pear"], "label_token_ids": [10539, 5230]
    }});
    let file = format!(
        "{}{nul_body}\n{nul_id}\n{}",
        line("ok-1", " apple"),
        line("ok-2", " fig")
    );
    let upload = |metadata: Option<&str>| {
        let mut url = format!("{}/v1/batches", h.base);
        if let Some(m) = metadata {
            url = format!("{url}?metadata={}", urlencode(m));
        }
        h.http
            .post(url)
            .header("content-type", "application/jsonl")
            .body(file.clone())
    };
    let resp = upload(Some("{\"k\": \"v\u{0}\"}"))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "NUL in metadata");
    let resp = upload(None).send().await.expect("upload");
    assert_eq!(resp.status(), StatusCode::OK);
    let batch: Value = resp.json().await.expect("batch");
    let id = batch["id"].as_str().expect("id").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let b = get_json(&h, &format!("/v1/batches/{id}")).await;
        if b["status"] == "completed" {
            assert_eq!(
                b["request_counts"],
                json!({"total": 4, "completed": 2, "failed": 2}),
                "{b}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = jsonl(&h, &format!("/v1/batches/{id}/output")).await;
    let mut ids: Vec<&str> = output
        .iter()
        .filter_map(|l| l["custom_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["ok-1", "ok-2"]);
    let errors = jsonl(&h, &format!("/v1/batches/{id}/errors")).await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NUL"))),
        "{errors:?}"
    );
    h.finish().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
