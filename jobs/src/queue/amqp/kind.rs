//! Queue types: what each queue of the topology is declared with, classic or quorum.
//!
//! Why both: a classic queue lives on one broker node and has message priorities
//! (`x-max-priority`), which is how a sync job overtakes a backlog of bulk work. A quorum queue
//! is replicated (Raft) and survives the loss of a node, but RabbitMQ before 4.0 (3.10 here) has
//! no priorities on it. With `--queue-type quorum` the priority scheme is therefore the worker's
//! alone: each batch is still picked by priority from the deliveries in hand (`prefetch` of
//! them, see the worker's `batch` module), but the broker hands them out first in, first out,
//! so a sync job behind more than `prefetch` queued bulk or async messages waits for those
//! ahead of it (docs/OPERATIONS.md, "Queue types").
//!
//! Quorum queues also count deliveries: `x-delivery-limit` dead-letters a message returned
//! that many times (a worker crashing on it before it could be failed), and dead-lettering is
//! `at-least-once` (it needs `x-overflow: reject-publish`), so a message expiring from a
//! worker's queue into the shared one cannot be dropped on the way.

use lapin::types::{AMQPValue, FieldTable};
use scorer_protocol::job::JobPriority;

use super::AmqpTopology;

/// Returns a quorum queue accepts before the broker dead-letters the message. Large on purpose:
/// RabbitMQ 3.x counts every return, and a worker gives a message back (requeues it) each time
/// a store call fails transiently, so a small limit would dead-letter healthy jobs during a
/// Redis or Postgres outage. Attempts that really ran are bounded by `--max-attempts`.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 100;

/// The kind of RabbitMQ queue jobs travel through (`--queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// One node, with message priorities (sync > async > bulk).
    #[default]
    Classic,
    /// Replicated, with a delivery limit; no priorities before RabbitMQ 4.0.
    Quorum,
}

impl QueueType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "classic" => Some(QueueType::Classic),
            "quorum" => Some(QueueType::Quorum),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// The queue type and, for quorum queues, the delivery limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueKind {
    pub(crate) queue_type: QueueType,
    pub(crate) delivery_limit: u32,
}

impl Default for QueueKind {
    fn default() -> Self {
        QueueKind {
            queue_type: QueueType::Classic,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

impl QueueKind {
    /// What every queue of this type carries: the type and its delivery rules. A classic queue
    /// is declared with no `x-queue-type` at all, as before quorum queues existed here, so the
    /// queues of an existing deployment stay equivalent.
    fn base(&self) -> FieldTable {
        let mut args = FieldTable::default();
        match self.queue_type {
            QueueType::Classic => {
                args.insert(
                    "x-max-priority".into(),
                    AMQPValue::ShortShortUInt(JobPriority::MAX_AMQP),
                );
            }
            QueueType::Quorum => {
                args.insert("x-queue-type".into(), long_string("quorum"));
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
                );
                args.insert("x-overflow".into(), long_string("reject-publish"));
                args.insert(
                    "x-dead-letter-strategy".into(),
                    long_string("at-least-once"),
                );
            }
        }
        args
    }

    /// The model's shared queue: dead-letters into the dead-letter exchange.
    pub(crate) fn queue_arguments(&self, topology: &AmqpTopology) -> FieldTable {
        let mut args = self.base();
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&topology.dead_letter_exchange()),
        );
        args
    }

    /// The model's dead-letter queue: plain, of the same type (a quorum deployment wants its
    /// dead letters replicated too).
    pub(crate) fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), long_string("quorum"));
        }
        args
    }

    /// One worker's queue: what is not taken within `ttl_ms` moves to the model's shared queue
    /// (dead-lettered to the jobs exchange under the model's key); the queue goes away once
    /// unused for `idle_ms`; past `max_length` ready messages publishes are refused, so the
    /// publisher falls back to the shared queue.
    pub(crate) fn worker_queue_arguments(
        &self,
        topology: &AmqpTopology,
        model: &str,
        ttl_ms: i64,
        idle_ms: i64,
        max_length: i64,
    ) -> FieldTable {
        let mut args = self.base();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert("x-expires".into(), AMQPValue::LongLongInt(idle_ms));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&topology.exchange()),
        );
        args.insert("x-dead-letter-routing-key".into(), long_string(model));
        args
    }

    /// A declaration the broker refused because a queue of that name exists with other
    /// arguments: name the queue and the way out, since retrying cannot help.
    pub(crate) fn declare_error(&self, queue: &str, e: lapin::Error) -> crate::StoreError {
        let text = e.to_string();
        if !text.contains("inequivalent arg") {
            return crate::StoreError::unavailable(super::SERVICE, e);
        }
        crate::StoreError::misconfigured(
            super::SERVICE,
            format!(
                "queue {queue} already exists with other arguments than a {} queue of this \
                 deployment ({text}). A queue's type cannot change in place: start with the \
                 --queue-type it was made with, or drain it and delete it (`rabbitmqctl \
                 delete_queue {queue}`) so it is declared anew",
                self.queue_type.as_str()
            ),
        )
    }
}
