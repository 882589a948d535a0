//! One contract for every `BatchStore`: each check runs against Postgres and the in-process
//! store, each paired with the audit store that holds its jobs (the worker's view of them).

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{database_url, retention, unique};
use scorer_jobs::batches::lifecycle;
use scorer_jobs::{
    AuditStore, BatchCounts, BatchLine, BatchRecord, BatchStatus, BatchStore, LineError,
    MemoryAuditStore, MemoryBatchStore, PostgresAuditStore, PostgresBatchStore, Pruned,
    StartOutcome,
};
use scorer_protocol::ScoreResponse;
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus, now_millis};
use uuid::Uuid;

struct Pair {
    audit: Arc<dyn AuditStore>,
    batches: Arc<dyn BatchStore>,
}

async fn postgres() -> Pair {
    let audit = PostgresAuditStore::connect(&database_url())
        .await
        .expect("postgres");
    let batches = PostgresBatchStore::new(audit.pool().clone());
    batches.migrate().await.expect("migrate");
    Pair {
        audit: Arc::new(audit),
        batches: Arc::new(batches),
    }
}

fn memory() -> Pair {
    let audit = Arc::new(MemoryAuditStore::new());
    Pair {
        batches: Arc::new(MemoryBatchStore::new(audit.clone())),
        audit,
    }
}

fn batch(tenant: &str) -> BatchRecord {
    let now = now_millis();
    BatchRecord {
        id: Uuid::now_v7(),
        tenant: tenant.to_string(),
        model: "m".into(),
        status: BatchStatus::Validating,
        completion_window: "24h".into(),
        metadata: Some(serde_json::json!({"run": "nightly"})),
        error: None,
        created_at: now,
        expires_at: now + Duration::hours(24),
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
    }
}

fn line(b: &BatchRecord, custom_id: &str) -> BatchLine {
    let mut r = JobRecord::queued(
        Uuid::now_v7(),
        b.tenant.clone(),
        JobKind::Async,
        b.model.clone(),
        JobPriority::Bulk,
    );
    r.request =
        Some(serde_json::json!({"query": custom_id, "items": ["a"], "label_token_ids": [1]}));
    r.prompt_tokens = Some(3);
    r.expires_at = Some(b.expires_at);
    BatchLine {
        custom_id: custom_id.to_string(),
        record: r,
    }
}

async fn run_job(p: &Pair, l: &BatchLine, status: JobStatus) {
    run_job_at(p, l, status, now_millis()).await;
}

/// Starts the line's job and finishes it with `status` at `at`.
async fn run_job_at(p: &Pair, l: &BatchLine, status: JobStatus, at: DateTime<Utc>) {
    let StartOutcome::Started(mut r) = p.audit.start(l.record.id, "w", at).await.expect("start")
    else {
        panic!("job {} did not start", l.custom_id);
    };
    r.status = status;
    r.finished_at = Some(at);
    match status {
        JobStatus::Succeeded => {
            r.result = Some(ScoreResponse::new(vec![vec![0.25, 0.75]], "m", 3));
        }
        _ => r.error = Some("engine failed".into()),
    }
    p.audit.finish(&r).await.expect("finish");
}

async fn create_get_list_paginate(p: &Pair) {
    let tenant = unique("tenant");
    let mut made = Vec::new();
    for _ in 0..5 {
        let b = batch(&tenant);
        p.batches.create(&b).await.expect("create");
        assert_eq!(p.batches.get(b.id).await.expect("get"), Some(b.clone()));
        made.push(b);
    }
    assert_eq!(p.batches.get(Uuid::now_v7()).await.expect("get"), None);
    // Newest first, two at a time, each page after the last id of the one before.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = p.batches.list(&tenant, after, 2).await.expect("list");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(|b| b.id);
        seen.extend(page.into_iter().map(|b| b.id));
    }
    let want: Vec<Uuid> = made.iter().rev().map(|b| b.id).collect();
    assert_eq!(seen, want);
    assert!(
        p.batches
            .list(&unique("other"), None, 10)
            .await
            .expect("list")
            .is_empty(),
        "another tenant sees none of them"
    );
}

