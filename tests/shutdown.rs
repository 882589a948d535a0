//! Graceful shutdown of the real processes (docs/OPERATIONS.md, "Graceful shutdown"): a
//! `scorer worker` sent SIGTERM while it runs a batch file's jobs finishes its pass, hands back
//! what it had taken but not started, and exits 0 within its grace period; no job is lost,
//! recorded twice or started twice, and nothing it handed back is marked redelivered. Then a
//! `scorer api` sent SIGTERM with a sync request waiting stops accepting connections and still
//! answers that request (a new worker scores it) before it exits 0. Real RabbitMQ, Redis and
//! PostgreSQL; SmolLM2-135M.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{SMOL, SMOL_NO, SMOL_YES};
use reqwest::StatusCode;
use scorer_jobs::{AmqpQueue, AmqpTopology, JobQueue};
use scorer_testkit::batches::{Caller, body, jsonl};
use scorer_testkit::jobs::unique;
use scorer_testkit::process::{Proc, free_port, port_open, wait_port, with_database};
use scorer_testkit::{amqp_url, database_url, redis_url};
use serde_json::{Value, json};
use uuid::Uuid;

/// Lines of the batch file: more than a worker's prefetch window (32), so some wait in the
/// broker and some in the worker's hand when the signal comes.
const LINES: usize = 48;
/// The worker's grace period; the pass in progress ends well within it.
const WORKER_GRACE: &str = "30";
/// The API's: long enough for a second worker to load its engine and answer the sync request.
const API_GRACE: &str = "90";
/// Bulk jobs per pass stay few (three or four of these lines), so the batch takes many passes.
const BULK_TOKENS: &str = "64";
/// A hang guard, not a speed limit: a role that has not started within it is broken.
const START: Duration = Duration::from_secs(180);

struct Deployment {
    namespace: String,
    /// A database of its own: the shared one may hold other branches' migrations.
    database_url: String,
    key: String,
    port: u16,
    dir: PathBuf,
    spawned: usize,
}

