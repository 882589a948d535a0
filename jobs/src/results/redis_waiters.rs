//! One pub/sub connection for every sync wait of a process. Opening a connection per wait cost
//! a TCP connect, a HELLO and a SUBSCRIBE round trip on each request; here one connection,
//! pattern-subscribed to `{prefix}:done:*` once, hands each announcement to the waiters of that
//! job id.
//!
//! Announcements are hints, never the truth: a waiter registers, then reads the record, and
//! reads it again after each hint and at least every [`POLL`], so a hint lost while the
//! connection was down (it reconnects with backoff) delays an answer by at most that, and never
//! loses one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

/// The longest a waiter goes without reading the record itself.
pub(super) const POLL: Duration = Duration::from_secs(1);

type Waiters = Arc<Mutex<HashMap<Uuid, watch::Sender<u64>>>>;

/// The dispatcher of one process's done announcements (started on the first wait).
#[derive(Clone)]
pub(super) struct DoneWaiters {
    client: redis::Client,
    pattern: String,
    prefix_len: usize,
    waiters: Waiters,
    started: Arc<OnceLock<()>>,
    /// Whether the pattern subscription is in place now.
    ready: watch::Sender<bool>,
}

/// A registration: announcements for its job bump the watched counter; dropped, it is removed
/// once no other waiter of the job holds one.
pub(super) struct Registration {
    waiters: Waiters,
    id: Uuid,
    pub(super) hints: watch::Receiver<u64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.waiters.lock() {
            // `receiver_count` still counts our own receiver here.
            if map.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
                map.remove(&self.id);
            }
        }
    }
}

impl DoneWaiters {
    pub(super) fn new(client: redis::Client, prefix: &str) -> Self {
        let channel_prefix = format!("{prefix}:done:");
        DoneWaiters {
            client,
            pattern: format!("{channel_prefix}*"),
            prefix_len: channel_prefix.len(),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            started: Arc::new(OnceLock::new()),
            ready: watch::channel(false).0,
        }
    }

    /// Registers interest in `id`'s announcements (starting the dispatcher if need be).
    pub(super) fn register(&self, id: Uuid) -> Registration {
        self.started.get_or_init(|| {
            tokio::spawn(dispatch(
                self.client.clone(),
                self.pattern.clone(),
                self.prefix_len,
                self.waiters.clone(),
                self.ready.clone(),
            ));
        });
        let hints = match self.waiters.lock() {
            Ok(mut map) => map
                .entry(id)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
            // A poisoned map only loses hints: the waiter still polls.
            Err(_) => watch::channel(0).1,
        };
        Registration {
            waiters: self.waiters.clone(),
            id,
            hints,
        }
    }

    /// Waits (until `deadline` at the latest) for the subscription to be in place, so that a
    /// first wait of the process is woken by its announcement rather than by the poll.
    pub(super) async fn ready(&self, deadline: tokio::time::Instant) {
        let mut ready = self.ready.subscribe();
        let _ = tokio::time::timeout_at(deadline, ready.wait_for(|up| *up)).await;
    }
}

/// Reads announcements forever, reconnecting with backoff (1 s doubling to 10 s).
async fn dispatch(
    client: redis::Client,
    pattern: String,
    prefix_len: usize,
    waiters: Waiters,
    ready: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.psubscribe(&pattern).await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    ready.send_replace(true);
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let channel = msg.get_channel_name();
                        let Some(id) = channel
                            .get(prefix_len..)
                            .and_then(|s| Uuid::parse_str(s).ok())
                        else {
                            continue;
                        };
                        if let Ok(map) = waiters.lock()
                            && let Some(tx) = map.get(&id)
                        {
                            tx.send_modify(|n| *n += 1);
                        }
                    }
                    ready.send_replace(false);
                    tracing::warn!("redis pub/sub connection closed; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "redis psubscribe failed"),
            },
            Err(e) => tracing::warn!(error = %e, "redis pub/sub connect failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
