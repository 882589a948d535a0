//! `scorer prune` against the real Postgres: flags are checked before anything is deleted, and a
//! run deletes a finished job past the retention and keeps an unfinished one. The store's own
//! rules (bounds, batches, what is never deleted) are the contract tests' (`jobs/tests/`).

use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use scorer_jobs::{AuditStore, PostgresAuditStore};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus};
use scorer_testkit::database_url;
use serde_json::Value;
use uuid::Uuid;

fn prune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scorer"))
        .arg("prune")
        .args(args)
        .env("DATABASE_URL", database_url())
        .output()
        .expect("scorer runs")
}

#[test]
fn bad_flags_are_refused() {
    let cases: [&[&str]; 6] = [
        &["--older-than", "0d"],
        &["--older-than", "30"],
        &["--older-than", "1w"],
        &["--older-than", "30d", "--batch-size", "0"],
        &["--older-than", "30d", "--batch-size", "100001"],
        &[],
    ];
    for args in cases {
        let out = prune(args);
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--older-than") || stderr.contains("--batch-size"),
            "{args:?}: {stderr}"
        );
    }
}

/// In 1900, long before any other test's rows (the contract tests use 2000): only this test's
/// rows are past a cutoff of about 45,000 days.
fn in_1900(status: JobStatus) -> JobRecord {
    let at = DateTime::<Utc>::from_timestamp(-2_208_988_800, 0).expect("1900-01-01");
    let mut r = JobRecord::queued(
        Uuid::new_v4(),
        format!("prune-{}", Uuid::new_v4().simple()),
        JobKind::Async,
        "m",
        JobPriority::Async,
    );
    r.created_at = at;
    // Published, so no worker's acceptance sweep takes the queued one for a stranded job.
    r.published_at = Some(at);
    r.status = status;
    if status.is_terminal() {
        r.finished_at = Some(at);
        r.error = Some("engine failed".into());
    }
    r
}

#[tokio::test]
async fn prune_deletes_finished_jobs_past_retention() {
    let audit = PostgresAuditStore::connect(&database_url())
        .await
        .expect("Postgres reachable");
    audit.migrate().await.expect("migrate");
    let finished = in_1900(JobStatus::Failed);
    let queued = in_1900(JobStatus::Queued);
    audit.finish(&finished).await.expect("finish");
    audit.insert(&queued).await.expect("insert");

    let out =
        tokio::task::spawn_blocking(|| prune(&["--older-than", "45000d", "--batch-size", "2"]))
            .await
            .expect("prune");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["jobs", "batches", "batch_jobs"] {
        assert!(report[key].is_u64(), "{key} in {report}");
    }
    assert!(
        report["cutoff"]
            .as_str()
            .is_some_and(|c| c.starts_with("190")),
        "{report}"
    );
    assert_eq!(audit.get(finished.id).await.expect("get"), None, "{report}");
    assert!(
        audit.get(queued.id).await.expect("get").is_some(),
        "a queued job is never pruned"
    );
}
