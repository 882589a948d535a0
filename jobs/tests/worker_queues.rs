//! Per-worker queues (locality routing) on the real RabbitMQ: a job published to a worker reaches
//! that worker; a dead worker's jobs, taken or not, reach the shared queue; a worker's explicit
//! dead-lettering still reaches the dead-letter queue; the same with quorum queues. And the
//! envelope change is compatible.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{amqp_url, envelope, unique};
use scorer_jobs::queue::{decode, encode};
use scorer_jobs::{AmqpQueue, AmqpTopology, JobConsumer, JobQueue, MemoryQueue, QueueType};
use scorer_protocol::job::{JobEnvelope, JobPriority};
use uuid::Uuid;

const QUIET: Duration = Duration::from_millis(400);
const PATIENCE: Duration = Duration::from_secs(10);

async fn next(consumer: &mut Box<dyn JobConsumer>) -> scorer_jobs::Delivery {
    tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consumer works")
        .expect("consumer open")
}

async fn nothing_more(consumer: &mut Box<dyn JobConsumer>) {
    if let Ok(got) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!("expected no delivery, got {got:?}");
    }
}

/// A broker namespace of its own, removed (with the worker queues named) at the end.
struct Broker {
    queue: AmqpQueue,
    model: String,
}

impl Broker {
    async fn new(ttl: Duration) -> Broker {
        Broker::of_type(ttl, QueueType::Classic).await
    }

    async fn of_type(ttl: Duration, queue_type: QueueType) -> Broker {
        let queue = AmqpQueue::connect(
            &amqp_url(),
            AmqpTopology {
                prefix: unique("test"),
            },
        )
        .await
        .expect("RabbitMQ reachable")
        .with_worker_queue_ttl(ttl)
        .with_queue_type(queue_type, scorer_jobs::DEFAULT_DELIVERY_LIMIT);
        let model = unique("model");
        queue.declare(&model).await.expect("declare");
        Broker { queue, model }
    }

    fn job(&self, token: u32) -> JobEnvelope {
        envelope(&self.model, JobPriority::Async, vec![token])
    }

    async fn cleanup(self, workers: &[&str]) {
        for w in workers {
            self.queue
                .delete_worker_queue(&self.model, w)
                .await
                .expect("cleanup");
        }
        self.queue.delete_model(&self.model).await.expect("cleanup");
        self.queue.delete_exchanges().await.expect("cleanup");
    }
}

#[tokio::test]
async fn a_job_published_to_a_worker_reaches_that_worker() {
    let b = Broker::new(Duration::from_secs(30)).await;
    assert!(b.queue.has_worker_queues());
    let mut a = b.queue.consume_as(&b.model, "a", 4).await.expect("consume");
    let mut c = b.queue.consume_as(&b.model, "c", 4).await.expect("consume");
    let (for_a, for_c) = (b.job(1), b.job(2));
    b.queue
        .publish_to_worker(&for_a, "a")
        .await
        .expect("publish");
    b.queue
        .publish_to_worker(&for_c, "c")
        .await
        .expect("publish");
    let got = next(&mut a).await;
    assert_eq!(got.envelope.as_ref().expect("decodes"), &for_a);
    got.acker.ack().await.expect("ack");
    let got = next(&mut c).await;
    assert_eq!(got.job_id, Some(for_c.job_id));
    got.acker.ack().await.expect("ack");
    nothing_more(&mut a).await;
    nothing_more(&mut c).await;

    // Shared jobs still reach a worker that also has its own queue.
    let shared = b.job(3);
    b.queue.publish(&shared).await.expect("publish");
    let got = tokio::select! {
        d = next(&mut a) => d,
        d = next(&mut c) => d,
    };
    assert_eq!(got.job_id, Some(shared.job_id));
    got.acker.ack().await.expect("ack");

    // A worker that never declared a queue cannot be published to: the caller falls back.
    let err = b
        .queue
        .publish_to_worker(&b.job(4), "nobody")
        .await
        .expect_err("no queue for that worker");
    assert!(err.to_string().contains("nobody"), "{err}");
    assert_eq!(b.queue.depth(&b.model).await.expect("depth"), 0);
    a.close().await;
    c.close().await;
    b.cleanup(&["a", "c"]).await;
}

/// A worker dies holding unacknowledged jobs from its queue, and more arrive for it afterwards:
/// all of them expire out of its queue into the shared one, where another worker runs them.
#[tokio::test]
async fn a_dead_workers_jobs_move_to_the_shared_queue() {
    dead_workers_jobs_move(QueueType::Classic).await;
}

#[tokio::test]
async fn quorum_a_dead_workers_jobs_move_to_the_shared_queue() {
    dead_workers_jobs_move(QueueType::Quorum).await;
}

async fn dead_workers_jobs_move(queue_type: QueueType) {
    let b = Broker::of_type(Duration::from_millis(500), queue_type).await;
    let mut dead = b
        .queue
        .consume_as(&b.model, "dead", 8)
        .await
        .expect("consume");
    let jobs: Vec<_> = (0..4).map(|t| b.job(t)).collect();
    for j in &jobs[..3] {
        b.queue.publish_to_worker(j, "dead").await.expect("publish");
    }
    // Taken, not acknowledged, then the worker vanishes (connection and all).
    let taken = next(&mut dead).await;
    drop(taken);
    drop(dead);
    // Its queue outlives it for a while; jobs steered there meanwhile are not lost either.
    b.queue
        .publish_to_worker(&jobs[3], "dead")
        .await
        .expect("publish");

    let started = std::time::Instant::now();
    let mut other = b
        .queue
        .consume_as(&b.model, "other", 8)
        .await
        .expect("consume");
    let mut seen = HashSet::new();
    while seen.len() < jobs.len() {
        let d = next(&mut other).await;
        let id = d.job_id.expect("id");
        assert!(seen.insert(id), "{id} delivered twice");
        d.envelope.as_ref().expect("body intact");
        d.acker.ack().await.expect("ack");
    }
    let want: HashSet<Uuid> = jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(seen, want);
    println!(
        "a dead worker's 4 jobs ran elsewhere after {:?} ({} queues, TTL 500 ms)",
        started.elapsed(),
        queue_type.as_str()
    );
    nothing_more(&mut other).await;
    other.close().await;
    b.cleanup(&["dead", "other"]).await;
}

