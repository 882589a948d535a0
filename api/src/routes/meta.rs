//! Models, liveness, readiness, metrics, and the API description.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// Always `"model"`.
    pub object: &'static str,
    pub owned_by: &'static str,
}

/// The model this server scores with, under its canonical name (the first
/// `--served-model-name`, else the model's own id). Aliases and `default` are accepted by every
/// route but not listed, as one model is served.
#[utoipa::path(get, path = "/v1/models", tag = "meta",
    responses((status = 200, description = "Served models", body = ModelList)))]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.served.canonical().to_string(),
            object: "model",
            owned_by: "scorer",
        }],
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, description = "Alive")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// `"ok"` or what is wrong, for `queue`, `results`, `audit` and `workers`.
    pub checks: std::collections::BTreeMap<&'static str, String>,
    /// Workers heard from recently.
    pub workers: Vec<String>,
}

/// Readiness: the broker, Redis and Postgres answer, and a worker was heard from recently.
#[utoipa::path(get, path = "/ready", tag = "meta", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready; see checks", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    // Each check is bounded so a hung dependency reads as down rather than hanging the probe.
    const LIMIT: Duration = Duration::from_secs(2);
    async fn bounded<T>(
        service: &'static str,
        f: impl std::future::Future<Output = Result<T, scorer_jobs::StoreError>>,
    ) -> Result<T, String> {
        crate::bounded(LIMIT, service, f)
            .await
            .map_err(|e| e.to_string())
    }
    let s = &state.stores;
    let (queue, results, audit, workers) = tokio::join!(
        bounded("queue", s.queue.ping()),
        bounded("results", s.results.ping()),
        bounded("audit", s.audit.ping()),
        bounded(
            "results",
            s.workers.live_workers(state.config.worker_liveness)
        ),
    );
    let workers = match workers {
        Ok(w) if w.is_empty() => Err("no worker heard from recently".to_string()),
        other => other,
    };
    let mut checks = std::collections::BTreeMap::new();
    let mut ready = true;
    for (name, outcome) in [("queue", queue), ("results", results), ("audit", audit)] {
        ready &= outcome.is_ok();
        checks.insert(name, outcome.err().unwrap_or_else(|| "ok".into()));
    }
    ready &= workers.is_ok();
    let live = workers.as_ref().cloned().unwrap_or_default();
    metrics::gauge!("scorer_live_workers").set(live.len() as f64);
    checks.insert("workers", workers.err().unwrap_or_else(|| "ok".into()));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            checks,
            workers: live,
        }),
    )
        .into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Metrics")))]
pub async fn metrics() -> Response {
    let handle = crate::metrics::handle();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// The OpenAPI description of this API.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::ApiDoc::openapi())
}

/// A self-contained page that renders `/openapi.json` (no CDN: works offline).
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
