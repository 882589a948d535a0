//! Gathering a batch from the deliveries in hand.
//!
//! The worker keeps every delivery the broker has handed it (at most `prefetch`) in `pending`,
//! and each batch is picked from all of them by priority, not in arrival order: a sync job the
//! broker delivered behind prefetched bulk messages is seen (and taken) as soon as it is in hand.
//!
//! - The first delivery is awaited without limit; then whatever else arrives within `max_wait`
//!   joins, until the batch is full. A batch that holds a sync job is dispatched at once.
//! - The highest-priority job in hand opens the batch. Sync and async jobs join while the batch
//!   stays within `max_batch_tokens`. Bulk jobs join only while it stays within
//!   `max_bulk_batch_tokens`, and never a batch holding a sync job: the engine runs one batch at
//!   a time, so the bulk tokens of a batch bound how long a sync job that arrives meanwhile waits.
//! - A single job larger than the budget still runs, alone.

use scorer_jobs::{Delivery, JobConsumer, StoreError};
use scorer_protocol::job::JobPriority;
use tokio::time::Instant;

use crate::WorkerConfig;

fn tokens(d: &Delivery) -> usize {
    d.envelope.as_ref().map_or(0, |e| e.prompt_tokens())
}

/// Undecodable messages never reach the engine; settling them first costs nothing.
fn priority(d: &Delivery) -> JobPriority {
    d.envelope
        .as_ref()
        .map_or(JobPriority::Sync, |e| e.priority)
}

/// Which of `pending` the next batch takes (indices, best first), and whether it is full:
/// nothing that could still arrive would join it.
fn plan(pending: &[Delivery], config: &WorkerConfig) -> (Vec<usize>, bool) {
    let mut order: Vec<usize> = (0..pending.len()).collect();
    // Stable: first in, first out within a priority class.
    order.sort_by_key(|&i| std::cmp::Reverse(priority(&pending[i])));
    let Some(&first) = order.first() else {
        return (Vec::new(), false);
    };
    let top = priority(&pending[first]);
    let bulk_cap = config.max_bulk_batch_tokens.min(config.max_batch_tokens);
    let max_jobs = usize::from(config.prefetch.max(1));
    let mut taken = Vec::new();
    let mut used = 0;
    let mut full = top == JobPriority::Sync;
    for i in order {
        let t = tokens(&pending[i]);
        let fits = match priority(&pending[i]) {
            JobPriority::Bulk if top == JobPriority::Sync => false,
            JobPriority::Bulk => used + t <= bulk_cap,
            _ => used + t <= config.max_batch_tokens,
        };
        if !taken.is_empty() && (!fits || taken.len() >= max_jobs) {
            full = true;
            break;
        }
        taken.push(i);
        used += t;
    }
    let budget = if top == JobPriority::Bulk {
        bulk_cap
    } else {
        config.max_batch_tokens
    };
    // The broker hands out no more than `prefetch` unacknowledged messages: with that many in
    // hand, waiting brings nothing.
    full |= used >= budget || pending.len() >= max_jobs;
    (taken, full)
}

