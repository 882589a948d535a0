//! RabbitMQ topology (lapin): a direct exchange routing by model to one durable queue per model
//! with `x-max-priority`, dead-lettering into a dead-letter exchange and a queue per model.
//!
//! Locality: each worker also has its own durable queue, `{prefix}.jobs.{model}.worker.{id}`,
//! reached through the default exchange. It has a message TTL and dead-letters what expires to
//! the jobs exchange under the model's routing key, i.e. into the shared queue every worker
//! consumes. A job steered to a worker that died (or that is too busy to take it within the
//! TTL) therefore runs elsewhere; unacknowledged messages of a dead worker are requeued by the
//! broker with their original expiry, so they move on as well. Because that queue's
//! dead-letter exchange leads back to the shared queue, a worker's explicit dead-lettering of a
//! message from it republishes the message to the dead-letter exchange instead (see
//! `AmqpAcker::dead_letter`).
//!
//! Queue types (classic or quorum) and what each queue is declared with: `kind.rs`.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use scorer_protocol::job::{JobEnvelope, JobPriority};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{DeadLetter, Delivery, DeliveryAcker, JobConsumer, JobQueue, decode, encode};
use crate::StoreError;

const SERVICE: &str = "rabbitmq";

/// Default time a job waits in its worker's queue before any worker may take it.
pub const DEFAULT_WORKER_QUEUE_TTL: Duration = Duration::from_secs(5);
const WORKER_QUEUE_IDLE_TTLS: i64 = 20;
/// Ready messages a worker queue holds before the broker refuses more (the publisher then uses
/// the shared queue). Keeps what the queue bound and the batch high-water mark cannot see, which
/// count the shared queue only, to this much per worker.
pub const WORKER_QUEUE_MAX_LENGTH: i64 = 1_000;
const WORKER_QUEUE_MIN_IDLE_MS: i64 = 60_000;

/// Names of the exchanges and queues. The prefix lets several deployments (or tests) share a
/// broker without seeing each other's jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpTopology {
    pub prefix: String,
}

impl Default for AmqpTopology {
    fn default() -> Self {
        AmqpTopology {
            prefix: "scorer".to_string(),
        }
    }
}

impl AmqpTopology {
    pub fn exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn queue(&self, model: &str) -> String {
        format!("{}.jobs.{model}", self.prefix)
    }

    pub fn dead_letter_queue(&self, model: &str) -> String {
        format!("{}.dead.{model}", self.prefix)
    }

    /// One worker's own queue of a model (published to through the default exchange).
    pub fn worker_queue(&self, model: &str, worker: &str) -> String {
        format!("{}.jobs.{model}.worker.{worker}", self.prefix)
    }
}

/// Reconnection policy: exponential backoff between `initial` and `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Publisher side: one connection and confirm-mode channel, re-established on failure. Consumers
/// open their own connections so a slow publisher never holds up acknowledgements.
pub struct AmqpQueue {
    url: String,
    topology: AmqpTopology,
    backoff: Backoff,
    /// How many connection attempts one publish makes before answering "unavailable", so a
    /// request fails in bounded time while the broker is down.
    publish_attempts: u32,
    /// Message TTL of the worker queues this process declares (`consume_as`).
    worker_queue_ttl: Duration,
    /// Classic or quorum, for every queue this process declares.
    kind: QueueKind,
    link: Mutex<Option<Link>>,
}

struct Link {
    // Kept so the connection lives as long as the channel is used.
    _connection: Connection,
    channel: Channel,
}

async fn connect(url: &str, name: &str) -> Result<(Connection, Channel), StoreError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let connection = Connection::connect(url, props)
        .await
        .map_err(|e| StoreError::unavailable(SERVICE, e))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| StoreError::unavailable(SERVICE, e))?;
    Ok((connection, channel))
}

async fn declare_exchanges(channel: &Channel, topology: &AmqpTopology) -> Result<(), StoreError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for exchange in [topology.exchange(), topology.dead_letter_exchange()] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| StoreError::unavailable(SERVICE, e))?;
    }
    Ok(())
}

