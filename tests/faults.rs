//! Fault injection on the distributed deployment: the real `scorer api` and two `scorer worker`
//! processes over the real RabbitMQ, Redis and PostgreSQL take 1,000 async jobs while workers
//! are SIGKILLed and restarted 20 times, RabbitMQ is restarted once, and Redis is flushed and
//! restarted once. Afterwards every job answered 202 has succeeded, has exactly one audit row,
//! can be fetched, and scores as the engine does with no service in between (within 1e-4).
//!
//! Alone in its binary on purpose: it restarts the broker and Redis, which would disturb any test
//! running beside it in the same process. docs/RELIABILITY.md records what it measured.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{SMOL, SMOL_NO, SMOL_YES};
use reqwest::StatusCode;
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_jobs::{AmqpQueue, AmqpTopology, JobQueue};
use scorer_testkit::process::{free_port, log_tail, port_open, wait_port, with_database};
use scorer_testkit::{
    amqp_url, assert_same_scores_of as assert_same_scores, database_url, redis_url,
};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const JOBS: usize = 1_000;
const KILLS: usize = 20;
const WORKERS: usize = 2;
/// Concurrent submitting clients.
const CLIENTS: usize = 8;
/// Submissions per second. Slower than the workers drain, so the faults land while jobs are
/// both arriving and running; fast enough that the whole test stays within a few minutes.
const RATE: f64 = 12.0;
/// Starts a job may have. A kill costs each job of the batch in hand one start, and a freshly
/// started worker takes the requeued jobs first, so one unlucky job can be in many killed batches
/// (8 starts were seen here). With the default of 3 it would fail "gave up after 3 attempts":
/// the attempt policy at work, not a loss. A kill costs a job at most one start, so `KILLS + 1`
/// starts cannot run out and the test checks loss and duplication alone.
const MAX_ATTEMPTS: usize = KILLS + 1;
/// Everything, start to finish; a hang fails the test instead of the CI job.
const DEADLINE: Duration = Duration::from_secs(600);
const TERMINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "expired"];

/// The distinct requests; job `i` sends `inputs()[i % len]`. Short prompts and one or two items
/// keep 1,000 jobs cheap on SmolLM2-135M.
fn inputs() -> Vec<Value> {
    const QUERIES: [&str; 4] = ["Fruit?", "Is it red?", "An animal?", "Edible?"];
    const WORDS: [&str; 12] = [
        " apple", " truck", " pear", " cat", " stone", " plum", " dog", " bread", " river",
        " cherry", " chair", " fox",
    ];
    (0..24)
        .map(|k| {
            let mut items = vec![WORDS[k % WORDS.len()]];
            if k % 3 == 0 {
                items.push(WORDS[(k + 5) % WORDS.len()]);
            }
            json!({
                "query": QUERIES[k % QUERIES.len()],
                "items": items,
                "label_token_ids": [SMOL_YES, SMOL_NO],
                "apply_softmax": true
            })
        })
        .collect()
}

/// Runs a service command, failing the test with its output if it fails.
async fn sh(program: &str, args: &[&str]) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `scorer` child process, SIGKILLed when dropped so a failing test leaves nothing behind.
struct Proc {
    child: Child,
    log: PathBuf,
    spawned: Instant,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Deployment {
    namespace: String,
    database_url: String,
    api_key: String,
    listen: String,
    dir: PathBuf,
    spawned: usize,
}

impl Deployment {
    fn spawn(&mut self, role: &str) -> Proc {
        self.spawned += 1;
        let log = self.dir.join(format!("{role}-{}.log", self.spawned));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_scorer"))
            .arg(role)
            .args(["--model", SMOL, "--namespace", &self.namespace])
            .args(["--listen", &self.listen])
            .args([
                "--api-keys",
                &format!("{}={}", self.api_key, self.namespace),
            ])
            .args(["--max-attempts", &MAX_ATTEMPTS.to_string()])
            .env("AMQP_URL", amqp_url())
            .env("REDIS_URL", redis_url())
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn scorer");
        Proc {
            child,
            log,
            spawned: Instant::now(),
        }
    }
}

/// Waits until a worker logs that it consumes; fails if it exits first.
async fn wait_worker_ready(w: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = w.child.try_wait().expect("try_wait") {
            panic!("worker exited on its own ({status}):\n{}", log_tail(&w.log));
        }
        if std::fs::read_to_string(&w.log)
            .unwrap_or_default()
            .contains("worker started")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "worker not ready in 180 s:\n{}",
            log_tail(&w.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Brings a stopped service back if the test fails while it is down: other tests on this
/// machine use the same RabbitMQ and Redis.
struct Restore {
    armed: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if !port_open(5672) {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "start_app"])
                .status();
        }
        let _ = Command::new("scripts/services.sh")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    }
}