/// Moves every delivery the consumer already holds into `pending`, without waiting. `false`
/// once the consumer is closed.
async fn drain_ready(
    consumer: &mut dyn JobConsumer,
    pending: &mut Vec<Delivery>,
) -> Result<bool, StoreError> {
    loop {
        // A deadline already passed still polls the future once: what is buffered is taken,
        // and `next` is cancel-safe, so nothing is lost when it is not ready.
        match tokio::time::timeout_at(Instant::now(), consumer.next()).await {
            Err(_) => return Ok(true),
            Ok(Ok(Some(d))) => pending.push(d),
            Ok(Ok(None)) => return Ok(false),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// The next batch, taken out of `pending` (the rest stays there for later batches). `Ok(None)`
/// when the consumer is closed and nothing is left in hand.
pub(crate) async fn gather(
    consumer: &mut dyn JobConsumer,
    config: &WorkerConfig,
    pending: &mut Vec<Delivery>,
) -> Result<Option<Vec<Delivery>>, StoreError> {
    if pending.is_empty() {
        match consumer.next().await? {
            Some(d) => pending.push(d),
            None => return Ok(None),
        }
    }
    let deadline = Instant::now() + config.max_wait;
    let mut open = true;
    while open {
        open = drain_ready(consumer, pending).await?;
        if !open || plan(pending, config).1 {
            break;
        }
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Err(_) => break,
            Ok(next) => match next? {
                Some(d) => pending.push(d),
                None => open = false,
            },
        }
    }
    let (taken, _) = plan(pending, config);
    let mut slots: Vec<Option<Delivery>> = pending.drain(..).map(Some).collect();
    let batch = taken.iter().filter_map(|&i| slots[i].take()).collect();
    // What was not taken stays in hand, in arrival order.
    pending.extend(slots.into_iter().flatten());
    Ok(Some(batch))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use scorer_jobs::{AmqpQueue, AmqpTopology, JobQueue, MemoryQueue};
    use scorer_protocol::job::JobEnvelope;
    use uuid::Uuid;

    use super::*;

    const MODEL: &str = "batch-test";

    fn envelope(priority: JobPriority, tokens: usize) -> JobEnvelope {
        JobEnvelope {
            job_id: Uuid::new_v4(),
            tenant: "t".into(),
            priority,
            deadline_ms: None,
            model: MODEL.into(),
            prompts: vec![vec![1; tokens]],
            labels: vec![vec![2]],
            apply_softmax: true,
            temperature: 1.0,
            attempt: 1,
            locality: None,
            outputs: Default::default(),
            served_as: None,
            enqueued_at_ms: 0,
        }
    }

    fn config(prefetch: u16, max_batch_tokens: usize, bulk: usize) -> WorkerConfig {
        WorkerConfig {
            prefetch,
            max_batch_tokens,
            max_bulk_batch_tokens: bulk,
            max_wait: Duration::from_millis(50),
            ..WorkerConfig::default()
        }
    }

    fn kinds(batch: &[Delivery]) -> Vec<(JobPriority, usize)> {
        batch
            .iter()
            .map(|d| (priority(d), tokens(d)))
            .collect::<Vec<_>>()
    }

    async fn publish(q: &dyn JobQueue, jobs: &[(JobPriority, usize)]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for &(p, t) in jobs {
            let e = envelope(p, t);
            ids.push(e.job_id);
            q.publish(&e).await.expect("publish");
        }
        ids
    }

    #[tokio::test]
    async fn bulk_only_batches_stop_at_the_bulk_cap() {
        let q = MemoryQueue::new();
        publish(&q, &[(JobPriority::Bulk, 100); 8]).await;
        let mut consumer = q.consume(MODEL, 32).await.expect("consume");
        let cfg = config(32, 2048, 300);
        let mut pending = Vec::new();
        let batch = gather(consumer.as_mut(), &cfg, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert_eq!(kinds(&batch), vec![(JobPriority::Bulk, 100); 3]);
        assert_eq!(
            pending.len(),
            5,
            "the rest stays in hand for the next batches"
        );
        // Async work is not capped by the bulk limit.
        publish(&q, &[(JobPriority::Async, 100); 8]).await;
        let batch = gather(consumer.as_mut(), &cfg, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert_eq!(batch.len(), 8, "{:?}", kinds(&batch));
        assert!(batch.iter().all(|d| priority(d) == JobPriority::Async));
    }

    #[tokio::test]
    async fn a_sync_job_in_hand_goes_first_alone_and_at_once() {
        let q = MemoryQueue::new();
        publish(&q, &[(JobPriority::Bulk, 10); 4]).await;
        let mut consumer = q.consume(MODEL, 32).await.expect("consume");
        // A long max_wait: dispatching at once must not depend on it running out.
        let cfg = WorkerConfig {
            max_wait: Duration::from_secs(30),
            ..config(32, 2048, 512)
        };
        let mut pending = Vec::new();
        // The bulk deliveries are in hand (prefetched) before the sync job is published.
        drain_ready(consumer.as_mut(), &mut pending)
            .await
            .expect("drain");
        assert_eq!(pending.len(), 4);
        let sync = publish(&q, &[(JobPriority::Sync, 10)]).await[0];
        let started = std::time::Instant::now();
        let batch = gather(consumer.as_mut(), &cfg, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(batch.len(), 1, "bulk never rides with a sync job");
        assert_eq!(batch[0].job_id, Some(sync));
        assert_eq!(pending.len(), 4);
    }

    #[tokio::test]
    async fn priority_order_then_arrival_order() {
        let q = MemoryQueue::new();
        let mut consumer = q.consume(MODEL, 32).await.expect("consume");
        let mut pending = Vec::new();
        let bulk = publish(&q, &[(JobPriority::Bulk, 10), (JobPriority::Bulk, 10)]).await;
        drain_ready(consumer.as_mut(), &mut pending)
            .await
            .expect("drain");
        let asyncs = publish(&q, &[(JobPriority::Async, 10), (JobPriority::Async, 10)]).await;
        let cfg = config(32, 2048, 512);
        let batch = gather(consumer.as_mut(), &cfg, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        let ids: Vec<_> = batch.iter().filter_map(|d| d.job_id).collect();
        // Async first, then bulk fills the room under the bulk cap, each class first in first out.
        assert_eq!(ids, [asyncs[0], asyncs[1], bulk[0], bulk[1]]);
    }

    #[tokio::test]
    async fn a_job_over_the_budget_runs_alone_and_waiting_stops_at_max_wait() {
        let q = MemoryQueue::new();
        publish(&q, &[(JobPriority::Bulk, 5000), (JobPriority::Bulk, 10)]).await;
        let mut consumer = q.consume(MODEL, 32).await.expect("consume");
        let cfg = config(32, 2048, 512);
        let mut pending = Vec::new();
        let batch = gather(consumer.as_mut(), &cfg, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert_eq!(kinds(&batch), [(JobPriority::Bulk, 5000)]);
        // One small bulk job in hand, nothing else coming: dispatched after max_wait.
        let started = std::time::Instant::now();
        let batch = gather(consumer.as_mut(), &cfg, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert_eq!(kinds(&batch), [(JobPriority::Bulk, 10)]);
        assert!(started.elapsed() >= cfg.max_wait);
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn prefetch_bounds_the_batch_and_a_full_window_does_not_wait() {
        let q = MemoryQueue::new();
        publish(&q, &[(JobPriority::Async, 10); 6]).await;
        let mut consumer = q.consume(MODEL, 4).await.expect("consume");
        let patient = WorkerConfig {
            max_wait: Duration::from_secs(30),
            ..config(4, 2048, 512)
        };
        let mut pending = Vec::new();
        let started = std::time::Instant::now();
        let batch = gather(consumer.as_mut(), &patient, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert_eq!(batch.len(), 4);
        assert!(started.elapsed() < Duration::from_secs(5));
        for d in &batch {
            d.acker.ack().await.expect("ack");
        }
        let batch = gather(consumer.as_mut(), &config(4, 2048, 512), &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert_eq!(batch.len(), 2);
    }

    /// The same as the in-process case on RabbitMQ, where prefetched deliveries sit in the
    /// consumer's buffer in the order the broker sent them: the sync job arrives behind four
    /// bulk ones already in hand and is still the one taken.
    #[tokio::test]
    async fn amqp_a_sync_job_behind_prefetched_bulk_is_taken_first() {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let q = AmqpQueue::connect(
            &url,
            AmqpTopology {
                prefix: format!("test-batch-{}", Uuid::new_v4().simple()),
            },
        )
        .await
        .expect("RabbitMQ reachable (AMQP_URL)");
        q.declare(MODEL).await.expect("declare");
        let mut consumer = q.consume(MODEL, 32).await.expect("consume");
        publish(&q, &[(JobPriority::Bulk, 10); 4]).await;
        let mut pending = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pending.len() < 4 {
            assert!(Instant::now() < deadline, "bulk deliveries did not arrive");
            if let Ok(next) =
                tokio::time::timeout(Duration::from_millis(100), consumer.next()).await
            {
                pending.push(next.expect("next").expect("open"));
            }
        }
        let sync = publish(&q, &[(JobPriority::Sync, 10)]).await[0];
        // The sync delivery is on its way, not necessarily in hand: gathering waits for it
        // (within max_wait), then dispatches it at once.
        let cfg = WorkerConfig {
            max_wait: Duration::from_secs(10),
            ..config(32, 2048, 512)
        };
        let batch = gather(consumer.as_mut(), &cfg, &mut pending)
            .await
            .expect("gather")
            .expect("open");
        assert_eq!(batch.len(), 1, "{:?}", kinds(&batch));
        assert_eq!(batch[0].job_id, Some(sync));
        for d in batch.iter().chain(&pending) {
            d.acker.ack().await.expect("ack");
        }
        consumer.close().await;
        q.delete_model(MODEL).await.expect("cleanup queues");
        q.delete_exchanges().await.expect("cleanup exchanges");
    }
}
