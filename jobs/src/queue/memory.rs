//! In-process queue for the embedded mode: the same priority, acknowledgement, redelivery and
//! dead-letter behaviour as the RabbitMQ topology, without durability across restarts.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use scorer_protocol::job::{JobEnvelope, JobPriority};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{DeadLetter, Delivery, DeliveryAcker, JobConsumer, JobQueue, decode, encode};
use crate::StoreError;

#[derive(Clone, Default)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a message becomes ready or a consumer's window opens.
    changed: Notify,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, ModelQueue>,
    next_seq: u64,
    next_consumer: u64,
}

#[derive(Default)]
struct ModelQueue {
    ready: BinaryHeap<Ready>,
    dead: VecDeque<DeadLetter>,
    /// Unacknowledged messages, by consumer, by delivery tag.
    unacked: HashMap<u64, HashMap<u64, Message>>,
}

#[derive(Clone)]
struct Message {
    job_id: Option<Uuid>,
    priority: u8,
    body: Vec<u8>,
    redelivered: bool,
}

struct Ready {
    seq: u64,
    msg: Message,
}

impl Ord for Ready {
    // Higher priority first, then first in, first out.
    fn cmp(&self, other: &Self) -> Ordering {
        self.msg
            .priority
            .cmp(&other.msg.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ready {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Ready {}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn push(&mut self, model: &str, msg: Message) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queues
            .entry(model.to_string())
            .or_default()
            .ready
            .push(Ready { seq, msg });
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn enqueue(&self, model: &str, msg: Message) {
        self.shared.lock().push(model, msg);
        self.shared.changed.notify_waiters();
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn declare(&self, model: &str) -> Result<(), StoreError> {
        self.shared
            .lock()
            .queues
            .entry(model.to_string())
            .or_default();
        Ok(())
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
        self.enqueue(
            model,
            Message {
                job_id,
                priority: priority.amqp(),
                body,
                redelivered: false,
            },
        );
        Ok(())
    }

    async fn consume(
        &self,
        model: &str,
        prefetch: u16,
    ) -> Result<Box<dyn JobConsumer>, StoreError> {
        let id = {
            let mut state = self.shared.lock();
            let id = state.next_consumer;
            state.next_consumer += 1;
            state
                .queues
                .entry(model.to_string())
                .or_default()
                .unacked
                .insert(id, HashMap::new());
            id
        };
        Ok(Box::new(MemoryConsumer {
            shared: self.shared.clone(),
            model: model.to_string(),
            id,
            prefetch: prefetch.max(1) as usize,
            next_tag: 0,
            closed: false,
            stopped: false,
        }))
    }

    async fn depth(&self, model: &str) -> Result<u64, StoreError> {
        Ok(self
            .shared
            .lock()
            .queues
            .get(model)
            .map_or(0, |q| q.ready.len() as u64))
    }

    async fn pop_dead_letter(&self, model: &str) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self
            .shared
            .lock()
            .queues
            .get_mut(model)
            .and_then(|q| q.dead.pop_front()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

struct MemoryConsumer {
    shared: Arc<Shared>,
    model: String,
    id: u64,
    prefetch: usize,
    next_tag: u64,
    closed: bool,
    /// `stop` was called: nothing more is taken, what is in hand can still be settled.
    stopped: bool,
}

impl MemoryConsumer {
    fn try_take(&mut self) -> Option<Delivery> {
        let mut state = self.shared.lock();
        let queue = state.queues.get_mut(&self.model)?;
        let in_flight = queue.unacked.get(&self.id).map_or(0, HashMap::len);
        if in_flight >= self.prefetch {
            return None;
        }
        let Ready { msg, .. } = queue.ready.pop()?;
        let tag = self.next_tag;
        self.next_tag += 1;
        queue
            .unacked
            .entry(self.id)
            .or_default()
            .insert(tag, msg.clone());
        Some(Delivery {
            envelope: decode(&msg.body),
            job_id: msg.job_id,
            redelivered: msg.redelivered,
            acker: Box::new(MemoryAcker {
                shared: self.shared.clone(),
                model: self.model.clone(),
                consumer: self.id,
                tag,
            }),
        })
    }

    fn release_unacked(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut state = self.shared.lock();
        let pending = state
            .queues
            .get_mut(&self.model)
            .and_then(|q| q.unacked.remove(&self.id))
            .unwrap_or_default();
        let mut pending: Vec<_> = pending.into_iter().collect();
        pending.sort_by_key(|(tag, _)| *tag);
        for (_, mut msg) in pending {
            msg.redelivered = true;
            state.push(&self.model, msg);
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }
}

#[async_trait]
impl JobConsumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, StoreError> {
        if self.closed || self.stopped {
            return Ok(None);
        }
        loop {
            // Register interest before looking, so a publish between the look and the wait is
            // not missed.
            let shared = self.shared.clone();
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(delivery) = self.try_take() {
                return Ok(Some(delivery));
            }
            changed.await;
        }
    }

    async fn stop(&mut self) -> Vec<Delivery> {
        // Nothing is pushed ahead of `next` here: every message still queued stays queued.
        self.stopped = true;
        Vec::new()
    }

    async fn close(mut self: Box<Self>) {
        self.release_unacked();
    }
}

impl Drop for MemoryConsumer {
    // A consumer that goes away without acknowledging (a crashed worker) gives its messages back,
    // as the broker does when a channel closes.
    fn drop(&mut self) {
        self.release_unacked();
    }
}

struct MemoryAcker {
    shared: Arc<Shared>,
    model: String,
    consumer: u64,
    tag: u64,
}

impl MemoryAcker {
    /// Removes the message from the consumer's unacknowledged set; `None` if the consumer is gone
    /// (its messages were already given back), as an ack on a closed channel does nothing.
    fn settle(&self, state: &mut State) -> Option<Message> {
        state
            .queues
            .get_mut(&self.model)?
            .unacked
            .get_mut(&self.consumer)?
            .remove(&self.tag)
    }
}

#[async_trait]
impl DeliveryAcker for MemoryAcker {
    async fn ack(&self) -> Result<(), StoreError> {
        let settled = self.settle(&mut self.shared.lock());
        if settled.is_none() {
            return Err(StoreError::unavailable(
                "queue",
                "consumer closed before ack",
            ));
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn requeue(&self) -> Result<(), StoreError> {
        {
            let mut state = self.shared.lock();
            let Some(mut msg) = self.settle(&mut state) else {
                return Err(StoreError::unavailable(
                    "queue",
                    "consumer closed before requeue",
                ));
            };
            msg.redelivered = true;
            state.push(&self.model, msg);
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn give_back(&self) -> Result<(), StoreError> {
        {
            let mut state = self.shared.lock();
            let Some(msg) = self.settle(&mut state) else {
                return Err(StoreError::unavailable(
                    "queue",
                    "consumer closed before give-back",
                ));
            };
            // Unchanged: a message handed back unstarted is not a redelivery.
            state.push(&self.model, msg);
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self) -> Result<(), StoreError> {
        {
            let mut state = self.shared.lock();
            let Some(msg) = self.settle(&mut state) else {
                return Err(StoreError::unavailable(
                    "queue",
                    "consumer closed before reject",
                ));
            };
            if let Some(queue) = state.queues.get_mut(&self.model) {
                queue.dead.push_back(DeadLetter {
                    job_id: msg.job_id,
                    body: msg.body,
                });
            }
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }
}
