//! `scorer bulk` (the real binary) against the service on a random port: a crash mid-run, then
//! a rerun that scores only what is missing, every custom_id ending exactly once in the output or
//! the error file; and the embedded mode.

#[path = "../api/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backing, Harness, direct};
use serde_json::{Value, json};

/// Same shape, model and usage as the engine called directly, scores within 1e-4: the engine
/// packs a line with whatever else is queued, and another batch composition moves f32 sums by
/// a few 1e-6.
fn assert_scores(got: &Value, want: &Value) {
    assert_eq!(got["model"], want["model"], "{got} vs {want}");
    assert_eq!(got["usage"], want["usage"], "{got} vs {want}");
    assert_eq!(got["object"], want["object"], "{got} vs {want}");
    let rows = |v: &Value| -> Vec<Vec<f64>> {
        serde_json::from_value(v["scores"].clone()).expect("scores")
    };
    let (g, w) = (rows(got), rows(want));
    assert_eq!(g.len(), w.len(), "{got} vs {want}");
    for (gr, wr) in g.iter().zip(&w) {
        assert_eq!(gr.len(), wr.len(), "{got} vs {want}");
        for (a, b) in gr.iter().zip(wr) {
            assert!((a - b).abs() <= 1e-4, "{got} vs {want}");
        }
    }
}

fn body(item: &str) -> Value {
    json!({
        "query": "Is the following a fruit? Answer yes or no.",
        "items": [item],
        "label_token_ids": [10539, 5230],
        "apply_softmax": true
    })
}

const ITEMS: [&str; 6] = [" apple", " truck", " pear", " chair", " plum", " river"];

fn write_input(path: &Path, n: usize) {
    let mut f = std::fs::File::create(path).expect("input");
    for i in 0..n {
        let line =
            json!({"custom_id": format!("row-{i:03}"), "body": body(ITEMS[i % ITEMS.len()])});
        writeln!(f, "{line}").expect("write");
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn bulk(h: &Harness, input: &Path, output: &Path, key: Option<&str>, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scorer"));
    cmd.arg("bulk")
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(["--url", &h.base, "--quiet"])
        .args(extra)
        .env_remove("SCORER_API_KEY")
        .stdin(Stdio::null());
    if let Some(k) = key {
        cmd.args(["--api-key", k]);
    }
    cmd
}

/// Runs the CLI to the end off the runtime's threads (the server under test runs on them).
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run scorer bulk"))
        .await
        .expect("join")
}

/// Sum of `request_counts.total` over the caller's batches not in `before`.
async fn lines_sent_since(h: &Harness, key: &str, before: &[String]) -> u64 {
    let (_, page) = get(h, key, "/v1/batches?limit=100").await;
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|b| !before.iter().any(|id| b["id"] == id.as_str()))
        .map(|b| b["request_counts"]["total"].as_u64().expect("total"))
        .sum()
}

async fn batch_ids(h: &Harness, key: &str) -> Vec<String> {
    let (_, page) = get(h, key, "/v1/batches?limit=100").await;
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_string())
        .collect()
}

