//! Bearer-token authentication of the internal API.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;
use crate::signature::secret_eq;

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    // Compare against every token, so timing does not tell which one matched.
    let mut ok = false;
    for token in &state.settings.server.api_tokens {
        ok |= secret_eq(presented, token.expose());
    }
    if ok {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}
