//! `/metrics`, and the timing of webhook acknowledgements.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Unauthenticated: it carries counts and timings, never a message id or a
/// phone number.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.store).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// Times Google's webhook up to its answer, which comes after the event is
/// committed: the delay Google sees before its event counts as delivered.
pub async fn time_rbm_ack(State(state): State<AppState>, req: Request, next: Next) -> Response {
    timed("rbm", &state, req, next).await
}

pub async fn time_twilio_ack(State(state): State<AppState>, req: Request, next: Next) -> Response {
    timed("twilio", &state, req, next).await
}

async fn timed(source: &'static str, state: &AppState, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .webhook_ack(source, response.status().as_u16(), started.elapsed());
    response
}
