//! The job queue: a durable per-model priority queue with acknowledgements and a dead-letter queue,
//! and (RabbitMQ) one queue per worker for jobs steered there by their locality key. RabbitMQ
//! queues are classic (with priorities) or quorum (replicated, priorities only in the worker's
//! pick); see `amqp/kind.rs`.

mod amqp;
mod memory;

pub use amqp::{
    AmqpQueue, AmqpTopology, DEFAULT_DELIVERY_LIMIT, DEFAULT_WORKER_QUEUE_TTL, QueueType,
    WORKER_QUEUE_MAX_LENGTH,
};
pub use memory::MemoryQueue;

use async_trait::async_trait;
use scorer_protocol::job::{JobEnvelope, JobPriority};
use uuid::Uuid;

use crate::StoreError;

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Declare what a model's jobs travel through (idempotent; API and worker both call it).
    async fn declare(&self, model: &str) -> Result<(), StoreError>;

    /// Publish a job; returns only once the queue has taken responsibility for it (publisher
    /// confirm), so an accepted job is never lost.
    async fn publish(&self, envelope: &JobEnvelope) -> Result<(), StoreError>;

    /// Publish bytes as they are. Used to replay dead letters and to exercise poison handling;
    /// `job_id` travels beside the body so a worker can fail the job even if the body is garbage.
    async fn publish_raw(
        &self,
        model: &str,
        job_id: Option<Uuid>,
        priority: JobPriority,
        body: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Start consuming a model's queue with at most `prefetch` unacknowledged deliveries.
    async fn consume(&self, model: &str, prefetch: u16)
    -> Result<Box<dyn JobConsumer>, StoreError>;

    /// Whether `publish_to_worker` really reaches one worker. When false it is `publish`, and
    /// there is no point in choosing a worker.
    fn has_worker_queues(&self) -> bool {
        false
    }

    /// Publish a job to one worker's own queue (see `consume_as`). Fails, without falling back,
    /// when that queue does not exist; the caller then publishes to the shared queue. A message
    /// its worker does not take in time moves to the shared queue by itself.
    async fn publish_to_worker(
        &self,
        envelope: &JobEnvelope,
        worker: &str,
    ) -> Result<(), StoreError> {
        let _ = worker;
        self.publish(envelope).await
    }

    /// Like `consume`, and also consume `worker`'s own queue (declared here), so jobs published
    /// to it with `publish_to_worker` reach this consumer. `prefetch` applies to each queue.
    async fn consume_as(
        &self,
        model: &str,
        worker: &str,
        prefetch: u16,
    ) -> Result<Box<dyn JobConsumer>, StoreError> {
        let _ = worker;
        self.consume(model, prefetch).await
    }

    /// Messages waiting (not yet delivered) in a model's queue.
    async fn depth(&self, model: &str) -> Result<u64, StoreError>;

    /// Take one message from a model's dead-letter queue, if any.
    async fn pop_dead_letter(&self, model: &str) -> Result<Option<DeadLetter>, StoreError>;

    /// Whether the broker is reachable now.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[async_trait]
pub trait JobConsumer: Send {
    /// The next delivery. Cancel-safe, so a batcher can wrap it in a timeout. `Ok(None)` once the
    /// consumer is closed for good.
    async fn next(&mut self) -> Result<Option<Delivery>, StoreError>;

    /// Stop receiving new deliveries (the broker cancels the consumers) and hand over those
    /// already received but not yet returned by `next`, which then answers `Ok(None)`. Deliveries
    /// in hand can still be acknowledged until `close`. A worker shutting down calls it so that
    /// nothing new arrives while it finishes its batch, and gives the returned ones back with
    /// [`DeliveryAcker::give_back`].
    async fn stop(&mut self) -> Vec<Delivery>;

    /// Stop receiving; deliveries not yet acknowledged go back to the queue as redelivered.
    async fn close(self: Box<Self>);
}

/// One message handed to a consumer. Nothing is removed from the queue until `acker` says so.
pub struct Delivery {
    /// The decoded envelope, or why the body is poison.
    pub envelope: Result<JobEnvelope, String>,
    /// The job id from the message properties (present even when the body does not decode).
    pub job_id: Option<Uuid>,
    /// Whether this message was delivered before and not acknowledged.
    pub redelivered: bool,
    pub acker: Box<dyn DeliveryAcker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("job_id", &self.job_id)
            .field("redelivered", &self.redelivered)
            .field("decoded", &self.envelope.is_ok())
            .finish()
    }
}

#[async_trait]
pub trait DeliveryAcker: Send + Sync {
    /// Done: remove the message for good.
    async fn ack(&self) -> Result<(), StoreError>;
    /// Put it back to be delivered again (marked redelivered).
    async fn requeue(&self) -> Result<(), StoreError>;
    /// Move it to the dead-letter queue.
    async fn dead_letter(&self) -> Result<(), StoreError>;
    /// Hand back a delivery that was never started (a worker shutting down): it is queued again
    /// as if it had never been delivered, so it is not marked redelivered and does not count
    /// towards a quorum queue's delivery limit. RabbitMQ: republished unchanged (confirmed) to
    /// the model's shared queue, then acknowledged; if the republication fails it is requeued
    /// instead. A crash between the two leaves two copies, and the second finds its job
    /// finished.
    async fn give_back(&self) -> Result<(), StoreError>;
}

/// A message taken from a dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub job_id: Option<Uuid>,
    pub body: Vec<u8>,
}

/// The wire format: MessagePack with field names, so fields can be added without breaking old
/// consumers.
pub fn encode(envelope: &JobEnvelope) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(envelope).map_err(|e| StoreError::corrupt("job envelope", e))
}

pub fn decode(body: &[u8]) -> Result<JobEnvelope, String> {
    rmp_serde::from_slice(body).map_err(|e| e.to_string())
}
