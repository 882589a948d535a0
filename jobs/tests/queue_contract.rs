//! One contract for every `JobQueue`: each check runs against RabbitMQ with classic queues, with
//! quorum queues, and against the in-process queue. Priorities are the one difference: quorum
//! queues (RabbitMQ 3.10) deliver first in, first out (`amqp/kind.rs`). Then what only quorum
//! queues do: the delivery limit, and refusing to redeclare a queue as the other type.

mod common;

use std::time::Duration;

use common::{amqp_url, envelope, unique};
use scorer_jobs::{
    AmqpQueue, AmqpTopology, JobConsumer, JobQueue, MemoryQueue, QueueType, StoreError,
};
use scorer_protocol::job::JobPriority;

/// Long enough for a broker to push a message that is there; a delivery that does not come
/// within it is taken as "none available".
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

async fn roundtrip(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let env = envelope(model, JobPriority::Async, vec![1, 2, 3]);
    q.publish(&env).await.expect("publish");
    let mut c = q.consume(model, 4).await.expect("consume");
    let d = next(&mut c).await;
    assert_eq!(d.envelope.as_ref().expect("decodes"), &env);
    assert_eq!(d.job_id, Some(env.job_id));
    assert!(!d.redelivered);
    d.acker.ack().await.expect("ack");
    nothing_more(&mut c).await;
    c.close().await;
}

async fn priority_order(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let bulk = envelope(model, JobPriority::Bulk, vec![1]);
    let asynchronous = envelope(model, JobPriority::Async, vec![2]);
    let sync = envelope(model, JobPriority::Sync, vec![3]);
    for e in [&bulk, &asynchronous, &sync] {
        q.publish(e).await.expect("publish");
    }
    let mut c = q.consume(model, 1).await.expect("consume");
    for expected in [&sync, &asynchronous, &bulk] {
        let d = next(&mut c).await;
        assert_eq!(d.job_id, Some(expected.job_id), "sync > async > bulk");
        d.acker.ack().await.expect("ack");
    }
    c.close().await;
}

/// Quorum queues have no priorities before RabbitMQ 4.0: the same three come in publication
/// order (the worker still picks each batch by priority from what it holds).
async fn first_in_first_out(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let bulk = envelope(model, JobPriority::Bulk, vec![1]);
    let asynchronous = envelope(model, JobPriority::Async, vec![2]);
    let sync = envelope(model, JobPriority::Sync, vec![3]);
    for e in [&bulk, &asynchronous, &sync] {
        q.publish(e).await.expect("publish");
    }
    let mut c = q.consume(model, 1).await.expect("consume");
    for expected in [&bulk, &asynchronous, &sync] {
        let d = next(&mut c).await;
        assert_eq!(d.job_id, Some(expected.job_id), "publication order");
        d.acker.ack().await.expect("ack");
    }
    c.close().await;
}

/// A worker shutting down stops its consumer and gives back what it took but never started:
/// the messages come back unmarked, as if never delivered.
async fn stop_and_give_back(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let jobs: Vec<_> = (0..3)
        .map(|t| envelope(model, JobPriority::Async, vec![t]))
        .collect();
    for e in &jobs {
        q.publish(e).await.expect("publish");
    }
    let mut c = q.consume(model, 3).await.expect("consume");
    let first = next(&mut c).await;
    let mut in_hand = vec![first];
    in_hand.extend(c.stop().await);
    assert!(
        c.next().await.expect("consumer works").is_none(),
        "a stopped consumer delivers nothing more"
    );
    for d in &in_hand {
        d.acker.give_back().await.expect("give back");
    }
    c.close().await;
    let mut again = q.consume(model, 3).await.expect("consume");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..jobs.len() {
        let d = next(&mut again).await;
        assert!(!d.redelivered, "given back unmarked: {d:?}");
        assert!(seen.insert(d.job_id.expect("id")), "delivered twice: {d:?}");
        d.acker.ack().await.expect("ack");
    }
    nothing_more(&mut again).await;
    again.close().await;
    let want: std::collections::HashSet<_> = jobs.iter().map(|e| e.job_id).collect();
    assert_eq!(seen, want);
}

async fn requeue_redelivers(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let env = envelope(model, JobPriority::Async, vec![7]);
    q.publish(&env).await.expect("publish");
    let mut c = q.consume(model, 1).await.expect("consume");
    let first = next(&mut c).await;
    assert!(!first.redelivered);
    first.acker.requeue().await.expect("requeue");
    let again = next(&mut c).await;
    assert_eq!(again.job_id, Some(env.job_id));
    assert!(again.redelivered);
    again.acker.ack().await.expect("ack");
    c.close().await;
}