async fn transitions_are_compare_and_set(p: &Pair) {
    let b = batch(&unique("tenant"));
    p.batches.create(&b).await.expect("create");
    let at = now_millis();
    let moved = p
        .batches
        .transition(
            b.id,
            &[BatchStatus::Validating],
            BatchStatus::InProgress,
            at,
            None,
        )
        .await
        .expect("transition")
        .expect("moved");
    assert_eq!(moved.status, BatchStatus::InProgress);
    assert_eq!(moved.in_progress_at, Some(at));
    assert_eq!(
        p.batches
            .transition(
                b.id,
                &[BatchStatus::Validating],
                BatchStatus::Failed,
                at,
                Some("x".into())
            )
            .await
            .expect("transition"),
        None,
        "not from a status it is not in"
    );
    let failed = p
        .batches
        .transition(
            b.id,
            &[BatchStatus::InProgress],
            BatchStatus::Failed,
            at,
            Some("no valid line".into()),
        )
        .await
        .expect("transition")
        .expect("moved");
    assert_eq!(failed.error.as_deref(), Some("no valid line"));
    assert_eq!(failed.failed_at, Some(at));
    assert_eq!(p.batches.get(b.id).await.expect("get"), Some(failed));
    assert_eq!(
        p.batches
            .transition(
                Uuid::now_v7(),
                &[BatchStatus::Validating],
                BatchStatus::Failed,
                at,
                None
            )
            .await
            .expect("transition"),
        None
    );
}

async fn lines_duplicates_counts_results(p: &Pair) {
    let b = batch(&unique("tenant"));
    p.batches.create(&b).await.expect("create");
    let first: Vec<BatchLine> = ["c", "a", "b"].iter().map(|c| line(&b, c)).collect();
    assert!(
        p.batches
            .add_lines(b.id, &first)
            .await
            .expect("add")
            .is_empty()
    );
    // "a" again (already there) and "d" twice within the chunk: one "d" is kept.
    let second = vec![line(&b, "a"), line(&b, "d"), line(&b, "d")];
    assert_eq!(
        p.batches.add_lines(b.id, &second).await.expect("add"),
        vec![0, 2]
    );
    assert_eq!(
        p.audit.get(second[0].record.id).await.expect("get"),
        None,
        "a refused line has no job"
    );
    // Each kept line is one audit row with the batch's deadline and the bulk priority.
    let stored = p
        .audit
        .get(first[1].record.id)
        .await
        .expect("get")
        .expect("audit row");
    assert_eq!(stored.status, JobStatus::Queued);
    assert_eq!(stored.priority, JobPriority::Bulk);
    assert_eq!(stored.expires_at, Some(b.expires_at));
    assert_eq!(stored.request, first[1].record.request);

    p.batches
        .add_errors(
            b.id,
            &[
                LineError {
                    line: 7,
                    custom_id: None,
                    message: "not JSON".into(),
                },
                LineError {
                    line: 3,
                    custom_id: Some("x".into()),
                    message: "Token ID 999999 is out of vocabulary".into(),
                },
            ],
        )
        .await
        .expect("errors");
    assert_eq!(
        p.batches.counts(b.id).await.expect("counts"),
        BatchCounts {
            queued: 4,
            invalid: 2,
            ..BatchCounts::default()
        }
    );

    run_job(p, &first[0], JobStatus::Succeeded).await; // c
    run_job(p, &first[1], JobStatus::Succeeded).await; // a
    run_job(p, &first[2], JobStatus::Failed).await; // b
    let counts = p.batches.counts(b.id).await.expect("counts");
    assert_eq!(
        counts,
        BatchCounts {
            queued: 1,
            succeeded: 2,
            failed: 1,
            invalid: 2,
            ..BatchCounts::default()
        }
    );
    assert_eq!(counts.total(), 6);
    assert_eq!(counts.pending(), 1);

    // Succeeded lines in custom_id order, one page at a time.
    let page = p.batches.results(b.id, true, None, 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].custom_id, "a");
    assert_eq!(page[0].record.id, first[1].record.id);
    assert_eq!(
        page[0].record.result,
        Some(ScoreResponse::new(vec![vec![0.25, 0.75]], "m", 3))
    );
    let page = p
        .batches
        .results(b.id, true, Some("a"), 10)
        .await
        .expect("page");
    assert_eq!(
        page.iter()
            .map(|r| r.custom_id.as_str())
            .collect::<Vec<_>>(),
        vec!["c"]
    );
    let failed = p
        .batches
        .results(b.id, false, None, 10)
        .await
        .expect("page");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].custom_id, "b");
    assert_eq!(failed[0].record.error.as_deref(), Some("engine failed"));

    // Rejected lines in file order, paged by line number.
    let errs = p.batches.line_errors(b.id, 0, 1).await.expect("errors");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 3);
    assert_eq!(errs[0].custom_id.as_deref(), Some("x"));
    let errs = p.batches.line_errors(b.id, 3, 10).await.expect("errors");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 7);
    assert_eq!(errs[0].custom_id, None);

    // Cancelling takes only the job that had not started; it then shows as failed.
    assert_eq!(
        p.batches
            .cancel_queued(b.id, now_millis())
            .await
            .expect("cancel"),
        1
    );
    assert_eq!(
        p.batches
            .cancel_queued(b.id, now_millis())
            .await
            .expect("cancel"),
        0
    );
    let counts = p.batches.counts(b.id).await.expect("counts");
    assert_eq!(counts.pending(), 0);
    assert_eq!(counts.failed, 2);
    let failed = p
        .batches
        .results(b.id, false, None, 10)
        .await
        .expect("page");
    assert_eq!(
        failed
            .iter()
            .map(|r| (r.custom_id.as_str(), r.record.status))
            .collect::<Vec<_>>(),
        vec![("b", JobStatus::Failed), ("d", JobStatus::Cancelled)]
    );
}

