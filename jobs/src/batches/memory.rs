//! In-process batch store (embedded mode). The jobs themselves live in the in-process audit store
//! it is given, as they do in Postgres; this keeps the batch rows, each batch's custom_id index and
//! its rejected lines. It takes the concrete [`MemoryAuditStore`] (not any `AuditStore`) so that
//! its lines are recorded as lines: retention deletes them with their batch, never alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scorer_protocol::job::JobStatus;
use uuid::Uuid;

use super::{
    BatchCounts, BatchLine, BatchRecord, BatchStatus, BatchStore, LineError, LineResult, Pruned,
};
use crate::{AuditStore, CancelOutcome, MemoryAuditStore, StoreError};

#[derive(Default)]
struct Entry {
    /// custom_id -> job id, ordered so pages are stable.
    lines: BTreeMap<String, Uuid>,
    errors: BTreeMap<i64, LineError>,
}

pub struct MemoryBatchStore {
    audit: Arc<MemoryAuditStore>,
    batches: Mutex<HashMap<Uuid, (BatchRecord, Entry)>>,
}

impl MemoryBatchStore {
    pub fn new(audit: Arc<MemoryAuditStore>) -> Self {
        MemoryBatchStore {
            audit,
            batches: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, (BatchRecord, Entry)>> {
        // A panic elsewhere cannot leave the maps half-updated: every update is one insert.
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_ids(&self, batch: Uuid) -> Vec<(String, Uuid)> {
        self.lock()
            .get(&batch)
            .map(|(_, e)| e.lines.iter().map(|(c, id)| (c.clone(), *id)).collect())
            .unwrap_or_default()
    }
}

fn missing(batch: Uuid) -> StoreError {
    StoreError::unavailable("memory", format!("no batch {batch}"))
}

#[async_trait]
impl BatchStore for MemoryBatchStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        self.lock()
            .entry(batch.id)
            .or_insert_with(|| (batch.clone(), Entry::default()));
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        Ok(self.lock().get(&id).map(|(b, _)| b.clone()))
    }

    async fn list(
        &self,
        tenant: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let mut found: Vec<BatchRecord> = self
            .lock()
            .values()
            .map(|(b, _)| b)
            .filter(|b| b.tenant == tenant && after.is_none_or(|a| b.id < a))
            .cloned()
            .collect();
        found.sort_by_key(|b| std::cmp::Reverse(b.id));
        found.truncate(limit);
        Ok(found)
    }

    async fn open(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let mut found: Vec<BatchRecord> = self
            .lock()
            .values()
            .map(|(b, _)| b)
            .filter(|b| {
                super::lifecycle::OPEN.contains(&b.status) && after.is_none_or(|a| b.id > a)
            })
            .cloned()
            .collect();
        found.sort_by_key(|b| b.id);
        found.truncate(limit);
        Ok(found)
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[BatchStatus],
        to: BatchStatus,
        at: DateTime<Utc>,
        error: Option<String>,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let mut batches = self.lock();
        let Some((batch, _)) = batches.get_mut(&id) else {
            return Ok(None);
        };
        if !from.contains(&batch.status) {
            return Ok(None);
        }
        batch.status = to;
        batch.stamp(to, at);
        if error.is_some() {
            batch.error = error;
        }
        Ok(Some(batch.clone()))
    }

    async fn add_lines(&self, batch: Uuid, lines: &[BatchLine]) -> Result<Vec<usize>, StoreError> {
        let mut duplicates = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            // Claim the custom_id first, so a repeat is refused before its job exists.
            let claimed = {
                let mut batches = self.lock();
                let (_, entry) = batches.get_mut(&batch).ok_or_else(|| missing(batch))?;
                if entry.lines.contains_key(&line.custom_id) {
                    false
                } else {
                    entry.lines.insert(line.custom_id.clone(), line.record.id);
                    true
                }
            };
            if !claimed {
                duplicates.push(i);
                continue;
            }
            if let Err(e) = self.audit.insert_batch_line(&line.record).await {
                if let Some((_, entry)) = self.lock().get_mut(&batch) {
                    entry.lines.remove(&line.custom_id);
                }
                return Err(e);
            }
        }
        Ok(duplicates)
    }