enum Fault {
    KillWorker,
    RestartRabbitMq,
    RestartRedis,
}

#[derive(Debug, Default)]
struct FaultLog {
    kills: usize,
    rabbitmq_outage: Duration,
    redis_outage: Duration,
}

/// Removes this test's Redis keys (the rest of Redis belongs to other tests); returns how many.
async fn delete_keys(namespace: &str) -> usize {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let n: usize = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
            deleted += n;
        }
        if next == 0 {
            return deleted;
        }
        cursor = next;
    }
}

/// Runs the fault plan: each fault fires once `accepted` reaches its threshold, one at a time,
/// and every worker killed is restarted at once. The broker and Redis are restarted only while
/// both workers are up, so no worker has to start against a missing service.
async fn inject(
    mut deployment: Deployment,
    mut workers: Vec<Proc>,
    accepted: Arc<AtomicUsize>,
) -> (FaultLog, Vec<Proc>) {
    let mut plan: Vec<(usize, Fault)> = (0..KILLS)
        .map(|k| (20 + k * (JOBS - 100) / KILLS, Fault::KillWorker))
        .collect();
    plan.push((JOBS * 35 / 100 + 10, Fault::RestartRabbitMq));
    plan.push((JOBS * 70 / 100 + 10, Fault::RestartRedis));
    plan.sort_by_key(|(at, _)| *at);
    let mut log = FaultLog::default();
    for (at, fault) in plan {
        while accepted.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match fault {
            Fault::KillWorker => {
                // The longest-running worker: it is the one most surely busy with a batch.
                let victim = (0..workers.len())
                    .min_by_key(|&i| workers[i].spawned)
                    .expect("a worker");
                wait_worker_ready(&mut workers[victim]).await;
                // Vary where in its batch the kill lands.
                tokio::time::sleep(Duration::from_millis(100 * (log.kills as u64 % 7))).await;
                let w = &mut workers[victim];
                assert!(
                    w.child.try_wait().expect("try_wait").is_none(),
                    "worker exited on its own:\n{}",
                    log_tail(&w.log)
                );
                // `Child::kill` is SIGKILL: no drain, no goodbye to the broker.
                w.child.kill().expect("SIGKILL");
                w.child.wait().expect("reap");
                log.kills += 1;
                workers[victim] = deployment.spawn("worker");
            }
            Fault::RestartRabbitMq => {
                for w in &mut workers {
                    wait_worker_ready(w).await;
                }
                let mut restore = Restore { armed: true };
                let started = Instant::now();
                sh("rabbitmqctl", &["-q", "stop_app"]).await;
                wait_port(5672, false, Duration::from_secs(30), "rabbitmq stop").await;
                // Long enough for submissions to meet the outage.
                tokio::time::sleep(Duration::from_secs(2)).await;
                sh("rabbitmqctl", &["-q", "start_app"]).await;
                wait_port(5672, true, Duration::from_secs(120), "rabbitmq start").await;
                log.rabbitmq_outage = started.elapsed();
                restore.armed = false;
            }
            Fault::RestartRedis => {
                for w in &mut workers {
                    wait_worker_ready(w).await;
                }
                let mut restore = Restore { armed: true };
                let started = Instant::now();
                delete_keys(&deployment.namespace).await;
                // Nothing is persisted (`--save ""`), so a restart is a flush of everything;
                // `services.sh` starts it again with this machine kind's command.
                sh("redis-cli", &["shutdown", "nosave"]).await;
                wait_port(6379, false, Duration::from_secs(30), "redis stop").await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                sh("scripts/services.sh", &[]).await;
                wait_port(6379, true, Duration::from_secs(60), "redis start").await;
                log.redis_outage = started.elapsed();
                restore.armed = false;
            }
        }
    }
    (log, workers)
}

/// What one client saw: the jobs answered 202 (id, input index) and the 503s it retried.
#[derive(Default)]
struct Submitted {
    jobs: Vec<(Uuid, usize)>,
    unavailable: usize,
}

/// One client: takes job numbers from `next`, paced to `RATE` overall, and retries a 503 until
/// it is accepted. Anything else but 202 fails the test.
async fn client(
    http: reqwest::Client,
    base: String,
    key: String,
    inputs: Arc<Vec<Value>>,
    next: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    t0: tokio::time::Instant,
) -> Submitted {
    let mut seen = Submitted::default();
    loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= JOBS {
            return seen;
        }
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / RATE)).await;
        let input = i % inputs.len();
        let first_try = Instant::now();
        loop {
            let resp = http
                .post(format!("{base}/v1/score/jobs"))
                .bearer_auth(&key)
                .json(&inputs[input])
                .send()
                .await
                .unwrap_or_else(|e| panic!("job {i}: the API did not answer: {e}"));
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            match status {
                StatusCode::ACCEPTED => {
                    let id = body["id"].as_str().expect("job id");
                    seen.jobs.push((Uuid::parse_str(id).expect("uuid"), input));
                    accepted.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    seen.unavailable += 1;
                    assert!(
                        first_try.elapsed() < Duration::from_secs(120),
                        "job {i}: still 503 after 120 s: {body}"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => panic!("job {i}: unexpected {other}: {body}"),
            }
        }
    }
}

