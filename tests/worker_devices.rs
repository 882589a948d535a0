//! `scorer worker --devices`: the real binary over RabbitMQ, Redis and Postgres, on the CPU
//! plugin made to expose two devices. One process registers one live worker per device, each
//! with its own queue: jobs whose prefix the API steers to either device run there and score as
//! the engine does directly. SIGTERM drains both and takes both out of the live set. A device
//! the plugin lacks, a device listed twice, and `--device` with `--devices` are refused.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scorer_api::rendezvous;
use scorer_jobs::{AmqpQueue, AmqpTopology};
use scorer_testkit::process::{log_tail, with_database};
use scorer_testkit::{
    Backing, Harness, MODEL, amqp_url, assert_same_scores, database_url, direct, redis_url,
};
use serde_json::{Value, json};

const TWO_DEVICES: &str = "cpu_device_count:int=2";

/// A `scorer` child, SIGKILLed when dropped so a failing test leaves nothing behind.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn worker(namespace: &str, database_url: &str, devices: &str) -> Proc {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let log = dir.join(format!("{namespace}-worker.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_scorer"))
        .args(["worker", "--model", MODEL, "--namespace", namespace])
        .args(["--pjrt-option", TWO_DEVICES, "--devices", devices])
        // Longer than any pass here: a steered job never spills to the other device.
        .args(["--worker-queue-ttl-ms", "120000"])
        .env("AMQP_URL", amqp_url())
        .env("REDIS_URL", redis_url())
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn scorer worker");
    Proc { child, log }
}

/// A query long enough (over 32 tokens) for its jobs to carry a locality key.
fn body(aisle: usize) -> Value {
    json!({
        "query": format!(
            "You are a careful shop assistant for aisle {aisle} of a large store. Read the \
             product title that follows and decide whether it belongs in aisle {aisle}. Answer \
             with a single word, yes or no, and nothing else. Product title:"),
        "items": [" a kettle", " a pair of socks"],
        "label_token_ids": [10539, 5230],
        "apply_softmax": true
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_all_runs_one_worker_per_device() {
    // A database of its own: a schema migrated by another checkout's newer migrations cannot
    // stop this one from starting.
    let db = format!(
        "devices_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url())
        .await
        .expect("postgres");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create the test database");
    let db_url = with_database(&database_url(), &db);
    let h = Harness::start(Backing::Real, |c| {
        c.locality.refresh = Duration::from_millis(100);
        c.stores.database_url = Some(db_url.clone());
    })
    .await;
    let mut child = worker(&h.config.namespace, &db_url, "all");
    // Loading the model and uploading it twice takes a while on a busy 2-core machine.
    let mut live = h.wait_live(2, Duration::from_secs(300)).await;
    live.sort();
    assert!(
        live[0].ends_with("-dev0") && live[1].ends_with("-dev1"),
        "one worker per device: {live:?}"
    );
    assert_eq!(
        live[0].trim_end_matches("-dev0"),
        live[1].trim_end_matches("-dev1"),
        "both from one process"
    );

    // Prefixes until each device is the home of one (rendezvous over the two ids).
    let mut jobs = Vec::new();
    let mut homes = std::collections::HashSet::new();
    for aisle in 0..64 {
        let b = body(aisle);
        let key = h.locality_key(&b).expect("a long query has a key");
        let home = rendezvous(key, &live).expect("a live worker").to_string();
        if homes.insert(home.clone()) {
            jobs.push((b.clone(), home, h.submit(&b).await));
        }
        if homes.len() == 2 {
            break;
        }
    }
    assert_eq!(homes.len(), 2, "64 prefixes all hashed to one worker");
    for (b, home, id) in &jobs {
        let (ran_on, attempts) = h.ran_on(*id).await;
        assert_eq!(&ran_on, home, "a job ran away from its device's worker");
        assert_eq!(attempts, 1);
        let (status, _, job) = h.get(&format!("/v1/score/jobs/{id}")).await;
        assert!(status.is_success(), "{job}");
        assert_same_scores(&job["result"], &direct(&h.engine, b).await);
    }

    // SIGTERM: both workers drain and leave the live set; the process exits cleanly.
    let pid = child.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "worker still running after SIGTERM:\n{}",
            log_tail(&child.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}:\n{}", log_tail(&child.log));
    let left = h.live_workers().await;
    assert!(left.is_empty(), "still live after shutdown: {left:?}");

    let q = AmqpQueue::connect(
        &amqp_url(),
        AmqpTopology {
            prefix: h.config.namespace.clone(),
        },
    )
    .await
    .expect("connect for cleanup");
    for id in &live {
        q.delete_worker_queue(MODEL, id)
            .await
            .expect("cleanup worker queue");
    }
    h.finish().await;
}

/// Runs `scorer` with `args` to its end; returns its exit success and stderr.
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scorer"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run scorer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn devices_the_plugin_lacks_are_refused() {
    // Before any weight is read: the model is never looked at past its path.
    let score = [
        "score",
        "--model",
        MODEL,
        "--label",
        "1",
        "--pjrt-option",
        TWO_DEVICES,
    ];
    let (ok, err) = run(&[&score[..], &["--device", "5"][..]].concat());
    assert!(!ok);
    assert!(
        err.contains("device 5 does not exist (the plugin has 2 addressable devices: 0 to 1)"),
        "{err}"
    );
    let (ok, err) = run(&["worker", "--pjrt-option", TWO_DEVICES, "--devices", "0,0"]);
    assert!(!ok);
    assert!(err.contains("device 0 is listed twice"), "{err}");
    let (ok, err) = run(&["worker", "--devices", "all", "--device", "1"]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
}