/// The lifecycle (`scorer_jobs::batches::lifecycle`) over the store: `open` lists what a sweep
/// visits; `advance` completes a batch only once nothing is pending, expires one past its
/// window, and finishes a cancel; `cancel` of a finished batch changes nothing.
async fn lifecycle_moves_only_what_its_jobs_allow(p: &Pair) {
    let store = p.batches.as_ref();
    let tenant = unique("tenant");
    let mut running = batch(&tenant);
    p.batches.create(&running).await.expect("create");
    let lines: Vec<BatchLine> = ["a", "b"].iter().map(|c| line(&running, c)).collect();
    p.batches.add_lines(running.id, &lines).await.expect("add");
    let end = lifecycle::UploadEnd::Read {
        accepted: 2,
        lines: 2,
    };
    running = lifecycle::end_upload(store, running.id, end, now_millis())
        .await
        .expect("end")
        .expect("batch");
    assert_eq!(running.status, BatchStatus::InProgress);

    // Listed as open (pages in id order); a validating batch is not.
    let validating = batch(&tenant);
    p.batches.create(&validating).await.expect("create");
    let mut open = Vec::new();
    let mut after = None;
    loop {
        let page = p.batches.open(after, 50).await.expect("open");
        after = page.last().map(|b| b.id);
        let done = page.len() < 50;
        open.extend(page.into_iter().map(|b| b.id));
        if done {
            break;
        }
    }
    assert!(open.contains(&running.id));
    assert!(!open.contains(&validating.id));
    assert!(open.windows(2).all(|w| w[0] < w[1]), "id order");

    // One line pending: nothing moves.
    run_job(p, &lines[0], JobStatus::Succeeded).await;
    let same = lifecycle::advance(store, running.clone(), now_millis())
        .await
        .expect("advance");
    assert_eq!(same.status, BatchStatus::InProgress);
    // None pending: completed, through finalizing.
    run_job(p, &lines[1], JobStatus::Failed).await;
    let done = lifecycle::advance(store, same, now_millis())
        .await
        .expect("advance");
    assert_eq!(done.status, BatchStatus::Completed);
    assert!(done.finalizing_at.is_some() && done.completed_at.is_some());
    assert_eq!(
        lifecycle::cancel(store, done.clone(), now_millis())
            .await
            .expect("cancel"),
        lifecycle::Cancelled::Finished(done)
    );

    // Past its window: its line not started is cancelled and the batch expires.
    let mut late = batch(&tenant);
    late.expires_at = now_millis() - Duration::seconds(1);
    p.batches.create(&late).await.expect("create");
    let late_line = line(&late, "x");
    p.batches
        .add_lines(late.id, std::slice::from_ref(&late_line))
        .await
        .expect("add");
    let end = lifecycle::UploadEnd::Read {
        accepted: 1,
        lines: 1,
    };
    let late = lifecycle::end_upload(store, late.id, end, now_millis())
        .await
        .expect("end")
        .expect("batch");
    let expired = lifecycle::advance(store, late, now_millis())
        .await
        .expect("advance");
    assert_eq!(expired.status, BatchStatus::Expired);
    let job = p
        .audit
        .get(late_line.record.id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(job.status, JobStatus::Cancelled);

    // Cancelling with nothing running: cancelling, then cancelled on the next advance.
    let mut cancelled = batch(&tenant);
    p.batches.create(&cancelled).await.expect("create");
    p.batches
        .add_lines(cancelled.id, &[line(&cancelled, "y")])
        .await
        .expect("add");
    cancelled = lifecycle::end_upload(store, cancelled.id, end, now_millis())
        .await
        .expect("end")
        .expect("batch");
    let lifecycle::Cancelled::Cancelling { batch: b, lines } =
        lifecycle::cancel(store, cancelled, now_millis())
            .await
            .expect("cancel")
    else {
        panic!("an in-progress batch is cancelled");
    };
    assert_eq!((b.status, lines), (BatchStatus::Cancelling, 1));
    let b = lifecycle::advance(store, b, now_millis())
        .await
        .expect("advance");
    assert_eq!(b.status, BatchStatus::Cancelled);
}

/// A batch with the lines named, all of them added; the batch moved to `in_progress`.
async fn batch_with(p: &Pair, custom_ids: &[&str]) -> (BatchRecord, Vec<BatchLine>) {
    let b = batch(&unique("tenant"));
    p.batches.create(&b).await.expect("create");
    let lines: Vec<BatchLine> = custom_ids.iter().map(|c| line(&b, c)).collect();
    assert!(
        p.batches
            .add_lines(b.id, &lines)
            .await
            .expect("add")
            .is_empty()
    );
    p.batches
        .transition(
            b.id,
            &[BatchStatus::Validating],
            BatchStatus::InProgress,
            b.created_at,
            None,
        )
        .await
        .expect("transition");
    (b, lines)
}

async fn end(p: &Pair, b: &BatchRecord, to: BatchStatus, at: DateTime<Utc>) {
    let moved = p
        .batches
        .transition(b.id, &[BatchStatus::InProgress], to, at, None)
        .await
        .expect("transition");
    assert!(moved.is_some(), "batch {} moves to {to:?}", b.id);
}

/// Retention takes a batch whole, with its lines and rejected lines, once it finished before
/// the cutoff; the audit store's own retention never takes a batch's line; a line still running
/// keeps itself and its batch until it finishes.
async fn prune_takes_finished_batches_whole(p: &Pair) {
    // Each batch reaches its final status before its lines finish: an API's lifecycle sweep
    // (other tests run some on this database) only moves open batches with nothing pending.
    let (done, done_lines) = batch_with(p, &["a", "b"]).await;
    end(p, &done, BatchStatus::Completed, retention::old()).await;
    run_job_at(p, &done_lines[0], JobStatus::Succeeded, retention::old()).await;
    run_job_at(p, &done_lines[1], JobStatus::Failed, retention::old()).await;
    let rejected = LineError {
        line: 3,
        custom_id: None,
        message: "not JSON".into(),
    };
    p.batches
        .add_errors(done.id, std::slice::from_ref(&rejected))
        .await
        .expect("errors");

    let (expired, expired_lines) = batch_with(p, &["ran", "running"]).await;
    end(p, &expired, BatchStatus::Expired, retention::old()).await;
    run_job_at(p, &expired_lines[0], JobStatus::Succeeded, retention::old()).await;
    p.audit
        .start(expired_lines[1].record.id, "w", retention::old())
        .await
        .expect("start");

    let (recent, recent_lines) = batch_with(p, &["a"]).await;
    end(p, &recent, BatchStatus::Completed, retention::kept()).await;
    run_job_at(p, &recent_lines[0], JobStatus::Succeeded, retention::old()).await;

    // Still open (a sweep may complete it now: then it finished after the cutoff).
    let (open, open_lines) = batch_with(p, &["a"]).await;
    run_job_at(p, &open_lines[0], JobStatus::Succeeded, retention::old()).await;

    while p
        .audit
        .prune(retention::cutoff(), 100)
        .await
        .expect("prune")
        > 0
    {}
    let all_lines = [&done_lines, &expired_lines, &recent_lines, &open_lines];
    for l in all_lines.iter().flat_map(|ls| ls.iter()) {
        assert!(
            p.audit.get(l.record.id).await.expect("get").is_some(),
            "the audit store's retention leaves line {} to its batch",
            l.custom_id
        );
    }

    let first = p
        .batches
        .prune(retention::cutoff(), 1)
        .await
        .expect("prune");
    assert!(first.jobs <= 1 && first.batches <= 1, "bounded: {first:?}");
    while p
        .batches
        .prune(retention::cutoff(), 1)
        .await
        .expect("prune")
        != Pruned::default()
    {}

    assert_eq!(p.batches.get(done.id).await.expect("get"), None);
    for l in done_lines.iter().chain(&expired_lines[..1]) {
        assert_eq!(
            p.audit.get(l.record.id).await.expect("get"),
            None,
            "{}",
            l.custom_id
        );
    }
    assert!(
        p.batches
            .line_errors(done.id, 0, 10)
            .await
            .expect("errors")
            .is_empty()
    );
    assert!(
        p.audit
            .get(expired_lines[1].record.id)
            .await
            .expect("get")
            .is_some(),
        "a running line is never deleted"
    );
    for (b, ls) in [
        (&expired, &expired_lines[1..]),
        (&recent, &recent_lines[..]),
        (&open, &open_lines[..]),
    ] {
        assert!(
            p.batches.get(b.id).await.expect("get").is_some(),
            "batch {:?} stays",
            b.status
        );
        for l in ls {
            assert!(p.audit.get(l.record.id).await.expect("get").is_some());
        }
    }

    // Once its last line finishes, the expired batch goes too.
    let mut last = p
        .audit
        .get(expired_lines[1].record.id)
        .await
        .expect("get")
        .expect("row");
    last.status = JobStatus::Failed;
    last.finished_at = Some(now_millis());
    last.error = Some("engine failed".into());
    p.audit.finish(&last).await.expect("finish");
    while p
        .batches
        .prune(retention::cutoff(), 10)
        .await
        .expect("prune")
        != Pruned::default()
    {}
    assert_eq!(p.batches.get(expired.id).await.expect("get"), None);
    assert_eq!(p.audit.get(last.id).await.expect("get"), None);
}

macro_rules! contract {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn on_postgres() {
                super::$name(&postgres().await).await;
            }

            #[tokio::test]
            async fn in_process() {
                super::$name(&memory()).await;
            }
        }
    };
}

contract!(create_get_list_paginate);
contract!(transitions_are_compare_and_set);
contract!(lines_duplicates_counts_results);
contract!(lifecycle_moves_only_what_its_jobs_allow);
contract!(prune_takes_finished_batches_whole);