/// The engine's answer for each input, with no service and no fault in between.
fn reference_scores(inputs: &[Value]) -> Vec<Value> {
    let mut cfg = EngineConfig::new(common::model_path(SMOL), SMOL.to_string());
    cfg.compile_cache = Some(scorer_engine::home::executable_cache());
    let engine = Engine::load(cfg).expect("engine loads (run `scorer fetch` first)");
    inputs
        .iter()
        .map(|body| {
            let req = serde_json::from_value(body.clone()).expect("request");
            serde_json::to_value(engine.score(&req).expect("engine scores")).expect("json")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_lose_and_duplicate_nothing() {
    let began = Instant::now();
    for (port, name) in [(5432, "PostgreSQL"), (6379, "Redis"), (5672, "RabbitMQ")] {
        assert!(
            port_open(port),
            "{name} is not answering on {port}: run scripts/services.sh"
        );
    }
    let inputs = Arc::new(inputs());
    let reference = tokio::task::spawn_blocking({
        let inputs = inputs.clone();
        move || reference_scores(&inputs)
    });

    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let namespace = format!("faults-{tag}");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&namespace);
    std::fs::create_dir_all(&dir).expect("log dir");
    // A database of its own: its rows cannot meet other tests', and a schema migrated by another
    // checkout's newer migrations cannot stop this one from starting.
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url())
        .await
        .expect("postgres");
    let db = namespace.replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create the test database");
    let db_url = with_database(&database_url(), &db);
    let port = free_port();
    let mut deployment = Deployment {
        database_url: db_url.clone(),
        namespace: namespace.clone(),
        api_key: format!("key-{tag}"),
        listen: format!("127.0.0.1:{port}"),
        dir,
        spawned: 0,
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut api = deployment.spawn("api");
    let mut workers: Vec<Proc> = (0..WORKERS).map(|_| deployment.spawn("worker")).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let health_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = api.child.try_wait().expect("try_wait") {
            panic!("the API exited ({status}):\n{}", log_tail(&api.log));
        }
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < health_deadline,
            "the API did not come up:\n{}",
            log_tail(&api.log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in &mut workers {
        wait_worker_ready(w).await;
    }
    let started_after = began.elapsed();

    // Submit and inject at the same time.
    let run_started = Instant::now();
    let accepted = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = tokio::time::Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                http.clone(),
                base.clone(),
                deployment.api_key.clone(),
                inputs.clone(),
                next.clone(),
                accepted.clone(),
                t0,
            ))
        })
        .collect();
    let api_key = deployment.api_key.clone();
    let log_dir = deployment.dir.clone();
    let faults = tokio::spawn(inject(deployment, workers, accepted.clone()));
    let mut jobs: Vec<(Uuid, usize)> = Vec::with_capacity(JOBS);
    let mut unavailable = 0;
    for c in clients {
        let seen = tokio::time::timeout(DEADLINE.saturating_sub(began.elapsed()), c)
            .await
            .expect("submissions finish within the deadline")
            .expect("client task");
        jobs.extend(seen.jobs);
        unavailable += seen.unavailable;
    }
    let submitted_in = run_started.elapsed();
    let (fault_log, mut workers) =
        tokio::time::timeout(DEADLINE.saturating_sub(began.elapsed()), faults)
            .await
            .expect("the fault plan finishes within the deadline")
            .expect("fault task");
    assert_eq!(jobs.len(), JOBS, "every job was accepted in the end");
    assert_eq!(fault_log.kills, KILLS);

    // Every accepted job reaches a terminal state (Postgres is the record of truth).
    let pg = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .expect("postgres");
    let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
    let terminal: Vec<String> = TERMINAL.iter().map(|s| s.to_string()).collect();
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = ANY($2)")
                .bind(&ids)
                .bind(&terminal)
                .fetch_one(&pg)
                .await
                .expect("count terminal");
        if done as usize == JOBS {
            break;
        }
        for w in &mut workers {
            if let Some(status) = w.child.try_wait().expect("try_wait") {
                panic!("worker exited on its own ({status}):\n{}", log_tail(&w.log));
            }
        }
        assert!(
            began.elapsed() < DEADLINE,
            "{done} of {JOBS} jobs terminal at the deadline; logs in {}",
            log_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained_in = run_started.elapsed();

    // Exactly one audit row per accepted job, every one succeeded. Rows of the tenant that are
    // not accepted jobs can only be submissions answered 503 after their row was written.
    let rows: Vec<(Uuid, String, i32, Option<String>)> =
        sqlx::query_as("SELECT id, status, attempts, error FROM jobs WHERE tenant = $1")
            .bind(&namespace)
            .fetch_all(&pg)
            .await
            .expect("audit rows");
    let accepted_ids: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(accepted_ids.len(), JOBS, "202 answers carry distinct ids");
    let mut per_id: HashMap<Uuid, usize> = HashMap::new();
    let mut attempts: BTreeMap<i32, usize> = BTreeMap::new();
    let mut refused_rows = 0;
    for (id, status, tries, error) in &rows {
        *per_id.entry(*id).or_default() += 1;
        if accepted_ids.contains(id) {
            assert_eq!(status, "succeeded", "job {id}: {error:?}");
            *attempts.entry(*tries).or_default() += 1;
        } else {
            assert_eq!(status, "failed", "an unaccepted row {id}");
            assert!(
                error
                    .as_deref()
                    .unwrap_or("")
                    .contains("could not be queued"),
                "an unaccepted row {id} failed for another reason: {error:?}"
            );
            refused_rows += 1;
        }
    }
    for id in &ids {
        assert_eq!(per_id.get(id), Some(&1), "job {id}: one audit row");
    }
    assert!(
        refused_rows <= unavailable,
        "{refused_rows} refused rows for {unavailable} 503 answers"
    );

    // Every result can be fetched, and scores as the engine alone does.
    let reference = reference.await.expect("reference engine");
    let after_restart: usize = {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let mut cached = 0;
        for id in &ids {
            let exists: bool =
                redis::AsyncCommands::exists(&mut conn, format!("{namespace}:job:{id}"))
                    .await
                    .expect("exists");
            cached += usize::from(exists);
        }
        cached
    };
    let fetched = Arc::new(AtomicUsize::new(0));
    let chunks: Vec<Vec<(Uuid, usize)>> = jobs.chunks(JOBS / CLIENTS).map(<[_]>::to_vec).collect();
    let mut readers = Vec::new();
    for chunk in chunks {
        let (http, base, key, reference, fetched) = (
            http.clone(),
            base.clone(),
            api_key.clone(),
            reference.clone(),
            fetched.clone(),
        );
        readers.push(tokio::spawn(async move {
            for (id, input) in chunk {
                let resp = http
                    .get(format!("{base}/v1/score/jobs/{id}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .expect("GET job");
                assert_eq!(resp.status(), StatusCode::OK, "job {id}");
                let job: Value = resp.json().await.expect("job json");
                assert_eq!(job["status"], "succeeded", "{job}");
                assert_same_scores(&job["result"], &reference[input], &format!("job {id}"));
                fetched.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for r in readers {
        r.await.expect("reader");
    }
    assert_eq!(fetched.load(Ordering::SeqCst), JOBS);

    // Nothing left behind in the broker: no message waiting, none dead-lettered.
    let queue = AmqpQueue::connect(
        &amqp_url(),
        AmqpTopology {
            prefix: namespace.clone(),
        },
    )
    .await
    .expect("amqp");
    assert_eq!(queue.depth(SMOL).await.expect("depth"), 0, "queue drained");
    assert!(
        queue.pop_dead_letter(SMOL).await.expect("dlq").is_none(),
        "nothing dead-lettered"
    );

    let rerun = attempts
        .iter()
        .filter(|(a, _)| **a > 1)
        .map(|(_, n)| n)
        .sum::<usize>();
    eprintln!(
        "[faults] {JOBS} jobs accepted ({unavailable} answers 503 retried, {refused_rows} of them \
         after the audit row was written); {} worker SIGKILLs with restarts; RabbitMQ down {:.1} s; \
         Redis down {:.1} s; {rerun} jobs ran more than once, attempts per job {attempts:?}; \
         {} of {JOBS} results still in Redis, the rest read from Postgres; services up in {:.1} s, \
         submitted in {:.1} s, all terminal after {:.1} s, test {:.1} s",
        fault_log.kills,
        fault_log.rabbitmq_outage.as_secs_f64(),
        fault_log.redis_outage.as_secs_f64(),
        after_restart,
        started_after.as_secs_f64(),
        submitted_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );

    drop(workers);
    drop(api);
    queue.delete_model(SMOL).await.expect("cleanup queues");
    queue.delete_exchanges().await.expect("cleanup exchanges");
    delete_keys(&namespace).await;
    pg.close().await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop the test database");
}
