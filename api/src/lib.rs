//! The HTTP API (axum): routes, the one error enum, authentication, limits, metrics, OpenAPI,
//! and the HTTP server with its connection limits ([`serve_app`]). It needs a [`Preparer`]
//! (tokenizer and model metadata), never a worker or the weights: the process roles that put
//! API and workers together live in the binary (`src/roles.rs`).
//!
//! [`Preparer`]: scorer_protocol::Preparer

mod auth;
mod config;
mod connect;
mod error;
pub mod fuzzing;
mod locality;
mod metrics;
pub mod routes;
mod served;
mod server;
mod state;
mod submit;

pub use config::{AuthMode, BatchConfig, ServiceConfig, StoreUrls};
pub use connect::{announce_auth, connect_stores, migrate};
pub use error::{ApiError, ErrorBody};
pub use locality::{Locality, LocalityConfig, rendezvous};
pub use served::ServedNames;
pub use server::{Draining, HttpLimits, serve_app, shutdown_signal};
pub use state::{AppState, Stores};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "scorer",
        description = "Score (query, item) pairs with a causal LM: SGLang's /v1/score, the Jina/Cohere/TEI rerank APIs, plus async jobs and batches."
    ),
    paths(
        routes::score::score,
        routes::jobs::submit,
        routes::jobs::get,
        routes::jobs::cancel,
        routes::meta::models,
        routes::meta::health,
        routes::meta::ready,
        routes::meta::metrics,
        routes::batches::upload::create,
        routes::batches::lifecycle::list,
        routes::batches::lifecycle::get,
        routes::batches::lifecycle::cancel,
        routes::batches::download::output,
        routes::batches::download::errors,
        routes::rerank::v1,
        routes::rerank::v2,
        routes::rerank::tei,
        routes::rerank::submit_v1,
        routes::rerank::submit_v2,
        routes::rerank::submit_tei,
        routes::rerank::get_job,
    ),
    components(schemas(
        scorer_protocol::ScoreRequest,
        scorer_protocol::ScoreResponse,
        scorer_protocol::chat::ChatMessage,
        scorer_protocol::job::JobObject,
        routes::jobs::JobRequest,
        routes::jobs::JobOptions,
        scorer_protocol::rerank::RerankRequest,
        scorer_protocol::rerank::RerankDocument,
        scorer_protocol::rerank::DocumentText,
        scorer_protocol::rerank::RerankResponse,
        scorer_protocol::rerank::RerankResult,
        scorer_protocol::rerank::RerankUsage,
        scorer_protocol::rerank::RerankMeta,
        scorer_protocol::rerank::BilledUnits,
        scorer_protocol::rerank::TeiRerankRequest,
        scorer_protocol::rerank::TeiRank,
        scorer_protocol::rerank::RerankOutput,
        scorer_protocol::rerank::RerankJobObject,
        routes::batches::BatchObject,
        routes::batches::BatchList,
        ErrorBody,
    ))
)]
pub struct ApiDoc;

/// [`deadline`] for calls whose failures are handled as store errors (the upload's line writes,
/// its publishes and its bookkeeping): a call past `limit` becomes `Unavailable`. The one
/// helper, `scorer_jobs::Deadline`, with the API's counter.
pub(crate) async fn bounded<T>(
    limit: std::time::Duration,
    service: &'static str,
    call: impl std::future::Future<Output = Result<T, scorer_jobs::StoreError>>,
) -> Result<T, scorer_jobs::StoreError> {
    scorer_jobs::Deadline::new(limit, scorer_jobs::deadline::API_TIMEOUTS)
        .run(service, call)
        .await
}

/// Runs one broker, Redis or Postgres call under a deadline: a dependency that does not answer
/// in time is treated like one that refuses (503), so a hung service never hangs a request.
pub(crate) async fn deadline<T>(
    limit: std::time::Duration,
    service: &'static str,
    call: impl std::future::Future<Output = Result<T, scorer_jobs::StoreError>>,
) -> Result<T, ApiError> {
    bounded(limit, service, call).await.map_err(ApiError::from)
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", uri.path()))
}

/// The API's routes over `state`; starts the batch sweep (every API process runs one).
pub async fn build_app(state: AppState) -> Router {
    // Install the recorder before the first request records anything.
    let _ = metrics::handle();
    routes::batches::lifecycle::spawn_sweeper(&state);
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/score", post(routes::score::score))
        .route("/v1/score/jobs", post(routes::jobs::submit))
        .route("/v1/score/jobs/{id}", get(routes::jobs::get))
        .route("/v1/score/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route(
            "/v1/batches",
            post(routes::batches::upload::create)
                // The upload is streamed line by line; this only caps its size.
                .layer(DefaultBodyLimit::max(state.config.batches.max_upload_bytes))
                .get(routes::batches::lifecycle::list),
        )
        .route("/v1/batches/{id}", get(routes::batches::lifecycle::get))
        .route(
            "/v1/batches/{id}/cancel",
            post(routes::batches::lifecycle::cancel),
        )
        .route(
            "/v1/batches/{id}/output",
            get(routes::batches::download::output),
        )
        .route(
            "/v1/batches/{id}/errors",
            get(routes::batches::download::errors),
        )
        .route("/v1/rerank", post(routes::rerank::v1))
        .route("/v2/rerank", post(routes::rerank::v2))
        .route("/rerank", post(routes::rerank::tei))
        .route("/v1/rerank/jobs", post(routes::rerank::submit_v1))
        .route("/v2/rerank/jobs", post(routes::rerank::submit_v2))
        .route("/rerank/jobs", post(routes::rerank::submit_tei))
        .route("/v1/rerank/jobs/{id}", get(routes::rerank::get_job))
        .route("/v1/models", get(routes::meta::models))
        .route("/health", get(routes::meta::health))
        .route("/ready", get(routes::meta::ready))
        .route("/metrics", get(routes::meta::metrics))
        .route("/openapi.json", get(routes::meta::openapi))
        .route("/docs", get(routes::meta::docs))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            server::body_deadline,
        ))
        // Outermost: every error answer, whoever made it, has the one JSON shape.
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
