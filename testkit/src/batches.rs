//! Batch-API test helpers: request bodies, JSONL files, a caller (optionally with an API key)
//! that uploads, polls and downloads, and the audit rows of a batch.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{Harness, database_url};

/// A one-item score request on the test model.
pub fn body(item: &str) -> Value {
    json!({
        "query": "Is the following a fruit? Answer yes or no.",
        "items": [item],
        "label_token_ids": [10539, 5230],
        "apply_softmax": true
    })
}

pub fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Calls the API as one caller (optionally with an API key).
pub struct Caller {
    pub base: String,
    pub http: reqwest::Client,
    pub key: Option<String>,
}

impl Caller {
    pub fn new(h: &Harness) -> Self {
        Caller {
            base: h.base.clone(),
            http: h.http.clone(),
            key: None,
        }
    }

    pub fn with_key(h: &Harness, key: String) -> Self {
        Caller {
            key: Some(key),
            ..Caller::new(h)
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// A `multipart/form-data` upload of `fields` (name, value, file name).
    pub fn multipart(&self, fields: &[(&str, &str, Option<&str>)]) -> reqwest::RequestBuilder {
        let boundary = format!("batch-{}", uuid::Uuid::new_v4().simple());
        let mut body = String::new();
        for (name, value, file) in fields {
            body.push_str(&format!("--{boundary}\r\n"));
            match file {
                Some(f) => body.push_str(&format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/jsonl\r\n\r\n"
                )),
                None => body.push_str(&format!(
                    "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                )),
            }
            body.push_str(value);
            body.push_str("\r\n");
        }
        body.push_str(&format!("--{boundary}--\r\n"));
        self.req(reqwest::Method::POST, "/v1/batches")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
    }

    pub async fn json(&self, r: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn upload(&self, file: String) -> (StatusCode, Value) {
        self.json(
            self.req(reqwest::Method::POST, "/v1/batches")
                .header("content-type", "application/jsonl")
                .body(file),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.json(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn lines(&self, path: &str) -> Vec<Value> {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"],
            "application/jsonl",
            "{path}"
        );
        let text = resp.text().await.expect("body");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    pub async fn wait(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (status, batch) = self.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            if done(&batch) {
                return batch;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "batch {id} did not get there: {batch}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait(id, |b| b["status"] == status).await
    }
}

pub fn by_custom_id(lines: Vec<Value>) -> HashMap<String, Value> {
    let mut map = HashMap::new();
    for l in lines {
        let id = l["custom_id"].as_str().expect("custom_id").to_string();
        assert!(map.insert(id.clone(), l).is_none(), "{id} twice");
    }
    map
}

pub async fn audit_rows(batch: &str) -> Vec<(String, String, String)> {
    let pool = sqlx::PgPool::connect(&database_url()).await.expect("pg");
    let id = uuid::Uuid::parse_str(batch).expect("uuid");
    sqlx::query_as(
        "SELECT custom_id, priority, status FROM jobs WHERE batch_id = $1 ORDER BY custom_id",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .expect("audit rows")
}
