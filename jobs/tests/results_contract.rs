//! One contract for every `ResultStore` (and `WorkerRegistry`): each check runs against Redis and
//! the in-process store.

mod common;

use std::time::Duration;

use common::{redis_url, unique};
use scorer_jobs::{MemoryResultStore, RedisResultStore, ResultStore, WorkerRegistry};
use scorer_protocol::ScoreResponse;
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus, now_millis};
use uuid::Uuid;

fn record() -> JobRecord {
    let mut r = JobRecord::queued(
        Uuid::new_v4(),
        "tenant-a",
        JobKind::Async,
        "m",
        JobPriority::Async,
    );
    r.request = Some(serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1]}));
    r
}

fn succeeded(mut r: JobRecord) -> JobRecord {
    r.status = JobStatus::Succeeded;
    r.result = Some(ScoreResponse::new(vec![vec![0.25, 0.75]], "m", 5));
    r.prompt_tokens = Some(5);
    r.finished_at = Some(now_millis());
    r
}

async fn put_get_roundtrip(s: &dyn ResultStore) {
    let r = succeeded(record());
    assert_eq!(s.get(r.id).await.expect("get"), None);
    s.put(&r).await.expect("put");
    let got = s.get(r.id).await.expect("get").expect("stored");
    let mut expected = r.clone();
    expected.request = None;
    assert_eq!(got, expected, "everything but the request body is kept");
    s.ping().await.expect("ping");
}

async fn waiter_sees_later_completion(s: &dyn ResultStore) {
    let r = record();
    s.put(&r).await.expect("put queued");
    let done = succeeded(r.clone());
    let (got, ()) = tokio::join!(s.wait_terminal(r.id, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut running = r.clone();
        running.status = JobStatus::Running;
        s.put(&running).await.expect("put running");
        s.put(&done).await.expect("put done");
    });
    let got = got.expect("wait").expect("completion seen");
    assert_eq!(got.status, JobStatus::Succeeded);
    assert_eq!(got.result, done.result);
}

async fn wait_returns_terminal_at_once(s: &dyn ResultStore) {
    let r = succeeded(record());
    s.put(&r).await.expect("put");
    let started = std::time::Instant::now();
    let got = s
        .wait_terminal(r.id, Duration::from_secs(10))
        .await
        .expect("wait");
    assert_eq!(got.map(|g| g.status), Some(JobStatus::Succeeded));
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn wait_times_out_on_unfinished(s: &dyn ResultStore) {
    let r = record();
    s.put(&r).await.expect("put");
    let (got, ()) = tokio::join!(s.wait_terminal(r.id, Duration::from_millis(700)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut running = r.clone();
        running.status = JobStatus::Running;
        s.put(&running).await.expect("put running");
    });
    assert_eq!(
        got.expect("wait"),
        None,
        "a non-terminal update does not end the wait"
    );
    assert_eq!(
        s.get(r.id).await.expect("get").map(|g| g.status),
        Some(JobStatus::Running)
    );
}

/// Many concurrent sync waits (one API process under load): each is answered with its own job.
async fn many_waiters_each_answered(s: &dyn ResultStore) {
    let records: Vec<JobRecord> = (0..20).map(|_| record()).collect();
    for r in &records {
        s.put(r).await.expect("put queued");
    }
    let waits = futures::future::join_all(
        records
            .iter()
            .map(|r| s.wait_terminal(r.id, Duration::from_secs(10))),
    );
    let (got, ()) = tokio::join!(waits, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in records.iter().rev() {
            s.put(&succeeded(r.clone())).await.expect("put done");
        }
    });
    for (r, g) in records.iter().zip(got) {
        let g = g.expect("wait").expect("completion seen");
        assert_eq!((g.id, g.status), (r.id, JobStatus::Succeeded));
    }
}

async fn entries_expire(s: &dyn ResultStore) {
    let r = record();
    s.put(&r).await.expect("put");
    assert!(s.get(r.id).await.expect("get").is_some());
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(s.get(r.id).await.expect("get"), None, "gone after the TTL");
}