/// Declares (idempotently) a worker's own queue; the model's queues must exist already.
async fn declare_worker_queue(
    channel: &Channel,
    topology: &AmqpTopology,
    kind: &QueueKind,
    model: &str,
    worker: &str,
    ttl: Duration,
) -> Result<String, StoreError> {
    let name = topology.worker_queue(model, worker);
    // The queue goes away once unused (no consumer) for `WORKER_QUEUE_IDLE_TTLS` TTLs, and
    // never sooner than a minute: by then everything in it has expired and moved on, since
    // RabbitMQ drops, not dead-letters, the messages of a deleted queue.
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
    let idle_ms = ttl_ms
        .saturating_mul(WORKER_QUEUE_IDLE_TTLS)
        .max(WORKER_QUEUE_MIN_IDLE_MS);
    let args =
        kind.worker_queue_arguments(topology, model, ttl_ms, idle_ms, WORKER_QUEUE_MAX_LENGTH);
    channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        // A queue left by a worker of the same id with another TTL (or type) is named with
        // the way out.
        .map_err(|e| kind.declare_error(&name, e))?;
    Ok(name)
}

/// Declares (idempotently) everything a model's jobs pass through; returns the ready count.
async fn declare_model(
    channel: &Channel,
    topology: &AmqpTopology,
    kind: &QueueKind,
    model: &str,
) -> Result<u64, StoreError> {
    declare_exchanges(channel, topology).await?;
    let err = |e: lapin::Error| StoreError::unavailable(SERVICE, e);
    let dlq = topology.dead_letter_queue(model);
    channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions::durable(),
            kind.dead_letter_queue_arguments(),
        )
        .await
        .map_err(|e| kind.declare_error(&dlq, e))?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            topology.dead_letter_exchange().as_str().into(),
            model.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    let queue_name = topology.queue(model);
    let queue = channel
        .queue_declare(
            queue_name.as_str().into(),
            QueueDeclareOptions::durable(),
            kind.queue_arguments(topology),
        )
        .await
        .map_err(|e| kind.declare_error(&queue_name, e))?;
    channel
        .queue_bind(
            queue_name.as_str().into(),
            topology.exchange().as_str().into(),
            model.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    Ok(u64::from(queue.message_count()))
}

impl AmqpQueue {
    /// Connects (with backoff, a few attempts) and declares the exchanges.
    pub async fn connect(url: &str, topology: AmqpTopology) -> Result<Self, StoreError> {
        let queue = AmqpQueue {
            url: url.to_string(),
            topology,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            publish_attempts: 4,
            worker_queue_ttl: DEFAULT_WORKER_QUEUE_TTL,
            kind: QueueKind::default(),
            link: Mutex::new(None),
        };
        let channel = queue.channel().await?;
        declare_exchanges(&channel, &queue.topology).await?;
        Ok(queue)
    }

    pub fn topology(&self) -> &AmqpTopology {
        &self.topology
    }

    /// How long a job waits in its worker's queue before it moves to the shared queue. A worker
    /// queue keeps the TTL it was first declared with; a worker restarted under the same id with
    /// another TTL fails to declare it until the old queue is gone.
    pub fn with_worker_queue_ttl(mut self, ttl: Duration) -> Self {
        self.worker_queue_ttl = ttl;
        self
    }

    /// The type of every queue this process declares, and (quorum) the returns a message may
    /// have before the broker dead-letters it. Existing queues keep their type: declaring one
    /// as the other type fails with `StoreError::Misconfigured`, naming the fix.
    pub fn with_queue_type(mut self, queue_type: QueueType, delivery_limit: u32) -> Self {
        self.kind = QueueKind {
            queue_type,
            delivery_limit: delivery_limit.max(1),
        };
        self
    }