impl Deployment {
    fn spawn(&mut self, role: &str, grace: &str, extra: &[&str]) -> Proc {
        self.spawned += 1;
        let mut args: Vec<String> = [
            role,
            "--model",
            SMOL,
            "--namespace",
            &self.namespace,
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--api-keys",
            &format!("{}={}", self.key, self.namespace),
            "--shutdown-grace",
            grace,
            // Every job through the shared queue, where the test can look at what came back.
            "--locality",
            "false",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = [
            ("AMQP_URL", amqp_url()),
            ("REDIS_URL", redis_url()),
            ("DATABASE_URL", self.database_url.clone()),
            ("RUST_LOG", "info".to_string()),
        ];
        let log = self.dir.join(format!("{role}-{}.log", self.spawned));
        Proc::spawn(Path::new(env!("CARGO_BIN_EXE_scorer")), &args, &env, &log)
    }

    fn worker(&mut self) -> Proc {
        self.spawn(
            "worker",
            WORKER_GRACE,
            &["--max-bulk-batch-tokens", BULK_TOKENS],
        )
    }
}

/// (status, attempts) of every job of the batch.
async fn rows(pool: &sqlx::PgPool, batch: Uuid) -> Vec<(Uuid, String, i32)> {
    sqlx::query_as("SELECT id, status, attempts FROM jobs WHERE batch_id = $1 ORDER BY id")
        .bind(batch)
        .fetch_all(pool)
        .await
        .expect("audit rows")
}

async fn count(pool: &sqlx::PgPool, batch: Uuid, status: &str) -> usize {
    rows(pool, batch)
        .await
        .iter()
        .filter(|(_, s, _)| s == status)
        .count()
}

/// Takes every message waiting in the model's shared queue (until none comes for a while) and
/// returns (job id, redelivered) of each; closing the consumer puts them back.
async fn waiting(queue: &AmqpQueue) -> Vec<(Option<Uuid>, bool)> {
    let mut consumer = queue.consume(SMOL, 100).await.expect("consume");
    let mut seen = Vec::new();
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        let d = next.expect("consumer works").expect("consumer open");
        seen.push((d.job_id, d.redelivered));
    }
    consumer.close().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_worker_and_the_api() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("shutdown"));
    std::fs::create_dir_all(&dir).expect("log dir");
    let namespace = unique("shutdown");
    let admin = sqlx::PgPool::connect(&database_url()).await.expect("pg");
    let db = namespace.replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create the test database");
    let mut d = Deployment {
        database_url: with_database(&database_url(), &db),
        namespace,
        key: unique("key"),
        port: free_port(),
        dir,
        spawned: 0,
    };
    let pool = sqlx::PgPool::connect(&d.database_url).await.expect("pg");
    let queue = AmqpQueue::connect(
        &amqp_url(),
        AmqpTopology {
            prefix: d.namespace.clone(),
        },
    )
    .await
    .expect("RabbitMQ reachable");

    let mut api = d.spawn("api", API_GRACE, &[]);
    let mut worker = d.worker();
    wait_port(d.port, true, START, "scorer api").await;
    worker.wait_log("worker started", START).await;
    let caller = Caller {
        base: format!("http://127.0.0.1:{}", d.port),
        http: reqwest::Client::new(),
        key: Some(d.key.clone()),
    };
    let lines: Vec<Value> = (0..LINES)
        .map(|i| json!({"custom_id": format!("line-{i}"), "body": body(&format!(" item {i}"))}))
        .collect();
    let (status, batch) = caller.upload(jsonl(&lines)).await;
    assert!(status.is_success(), "{status} {batch}");
    let batch = Uuid::parse_str(batch["id"].as_str().expect("batch id")).expect("uuid");

    // The signal comes while the worker is busy with the batch: its first jobs are done.
    while count(&pool, batch, "succeeded").await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.terminate();
    let exit = worker
        .wait_exit(Duration::from_secs(
            WORKER_GRACE.parse::<u64>().expect("grace") + 15,
        ))
        .await;
    assert!(exit.success(), "worker exit {exit}:\n{}", log_of(&worker));

    // The pass it was running was stored: no job is left running. Nothing started was given up.
    let after = rows(&pool, batch).await;
    assert_eq!(after.len(), LINES, "one audit row per line");
    for (id, status, attempts) in &after {
        match status.as_str() {
            "succeeded" => assert_eq!(*attempts, 1, "job {id} started once"),
            "queued" => assert_eq!(*attempts, 0, "job {id} never started"),
            other => panic!("job {id} is {other} after the shutdown"),
        }
    }
    let queued: HashSet<Uuid> = after
        .iter()
        .filter(|(_, s, _)| s == "queued")
        .map(|(id, _, _)| *id)
        .collect();
    assert!(
        !queued.is_empty(),
        "the batch finished before the signal; nothing was left to hand back"
    );
    // Every job not run is back in the queue exactly once, and none is marked redelivered:
    // what the worker held unstarted went back as new messages.
    let back = waiting(&queue).await;
    let ids: Vec<Uuid> = back.iter().filter_map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), back.len(), "every message names its job");
    assert_eq!(ids.len(), queued.len(), "each unfinished job queued once");
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), queued);
    assert!(
        back.iter().all(|(_, redelivered)| !redelivered),
        "no message was redelivered because of the shutdown: {back:?}"
    );

    // The API, with a sync request waiting and no worker to run it.
    let request = {
        let caller = Caller {
            http: reqwest::Client::new(),
            ..caller
        };
        let score = json!({
            "query": "Is the following a fruit? Answer yes or no.",
            "items": [" apple"],
            "label_token_ids": [SMOL_YES, SMOL_NO],
            "apply_softmax": true
        });
        tokio::spawn(async move {
            caller
                .json(
                    caller
                        .req(reqwest::Method::POST, "/v1/score")
                        .header("x-request-timeout", "120")
                        .json(&score),
                )
                .await
        })
    };
    while !sync_queued(&pool, &d.namespace).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.terminate();
    // It stops accepting at once, while the request still waits.
    wait_port(
        d.port,
        false,
        Duration::from_secs(10),
        "scorer api after SIGTERM",
    )
    .await;
    assert!(!request.is_finished(), "the sync request is still waiting");
    assert!(!port_open(d.port));
    let mut second = d.worker();
    let (status, answer) = request.await.expect("request task");
    assert_eq!(status, StatusCode::OK, "{answer}\n{}", log_of(&api));
    assert_eq!(
        answer["scores"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    let exit = api
        .wait_exit(Duration::from_secs(
            API_GRACE.parse::<u64>().expect("grace") + 15,
        ))
        .await;
    assert!(exit.success(), "api exit {exit}:\n{}", log_of(&api));

    // The second worker runs the rest: every job ends once, started once.
    second.wait_log("worker started", START).await;
    while count(&pool, batch, "succeeded").await < LINES {
        assert!(
            second.child.try_wait().expect("try_wait").is_none(),
            "second worker exited:\n{}",
            log_of(&second)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, status, attempts) in rows(&pool, batch).await {
        assert_eq!((status.as_str(), attempts), ("succeeded", 1), "job {id}");
    }
    second.terminate();
    let exit = second.wait_exit(Duration::from_secs(45)).await;
    assert!(exit.success(), "second worker exit {exit}");
    queue.delete_model(SMOL).await.expect("cleanup");
    queue.delete_exchanges().await.expect("cleanup");
}

/// Whether the tenant's sync job has been accepted (it waits in the queue).
async fn sync_queued(pool: &sqlx::PgPool, tenant: &str) -> bool {
    let found: Option<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM jobs WHERE tenant = $1 AND kind = 'sync' AND status = 'queued'",
    )
    .bind(tenant)
    .fetch_optional(pool)
    .await
    .expect("sync row");
    found.is_some()
}

fn log_of(p: &Proc) -> String {
    scorer_testkit::process::log_tail(&p.log)
}
