//! Google's webhook: the verification handshake, then signed events. The
//! handler verifies, records and applies in one short transaction and
//! answers; it never calls out. Anything but a 200 makes Google retry, which
//! is what we want whenever we could not record the event.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::RawBody;
use super::AppState;
use crate::config::bare_agent_id;
use crate::domain::Input;
use crate::signature::{google_verify, secret_eq};
use crate::store::{Ingested, RbmEvent};

#[derive(Deserialize)]
struct Envelope {
    message: PubSubMessage,
}

#[derive(Deserialize)]
struct PubSubMessage {
    data: String,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
}

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let value: serde_json::Value = super::extract::parse(&body)?;
    if value.get("message").is_none() && value.get("clientToken").is_some() {
        return handshake(&state, &value);
    }
    let envelope: Envelope = serde_json::from_value(value)
        .map_err(|e| ApiError::InvalidJson(format!("not a webhook envelope: {e}")))?;

    let data = STANDARD
        .decode(envelope.message.data.trim())
        .or_else(|_| STANDARD_NO_PAD.decode(envelope.message.data.trim()))
        .map_err(|_| ApiError::BadSignature("message.data is not base64"))?;
    let signature = headers
        .get("x-goog-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::BadSignature("X-Goog-Signature header missing"))?;
    if !google_verify(state.settings.rbm.client_token.expose(), &data, signature) {
        tracing::warn!("rejected a Google webhook with a bad signature");
        return Err(ApiError::BadSignature("X-Goog-Signature does not match"));
    }

    let event: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| ApiError::InvalidJson(format!("message.data is not JSON: {e}")))?;
    if !event.is_object() {
        return Err(ApiError::InvalidJson(
            "message.data is not a JSON object".into(),
        ));
    }
    let text = |key: &str| event.get(key).and_then(|v| v.as_str());
    let launch_event = envelope
        .message
        .attributes
        .get("type")
        .and_then(|t| t.as_str())
        == Some("agent_launch_event");
    let event_type = if launch_event {
        "AGENT_LAUNCH"
    } else {
        text("eventType").unwrap_or("USER_MESSAGE")
    };
    let input = match event_type {
        "DELIVERED" => Some(Input::Delivered { read: false }),
        "READ" => Some(Input::Delivered { read: true }),
        "TTL_EXPIRATION_REVOKED" => Some(Input::TtlRevoked),
        "TTL_EXPIRATION_REVOKE_FAILED" => Some(Input::TtlRevokeFailed),
        _ => None,
    };
    // Only our own messages' events carry a messageId we assigned; a user
    // message's messageId is the phone's.
    let message_id = if input.is_some() {
        text("messageId")
    } else {
        None
    };
    let agent_id = text("agentId")
        .map(bare_agent_id)
        .unwrap_or(&state.settings.rbm.agent_id);
    let hashed;
    let event_key = match (
        text("eventId"),
        text("messageId"),
        &envelope.message.message_id,
    ) {
        (Some(id), _, _) => id,
        (None, Some(id), _) => id,
        (None, None, Some(id)) => id.as_str(),
        (None, None, None) => {
            hashed = format!("sha256:{:x}", Sha256::digest(&data));
            &hashed
        }
    };
    let ingested = state
        .store
        .ingest_rbm_event(
            &RbmEvent {
                agent_id,
                event_key,
                event_type,
                message_id,
                payload: &event,
            },
            input.as_ref(),
            &state.policy,
        )
        .await?;
    match &ingested {
        Ingested::Applied(a) => {
            tracing::info!(event_type, message_id = ?message_id, state = %a.message.state, "Google event applied")
        }
        Ingested::Duplicate => tracing::debug!(event_type, event_key, "duplicate Google event"),
        Ingested::Recorded => tracing::debug!(event_type, "Google event recorded"),
    }
    Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
}

/// Google proves we own the URL: echo its secret, but only if it knows our
/// client token.
fn handshake(state: &AppState, value: &serde_json::Value) -> Result<Response, ApiError> {
    let token = value
        .get("clientToken")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let secret = value
        .get("secret")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::InvalidJson("verification request without a secret".into()))?;
    if !secret_eq(token, state.settings.rbm.client_token.expose()) {
        tracing::warn!("refused a webhook verification with the wrong client token");
        return Err(ApiError::Forbidden("client token does not match"));
    }
    tracing::info!("answered Google's webhook verification");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        secret.to_owned(),
    )
        .into_response())
}
