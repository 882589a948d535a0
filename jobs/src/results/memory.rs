//! In-process result store for the embedded mode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use scorer_protocol::job::JobRecord;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{ResultStore, WorkerRegistry};
use crate::StoreError;

#[derive(Clone)]
pub struct MemoryResultStore {
    inner: Arc<Inner>,
}

struct Inner {
    ttl: Duration,
    state: Mutex<State>,
    /// Ids of jobs that just became terminal.
    done: broadcast::Sender<Uuid>,
}

#[derive(Default)]
struct State {
    records: HashMap<Uuid, (JobRecord, Instant)>,
    /// Last beat of each worker, and the model it serves.
    heartbeats: HashMap<String, (String, Instant)>,
    puts_since_sweep: usize,
}

impl MemoryResultStore {
    pub fn new(ttl: Duration) -> Self {
        let (done, _) = broadcast::channel(1024);
        MemoryResultStore {
            inner: Arc::new(Inner {
                ttl,
                state: Mutex::new(State::default()),
                done,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Workers heard from within `within` whose model passes `serves`, sorted.
    fn live(&self, within: Duration, serves: impl Fn(&str) -> bool) -> Vec<String> {
        let state = self.lock();
        let mut live: Vec<String> = state
            .heartbeats
            .iter()
            .filter(|(_, (model, at))| at.elapsed() <= within && serves(model))
            .map(|(w, _)| w.clone())
            .collect();
        live.sort();
        live
    }

    fn lookup(&self, id: Uuid) -> Option<JobRecord> {
        let state = self.lock();
        state
            .records
            .get(&id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(r, _)| r.clone())
    }
}

#[async_trait]
impl ResultStore for MemoryResultStore {
    async fn put(&self, record: &JobRecord) -> Result<(), StoreError> {
        let mut stored = record.clone();
        // As in Redis, the request body is kept by the audit store only.
        stored.request = None;
        {
            let mut state = self.lock();
            let now = Instant::now();
            state
                .records
                .insert(record.id, (stored, now + self.inner.ttl));
            state.puts_since_sweep += 1;
            if state.puts_since_sweep >= 1024 {
                state.puts_since_sweep = 0;
                state.records.retain(|_, (_, expires)| *expires > now);
            }
        }
        if record.status.is_terminal() {
            // No receiver is not an error: nobody was waiting.
            let _ = self.inner.done.send(record.id);
        }
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lookup(id))
    }

    async fn wait_terminal(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = self.inner.done.subscribe();
        loop {
            if let Some(r) = self.lookup(id).filter(|r| r.status.is_terminal()) {
                return Ok(Some(r));
            }
            // Wait for this job's notice; on lag, look again (the notice may be among those lost).
            loop {
                match tokio::time::timeout_at(deadline, done.recv()).await {
                    Err(_) => return Ok(None),
                    Ok(Ok(done_id)) if done_id == id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        return Err(StoreError::unavailable("result store", "closed"));
                    }
                }
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl WorkerRegistry for MemoryResultStore {
    async fn heartbeat(&self, worker: &str, model: &str) -> Result<(), StoreError> {
        self.lock()
            .heartbeats
            .insert(worker.to_string(), (model.to_string(), Instant::now()));
        Ok(())
    }

    async fn live_workers(&self, within: Duration) -> Result<Vec<String>, StoreError> {
        Ok(self.live(within, |_| true))
    }

    async fn live_model_workers(
        &self,
        model: &str,
        within: Duration,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self.live(within, |m| m == model))
    }

    async fn forget_worker(&self, worker: &str, _model: &str) -> Result<(), StoreError> {
        self.lock().heartbeats.remove(worker);
        Ok(())
    }
}