/// A consumer that disappears holding an unacknowledged message (a crashed worker) loses nothing.
async fn dropped_consumer_redelivers(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let env = envelope(model, JobPriority::Async, vec![8]);
    q.publish(&env).await.expect("publish");
    let mut crashed = q.consume(model, 1).await.expect("consume");
    let d = next(&mut crashed).await;
    assert_eq!(d.job_id, Some(env.job_id));
    drop(d);
    drop(crashed);
    let mut c = q.consume(model, 1).await.expect("consume");
    let again = next(&mut c).await;
    assert_eq!(again.envelope.as_ref().expect("decodes"), &env);
    assert!(again.redelivered);
    again.acker.ack().await.expect("ack");
    c.close().await;
}

async fn acked_is_gone(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    q.publish(&envelope(model, JobPriority::Async, vec![9]))
        .await
        .expect("publish");
    let mut c = q.consume(model, 1).await.expect("consume");
    next(&mut c).await.acker.ack().await.expect("ack");
    c.close().await;
    let mut c = q.consume(model, 1).await.expect("consume");
    nothing_more(&mut c).await;
    c.close().await;
    assert_eq!(q.depth(model).await.expect("depth"), 0);
}

async fn dead_letter_and_poison(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let env = envelope(model, JobPriority::Async, vec![10]);
    q.publish(&env).await.expect("publish");
    let poison_id = uuid::Uuid::new_v4();
    q.publish_raw(
        model,
        Some(poison_id),
        JobPriority::Async,
        b"\xc1 not msgpack".to_vec(),
    )
    .await
    .expect("publish raw");
    let mut c = q.consume(model, 2).await.expect("consume");
    let good = next(&mut c).await;
    assert_eq!(good.job_id, Some(env.job_id));
    good.acker.dead_letter().await.expect("dead-letter");
    let poison = next(&mut c).await;
    assert_eq!(
        poison.job_id,
        Some(poison_id),
        "the id travels outside the body"
    );
    assert!(poison.envelope.is_err(), "garbage does not decode");
    poison.acker.dead_letter().await.expect("dead-letter");
    nothing_more(&mut c).await;
    c.close().await;

    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while dead.len() < 2 && tokio::time::Instant::now() < deadline {
        match q.pop_dead_letter(model).await.expect("pop") {
            Some(d) => dead.push(d),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(dead.len(), 2, "both messages reached the dead-letter queue");
    assert_eq!(dead[0].job_id, Some(env.job_id));
    assert_eq!(dead[1].job_id, Some(poison_id));
    assert_eq!(dead[1].body, b"\xc1 not msgpack");
    assert!(q.pop_dead_letter(model).await.expect("pop").is_none());
    assert_eq!(q.depth(model).await.expect("depth"), 0);
}

async fn prefetch_bounds_in_flight(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    let a = envelope(model, JobPriority::Async, vec![1]);
    let b = envelope(model, JobPriority::Async, vec![2]);
    q.publish(&a).await.expect("publish");
    q.publish(&b).await.expect("publish");
    let mut c = q.consume(model, 1).await.expect("consume");
    let first = next(&mut c).await;
    assert_eq!(first.job_id, Some(a.job_id));
    nothing_more(&mut c).await;
    first.acker.ack().await.expect("ack");
    let second = next(&mut c).await;
    assert_eq!(second.job_id, Some(b.job_id));
    second.acker.ack().await.expect("ack");
    c.close().await;
}

async fn depth_counts_waiting(q: &dyn JobQueue, model: &str) {
    q.declare(model).await.expect("declare");
    assert_eq!(q.depth(model).await.expect("depth"), 0);
    for t in 0..3 {
        q.publish(&envelope(model, JobPriority::Bulk, vec![t]))
            .await
            .expect("publish");
    }
    assert_eq!(q.depth(model).await.expect("depth"), 3);
    q.ping().await.expect("ping");
}

async fn amqp(queue_type: QueueType, delivery_limit: u32) -> AmqpQueue {
    AmqpQueue::connect(
        &amqp_url(),
        AmqpTopology {
            prefix: unique("test"),
        },
    )
    .await
    .expect("RabbitMQ reachable")
    .with_queue_type(queue_type, delivery_limit)
}

async fn cleanup(q: &AmqpQueue, model: &str) {
    q.delete_model(model).await.expect("cleanup");
    q.delete_exchanges().await.expect("cleanup");
}

/// Runs one contract check against every implementation, each in its own namespace.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod classic {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let q = amqp(QueueType::Classic, scorer_jobs::DEFAULT_DELIVERY_LIMIT).await;
                    let model = unique("model");
                    super::$name(&q, &model).await;
                    cleanup(&q, &model).await;
                }
            )*
        }
        mod quorum {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let q = amqp(QueueType::Quorum, scorer_jobs::DEFAULT_DELIVERY_LIMIT).await;
                    let model = unique("model");
                    super::$name(&q, &model).await;
                    cleanup(&q, &model).await;
                }
            )*
        }
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&MemoryQueue::new(), &unique("model")).await;
                }
            )*
        }
    };
}

