//! The service's durable plumbing, each behind a trait with two implementations that pass one
//! contract test suite:
//! - [`JobQueue`]: RabbitMQ ([`AmqpQueue`]) or an in-process priority queue ([`MemoryQueue`]);
//! - [`ResultStore`]: Redis ([`RedisResultStore`]) or in-process ([`MemoryResultStore`]);
//! - [`WorkerRegistry`]: worker liveness, on the same two backings;
//! - [`Deadline`]: the one deadline every call to them runs under;
//! - [`AuditStore`]: Postgres ([`PostgresAuditStore`]) or in-process ([`MemoryAuditStore`]);
//! - [`BatchStore`]: Postgres ([`PostgresBatchStore`]) or in-process ([`MemoryBatchStore`]);
//! - API keys: Postgres only ([`PostgresKeyStore`]).

pub mod audit;
pub mod batches;
pub mod deadline;
mod error;
pub mod keys;
pub mod queue;
pub mod results;
pub mod webhook;

pub use audit::{
    AuditStore, CancelOutcome, Finished, Inserted, MemoryAuditStore, PostgresAuditStore,
    StartOutcome,
};
pub use batches::{
    BatchCounts, BatchLine, BatchRecord, BatchStatus, BatchStore, LineError, LineResult,
    MemoryBatchStore, PostgresBatchStore, Pruned,
};
pub use deadline::Deadline;
pub use error::StoreError;
pub use keys::{ApiKey, PostgresKeyStore};
pub use queue::{
    AmqpQueue, AmqpTopology, DEFAULT_DELIVERY_LIMIT, DEFAULT_WORKER_QUEUE_TTL, DeadLetter,
    Delivery, DeliveryAcker, JobConsumer, JobQueue, MemoryQueue, QueueType,
    WORKER_QUEUE_MAX_LENGTH,
};
pub use results::{MemoryResultStore, RedisResultStore, ResultStore, WorkerRegistry};