async fn heartbeats_mark_live_workers(s: &dyn WorkerRegistry) {
    assert!(
        s.live_workers(Duration::from_secs(10))
            .await
            .expect("live")
            .is_empty()
    );
    s.heartbeat("worker-1", "model-a").await.expect("beat");
    s.heartbeat("worker-2", "model-a").await.expect("beat");
    let mut live = s.live_workers(Duration::from_secs(10)).await.expect("live");
    live.sort();
    assert_eq!(live, vec!["worker-1".to_string(), "worker-2".to_string()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.heartbeat("worker-2", "model-a").await.expect("beat");
    let live = s
        .live_workers(Duration::from_millis(150))
        .await
        .expect("live");
    assert_eq!(
        live,
        vec!["worker-2".to_string()],
        "silent workers drop out"
    );
}

/// Locality routing asks for the live workers of one model; a worker that stops on purpose
/// leaves at once.
async fn live_workers_by_model(s: &dyn WorkerRegistry) {
    let within = Duration::from_secs(10);
    s.heartbeat("w-b", "model-a").await.expect("beat");
    s.heartbeat("w-a", "model-a").await.expect("beat");
    s.heartbeat("w-c", "model-b").await.expect("beat");
    let of = |m: &'static str| async move { s.live_model_workers(m, within).await.expect("live") };
    assert_eq!(
        of("model-a").await,
        vec!["w-a".to_string(), "w-b".to_string()],
        "sorted"
    );
    assert_eq!(of("model-b").await, vec!["w-c".to_string()]);
    assert!(of("model-c").await.is_empty());
    s.forget_worker("w-a", "model-a").await.expect("forget");
    assert_eq!(of("model-a").await, vec!["w-b".to_string()]);
    let mut all = s.live_workers(within).await.expect("live");
    all.sort();
    assert_eq!(all, vec!["w-b".to_string(), "w-c".to_string()]);
}

/// The TTL the entries_expire check relies on (Redis TTLs are whole seconds).
const TTL: Duration = Duration::from_secs(2);

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let s = RedisResultStore::connect(&redis_url(), &unique("test"), TTL)
                        .await
                        .expect("Redis reachable");
                    super::$name(&s).await;
                }
            )*
        }
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&MemoryResultStore::new(TTL)).await;
                }
            )*
        }
    };
}

contract!(
    put_get_roundtrip,
    waiter_sees_later_completion,
    many_waiters_each_answered,
    wait_returns_terminal_at_once,
    wait_times_out_on_unfinished,
    entries_expire,
    heartbeats_mark_live_workers,
    live_workers_by_model,
);

/// Sync waits share the process's one pattern subscription: while 10 waits are pending no
/// per-job channel is subscribed (each wait used to open its own connection and SUBSCRIBE), and
/// every wait is still answered.
#[tokio::test]
async fn redis_waits_share_one_subscription() {
    let prefix = unique("test");
    let s = RedisResultStore::connect(&redis_url(), &prefix, TTL)
        .await
        .expect("Redis reachable");
    let records: Vec<JobRecord> = (0..10).map(|_| record()).collect();
    let waits = futures::future::join_all(
        records
            .iter()
            .map(|r| s.wait_terminal(r.id, Duration::from_secs(10))),
    );
    let (got, ()) = tokio::join!(waits, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let client = ::redis::Client::open(redis_url()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis reachable");
        let channels: Vec<String> = ::redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("{prefix}:done:*"))
            .query_async(&mut conn)
            .await
            .expect("PUBSUB CHANNELS");
        assert!(channels.is_empty(), "per-wait subscriptions: {channels:?}");
        for r in &records {
            s.put(&succeeded(r.clone())).await.expect("put done");
        }
    });
    for g in got {
        assert_eq!(
            g.expect("wait").map(|g| g.status),
            Some(JobStatus::Succeeded)
        );
    }
}