contract!(
    roundtrip,
    requeue_redelivers,
    dropped_consumer_redelivers,
    acked_is_gone,
    dead_letter_and_poison,
    prefetch_bounds_in_flight,
    depth_counts_waiting,
    stop_and_give_back,
);

#[tokio::test]
async fn classic_priority_order() {
    let q = amqp(QueueType::Classic, scorer_jobs::DEFAULT_DELIVERY_LIMIT).await;
    let model = unique("model");
    priority_order(&q, &model).await;
    cleanup(&q, &model).await;
}

#[tokio::test]
async fn memory_priority_order() {
    priority_order(&MemoryQueue::new(), &unique("model")).await;
}

#[tokio::test]
async fn quorum_first_in_first_out() {
    let q = amqp(QueueType::Quorum, scorer_jobs::DEFAULT_DELIVERY_LIMIT).await;
    let model = unique("model");
    first_in_first_out(&q, &model).await;
    cleanup(&q, &model).await;
}

/// A message returned more often than the delivery limit (a worker that keeps crashing on it
/// before it can fail the job) lands in the dead-letter queue; giving one back on shutdown
/// does not count.
#[tokio::test]
async fn quorum_delivery_limit_dead_letters() {
    const LIMIT: u32 = 2;
    let q = amqp(QueueType::Quorum, LIMIT).await;
    let model = unique("model");
    q.declare(&model).await.expect("declare");
    let env = envelope(&model, JobPriority::Async, vec![11]);
    q.publish(&env).await.expect("publish");
    let mut c = q.consume(&model, 1).await.expect("consume");
    // Handed back on shutdown more often than the limit: still delivered.
    for _ in 0..=LIMIT {
        let d = next(&mut c).await;
        assert_eq!(d.job_id, Some(env.job_id));
        assert!(!d.redelivered);
        d.acker.give_back().await.expect("give back");
    }
    // Returned: the first delivery and `LIMIT` more, then the broker dead-letters it.
    let mut deliveries = 0;
    while let Ok(got) = tokio::time::timeout(QUIET * 3, c.next()).await {
        let d = got.expect("consumer works").expect("consumer open");
        assert_eq!(d.job_id, Some(env.job_id));
        deliveries += 1;
        d.acker.requeue().await.expect("requeue");
    }
    assert_eq!(
        deliveries,
        LIMIT + 1,
        "delivered once plus once per allowed return"
    );
    c.close().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let dead = loop {
        if let Some(d) = q.pop_dead_letter(&model).await.expect("pop") {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.job_id, Some(env.job_id));
    assert_eq!(q.depth(&model).await.expect("depth"), 0);
    cleanup(&q, &model).await;
}

/// A queue cannot change type in place: declaring it as the other type fails with an error that
/// names the queue and the way out, whichever type came first.
#[tokio::test]
async fn redeclaring_as_the_other_type_names_the_fix() {
    for (first, then) in [
        (QueueType::Classic, QueueType::Quorum),
        (QueueType::Quorum, QueueType::Classic),
    ] {
        let existing = amqp(first, scorer_jobs::DEFAULT_DELIVERY_LIMIT).await;
        let model = unique("model");
        existing.declare(&model).await.expect("declare");
        let other = AmqpQueue::connect(&amqp_url(), existing.topology().clone())
            .await
            .expect("RabbitMQ reachable")
            .with_queue_type(then, scorer_jobs::DEFAULT_DELIVERY_LIMIT);
        let err = other.declare(&model).await.expect_err("other type refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Misconfigured { .. }), "{text}");
        assert!(
            text.contains(&existing.topology().queue(&model))
                || text.contains(&existing.topology().dead_letter_queue(&model)),
            "{text}"
        );
        assert!(
            text.contains("--queue-type") && text.contains("rabbitmqctl delete_queue"),
            "{text}"
        );
        // The deployment as it was still works.
        existing.declare(&model).await.expect("declare");
        cleanup(&existing, &model).await;
    }
}
