//! Locality across workers, end to end on RabbitMQ, Redis and Postgres with two in-process
//! workers sharing one engine (SmolLM2): jobs that share a prompt prefix run on the worker
//! rendezvous hashing picks for their key; when that worker dies holding them, they run on the
//! other one and none is lost. Embedded mode (one worker, no worker queues) is unaffected.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Backing, Harness};
use reqwest::StatusCode;
use scorer_api::rendezvous;
use scorer_protocol::job::JobStatus;
use serde_json::{Value, json};

/// A query long enough (well over 32 tokens) for its jobs to carry a locality key.
fn query(topic: &str) -> String {
    format!(
        "You are a careful shop assistant for the {topic} department of a large store. Read the \
         product title that follows and decide whether it belongs in the {topic} department. \
         Answer with a single word, yes or no, and nothing else. Product title:"
    )
}

fn body(topic: &str, items: &[&str]) -> Value {
    json!({
        "query": query(topic),
        "items": items,
        "label_token_ids": [10539, 5230],
        "apply_softmax": true
    })
}

fn key_of(h: &Harness, body: &Value) -> u64 {
    h.locality_key(body).expect("a long shared query has a key")
}

const ITEMS: [&str; 3] = [" a kettle", " a pair of socks", " a garden hose"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_sharing_a_prefix_run_on_one_worker() {
    let mut h = Harness::start(Backing::Real, |c| {
        // Long enough that a busy worker's queue never spills into the shared one here.
        c.locality.worker_queue_ttl = Duration::from_secs(120);
        c.locality.refresh = Duration::from_millis(100);
    })
    .await;
    h.start_worker();
    h.start_worker();
    let live = h.wait_live(2, Duration::from_secs(20)).await;

    let topics = [
        "kitchen", "clothing", "garden", "toys", "books", "music", "sports", "tools",
    ];
    let mut expected_homes = HashSet::new();
    let mut jobs = Vec::new();
    for topic in topics {
        let key = key_of(&h, &body(topic, &ITEMS));
        let home = rendezvous(key, &live).expect("a live worker").to_string();
        expected_homes.insert(home.clone());
        // Several jobs per prefix, with other items: the key is the shared query alone.
        for items in [&ITEMS[..], &ITEMS[..1], &ITEMS[1..]] {
            let b = body(topic, items);
            assert_eq!(key_of(&h, &b), key, "items do not change the key");
            jobs.push((topic, home.clone(), h.submit(&b).await));
        }
    }
    assert_eq!(
        expected_homes.len(),
        2,
        "eight prefixes spread over both workers"
    );
    // A short query has no key: it goes to the shared queue and runs wherever.
    let unkeyed = h.submit(&common::score_body()).await;

    for (topic, home, id) in jobs {
        let (worker, attempts) = h.ran_on(id).await;
        assert_eq!(
            worker, home,
            "a {topic} job ran away from its prefix's worker"
        );
        assert_eq!(attempts, 1);
    }
    h.ran_on(unkeyed).await;

    let (status, _, metrics) = h.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().expect("text").to_string();
    assert!(
        text.contains("scorer_jobs_routed_total{route=\"worker\"}")
            && text.contains("scorer_jobs_routed_total{route=\"shared\"}"),
        "routing counters exported"
    );
    h.finish().await;
}

/// The worker that owns a prefix is killed while it holds that prefix's jobs (running and
/// prefetched, none acknowledged): they expire out of its queue into the shared one and the
/// other worker runs every one of them. New jobs of that prefix go straight to the survivor
/// once the API sees the death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_finish_on_the_other_worker() {
    let mut h = Harness::start(Backing::Real, |c| {
        c.locality.worker_queue_ttl = Duration::from_millis(1_000);
        c.locality.refresh = Duration::from_millis(100);
        // Small batches, so the owner is still busy (holding unacknowledged jobs) when killed.
        c.worker.max_batch_tokens = 512;
    })
    .await;
    h.start_worker();
    h.start_worker();
    let live = h.wait_live(2, Duration::from_secs(20)).await;
    let key = key_of(&h, &body("kitchen", &ITEMS));
    let owner = rendezvous(key, &live).expect("live").to_string();
    let (owner_index, survivor) = if owner == h.worker_id(0) {
        (0, h.worker_id(1).to_string())
    } else {
        (1, h.worker_id(0).to_string())
    };

    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(h.submit(&body("kitchen", &ITEMS)).await);
    }
    // Kill the owner as soon as it has started one of them (it holds all 12 by then: they fit
    // its prefetch window).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    'started: loop {
        for id in &ids {
            let row = h.stores.audit.get(*id).await.expect("audit").expect("row");
            if row.status != JobStatus::Queued {
                assert_eq!(row.worker.as_deref(), Some(owner.as_str()));
                break 'started;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the owner never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = std::time::Instant::now();
    h.kill_worker(owner_index).await;
    // More of the same prefix after the death: first still steered to the dead worker's queue
    // (its heartbeat is fresh for a moment), later to the survivor.
    for _ in 0..3 {
        ids.push(h.submit(&body("kitchen", &ITEMS)).await);
    }

    let mut on_survivor = 0;
    for id in &ids {
        let (worker, _) = h.ran_on(*id).await;
        if worker == survivor {
            on_survivor += 1;
        } else {
            assert_eq!(worker, owner);
        }
    }
    println!(
        "{} jobs all succeeded, {on_survivor} on the survivor, {:?} after the kill",
        ids.len(),
        killed_at.elapsed()
    );
    assert!(
        on_survivor >= 4,
        "the dead owner's unfinished jobs ran on the survivor"
    );
    h.finish().await;
}

/// Embedded mode: the in-process queue has no worker queues, so a keyed job simply goes to the
/// one shared queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_runs_keyed_jobs() {
    let mut h = Harness::start(Backing::InProcess, |_| {}).await;
    h.start_worker();
    let b = body("kitchen", &ITEMS);
    key_of(&h, &b);
    let (status, _, out) = h.post("/v1/score", &b).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["scores"].as_array().map(Vec::len), Some(3));
    h.finish().await;
}
