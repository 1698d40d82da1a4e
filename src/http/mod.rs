//! The HTTP surface: the internal API, Google's and Twilio's webhooks, and
//! health checks, behind one set of limits (body size, time) and one error
//! format.

mod auth;
mod dashboard;
mod docs;
pub mod error;
mod extract;
pub mod messages;
mod metrics;
pub mod openapi;
mod operations;
mod rbm_webhook;
mod twilio_webhook;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::domain::Policy;
use crate::store::batch::{Batcher, Incoming};
use crate::store::{
    Applied, EventRow, Ingested, NewMessage, OutsideInput, RbmEvent, Registered, Store,
};
use error::ApiError;
use extract::BodyLimit;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub policy: Policy,
    pub writes: Writes,
    pub metrics: crate::metrics::Metrics,
}

impl AppState {
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        policy: Policy,
        metrics: crate::metrics::Metrics,
    ) -> AppState {
        let writes = Writes::start(&store, policy);
        AppState {
            store,
            settings,
            policy,
            writes,
            metrics,
        }
    }
}

/// The request handlers' writes, group-committed: concurrent requests share
/// a transaction (and its WAL flush) instead of each paying for its own,
/// which is what lets intake and webhooks keep up with PostgreSQL's commit
/// rate. Each request is still answered only once its write is committed.
#[derive(Clone)]
pub struct Writes {
    /// Answered with the history of what they created, read in the batch.
    pub registrations: Batcher<NewMessage, (Registered, Vec<EventRow>)>,
    pub rbm_events: Batcher<RbmEvent, Ingested>,
    pub sms_statuses: Batcher<OutsideInput, Option<Applied>>,
}

/// Most requests written in one transaction.
const GROUP_MAX: usize = 256;

impl Writes {
    fn start(store: &Store, policy: Policy) -> Writes {
        let flushes = store.group_flushes();
        let s = store.clone();
        let registrations =
            Batcher::start(GROUP_MAX, flushes, move |batch: Incoming<NewMessage>| {
                let s = s.clone();
                async move { s.register_batch_with_history(batch, &policy).await }
            });
        let s = store.clone();
        let rbm_events = Batcher::start(GROUP_MAX, flushes, move |batch: Incoming<RbmEvent>| {
            let s = s.clone();
            async move { s.ingest_rbm_events(batch).await }
        });
        let s = store.clone();
        let sms_statuses =
            Batcher::start(GROUP_MAX, flushes, move |batch: Incoming<OutsideInput>| {
                let s = s.clone();
                async move { s.apply_to_many(batch, &policy).await }
            });
        Writes {
            registrations,
            rbm_events,
            sms_statuses,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.settings.server.body_limit_bytes;
    // A full batch is up to a thousand registrations.
    let batch_limit = limit.saturating_mul(messages::MAX_BATCH / 10).max(limit);
    let timeout = state.settings.server.request_timeout;

    let api = Router::new()
        .route("/v1/messages", post(messages::create).get(messages::list))
        .merge(
            Router::new()
                .route("/v1/messages:batch", post(messages::create_batch))
                // Inner layers run last, so these override the global limit.
                .layer(DefaultBodyLimit::max(batch_limit))
                .layer(axum::Extension(BodyLimit(batch_limit))),
        )
        .route(
            "/v1/messages/{message_id}",
            get(messages::get).delete(messages::cancel),
        )
        .route("/v1/operations/stuck", get(operations::stuck))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));

    let webhooks = Router::new()
        .route("/webhooks/rbm", post(rbm_webhook::receive))
        .route("/webhooks/rbm/{agent_id}", post(rbm_webhook::receive_agent))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::time_rbm_ack,
        ))
        .merge(
            Router::new()
                .route("/webhooks/twilio/status", post(twilio_webhook::status))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    metrics::time_twilio_ack,
                )),
        );
    let operator = match state.settings.metrics.listen {
        None => operator_routes(&state),
        Some(_) => Router::new(),
    };

    Router::new()
        .merge(api)
        .merge(webhooks)
        .merge(operator)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::json))
        .route("/docs", get(openapi::docs))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(middleware::from_fn(move |req, next| {
            within(timeout, req, next)
        }))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a request handler panicked".into()).into_response()
        }))
        .layer(TraceLayer::new_for_http())
}

/// `/metrics` and `/dashboard`, on the main listener or on their own.
fn operator_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(dashboard::page))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token_or_query,
        ))
        .route("/metrics", get(metrics::scrape))
}

/// The router of the separate operator listener (`metrics.listen`).
pub fn operator_router(state: AppState) -> Router {
    let timeout = state.settings.server.request_timeout;
    operator_routes(&state)
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(middleware::from_fn(move |req, next| {
            within(timeout, req, next)
        }))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a request handler panicked".into()).into_response()
        }))
}

/// Answers 503 when a request outlives its budget, so a slow client or a
/// stuck dependency cannot hold a connection (or a database connection)
/// indefinitely.
async fn within(timeout: std::time::Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// `{"status": "ok"}` or, from `/readyz`, `{"status": "ready" | "unavailable", "reason"?}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: String,
    /// Why the service is not ready.
    #[schema(required = false)]
    reason: Option<String>,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    summary = "Liveness: the process runs",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Health))
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    summary = "Readiness: the database answers and every migration is applied",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = Health),
        (status = 503, description = "`{\"status\": \"unavailable\", \"reason\": …}`", body = Health),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.readiness().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "reason": reason })),
        )
            .into_response(),
    }
}