    /// The publishing channel, reconnecting with backoff if the last one died.
    async fn channel(&self) -> Result<Channel, StoreError> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref()
            && l.channel.status().connected()
        {
            return Ok(l.channel.clone());
        }
        *link = None;
        let mut last = None;
        for attempt in 0..self.publish_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff.delay(attempt - 1)).await;
            }
            match connect(&self.url, "scorer-publisher").await {
                Ok((connection, channel)) => {
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| StoreError::unavailable(SERVICE, e))?;
                    *link = Some(Link {
                        _connection: connection,
                        channel: channel.clone(),
                    });
                    return Ok(channel);
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "AMQP connect failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::unavailable(SERVICE, "no connection attempt made")))
    }

    /// Remove a model's queue and dead-letter queue with whatever they hold (tests, decommission).
    pub async fn delete_model(&self, model: &str) -> Result<(), StoreError> {
        let channel = self.channel().await?;
        for queue in [
            self.topology.queue(model),
            self.topology.dead_letter_queue(model),
        ] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| StoreError::unavailable(SERVICE, e))?;
        }
        Ok(())
    }

    /// Remove one worker's queue with whatever it holds (tests, decommission).
    pub async fn delete_worker_queue(&self, model: &str, worker: &str) -> Result<(), StoreError> {
        let channel = self.channel().await?;
        channel
            .queue_delete(
                self.topology.worker_queue(model, worker).as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .map(drop)
            .map_err(|e| StoreError::unavailable(SERVICE, e))
    }

    /// Remove this topology's exchanges (tests, decommission); queues go with `delete_model`.
    pub async fn delete_exchanges(&self) -> Result<(), StoreError> {
        let channel = self.channel().await?;
        for exchange in [
            self.topology.exchange(),
            self.topology.dead_letter_exchange(),
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| StoreError::unavailable(SERVICE, e))?;
        }
        Ok(())
    }

    async fn forget_link(&self) {
        *self.link.lock().await = None;
    }

    async fn publish_once(
        &self,
        route: &Route,
        job_id: Option<Uuid>,
        priority: JobPriority,
        body: &[u8],
    ) -> Result<(), Refusal> {
        let channel = self.channel().await.map_err(Refusal::Other)?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(priority.amqp())
            .with_content_type("application/msgpack".into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        if let Some(id) = job_id {
            props = props.with_message_id(id.to_string().as_str().into());
        }
        confirmed_publish(&channel, &route.exchange, &route.routing_key, body, props).await
    }

    /// Publishes, and once more on a fresh channel if that fails (the channel may have died
    /// since its last use). An unroutable message is not retried: the broker answered.
    async fn publish_with_retry(
        &self,
        route: &Route,
        job_id: Option<Uuid>,
        priority: JobPriority,
        body: &[u8],
    ) -> Result<(), StoreError> {
        let mut result = self.publish_once(route, job_id, priority, body).await;
        // Returned or nacked: the broker answered, and would answer the same again.
        if let Err(Refusal::Other(first)) = &result {
            tracing::warn!(error = %first, "publish failed; reconnecting");
            self.forget_link().await;
            result = self.publish_once(route, job_id, priority, body).await;
        }
        result.map_err(|e| match e {
            Refusal::Returned => StoreError::unavailable(
                SERVICE,
                format!("no queue for {}; the message was returned", route.what),
            ),
            Refusal::Nacked => StoreError::unavailable(
                SERVICE,
                format!(
                    "the broker refused the message for {} (nack; full?)",
                    route.what
                ),
            ),
            Refusal::Other(e) => e,
        })
    }
}

/// Where a publication goes, and how to name it in an error.
struct Route {
    exchange: String,
    routing_key: String,
    what: String,
}

enum Refusal {
    /// Unroutable: no queue matched (the broker returned the mandatory message).
    Returned,
    /// Refused (a worker queue at its length limit, or a broker-side failure).
    Nacked,
    Other(StoreError),
}

