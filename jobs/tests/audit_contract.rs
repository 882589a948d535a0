//! One contract for every `AuditStore`: each check runs against Postgres and the in-process store.

mod common;

use common::{database_url, retention, unique};
use scorer_jobs::{
    AuditStore, CancelOutcome, Inserted, MemoryAuditStore, PostgresAuditStore, StartOutcome,
};
use scorer_protocol::ScoreResponse;
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus, now_millis};
use uuid::Uuid;

fn record() -> JobRecord {
    let mut r = JobRecord::queued(
        Uuid::new_v4(),
        unique("tenant"),
        JobKind::Async,
        "m",
        JobPriority::Bulk,
    );
    r.request =
        Some(serde_json::json!({"query": "q", "items": ["a", "b"], "label_token_ids": [1, 2]}));
    r.webhook = Some("http://127.0.0.1:9/hook".into());
    r
}

fn outcome(mut r: JobRecord, status: JobStatus) -> JobRecord {
    r.status = status;
    r.finished_at = Some(now_millis());
    r.inference_ms = Some(12);
    r.prompt_tokens = Some(6);
    match status {
        JobStatus::Succeeded => r.result = Some(ScoreResponse::new(vec![vec![0.5, 0.125]], "m", 6)),
        _ => r.error = Some("engine failed".into()),
    }
    r
}

async fn insert_get_roundtrip(s: &dyn AuditStore) {
    let r = record();
    assert_eq!(s.get(r.id).await.expect("get"), None);
    assert_eq!(s.insert(&r).await.expect("insert"), Inserted::Created);
    assert_eq!(s.get(r.id).await.expect("get"), Some(r.clone()));
    assert_eq!(
        s.insert(&r).await.expect("insert again"),
        Inserted::Existing(r.clone()),
        "inserting the same id is harmless"
    );
    s.ping().await.expect("ping");
}

async fn idempotency_key_is_per_tenant(s: &dyn AuditStore) {
    let key = unique("key");
    let mut first = record();
    first.idempotency_key = Some(key.clone());
    first.request_hash = Some("hash-1".into());
    assert_eq!(s.insert(&first).await.expect("insert"), Inserted::Created);

    let mut replay = record();
    replay.tenant = first.tenant.clone();
    replay.idempotency_key = Some(key.clone());
    replay.request_hash = Some("hash-2".into());
    assert_eq!(
        s.insert(&replay).await.expect("insert"),
        Inserted::Existing(first.clone()),
        "same tenant and key: the original job, with its hash for the caller to compare"
    );
    assert_eq!(s.get(replay.id).await.expect("get"), None, "no second row");

    let mut other_tenant = record();
    other_tenant.idempotency_key = Some(key);
    assert_eq!(
        s.insert(&other_tenant).await.expect("insert"),
        Inserted::Created
    );
}

async fn start_counts_attempts(s: &dyn AuditStore) {
    assert_eq!(
        s.start(Uuid::new_v4(), "w", now_millis())
            .await
            .expect("start"),
        StartOutcome::Missing
    );
    let r = record();
    s.insert(&r).await.expect("insert");
    let at = r.created_at + chrono::Duration::milliseconds(250);
    let StartOutcome::Started(started) = s.start(r.id, "worker-1", at).await.expect("start") else {
        panic!("a queued job starts");
    };
    assert_eq!(started.status, JobStatus::Running);
    assert_eq!(started.attempts, 1);
    assert_eq!(started.worker.as_deref(), Some("worker-1"));
    assert_eq!(started.started_at, Some(at));
    assert_eq!(started.queue_ms, Some(250));
    assert_eq!(
        started.webhook, r.webhook,
        "the worker learns the webhook here"
    );
    // A redelivery after a crash starts it again.
    let StartOutcome::Started(again) = s.start(r.id, "worker-2", at).await.expect("start") else {
        panic!("a running job restarts on redelivery");
    };
    assert_eq!(again.attempts, 2);
    assert_eq!(again.worker.as_deref(), Some("worker-2"));
}

