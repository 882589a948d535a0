//! In-process audit store for the embedded mode (not durable across restarts).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scorer_protocol::job::{JobPriority, JobRecord, JobStatus};
use uuid::Uuid;

use super::{AuditStore, CancelOutcome, Finished, Inserted, StartOutcome, millis_between};
use crate::StoreError;

/// Keeps every job until it is terminal, then the most recent `capacity` terminal jobs: a
/// long-running embedded server must not grow without bound.
pub struct MemoryAuditStore {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Default)]
struct State {
    jobs: HashMap<Uuid, JobRecord>,
    by_key: HashMap<(String, String), Uuid>,
    /// Terminal jobs, oldest first (evicted from the front).
    finished: VecDeque<Uuid>,
    /// Per tenant, how many jobs `active_jobs` counts; kept up to date on every transition so
    /// a submission does not scan every stored job.
    active: HashMap<String, u64>,
    /// Jobs that are lines of a batch (recorded through [`MemoryAuditStore::insert_batch_line`]):
    /// retention leaves them to their batch, as the Postgres store does by `batch_id`.
    batch_lines: HashSet<Uuid>,
}

/// Whether `active_jobs` counts this job.
fn counted(r: &JobRecord) -> bool {
    !r.status.is_terminal() && r.priority != JobPriority::Bulk
}

impl State {
    fn leave_active(&mut self, tenant: &str) {
        if let Some(n) = self.active.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active.remove(tenant);
            }
        }
    }

    fn retire(&mut self, id: Uuid, capacity: usize) {
        self.finished.push_back(id);
        while self.finished.len() > capacity {
            let Some(old) = self.finished.pop_front() else {
                break;
            };
            self.forget(old);
        }
    }

    /// Drops a job and what indexes it (not its place in `finished`).
    fn forget(&mut self, id: Uuid) {
        self.batch_lines.remove(&id);
        if let Some(job) = self.jobs.remove(&id)
            && let Some(key) = job.idempotency_key
        {
            self.by_key.remove(&(job.tenant, key));
        }
    }

    /// Deletes at most `limit` of the finished jobs among `ids` (unfinished ones stay), keeping
    /// the eviction order of the rest. Returns the ids no longer stored (deleted now or gone
    /// before) and how many were deleted now.
    fn delete_finished(&mut self, ids: &[Uuid], limit: usize) -> (Vec<Uuid>, u64) {
        let mut cleared = Vec::new();
        let mut deleted = HashSet::new();
        for &id in ids {
            match self.jobs.get(&id) {
                Some(job) if !job.status.is_terminal() => continue,
                Some(_) if deleted.len() >= limit => continue,
                Some(_) => {
                    self.forget(id);
                    deleted.insert(id);
                }
                None => {}
            }
            cleared.push(id);
        }
        if !deleted.is_empty() {
            self.finished.retain(|id| !deleted.contains(id));
        }
        (cleared, deleted.len() as u64)
    }
}

impl Default for MemoryAuditStore {
    fn default() -> Self {
        Self::with_capacity(100_000)
    }
}

impl MemoryAuditStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps at most `capacity` terminal jobs.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryAuditStore {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a batch's line ([`crate::MemoryBatchStore`]): an insert whose job retention
    /// leaves to its batch.
    pub(crate) async fn insert_batch_line(
        &self,
        record: &JobRecord,
    ) -> Result<Inserted, StoreError> {
        let inserted = self.insert(record).await?;
        if inserted == Inserted::Created {
            self.lock().batch_lines.insert(record.id);
        }
        Ok(inserted)
    }

    /// Retention of a batch's lines: deletes at most `limit` of the finished ones among `ids`;
    /// returns the ids no longer stored and how many were deleted now.
    pub(crate) fn delete_finished(&self, ids: &[Uuid], limit: usize) -> (Vec<Uuid>, u64) {
        self.lock().delete_finished(ids, limit)
    }
}

