//! One contract for every `JobQueue`: each check runs against RabbitMQ and the in-process queue.

mod common;

use std::time::Duration;

use common::{amqp_url, envelope, unique};
use scorer_jobs::{AmqpQueue, AmqpTopology, JobConsumer, JobQueue, MemoryQueue};
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

/// Runs one contract check against both implementations, each in its own namespace.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod amqp {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let q = AmqpQueue::connect(&amqp_url(), AmqpTopology { prefix: unique("test") })
                        .await
                        .expect("RabbitMQ reachable");
                    let model = unique("model");
                    super::$name(&q, &model).await;
                    q.delete_model(&model).await.expect("cleanup");
                    q.delete_exchanges().await.expect("cleanup");
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
    priority_order,
    requeue_redelivers,
    dropped_consumer_redelivers,
    acked_is_gone,
    dead_letter_and_poison,
    prefetch_bounds_in_flight,
    depth_counts_waiting,
);
