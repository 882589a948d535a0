//! Consuming from the shared and own queues: the consumer that (re)starts its broker consumers
//! after a reconnect and stops them for a graceful shutdown, and the acknowledgement handle of
//! each delivery.

use super::*;

/// How long `stop` waits for the broker to confirm a cancelled consumer (after which every
/// delivery it had pushed has been received).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

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
            kind: self.kind,
            model: model.to_string(),
            own,
            prefetch: prefetch.max(1),
            backoff: self.backoff,
            live: None,
            closed: false,
            stopped: false,
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
    kind: QueueKind,
    model: String,
    /// The worker queue consumed beside the shared one, if any.
    own: Option<OwnQueue>,
    prefetch: u16,
    backoff: Backoff,
    live: Option<LiveConsumer>,
    closed: bool,
    /// `stop` was called: no reconnecting, no more deliveries.
    stopped: bool,
}

pub(super) struct OwnQueue {
    pub(super) worker: String,
    pub(super) ttl: Duration,
}

pub(super) struct LiveConsumer {
    connection: Connection,
    channel: Channel,
    shared: lapin::Consumer,
    own: Option<lapin::Consumer>,
    /// Confirm-mode channel on the same connection, for republishing (dead-lettering from a
    /// worker queue, giving back an unstarted delivery).
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

/// Wraps a broker delivery; `from_own`: it came from the worker's own queue.
fn delivery(
    topology: &AmqpTopology,
    model: &str,
    republish: &Channel,
    delivery: lapin::message::Delivery,
    from_own: bool,
) -> Delivery {
    let envelope = decode(&delivery.data);
    let job_id = message_job_id(&delivery.properties);
    Delivery {
        envelope,
        job_id,
        redelivered: delivery.redelivered,
        acker: Box::new(AmqpAcker {
            acker: delivery.acker,
            copy: Original {
                channel: republish.clone(),
                jobs_exchange: topology.exchange(),
                dead_letter_exchange: topology.dead_letter_exchange(),
                routing_key: model.to_string(),
                properties: delivery.properties,
                body: delivery.data,
            },
            from_own,
        }),
    }
}

impl AmqpConsumer {
    async fn open(&mut self) -> Result<(), StoreError> {
        let (connection, channel) = connect(&self.url, "scorer-worker").await?;
        let err = |e: lapin::Error| StoreError::unavailable(SERVICE, e);
        declare_model(&channel, &self.topology, &self.kind, &self.model).await?;
        // Per consumer (not global, which RabbitMQ deprecates): each queue gets its own window.
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(err)?;
        let republish = connection.create_channel().await.map_err(err)?;
        republish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        let own = match &self.own {
            Some(own) => {
                let queue = declare_worker_queue(
                    &channel,
                    &self.topology,
                    &self.kind,
                    &self.model,
                    &own.worker,
                    own.ttl,
                )
                .await?;
                Some(start_consumer(&channel, &queue).await?)
            }
            None => None,
        };
        let shared = start_consumer(&channel, &self.topology.queue(&self.model)).await?;
        self.live = Some(LiveConsumer {
            connection,
            channel,
            shared,
            own,
            republish,
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

impl LiveConsumer {
    /// Tells the broker to stop delivering to every consumer of this connection.
    async fn cancel(&self) {
        let own = self.own.as_ref().map(|o| o.tag());
        for tag in std::iter::once(self.shared.tag()).chain(own) {
            if let Err(e) = self
                .channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %e, "basic.cancel");
            }
        }
    }
}

#[async_trait]
impl JobConsumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, StoreError> {
        loop {
            if self.closed || self.stopped {
                return Ok(None);
            }
            let Some(live) = self.live.as_mut() else {
                self.reopen().await;
                continue;
            };
            // Both queues at once, neither preferred: a worker draining its own queue must not
            // sit on prefetched shared messages that other workers could run.
            let (next, from_own) = match live.own.as_mut() {
                None => (live.shared.next().await, false),
                Some(own) => tokio::select! {
                    d = live.shared.next() => (d, false),
                    d = own.next() => (d, true),
                },
            };
            match next {
                Some(Ok(d)) => {
                    let republish = &live.republish;
                    return Ok(Some(delivery(
                        &self.topology,
                        &self.model,
                        republish,
                        d,
                        from_own,
                    )));
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

    async fn stop(&mut self) -> Vec<Delivery> {
        self.stopped = true;
        let Some(live) = self.live.as_mut() else {
            return Vec::new();
        };
        live.cancel().await;
        // Once the broker has confirmed a cancel, the consumer's stream yields what was
        // already pushed to it and then ends.
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let republish = live.republish.clone();
        let streams =
            std::iter::once((&mut live.shared, false)).chain(live.own.as_mut().map(|o| (o, true)));
        for (stream, from_own) in streams {
            while let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, stream.next()).await {
                received.push(delivery(
                    &self.topology,
                    &self.model,
                    &republish,
                    d,
                    from_own,
                ));
            }
        }
        received
    }

    async fn close(mut self: Box<Self>) {
        self.closed = true;
        if let Some(live) = self.live.take() {
            if !self.stopped {
                live.cancel().await;
            }
            if let Err(e) = live.connection.close(200, "OK".into()).await {
                tracing::debug!(error = %e, "connection close");
            }
        }
    }
}

pub(super) struct AmqpAcker {
    acker: lapin::Acker,
    /// The message as it was delivered, to publish again.
    copy: Original,
    /// From a worker queue, whose own dead-letter exchange leads back to the shared queue:
    /// dead-lettering it means publishing it to the real one.
    from_own: bool,
}

pub(super) struct Original {
    channel: Channel,
    jobs_exchange: String,
    dead_letter_exchange: String,
    /// The model: the routing key of its shared queue and of its dead-letter queue.
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl Original {
    /// Publishes the message again (confirmed) to `exchange`, under the model's key. The
    /// broker's own count of returns (`x-delivery-count`, quorum queues) is not carried over:
    /// the copy is a new message.
    async fn publish(&self, exchange: &str) -> Result<(), StoreError> {
        let mut properties = self.properties.clone();
        if let Some(headers) = self.properties.headers() {
            let mut kept = FieldTable::default();
            for (key, value) in headers.inner() {
                if key.as_str() != "x-delivery-count" {
                    kept.insert(key.clone(), value.clone());
                }
            }
            properties = properties.with_headers(kept);
        }
        confirmed_publish(
            &self.channel,
            exchange,
            &self.routing_key,
            &self.body,
            properties,
        )
        .await
        .map_err(|e| match e {
            Refusal::Returned => StoreError::unavailable(
                SERVICE,
                format!("no queue bound for {:?} on {exchange}", self.routing_key),
            ),
            Refusal::Nacked => StoreError::unavailable(SERVICE, "republish nacked"),
            Refusal::Other(e) => e,
        })
    }
}

impl AmqpAcker {
    async fn nack(&self, requeue: bool) -> Result<(), StoreError> {
        self.acker
            .nack(BasicNackOptions {
                requeue,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| StoreError::unavailable(SERVICE, e))
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
        self.nack(true).await
    }

    async fn dead_letter(&self) -> Result<(), StoreError> {
        if self.from_own {
            // Confirmed in the dead-letter queue before the original goes: a crash in between
            // leaves a copy in both, and the redelivered one finds its job already terminal.
            match self.copy.publish(&self.copy.dead_letter_exchange).await {
                Ok(()) => return self.ack().await,
                Err(e) => {
                    // Rejected below, it reaches the shared queue, where the next worker to see
                    // it settles it again (a poison message is dead-lettered from there).
                    tracing::warn!(error = %e, "republishing to the dead-letter queue failed");
                }
            }
        }
        // With requeue=false the broker routes the message to the queue's dead-letter exchange.
        self.nack(false).await
    }

    async fn give_back(&self) -> Result<(), StoreError> {
        // To the shared queue even when it came from the worker's own queue: this worker is
        // leaving, and any other may take it at once.
        match self.copy.publish(&self.copy.jobs_exchange).await {
            Ok(()) => self.ack().await,
            Err(e) => {
                tracing::warn!(error = %e, "giving a delivery back failed; requeueing it");
                self.nack(true).await
            }
        }
    }
}
