//! Failure handling end to end: a worker killed mid-job, a poison message, a pass past the run
//! time limit, and readiness while a dependency is down (cut off by stopping a TCP proxy in
//! front of the real service).

mod common;

use std::time::Duration;

use common::{Backing, Harness, MODEL, assert_same_scores, database_url, direct};
use reqwest::StatusCode;
use scorer_jobs::{DeadLetter, PostgresAuditStore};
use scorer_protocol::job::{JobKind, JobPriority, JobRecord, JobStatus};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request big enough that the engine is busy with it for a while.
fn long_body() -> Value {
    let items: Vec<String> = (0..24)
        .map(|i| {
            format!(" item number {i} is a long description of a product for sale, with details")
        })
        .collect();
    json!({
        "query": "Which of these products would a gardener buy? Answer yes or no for each.",
        "items": items,
        "label_token_ids": [10539, 5230],
        "apply_softmax": true
    })
}

/// Submits `body` and kills the worker while the job runs. A job that finished before the kill
/// landed proves nothing, so that case starts over with a new job and worker (a few times).
async fn kill_mid_job(h: &mut Harness, body: &Value) -> String {
    for _ in 0..5 {
        let worker = h.start_worker();
        let (status, _, job) = h.post("/v1/score/jobs", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        let id = job["id"].as_str().expect("id").to_string();
        h.wait_job(&id, Duration::from_secs(60), |j| j["status"] != "queued")
            .await;
        h.kill_worker(worker).await;
        // Let any write already on the wire land before judging.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
        let row = h.stores.audit.get(uuid).await.expect("audit").expect("row");
        if row.status == JobStatus::Running {
            return id;
        }
    }
    panic!("the job always finished before its worker could be killed");
}

async fn worker_killed_mid_job(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    let body = long_body();
    let id = kill_mid_job(&mut h, &body).await;

    let second = h.start_worker();
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["attempts"], 2,
        "the redelivery is the second attempt: {done}"
    );
    assert_same_scores(&done["result"], &direct(&h.engine, &body).await);

    let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
    let row = h.stores.audit.get(uuid).await.expect("audit").expect("row");
    assert_eq!(row.worker.as_deref(), Some(h.worker_id(second)));
    assert_eq!(row.attempts, 2);
    if backing == Backing::Real {
        let pg = PostgresAuditStore::connect(&database_url())
            .await
            .expect("pg");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = $1")
            .bind(uuid)
            .fetch_one(pg.pool())
            .await
            .expect("count");
        assert_eq!(rows, 1, "one audit row");
    }
    h.finish().await;
}

/// A job that keeps losing its worker runs out of attempts: failed, and its message dead-lettered.
async fn over_attempt_is_dead_lettered(backing: Backing) {
    let mut h = Harness::start(backing, |c| c.worker.max_attempts = 1).await;
    let id = kill_mid_job(&mut h, &long_body()).await;
    h.start_worker();
    let failed = h.wait_terminal(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .expect("error")
            .contains("gave up after 1 attempts"),
        "{failed}"
    );
    let dead = wait_dead_letter(&h).await;
    assert_eq!(dead.job_id.map(|u| u.to_string()), Some(id));
    h.finish().await;
}

