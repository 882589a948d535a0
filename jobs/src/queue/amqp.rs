//! RabbitMQ topology (lapin): a direct exchange routing by model to one durable queue per model
//! with `x-max-priority`, dead-lettering into a dead-letter exchange and a queue per model.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use scorer_protocol::job::{JobEnvelope, JobPriority};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{DeadLetter, Delivery, DeliveryAcker, JobConsumer, JobQueue, decode, encode};
use crate::StoreError;

const SERVICE: &str = "rabbitmq";

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

    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-max-priority".into(),
            AMQPValue::ShortShortUInt(JobPriority::MAX_AMQP),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args
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

/// Declares (idempotently) everything a model's jobs pass through; returns the ready count.
async fn declare_model(
    channel: &Channel,
    topology: &AmqpTopology,
    model: &str,
) -> Result<u64, StoreError> {
    declare_exchanges(channel, topology).await?;
    let err = |e: lapin::Error| StoreError::unavailable(SERVICE, e);
    let dlq = topology.dead_letter_queue(model);
    channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
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
            topology.queue_arguments(),
        )
        .await
        .map_err(err)?;
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
            link: Mutex::new(None),
        };
        let channel = queue.channel().await?;
        declare_exchanges(&channel, &queue.topology).await?;
        Ok(queue)
    }

    pub fn topology(&self) -> &AmqpTopology {
        &self.topology
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
        model: &str,
        job_id: Option<Uuid>,
        priority: JobPriority,
        body: &[u8],
    ) -> Result<(), StoreError> {
        let channel = self.channel().await?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(priority.amqp())
            .with_content_type("application/msgpack".into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        if let Some(id) = job_id {
            props = props.with_message_id(id.to_string().as_str().into());
        }
        let confirm = channel
            .basic_publish(
                self.topology.exchange().as_str().into(),
                model.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .map_err(|e| StoreError::unavailable(SERVICE, e))?;
        let confirmation = confirm
            .await
            .map_err(|e| StoreError::unavailable(SERVICE, e))?;
        if confirmation.is_nack() {
            return Err(StoreError::unavailable(
                SERVICE,
                "broker refused the message (nack)",
            ));
        }
        if confirmation.take_message().is_some() {
            return Err(StoreError::unavailable(
                SERVICE,
                format!("no queue bound for model {model:?}; the message was returned"),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl JobQueue for AmqpQueue {
    async fn declare(&self, model: &str) -> Result<(), StoreError> {
        let channel = self.channel().await?;
        declare_model(&channel, &self.topology, model)
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
        match self.publish_once(model, job_id, priority, &body).await {
            Ok(()) => Ok(()),
            Err(first) => {
                // The channel may have died since its last use: one more try on a fresh one.
                tracing::warn!(error = %first, "publish failed; reconnecting");
                self.forget_link().await;
                self.publish_once(model, job_id, priority, &body).await
            }
        }
    }

    async fn consume(
        &self,
        model: &str,
        prefetch: u16,
    ) -> Result<Box<dyn JobConsumer>, StoreError> {
        let mut consumer = AmqpConsumer {
            url: self.url.clone(),
            topology: self.topology.clone(),
            model: model.to_string(),
            prefetch: prefetch.max(1),
            backoff: self.backoff,
            live: None,
            closed: false,
        };
        // Connect now so a misconfigured worker fails at startup instead of looping.
        consumer.open().await?;
        Ok(Box::new(consumer))
    }

    async fn depth(&self, model: &str) -> Result<u64, StoreError> {
        let channel = self.channel().await?;
        match declare_model(&channel, &self.topology, model).await {
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

fn message_job_id(props: &BasicProperties) -> Option<Uuid> {
    props
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
}

struct AmqpConsumer {
    url: String,
    topology: AmqpTopology,
    model: String,
    prefetch: u16,
    backoff: Backoff,
    live: Option<LiveConsumer>,
    closed: bool,
}

struct LiveConsumer {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl AmqpConsumer {
    async fn open(&mut self) -> Result<(), StoreError> {
        let (connection, channel) = connect(&self.url, "scorer-worker").await?;
        let err = |e: lapin::Error| StoreError::unavailable(SERVICE, e);
        declare_model(&channel, &self.topology, &self.model).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(err)?;
        let consumer = channel
            .basic_consume(
                self.topology.queue(&self.model).as_str().into(),
                format!("scorer-{}", Uuid::new_v4()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        self.live = Some(LiveConsumer {
            connection,
            channel,
            consumer,
        });
        Ok(())
    }

    /// Reopens after a lost connection, backing off without limit: a worker has nothing better
    /// to do than wait for its broker.
    async fn reopen(&mut self) {
        let mut attempt = 0;
        loop {
            match self.open().await {
                Ok(()) => {
                    tracing::info!(model = %self.model, "AMQP consumer reconnected");
                    return;
                }
                Err(e) => {
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(error = %e, ?delay, "AMQP consumer reconnect failed");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[async_trait]
impl JobConsumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, StoreError> {
        loop {
            if self.closed {
                return Ok(None);
            }
            let Some(live) = self.live.as_mut() else {
                self.reopen().await;
                continue;
            };
            match live.consumer.next().await {
                Some(Ok(delivery)) => {
                    return Ok(Some(Delivery {
                        envelope: decode(&delivery.data),
                        job_id: message_job_id(&delivery.properties),
                        redelivered: delivery.redelivered,
                        acker: Box::new(AmqpAcker {
                            acker: delivery.acker,
                        }),
                    }));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "AMQP consumer failed; reconnecting");
                    self.live = None;
                }
                None => {
                    tracing::warn!("AMQP consumer was cancelled; reconnecting");
                    self.live = None;
                }
            }
        }
    }

    async fn close(mut self: Box<Self>) {
        self.closed = true;
        if let Some(live) = self.live.take() {
            let tag = live.consumer.tag();
            if let Err(e) = live
                .channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %e, "basic.cancel on close");
            }
            if let Err(e) = live.connection.close(200, "OK".into()).await {
                tracing::debug!(error = %e, "connection close");
            }
        }
    }
}

struct AmqpAcker {
    acker: lapin::Acker,
}

#[async_trait]
impl DeliveryAcker for AmqpAcker {
    async fn ack(&self) -> Result<(), StoreError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| StoreError::unavailable(SERVICE, e))
    }

    async fn requeue(&self) -> Result<(), StoreError> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| StoreError::unavailable(SERVICE, e))
    }

    async fn dead_letter(&self) -> Result<(), StoreError> {
        // With requeue=false the broker routes the message to the queue's dead-letter exchange.
        self.acker
            .nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| StoreError::unavailable(SERVICE, e))
    }
}