async fn get(h: &Harness, key: &str, path: &str) -> (reqwest::StatusCode, Value) {
    let resp = h
        .http
        .get(format!("{}{path}", h.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    (resp.status(), resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_resume_scores_only_the_rest() {
    let key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let k = key.clone();
    let mut h = Harness::start(Backing::Real, move |cfg| {
        cfg.api_keys
            .insert(k, format!("bulk-{}", uuid::Uuid::new_v4().simple()));
    })
    .await;
    h.start_worker();
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let errors = dir.path().join("out.errors.jsonl");
    let n = 30;
    write_input(&input, n);

    // First run: small serial windows so it is still going when it is killed.
    let mut child = bulk(
        &h,
        &input,
        &output,
        Some(&key),
        &["--window", "2", "--in-flight", "1"],
    )
    .spawn()
    .expect("spawn scorer bulk");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while read_lines(&output).len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "it finished too soon"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("kill"); // SIGKILL: a crash, no chance to clean up
    child.wait().expect("reap");
    // A line cut off mid-write by the crash: the rerun must drop it and redo that line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&output)
        .expect("output");
    write!(f, "{{\"id\":\"batch_req_x\",\"custom_id\":\"row-0").expect("write");
    drop(f);
    let done_before: usize = {
        let text = std::fs::read_to_string(&output).expect("output");
        text.lines().filter(|l| l.ends_with('}')).count() + read_lines_lenient(&errors)
    };
    assert!(done_before >= 4 && done_before < n, "{done_before}");

    let before = batch_ids(&h, &key).await;
    let rerun = run(bulk(&h, &input, &output, Some(&key), &["--window", "7"])).await;
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        lines_sent_since(&h, &key, &before).await,
        (n - done_before) as u64,
        "the rerun sends only the lines not yet in a results file"
    );

    let out = read_lines(&output);
    let errs = read_lines(&errors);
    assert!(errs.is_empty(), "{errs:?}");
    let mut seen: HashMap<String, Value> = HashMap::new();
    for line in out {
        let id = line["custom_id"].as_str().expect("custom_id").to_string();
        assert!(seen.insert(id.clone(), line).is_none(), "{id} twice");
    }
    assert_eq!(seen.len(), n, "every custom_id exactly once");
    for i in [0, 1, n - 1] {
        let line = &seen[&format!("row-{i:03}")];
        assert_scores(
            &line["response"]["body"],
            &direct(&h.engine, &body(ITEMS[i % ITEMS.len()])).await,
        );
    }

    // A third run has nothing left to do.
    let before = batch_ids(&h, &key).await;
    let out = run(bulk(&h, &input, &output, Some(&key), &[])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{n} skipped")), "{stderr}");
    assert_eq!(lines_sent_since(&h, &key, &before).await, 0);
    h.finish().await;
}

fn read_lines_lenient(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count()
}

/// Against the embedded mode (in-process queue and stores): the OpenAI line form, a bad line, a
/// line with no custom_id and a repeated custom_id all end in one of the two files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_with_bad_lines() {
    let mut h = Harness::start(Backing::InProcess, |_| {}).await;
    h.start_worker();
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("scored.jsonl"));
    let errors = dir.path().join("failed.jsonl");
    let mut bad = body(" apple");
    bad["label_token_ids"] = json!([999_999]);
    let lines = [
        json!({"custom_id": "a", "method": "POST", "url": "/v1/score", "body": body(" apple")}),
        json!({"custom_id": "b", "body": bad}),
        json!({"body": body(" pear")}),
        json!({"custom_id": "c", "body": body(" pear")}),
        json!({"custom_id": "a", "body": body(" pear")}),
    ];
    std::fs::write(
        &input,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("input");
    let mut cmd = bulk(&h, &input, &output, None, &["--errors"]);
    cmd.arg(&errors);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("5 lines: 2 succeeded, 3 failed, 0 skipped"),
        "{stderr}"
    );
    let ok: Vec<Value> = read_lines(&output);
    let mut ids: Vec<&str> = ok
        .iter()
        .map(|l| l["custom_id"].as_str().expect("id"))
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "c"]);
    let failed = read_lines(&errors);
    let got: Vec<(Value, Value)> = failed
        .iter()
        .map(|l| (l["custom_id"].clone(), l["line"].clone()))
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(got.contains(&(json!("b"), json!(2))), "{got:?}");
    assert!(got.contains(&(Value::Null, json!(3))), "{got:?}");
    assert!(got.contains(&(json!("a"), json!(5))), "{got:?}");
    let vocab = failed.iter().find(|l| l["custom_id"] == "b").expect("b");
    assert!(
        vocab["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Token ID 999999 is out of vocabulary")),
        "{vocab}"
    );
    h.finish().await;
}
