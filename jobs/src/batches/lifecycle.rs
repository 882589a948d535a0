//! The batch lifecycle: every status change a batch goes through after it is created, in one
//! place, each a compare-and-set [`BatchStore::transition`] so that API replicas racing on the
//! same batch agree (the first move wins, the others see it).
//!
//! ```text
//! validating ──upload read, some line valid──> in_progress ──nothing pending──> finalizing ──> completed
//!     │  └─no valid line / upload failed──> failed     │ └─past expires_at──> expired (lines not started cancelled)
//!     └──────────────────cancel──────────────> cancelling ──nothing running──> cancelled
//! ```
//!
//! Reads never move a batch: the moves that follow from its jobs (finish, expire, cancelled)
//! are made by [`sweep`], which the API process runs in the background; `GET` shows what is
//! stored.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{BatchRecord, BatchStatus, BatchStore};
use crate::StoreError;

/// Batches [`sweep`] looks at per store call.
pub const SWEEP_PAGE: usize = 500;

/// Statuses a batch may still leave on its own (its jobs decide): what [`sweep`] visits.
pub const OPEN: [BatchStatus; 3] = [
    BatchStatus::InProgress,
    BatchStatus::Finalizing,
    BatchStatus::Cancelling,
];

/// Moves `batch` as far as its jobs allow at `now`: past its window an `in_progress` batch is
/// `expired` (its lines not started cancelled first); with nothing queued or running,
/// `in_progress` goes through `finalizing` to `completed` and `cancelling` to `cancelled`.
/// Returns the batch as it then is.
pub async fn advance(
    store: &dyn BatchStore,
    mut batch: BatchRecord,
    now: DateTime<Utc>,
) -> Result<BatchRecord, StoreError> {
    if batch.status == BatchStatus::InProgress && now > batch.expires_at {
        store.cancel_queued(batch.id, now).await?;
        if let Some(b) = store
            .transition(
                batch.id,
                &[BatchStatus::InProgress],
                BatchStatus::Expired,
                now,
                None,
            )
            .await?
        {
            return Ok(b);
        }
        batch = reread(store, batch).await?;
    }
    if !OPEN.contains(&batch.status) || store.counts(batch.id).await?.pending() > 0 {
        return Ok(batch);
    }
    let id = batch.id;
    let moved = match batch.status {
        BatchStatus::InProgress => {
            store
                .transition(
                    id,
                    &[BatchStatus::InProgress],
                    BatchStatus::Finalizing,
                    now,
                    None,
                )
                .await?;
            finalize(store, id, now).await?
        }
        BatchStatus::Finalizing => finalize(store, id, now).await?,
        BatchStatus::Cancelling => {
            store
                .transition(
                    id,
                    &[BatchStatus::Cancelling],
                    BatchStatus::Cancelled,
                    now,
                    None,
                )
                .await?
        }
        _ => None,
    };
    match moved {
        Some(b) => Ok(b),
        // Someone else moved it: what they left.
        None => reread(store, batch).await,
    }
}

async fn finalize(
    store: &dyn BatchStore,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<BatchRecord>, StoreError> {
    store
        .transition(
            id,
            &[BatchStatus::Finalizing],
            BatchStatus::Completed,
            now,
            None,
        )
        .await
}

async fn reread(store: &dyn BatchStore, batch: BatchRecord) -> Result<BatchRecord, StoreError> {
    Ok(store.get(batch.id).await?.unwrap_or(batch))
}

/// Advances every open batch; returns how many changed status. Errors stop the sweep (the next
/// one starts over).
pub async fn sweep(store: &dyn BatchStore, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut after = None;
    let mut moved = 0;
    loop {
        let page = store.open(after, SWEEP_PAGE).await?;
        let last = page.last().map(|b| b.id);
        let full = page.len() == SWEEP_PAGE;
        for batch in page {
            let before = batch.status;
            if advance(store, batch, now).await?.status != before {
                moved += 1;
            }
        }
        if !full {
            return Ok(moved);
        }
        after = last;
    }
}

/// What [`cancel`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// The batch is `cancelling` (or was already); this many lines not started were cancelled.
    Cancelling { batch: BatchRecord, lines: u64 },
    /// The batch had already finished; nothing was changed.
    Finished(BatchRecord),
}

/// Cancels a batch: `cancelling`, and its lines not started cancelled (running ones finish;
/// [`advance`] then makes it `cancelled`).
pub async fn cancel(
    store: &dyn BatchStore,
    batch: BatchRecord,
    now: DateTime<Utc>,
) -> Result<Cancelled, StoreError> {
    let from = [
        BatchStatus::Validating,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
    ];
    let batch = match store
        .transition(batch.id, &from, BatchStatus::Cancelling, now, None)
        .await?
    {
        Some(b) => b,
        None => {
            let b = reread(store, batch).await?;
            if b.status.is_terminal() {
                return Ok(Cancelled::Finished(b));
            }
            b
        }
    };
    let lines = store.cancel_queued(batch.id, now).await?;
    Ok(Cancelled::Cancelling { batch, lines })
}

/// How the reading of an upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadEnd {
    /// Read to the end, with this many lines accepted out of `lines` in the file.
    Read { accepted: u64, lines: u64 },
    /// Reading stopped because the batch was cancelled meanwhile.
    Stopped,
}

/// The upload is read: `in_progress`, or `failed` when no line was valid; after a cancel, the
/// lines published since it took effect are cancelled too. Returns the batch as it then is.
pub async fn end_upload(
    store: &dyn BatchStore,
    id: Uuid,
    end: UploadEnd,
    now: DateTime<Utc>,
) -> Result<Option<BatchRecord>, StoreError> {
    match end {
        UploadEnd::Stopped => {
            store.cancel_queued(id, now).await?;
        }
        UploadEnd::Read { accepted: 0, lines } => {
            let why = if lines == 0 {
                "the input file has no lines"
            } else {
                "no line of the input file is a valid request (see the error file)"
            };
            store
                .transition(
                    id,
                    &[BatchStatus::Validating],
                    BatchStatus::Failed,
                    now,
                    Some(why.into()),
                )
                .await?;
        }
        UploadEnd::Read { .. } => {
            store
                .transition(
                    id,
                    &[BatchStatus::Validating],
                    BatchStatus::InProgress,
                    now,
                    None,
                )
                .await?;
        }
    }
    store.get(id).await
}

/// The upload cannot go on: the batch fails with `why`, and its jobs not started are cancelled.
pub async fn fail_upload(
    store: &dyn BatchStore,
    id: Uuid,
    why: String,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    store
        .transition(
            id,
            &[BatchStatus::Validating],
            BatchStatus::Failed,
            now,
            Some(why),
        )
        .await?;
    store.cancel_queued(id, now).await?;
    Ok(())
}