/// Explicit dead-lettering from a worker queue goes to the dead-letter queue, not back to the
/// shared queue (which is where that queue's own dead-letter exchange leads); requeueing gives
/// the job back to the same worker while its TTL lasts.
#[tokio::test]
async fn dead_lettering_from_a_worker_queue_reaches_the_dead_letter_queue() {
    dead_lettering_from_a_worker_queue(QueueType::Classic).await;
}

#[tokio::test]
async fn quorum_dead_lettering_from_a_worker_queue_reaches_the_dead_letter_queue() {
    dead_lettering_from_a_worker_queue(QueueType::Quorum).await;
}

async fn dead_lettering_from_a_worker_queue(queue_type: QueueType) {
    let b = Broker::of_type(Duration::from_secs(30), queue_type).await;
    let mut w = b.queue.consume_as(&b.model, "w", 4).await.expect("consume");
    let job = b.job(5);
    b.queue.publish_to_worker(&job, "w").await.expect("publish");
    let first = next(&mut w).await;
    first.acker.requeue().await.expect("requeue");
    let again = next(&mut w).await;
    assert_eq!(again.job_id, Some(job.job_id));
    assert!(again.redelivered);
    again.acker.dead_letter().await.expect("dead-letter");
    nothing_more(&mut w).await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let dead = loop {
        if let Some(d) = b.queue.pop_dead_letter(&b.model).await.expect("pop") {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.job_id, Some(job.job_id));
    assert_eq!(decode(&dead.body).expect("decodes"), job);
    assert!(
        b.queue
            .pop_dead_letter(&b.model)
            .await
            .expect("pop")
            .is_none()
    );
    assert_eq!(b.queue.depth(&b.model).await.expect("depth"), 0);
    w.close().await;
    b.cleanup(&["w"]).await;
}

/// The in-process queue (embedded mode, one worker) has no worker queues: the same calls use the
/// shared queue.
#[tokio::test]
async fn the_in_process_queue_routes_everything_to_the_shared_queue() {
    let q = MemoryQueue::new();
    assert!(!q.has_worker_queues());
    let model = unique("model");
    let job = envelope(&model, JobPriority::Async, vec![1]);
    q.publish_to_worker(&job, "w").await.expect("publish");
    let mut c = q.consume_as(&model, "other", 1).await.expect("consume");
    assert_eq!(next(&mut c).await.job_id, Some(job.job_id));
}

/// Messages written before the envelope had a locality key still decode (as no key); a key
/// survives the round trip.
#[test]
fn envelopes_without_a_locality_key_decode() {
    #[derive(serde::Serialize)]
    struct OldEnvelope {
        job_id: Uuid,
        tenant: String,
        priority: JobPriority,
        deadline_ms: Option<i64>,
        model: String,
        prompts: Vec<Vec<u32>>,
        labels: Vec<Vec<u32>>,
        apply_softmax: bool,
        temperature: f64,
        attempt: u32,
        enqueued_at_ms: i64,
    }
    let mut new = envelope("m", JobPriority::Sync, vec![1, 2, 3]);
    let old = OldEnvelope {
        job_id: new.job_id,
        tenant: new.tenant.clone(),
        priority: new.priority,
        deadline_ms: new.deadline_ms,
        model: new.model.clone(),
        prompts: new.prompts.clone(),
        labels: new.labels.clone(),
        apply_softmax: new.apply_softmax,
        temperature: new.temperature,
        attempt: new.attempt,
        enqueued_at_ms: new.enqueued_at_ms,
    };
    let bytes = rmp_serde::to_vec_named(&old).expect("encode");
    assert_eq!(decode(&bytes).expect("old message decodes"), new);
    new.locality = Some(0xdead_beef_0123_4567);
    assert_eq!(
        decode(&encode(&new).expect("encode")).expect("decodes"),
        new
    );
}

/// A worker queue refuses messages beyond its length limit, so the publisher falls back to the
/// shared queue (where the queue bound sees them) instead of piling work on one worker.
#[tokio::test]
async fn a_full_worker_queue_refuses_more() {
    let b = Broker::new(Duration::from_secs(60)).await;
    // Declared by its consumer, then left without one.
    b.queue
        .consume_as(&b.model, "busy", 1)
        .await
        .expect("consume")
        .close()
        .await;
    let started = std::time::Instant::now();
    for t in 0..scorer_jobs::WORKER_QUEUE_MAX_LENGTH {
        b.queue
            .publish_to_worker(&b.job(t as u32), "busy")
            .await
            .expect("room left");
    }
    let err = b
        .queue
        .publish_to_worker(&b.job(0), "busy")
        .await
        .expect_err("full");
    assert!(err.to_string().contains("nack"), "{err}");
    println!(
        "{} confirmed publishes to one worker queue in {:?}",
        scorer_jobs::WORKER_QUEUE_MAX_LENGTH,
        started.elapsed()
    );
    b.cleanup(&["busy"]).await;
}