async fn finish_is_idempotent(s: &dyn AuditStore) {
    let r = record();
    s.insert(&r).await.expect("insert");
    let StartOutcome::Started(running) = s.start(r.id, "w", now_millis()).await.expect("start")
    else {
        panic!("starts");
    };
    let done = outcome(running.clone(), JobStatus::Succeeded);
    let stored = s.finish(&done).await.expect("finish");
    assert_eq!(stored.record, done);
    assert!(stored.applied);
    // A second delivery finishing differently does not rewrite history.
    let late = outcome(running, JobStatus::Failed);
    let again = s.finish(&late).await.expect("finish");
    assert_eq!(again.record, done);
    assert!(
        !again.applied,
        "the second delivery did not decide the outcome"
    );
    assert_eq!(s.get(r.id).await.expect("get"), Some(done.clone()));
    assert_eq!(
        s.start(r.id, "w", now_millis()).await.expect("start"),
        StartOutcome::NotRunnable(done),
        "a finished job does not run again"
    );
}

async fn finish_upserts_missing_row(s: &dyn AuditStore) {
    let mut r = outcome(record(), JobStatus::Failed);
    r.attempts = 3;
    let stored = s.finish(&r).await.expect("finish");
    assert_eq!((stored.record.clone(), stored.applied), (r.clone(), true));
    assert_eq!(s.get(r.id).await.expect("get"), Some(r));
}

async fn cancel_only_before_start(s: &dyn AuditStore) {
    assert_eq!(
        s.cancel(Uuid::new_v4(), now_millis())
            .await
            .expect("cancel"),
        CancelOutcome::Missing
    );
    let queued = record();
    s.insert(&queued).await.expect("insert");
    let at = now_millis();
    let CancelOutcome::Cancelled(c) = s.cancel(queued.id, at).await.expect("cancel") else {
        panic!("a queued job cancels");
    };
    assert_eq!((c.status, c.finished_at), (JobStatus::Cancelled, Some(at)));
    assert!(matches!(
        s.start(queued.id, "w", now_millis()).await.expect("start"),
        StartOutcome::NotRunnable(r) if r.status == JobStatus::Cancelled
    ));

    let running = record();
    s.insert(&running).await.expect("insert");
    s.start(running.id, "w", now_millis()).await.expect("start");
    assert!(matches!(
        s.cancel(running.id, now_millis()).await.expect("cancel"),
        CancelOutcome::TooLate(r) if r.status == JobStatus::Running
    ));
}

/// The per-tenant count: unfinished sync/async jobs of that tenant only; bulk jobs, other
/// tenants and finished or cancelled jobs do not count; a repeated finish counts once.
async fn active_jobs_counts_unfinished_interactive_work(s: &dyn AuditStore) {
    let tenant = unique("tenant");
    let job = |priority| {
        let mut r = record();
        r.tenant = tenant.clone();
        r.priority = priority;
        r
    };
    let (a, b, c) = (
        job(JobPriority::Async),
        job(JobPriority::Sync),
        job(JobPriority::Async),
    );
    for r in [&a, &b, &c, &job(JobPriority::Bulk), &record()] {
        s.insert(r).await.expect("insert");
    }
    assert_eq!(s.active_jobs(&tenant).await.expect("count"), 3);
    s.start(a.id, "w", now_millis()).await.expect("start");
    assert_eq!(
        s.active_jobs(&tenant).await.expect("count"),
        3,
        "running counts"
    );
    for _ in 0..2 {
        s.finish(&outcome(a.clone(), JobStatus::Succeeded))
            .await
            .expect("finish");
        assert_eq!(s.active_jobs(&tenant).await.expect("count"), 2);
    }
    s.cancel(b.id, now_millis()).await.expect("cancel");
    assert_eq!(s.active_jobs(&tenant).await.expect("count"), 1);
    s.finish(&outcome(c.clone(), JobStatus::Failed))
        .await
        .expect("finish");
    assert_eq!(s.active_jobs(&tenant).await.expect("count"), 0);
}

