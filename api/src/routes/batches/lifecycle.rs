//! Reading batches (`GET`, list) and cancelling them; and the sweep that moves batches as their
//! jobs finish, run in the background by every API process. A read shows what is stored; the
//! moves are `scorer_jobs::batches::lifecycle`'s.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use scorer_jobs::BatchRecord;
use scorer_jobs::batches::lifecycle::{self, Cancelled};
use scorer_protocol::job::now_millis;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::wire::{BatchList, BatchObject, object};
use super::{call, call_within, find};
use crate::{ApiError, AppState, auth};

/// Fetch a batch with its progress.
#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The batch", body = BatchObject),
        (status = 404, description = "No such batch", body = crate::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let batch = find(&state, &headers, &id).await?;
    view(&state, batch).await.map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only batches older than this batch id (the previous page's `last_id`).
    pub after: Option<Uuid>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
}

/// List the caller's batches, newest first.
#[utoipa::path(
    get, path = "/v1/batches", tag = "batches",
    params(ListParams),
    responses((status = 200, description = "A page of batches", body = BatchList))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Json<BatchList>, ApiError> {
    let tenant = auth::tenant(&state, &headers).await?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 100".into(),
        ));
    }
    let mut page = call(
        &state,
        "batches",
        state.stores.batches.list(&tenant, params.after, limit + 1),
    )
    .await?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    let mut data = Vec::with_capacity(page.len());
    for b in page {
        data.push(view(&state, b).await?);
    }
    Ok(Json(BatchList {
        object: "list".into(),
        first_id: data.first().map(|b| b.id),
        last_id: data.last().map(|b| b.id),
        has_more,
        data,
    }))
}

/// Cancel a batch: lines not started are cancelled (they go to the error file); running ones
/// finish. The batch is `cancelling` until they have, then `cancelled`.
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "Cancelling (or cancelled)", body = BatchObject),
        (status = 404, description = "No such batch", body = crate::ErrorBody),
        (status = 409, description = "Already finished", body = crate::ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let batch = find(&state, &headers, &id).await?;
    let store = state.stores.batches.as_ref();
    let outcome = call(
        &state,
        "batches",
        lifecycle::cancel(store, batch, now_millis()),
    )
    .await?;
    match outcome {
        Cancelled::Finished(b) => Err(ApiError::Conflict(format!(
            "batch {} is {} and can no longer be cancelled",
            b.id,
            b.status.as_str()
        ))),
        Cancelled::Cancelling { batch, lines } => {
            metrics::counter!("scorer_batch_lines_cancelled_total").increment(lines);
            advanced(&state, batch).await.map(Json)
        }
    }
}

/// The batch as stored, with its progress counted from its jobs. Reads only.
pub(super) async fn view(state: &AppState, batch: BatchRecord) -> Result<BatchObject, ApiError> {
    let counts = call(state, "batches", state.stores.batches.counts(batch.id)).await?;
    Ok(object(&batch, counts))
}

/// After a write of ours (cancel, the end of an upload): the batch moved as far as its jobs
/// allow already, so the answer does not wait for the sweep.
pub(super) async fn advanced(
    state: &AppState,
    batch: BatchRecord,
) -> Result<BatchObject, ApiError> {
    let store = state.stores.batches.as_ref();
    let batch = call(
        state,
        "batches",
        lifecycle::advance(store, batch, now_millis()),
    )
    .await?;
    view(state, batch).await
}

/// Runs [`lifecycle::sweep`] every `interval` until the stores are dropped: batches whose jobs
/// have all finished complete (or are cancelled), and those past their window expire, without
/// anyone asking. Each sweep is bounded by the store deadline; a failed one is logged and the
/// next starts over.
pub fn spawn_sweeper(state: &AppState) {
    let store = std::sync::Arc::downgrade(&state.stores.batches);
    let interval = state.config.batches.sweep_interval;
    let limit = state.config.store_timeout;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let swept = call_within(
                limit,
                "batches",
                lifecycle::sweep(store.as_ref(), now_millis()),
            )
            .await;
            match swept {
                Ok(0) => {}
                Ok(n) => tracing::debug!(moved = n, "batch sweep"),
                Err(e) => tracing::warn!(error = %e, "batch sweep failed"),
            }
        }
    });
}
