//! The acceptance state machine's store side (issue 14, defect 2), on Postgres and the
//! in-process store: a job inserted but never published is failed by the sweeper once it is old
//! enough; a published one, a started one and bulk work are left alone; the stamp survives a
//! finish.

mod common;

use chrono::Duration;
use common::{database_url, unique};
use scorer_jobs::{AuditStore, MemoryAuditStore, PostgresAuditStore, StartOutcome};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus, now_millis};
use uuid::Uuid;

fn record(tenant: &str, priority: JobPriority, age: Duration) -> JobRecord {
    let mut r = JobRecord::queued(Uuid::now_v7(), tenant, JobKind::Async, "m", priority);
    r.created_at = now_millis() - age;
    r
}

async fn sweeper_fails_only_old_unpublished_interactive_jobs(s: &dyn AuditStore) {
    let tenant = unique("tenant");
    let old = Duration::seconds(600);
    let stranded = record(&tenant, JobPriority::Async, old);
    let published = record(&tenant, JobPriority::Async, old);
    let started = record(&tenant, JobPriority::Async, old);
    let bulk = record(&tenant, JobPriority::Bulk, old);
    let young = record(&tenant, JobPriority::Async, Duration::zero());
    for r in [&stranded, &published, &started, &bulk, &young] {
        s.insert(r).await.expect("insert");
    }
    s.mark_published(published.id, now_millis())
        .await
        .expect("mark");
    assert!(matches!(
        s.start(started.id, "w", now_millis()).await.expect("start"),
        StartOutcome::Started(_)
    ));
    let before = s.active_jobs(&tenant).await.expect("active");

    let cutoff = now_millis() - Duration::seconds(60);
    let swept = s
        .fail_unpublished(cutoff, "never queued")
        .await
        .expect("sweep");
    let mine: Vec<_> = swept.iter().filter(|r| r.tenant == tenant).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].id, stranded.id);
    assert_eq!(mine[0].status, JobStatus::Failed);
    assert_eq!(mine[0].error.as_deref(), Some("never queued"));
    assert!(mine[0].finished_at.is_some());

    let row = s.get(stranded.id).await.expect("get").expect("row");
    assert_eq!(row.status, JobStatus::Failed);
    for id in [published.id, bulk.id, young.id] {
        let row = s.get(id).await.expect("get").expect("row");
        assert_eq!(row.status, JobStatus::Queued, "{row:?}");
    }
    let row = s.get(started.id).await.expect("get").expect("row");
    assert_eq!(row.status, JobStatus::Running);
    assert_eq!(
        s.active_jobs(&tenant).await.expect("active"),
        before - 1,
        "the swept job no longer counts against its tenant"
    );
    // Sweeping again changes nothing.
    let again = s
        .fail_unpublished(cutoff, "never queued")
        .await
        .expect("sweep");
    assert!(again.iter().all(|r| r.tenant != tenant), "{again:?}");
}

async fn published_stamp_is_kept(s: &dyn AuditStore) {
    let r = record(&unique("tenant"), JobPriority::Async, Duration::zero());
    s.insert(&r).await.expect("insert");
    assert_eq!(
        s.get(r.id).await.expect("get").expect("row").published_at,
        None
    );
    let at = now_millis();
    s.mark_published(r.id, at).await.expect("mark");
    s.mark_published(r.id, at + Duration::seconds(5))
        .await
        .expect("mark again");
    let mut done = s.get(r.id).await.expect("get").expect("row");
    assert_eq!(done.published_at, Some(at), "the first stamp stays");
    done.fail("engine failed");
    done.published_at = None;
    let finished = s.finish(&done).await.expect("finish");
    assert_eq!(finished.record.published_at, Some(at));
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
    sweeper_fails_only_old_unpublished_interactive_jobs,
    published_stamp_is_kept,
);