    async fn add_errors(&self, batch: Uuid, errors: &[LineError]) -> Result<(), StoreError> {
        let mut batches = self.lock();
        let (_, entry) = batches.get_mut(&batch).ok_or_else(|| missing(batch))?;
        for e in errors {
            entry.errors.entry(e.line).or_insert_with(|| e.clone());
        }
        Ok(())
    }

    async fn counts(&self, batch: Uuid) -> Result<BatchCounts, StoreError> {
        let mut counts = BatchCounts {
            invalid: self
                .lock()
                .get(&batch)
                .map_or(0, |(_, e)| e.errors.len() as u64),
            ..BatchCounts::default()
        };
        for (_, id) in self.job_ids(batch) {
            match self.audit.get(id).await?.map(|r| r.status) {
                Some(JobStatus::Queued) => counts.queued += 1,
                Some(JobStatus::Running) => counts.running += 1,
                Some(JobStatus::Succeeded) => counts.succeeded += 1,
                Some(_) => counts.failed += 1,
                // Recorded in the index but its insert failed: the upload reported it.
                None => {}
            }
        }
        Ok(counts)
    }

    async fn cancel_queued(&self, batch: Uuid, at: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut cancelled = 0;
        for (_, id) in self.job_ids(batch) {
            if let CancelOutcome::Cancelled(_) = self.audit.cancel(id, at).await? {
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }

    async fn results(
        &self,
        batch: Uuid,
        succeeded: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LineResult>, StoreError> {
        let candidates: Vec<(String, Uuid)> = {
            let batches = self.lock();
            let Some((_, entry)) = batches.get(&batch) else {
                return Ok(Vec::new());
            };
            match after {
                Some(a) => entry
                    .lines
                    .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    .map(|(c, id)| (c.clone(), *id))
                    .collect(),
                None => entry.lines.iter().map(|(c, id)| (c.clone(), *id)).collect(),
            }
        };
        let mut found = Vec::new();
        for (custom_id, id) in candidates {
            if found.len() >= limit {
                break;
            }
            let Some(record) = self.audit.get(id).await? else {
                continue;
            };
            let wanted = if succeeded {
                record.status == JobStatus::Succeeded
            } else {
                record.status.is_terminal() && record.status != JobStatus::Succeeded
            };
            if wanted {
                found.push(LineResult { custom_id, record });
            }
        }
        Ok(found)
    }

    async fn line_errors(
        &self,
        batch: Uuid,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LineError>, StoreError> {
        Ok(self
            .lock()
            .get(&batch)
            .map(|(_, e)| {
                e.errors
                    .range(after.saturating_add(1)..)
                    .take(limit)
                    .map(|(_, l)| l.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn prune(
        &self,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        let mut batches = self.lock();
        let mut due: Vec<Uuid> = batches
            .values()
            .filter(|(b, _)| b.finished_at().is_some_and(|at| at < finished_before))
            .map(|(b, _)| b.id)
            .collect();
        due.sort_unstable();
        let mut pruned = Pruned::default();
        for id in due {
            if pruned.batches as usize >= limit {
                break;
            }
            let Some((_, entry)) = batches.get_mut(&id) else {
                continue;
            };
            let ids: Vec<Uuid> = entry.lines.values().copied().collect();
            let budget = limit.saturating_sub(pruned.jobs as usize);
            let (cleared, deleted) = self.audit.delete_finished(&ids, budget);
            let cleared: std::collections::HashSet<Uuid> = cleared.into_iter().collect();
            entry.lines.retain(|_, job| !cleared.contains(job));
            pruned.jobs += deleted;
            if entry.lines.is_empty() {
                batches.remove(&id);
                pruned.batches += 1;
            }
        }
        Ok(pruned)
    }
}
