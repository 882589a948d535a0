//! Consuming from the shared and own queues: the consumer that (re)starts its broker consumers
//! after a reconnect, and the acknowledgement handle of each delivery.

use super::*;

impl AmqpQueue {
    pub(super) async fn open_consumer(
        &self,
        model: &str,
        own: Option<OwnQueue>,
        prefetch: u16,
    ) -> Result<Box<dyn JobConsumer>, StoreError> {
        let mut consumer = AmqpConsumer {
            url: self.url.clone(),
            topology: self.topology.clone(),
            model: model.to_string(),
            own,
            prefetch: prefetch.max(1),
            backoff: self.backoff,
            live: None,
            closed: false,
        };
        // Connect now so a misconfigured worker fails at startup instead of looping.
        consumer.open().await?;
        Ok(Box::new(consumer))
    }
}

pub(super) fn message_job_id(props: &BasicProperties) -> Option<Uuid> {
    props
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
}

pub(super) struct AmqpConsumer {
    url: String,
    topology: AmqpTopology,
    model: String,
    /// The worker queue consumed beside the shared one, if any.
    own: Option<OwnQueue>,
    prefetch: u16,
    backoff: Backoff,
    live: Option<LiveConsumer>,
    closed: bool,
}

pub(super) struct OwnQueue {
    pub(super) worker: String,
    pub(super) ttl: Duration,
}

pub(super) struct LiveConsumer {
    connection: Connection,
    channel: Channel,
    shared: lapin::Consumer,
    own: Option<LiveOwn>,
}

pub(super) struct LiveOwn {
    consumer: lapin::Consumer,
    /// Confirm-mode channel on the same connection, for dead-lettering by republication.
    republish: Channel,
}

pub(super) async fn start_consumer(
    channel: &Channel,
    queue: &str,
) -> Result<lapin::Consumer, StoreError> {
    channel
        .basic_consume(
            queue.into(),
            format!("scorer-{}", Uuid::new_v4()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| StoreError::unavailable(SERVICE, e))
}

impl AmqpConsumer {
    async fn open(&mut self) -> Result<(), StoreError> {
        let (connection, channel) = connect(&self.url, "scorer-worker").await?;
        let err = |e: lapin::Error| StoreError::unavailable(SERVICE, e);
        declare_model(&channel, &self.topology, &self.model).await?;
        // Per consumer (not global, which RabbitMQ deprecates): each queue gets its own window.
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(err)?;
        let own = match &self.own {
            Some(own) => {
                let queue = declare_worker_queue(
                    &channel,
                    &self.topology,
                    &self.model,
                    &own.worker,
                    own.ttl,
                )
                .await?;
                let republish = connection.create_channel().await.map_err(err)?;
                republish
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(err)?;
                Some(LiveOwn {
                    consumer: start_consumer(&channel, &queue).await?,
                    republish,
                })
            }
            None => None,
        };
        let shared = start_consumer(&channel, &self.topology.queue(&self.model)).await?;
        self.live = Some(LiveConsumer {
            connection,
            channel,
            shared,
            own,
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
            // Both queues at once, neither preferred: a worker draining its own queue must not
            // sit on prefetched shared messages that other workers could run.
            let (next, republish) = match live.own.as_mut() {
                None => (live.shared.next().await, None),
                Some(own) => tokio::select! {
                    d = live.shared.next() => (d, None),
                    d = own.consumer.next() => (d, Some(own.republish.clone())),
                },
            };
            match next {
                Some(Ok(delivery)) => {
                    let envelope = decode(&delivery.data);
                    let job_id = message_job_id(&delivery.properties);
                    let reroute = republish.map(|channel| Reroute {
                        channel,
                        exchange: self.topology.dead_letter_exchange(),
                        routing_key: self.model.clone(),
                        properties: delivery.properties,
                        body: delivery.data,
                    });
                    return Ok(Some(Delivery {
                        envelope,
                        job_id,
                        redelivered: delivery.redelivered,
                        acker: Box::new(AmqpAcker {
                            acker: delivery.acker,
                            reroute,
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
            let own = live.own.as_ref().map(|o| o.consumer.tag());
            for tag in std::iter::once(live.shared.tag()).chain(own) {
                if let Err(e) = live
                    .channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    tracing::debug!(error = %e, "basic.cancel on close");
                }
            }
            if let Err(e) = live.connection.close(200, "OK".into()).await {
                tracing::debug!(error = %e, "connection close");
            }
        }
    }
}

pub(super) struct AmqpAcker {
    acker: lapin::Acker,
    /// Set for deliveries from a worker queue, whose own dead-letter exchange leads back to the
    /// shared queue: dead-lettering those means publishing them to the real one.
    reroute: Option<Reroute>,
}

pub(super) struct Reroute {
    channel: Channel,
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl Reroute {
    async fn publish(&self) -> Result<(), StoreError> {
        confirmed_publish(
            &self.channel,
            &self.exchange,
            &self.routing_key,
            &self.body,
            self.properties.clone(),
        )
        .await
        .map_err(|e| match e {
            Refusal::Returned => StoreError::unavailable(
                SERVICE,
                format!("no dead-letter queue bound for {:?}", self.routing_key),
            ),
            Refusal::Nacked => StoreError::unavailable(SERVICE, "dead-letter publish nacked"),
            Refusal::Other(e) => e,
        })
    }
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
        if let Some(reroute) = &self.reroute {
            // Confirmed in the dead-letter queue before the original goes: a crash in between
            // leaves a copy in both, and the redelivered one finds its job already terminal.
            match reroute.publish().await {
                Ok(()) => return self.ack().await,
                Err(e) => {
                    // Rejected below, it reaches the shared queue, where the next worker to see
                    // it settles it again (a poison message is dead-lettered from there).
                    tracing::warn!(error = %e, "republishing to the dead-letter queue failed");
                }
            }
        }
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
