//! Twilio's status callbacks, verified against the URL we gave Twilio (built
//! from the configured public URL, never from proxy headers) and applied
//! monotonically by the state machine.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};

use super::error::ApiError;
use super::extract::RawBody;
use super::AppState;
use crate::domain::{Input, SmsStatus};
use crate::signature::twilio_verify;
use crate::store::Caller;

pub async fn status(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<StatusCode, ApiError> {
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::InvalidBody(format!("not a form-encoded body: {e}")))?;
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Forbidden("X-Twilio-Signature header missing"))?;
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{}{}", state.settings.server.public_url, path_and_query);
    if !twilio_verify(
        state.settings.twilio.auth_token.expose(),
        &url,
        &params,
        signature,
    ) {
        tracing::warn!("rejected a Twilio callback with a bad signature");
        return Err(ApiError::Forbidden("X-Twilio-Signature does not match"));
    }

    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let message_id: Option<String> = uri.query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "message_id")
            .map(|(_, v)| v)
    });
    let (Some(message_id), Some(sid), Some(status_text)) =
        (message_id, param("MessageSid"), param("MessageStatus"))
    else {
        // Signed by Twilio but not one of ours: nothing to apply, and a
        // non-2xx would only make Twilio retry.
        tracing::warn!("Twilio callback without message_id, MessageSid or MessageStatus");
        return Ok(StatusCode::OK);
    };
    let Some(status) = SmsStatus::parse(status_text) else {
        tracing::info!(status = status_text, "ignoring an unknown Twilio status");
        return Ok(StatusCode::OK);
    };
    let detail = serde_json::json!({
        "sid": sid,
        "status": status_text,
        "error_code": param("ErrorCode"),
    });
    let input = Input::SmsStatus {
        sid: sid.to_owned(),
        status,
    };
    match state
        .store
        .apply_to(&message_id, Caller::Outside, &input, detail, &state.policy)
        .await?
    {
        Some(applied) => {
            tracing::info!(%message_id, sid, status = status_text, state = %applied.message.state, "Twilio status applied")
        }
        None => tracing::warn!(%message_id, sid, "Twilio status for an unknown message"),
    }
    Ok(StatusCode::OK)
}