/// Retention deletes finished jobs finished before the cutoff, a bounded number per call, and
/// never a queued or running job (even one carrying a stale `finished_at`) or a newer one.
async fn prune_deletes_only_old_finished_jobs(s: &dyn AuditStore) {
    let done_at = |status, at| {
        let mut r = outcome(record(), status);
        r.finished_at = Some(at);
        r.idempotency_key = Some(unique("key"));
        r
    };
    let old_ok = done_at(JobStatus::Succeeded, retention::old());
    let old_failed = done_at(JobStatus::Failed, retention::old());
    let newer = done_at(JobStatus::Succeeded, retention::kept());
    for r in [&old_ok, &old_failed, &newer] {
        s.finish(r).await.expect("finish");
    }
    let old_cancelled = record();
    s.insert(&old_cancelled).await.expect("insert");
    s.cancel(old_cancelled.id, retention::old())
        .await
        .expect("cancel");
    let mut queued = record();
    queued.finished_at = Some(retention::old());
    s.insert(&queued).await.expect("insert");
    let running = record();
    s.insert(&running).await.expect("insert");
    s.start(running.id, "w", retention::old())
        .await
        .expect("start");

    assert!(
        s.prune(retention::cutoff(), 1).await.expect("prune") <= 1,
        "one call deletes at most its limit"
    );
    while s.prune(retention::cutoff(), 2).await.expect("prune") > 0 {}
    for gone in [&old_ok, &old_failed, &old_cancelled] {
        assert_eq!(
            s.get(gone.id).await.expect("get"),
            None,
            "{:?} goes",
            gone.status
        );
    }
    for kept in [&newer, &queued, &running] {
        assert!(
            s.get(kept.id).await.expect("get").is_some(),
            "a {:?} job stays",
            kept.status
        );
    }
    // A pruned job's idempotency key names nothing any more.
    let mut again = record();
    again.tenant = old_ok.tenant.clone();
    again.idempotency_key = old_ok.idempotency_key.clone();
    assert_eq!(s.insert(&again).await.expect("insert"), Inserted::Created);
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let s = PostgresAuditStore::connect(&database_url())
                        .await
                        .expect("Postgres reachable");
                    s.migrate().await.expect("migrate");
                    super::$name(&s).await;
                }
            )*
        }
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&MemoryAuditStore::new()).await;
                }
            )*
        }
    };
}

contract!(
    insert_get_roundtrip,
    idempotency_key_is_per_tenant,
    start_counts_attempts,
    finish_is_idempotent,
    finish_upserts_missing_row,
    cancel_only_before_start,
    active_jobs_counts_unfinished_interactive_work,
    prune_deletes_only_old_finished_jobs,
);

/// The in-process store forgets the oldest finished jobs past its capacity, and only those.
#[tokio::test]
async fn memory_store_is_bounded() {
    let s = MemoryAuditStore::with_capacity(2);
    let mut finished = Vec::new();
    for _ in 0..3 {
        let mut r = record();
        r.idempotency_key = Some(unique("key"));
        s.insert(&r).await.expect("insert");
        s.finish(&outcome(r.clone(), JobStatus::Succeeded))
            .await
            .expect("finish");
        finished.push(r);
    }
    let waiting = record();
    s.insert(&waiting).await.expect("insert");
    assert_eq!(
        s.get(finished[0].id).await.expect("get"),
        None,
        "oldest evicted"
    );
    assert!(s.get(finished[1].id).await.expect("get").is_some());
    assert!(s.get(finished[2].id).await.expect("get").is_some());
    assert!(
        s.get(waiting.id).await.expect("get").is_some(),
        "unfinished jobs stay"
    );
    // Its idempotency key is free again.
    let mut reuse = record();
    reuse.tenant = finished[0].tenant.clone();
    reuse.idempotency_key = finished[0].idempotency_key.clone();
    assert_eq!(s.insert(&reuse).await.expect("insert"), Inserted::Created);
}
