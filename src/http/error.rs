//! The one place where errors become HTTP answers: always
//! `{"error": {"code", "message", "field"?}}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    InvalidJson(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("expected Content-Type {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("invalid signature: {0}")]
    BadSignature(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no route for this method and path")]
    NoRoute,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("the request took too long")]
    Timeout,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// Every error answer of the service.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `unauthorized`, `invalid_json`, `invalid_body`,
    /// `invalid_field`, `invalid_query`, `not_found`, `message_id_conflict`,
    /// `not_cancellable`, `payload_too_large`, `unsupported_media_type`,
    /// `invalid_signature`, `forbidden`, `no_route`, `method_not_allowed`,
    /// `timeout`, `unavailable` or `internal`.
    #[schema(example = "invalid_field")]
    pub code: String,
    /// For people: what is wrong.
    #[schema(example = "must not be empty")]
    pub message: String,
    /// With `invalid_field` only: the field at fault, as a path.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false, example = "sms.body")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &str) {
        use ApiError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Conflict { code, .. } => (StatusCode::CONFLICT, code),
            PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            BadSignature(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            ApiError::Unavailable("the database is unreachable; retry later".into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl ApiError {
    /// The status and the `{"error": …}` body, for answers that carry
    /// several errors (the batch endpoint's items).
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, code) = self.parts();
        let message = match self {
            // Details of a 500 go to the log, not to the client.
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; see the service log".to_owned()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "answering 503");
                self.to_string()
            }
            ApiError::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let field = match self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
                field,
            },
        };
        (
            status,
            serde_json::to_value(body).expect("plain data serializes"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED && matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