/// A mandatory publish that returns only once the broker has confirmed it.
async fn confirmed_publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), Refusal> {
    let err = |e: lapin::Error| Refusal::Other(StoreError::unavailable(SERVICE, e));
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .map_err(err)?;
    let confirmation = confirm.await.map_err(err)?;
    if confirmation.is_nack() {
        return Err(Refusal::Nacked);
    }
    if confirmation.take_message().is_some() {
        return Err(Refusal::Returned);
    }
    Ok(())
}

#[async_trait]
impl JobQueue for AmqpQueue {
    async fn declare(&self, model: &str) -> Result<(), StoreError> {
        let channel = self.channel().await?;
        declare_model(&channel, &self.topology, &self.kind, model)
            .await
            .map(drop)
    }

    async fn publish(&self, envelope: &JobEnvelope) -> Result<(), StoreError> {
        let body = encode(envelope)?;
        self.publish_raw(
            &envelope.model,
            Some(envelope.job_id),
            envelope.priority,
            body,
        )
        .await
    }

    async fn publish_raw(
        &self,
        model: &str,
        job_id: Option<Uuid>,
        priority: JobPriority,
        body: Vec<u8>,
    ) -> Result<(), StoreError> {
        let route = Route {
            exchange: self.topology.exchange(),
            routing_key: model.to_string(),
            what: format!("model {model:?}"),
        };
        self.publish_with_retry(&route, job_id, priority, &body)
            .await
    }

    fn has_worker_queues(&self) -> bool {
        true
    }

    async fn publish_to_worker(
        &self,
        envelope: &JobEnvelope,
        worker: &str,
    ) -> Result<(), StoreError> {
        let body = encode(envelope)?;
        let queue = self.topology.worker_queue(&envelope.model, worker);
        let route = Route {
            // The default exchange routes by queue name: no binding to keep per worker.
            exchange: String::new(),
            what: format!("worker {worker:?} (queue {queue})"),
            routing_key: queue,
        };
        self.publish_with_retry(&route, Some(envelope.job_id), envelope.priority, &body)
            .await
    }

    async fn consume_as(
        &self,
        model: &str,
        worker: &str,
        prefetch: u16,
    ) -> Result<Box<dyn JobConsumer>, StoreError> {
        self.open_consumer(
            model,
            Some(OwnQueue {
                worker: worker.to_string(),
                ttl: self.worker_queue_ttl,
            }),
            prefetch,
        )
        .await
    }

    async fn consume(
        &self,
        model: &str,
        prefetch: u16,
    ) -> Result<Box<dyn JobConsumer>, StoreError> {
        self.open_consumer(model, None, prefetch).await
    }

    async fn depth(&self, model: &str) -> Result<u64, StoreError> {
        // One round trip on the hot path: a passive declare of the shared queue reads its depth
        // (the topology was declared when the role started). Only when that fails (the queue
        // was deleted, the channel died) is the whole topology declared again, on a fresh
        // channel, since a refused passive declare closes the channel it ran on.
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = self.topology.queue(model);
        if let Ok(q) = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            return Ok(u64::from(q.message_count()));
        }
        self.forget_link().await;
        let channel = self.channel().await?;
        match declare_model(&channel, &self.topology, &self.kind, model).await {
            Ok(n) => Ok(n),
            Err(e) => {
                self.forget_link().await;
                Err(e)
            }
        }
    }

    async fn pop_dead_letter(&self, model: &str) -> Result<Option<DeadLetter>, StoreError> {
        let channel = self.channel().await?;
        let got = channel
            .basic_get(
                self.topology.dead_letter_queue(model).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .map_err(|e| StoreError::unavailable(SERVICE, e))?;
        Ok(got.map(|m| DeadLetter {
            job_id: message_job_id(&m.delivery.properties),
            body: m.delivery.data.clone(),
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let channel = self.channel().await?;
        if let Err(e) = declare_exchanges(&channel, &self.topology).await {
            self.forget_link().await;
            return Err(e);
        }
        Ok(())
    }
}

mod consumer;
mod kind;

use consumer::{OwnQueue, message_job_id};
use kind::QueueKind;
pub use kind::{DEFAULT_DELIVERY_LIMIT, QueueType};