#[async_trait]
impl AuditStore for MemoryAuditStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn insert(&self, record: &JobRecord) -> Result<Inserted, StoreError> {
        let mut state = self.lock();
        if let Some(existing) = state.jobs.get(&record.id) {
            return Ok(Inserted::Existing(existing.clone()));
        }
        if let Some(key) = &record.idempotency_key {
            let k = (record.tenant.clone(), key.clone());
            if let Some(existing) = state.by_key.get(&k).and_then(|id| state.jobs.get(id)) {
                return Ok(Inserted::Existing(existing.clone()));
            }
            state.by_key.insert(k, record.id);
        }
        state.jobs.insert(record.id, record.clone());
        if counted(record) {
            *state.active.entry(record.tenant.clone()).or_default() += 1;
        }
        if record.status.is_terminal() {
            state.retire(record.id, self.capacity);
        }
        Ok(Inserted::Created)
    }

    async fn mark_published(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut state = self.lock();
        if let Some(job) = state.jobs.get_mut(&id)
            && job.published_at.is_none()
        {
            job.published_at = Some(at);
        }
        Ok(())
    }

    async fn fail_unpublished(
        &self,
        created_before: DateTime<Utc>,
        message: &str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut state = self.lock();
        let stranded: Vec<Uuid> = state
            .jobs
            .values()
            .filter(|j| {
                j.status == JobStatus::Queued
                    && j.priority != JobPriority::Bulk
                    && j.published_at.is_none()
                    && j.created_at < created_before
            })
            .map(|j| j.id)
            .collect();
        let mut failed = Vec::with_capacity(stranded.len());
        for id in stranded {
            let Some(job) = state.jobs.get_mut(&id) else {
                continue;
            };
            let was_counted = counted(job);
            job.fail(message);
            let record = job.clone();
            if was_counted {
                state.leave_active(&record.tenant);
            }
            state.retire(id, self.capacity);
            failed.push(record);
        }
        Ok(failed)
    }

    async fn start(
        &self,
        id: Uuid,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<StartOutcome, StoreError> {
        let mut state = self.lock();
        let Some(job) = state.jobs.get_mut(&id) else {
            return Ok(StartOutcome::Missing);
        };
        if job.status.is_terminal() {
            return Ok(StartOutcome::NotRunnable(job.clone()));
        }
        job.status = JobStatus::Running;
        job.attempts += 1;
        job.worker = Some(worker.to_string());
        job.started_at = Some(at);
        job.queue_ms = Some(millis_between(job.created_at, at));
        Ok(StartOutcome::Started(job.clone()))
    }

    async fn finish(&self, record: &JobRecord) -> Result<Finished, StoreError> {
        let mut state = self.lock();
        let fresh = !state.jobs.contains_key(&record.id);
        let was_counted = state.jobs.get(&record.id).is_some_and(counted);
        let stored = state
            .jobs
            .entry(record.id)
            .or_insert_with(|| record.clone());
        let applied = fresh || !stored.status.is_terminal();
        if !fresh && applied {
            let request = stored.request.take();
            let attempts = stored.attempts.max(record.attempts);
            let started_at = record.started_at.or(stored.started_at);
            let queue_ms = record.queue_ms.or(stored.queue_ms);
            let published_at = stored.published_at.or(record.published_at);
            *stored = record.clone();
            stored.published_at = published_at;
            stored.request = stored.request.take().or(request);
            stored.attempts = attempts;
            stored.started_at = started_at;
            stored.queue_ms = queue_ms;
        }
        let record = stored.clone();
        if was_counted && !counted(&record) {
            state.leave_active(&record.tenant);
        }
        if applied {
            state.retire(record.id, self.capacity);
        }
        Ok(Finished { record, applied })
    }

    async fn cancel(&self, id: Uuid, at: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
        let mut state = self.lock();
        let Some(job) = state.jobs.get_mut(&id) else {
            return Ok(CancelOutcome::Missing);
        };
        if job.status != JobStatus::Queued {
            return Ok(CancelOutcome::TooLate(job.clone()));
        }
        let was_counted = counted(job);
        job.status = JobStatus::Cancelled;
        job.finished_at = Some(at);
        let cancelled = job.clone();
        if was_counted {
            state.leave_active(&cancelled.tenant);
        }
        state.retire(id, self.capacity);
        Ok(CancelOutcome::Cancelled(cancelled))
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().jobs.get(&id).cloned())
    }

    async fn active_jobs(&self, tenant: &str) -> Result<u64, StoreError> {
        Ok(self.lock().active.get(tenant).copied().unwrap_or(0))
    }

    async fn prune(&self, finished_before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut due: Vec<(DateTime<Utc>, Uuid)> = state
            .jobs
            .values()
            .filter(|j| j.status.is_terminal() && !state.batch_lines.contains(&j.id))
            .filter_map(|j| {
                j.finished_at
                    .filter(|at| *at < finished_before)
                    .map(|at| (at, j.id))
            })
            .collect();
        due.sort_unstable();
        let ids: Vec<Uuid> = due.into_iter().map(|(_, id)| id).collect();
        Ok(state.delete_finished(&ids, limit).1)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