/// The next message of the model's dead-letter queue (panics if none arrives within 10 s).
async fn wait_dead_letter(h: &Harness) -> DeadLetter {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(d) = h.stores.queue.pop_dead_letter(MODEL).await.expect("pop") {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letter arrives"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job whose forward pass runs past the run time limit is published again once, then fails
/// and is dead-lettered. A 1 ms limit makes every pass of the real engine too slow.
async fn past_run_limit_is_requeued_once_then_failed(backing: Backing) {
    let mut h = Harness::start(backing, |c| {
        c.worker.run_timeout = Duration::from_millis(1);
    })
    .await;
    h.start_worker();
    let (status, _, job) = h.post("/v1/score/jobs", &long_body()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    let failed = h.wait_terminal(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .expect("error")
            .contains("ran past the run time limit of 1ms 2 times"),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 2, "one run, one rerun: {failed}");
    assert!(failed["result"].is_null(), "{failed}");
    let dead = wait_dead_letter(&h).await;
    assert_eq!(dead.job_id.map(|u| u.to_string()), Some(id.clone()));
    let envelope = scorer_jobs::queue::decode(&dead.body).expect("an envelope");
    assert_eq!(envelope.attempt, 2, "the second publication was the last");
    // Only the one message went to the dead-letter queue: the first run was requeued.
    assert!(
        h.stores
            .queue
            .pop_dead_letter(MODEL)
            .await
            .expect("pop")
            .is_none()
    );
    let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
    let row = h.stores.audit.get(uuid).await.expect("audit").expect("row");
    assert_eq!(row.status, JobStatus::Failed);
    assert_eq!(row.attempts, 2);
    h.finish().await;
}

async fn poison_message_is_dead_lettered(backing: Backing) {
    let mut h = Harness::start(backing, |_| {}).await;
    h.start_worker();
    // A job whose message arrives mangled.
    let record = JobRecord::queued(
        uuid::Uuid::now_v7(),
        "default",
        JobKind::Async,
        MODEL,
        JobPriority::Async,
    );
    h.stores.audit.insert(&record).await.expect("insert");
    h.stores
        .queue
        .publish_raw(
            MODEL,
            Some(record.id),
            JobPriority::Async,
            b"\x93not an envelope".to_vec(),
        )
        .await
        .expect("publish");
    let id = record.id.to_string();
    let failed = h.wait_terminal(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .expect("error")
            .contains("could not be decoded"),
        "{failed}"
    );
    let dead = wait_dead_letter(&h).await;
    assert_eq!(dead.job_id, Some(record.id));
    assert_eq!(dead.body, b"\x93not an envelope");
    // The worker carries on with good work.
    let (status, _, _) = h.post("/v1/score", &common::score_body()).await;
    assert_eq!(status, StatusCode::OK);
    h.finish().await;
}

/// Forwards connections to `target` until stopped; stopping drops every open connection.
struct Proxy {
    port: u16,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16, target: String) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy { port, task }
    }

    async fn stop(self) -> u16 {
        self.task.abort();
        let _ = self.task.await;
        self.port
    }
}

async fn ready(h: &Harness) -> (StatusCode, Value) {
    let (status, _, body) = h.get("/ready").await;
    (status, body)
}

async fn wait_ready(h: &Harness, want: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready(h).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_false_while_a_dependency_is_down() {
    let redis = Proxy::start(0, "127.0.0.1:6379".into()).await;
    let postgres = Proxy::start(0, "127.0.0.1:5432".into()).await;
    let amqp = Proxy::start(0, "127.0.0.1:5672".into()).await;
    let (redis_port, pg_port, amqp_port) = (redis.port, postgres.port, amqp.port);
    let mut h = Harness::start(Backing::Real, |c| {
        c.stores.redis_url = Some(format!("redis://127.0.0.1:{redis_port}"));
        c.stores.database_url = Some(format!("postgres://postgres@127.0.0.1:{pg_port}/test"));
        c.stores.amqp_url = Some(format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"));
    })
    .await;
    h.start_worker();
    let body = wait_ready(&h, StatusCode::OK).await;
    assert_eq!(body["ready"], true);

    let mut proxies = (Some(redis), Some(postgres), Some(amqp));
    for (name, check) in [
        ("redis", "results"),
        ("postgres", "audit"),
        ("rabbitmq", "queue"),
    ] {
        let (proxy, target) = match name {
            "redis" => (proxies.0.take(), "127.0.0.1:6379"),
            "postgres" => (proxies.1.take(), "127.0.0.1:5432"),
            _ => (proxies.2.take(), "127.0.0.1:5672"),
        };
        let port = proxy.expect("proxy").stop().await;
        let down = wait_ready(&h, StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(down["ready"], false, "{name} down: {down}");
        assert_ne!(
            down["checks"][check], "ok",
            "{name} down shows in `{check}`: {down}"
        );
        // Work needing the missing service is refused with 503, not hung.
        if name != "redis" {
            let (status, _, err) = h.post("/v1/score/jobs", &common::score_body()).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {err}");
            assert_eq!(err["type"], "ServiceUnavailableError");
        }
        let back = Proxy::start(port, target.to_string()).await;
        match name {
            "redis" => proxies.0 = Some(back),
            "postgres" => proxies.1 = Some(back),
            _ => proxies.2 = Some(back),
        }
        let up = wait_ready(&h, StatusCode::OK).await;
        assert_eq!(up["ready"], true, "{name} back: {up}");
    }
    h.finish().await;
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backing::Real).await;
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backing::InProcess).await;
                }
            )*
        }
    };
}

on_both!(
    worker_killed_mid_job,
    over_attempt_is_dead_lettered,
    poison_message_is_dead_lettered,
    past_run_limit_is_requeued_once_then_failed,
);
