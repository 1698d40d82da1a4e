//! Twilio's status callbacks, verified against the URL we gave Twilio (built
//! from the configured public URL, never from proxy headers) and applied
//! monotonically by the state machine.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};

use super::error::{ApiError, ErrorBody};
use super::extract::RawBody;
use super::messages::validate_message_id;
use super::openapi::{PayloadTooLarge, Unavailable};
use super::AppState;
use crate::domain::{Input, SmsStatus};
use crate::signature::twilio_verify;
use crate::store::OutsideInput;

/// A status callback, as Twilio posts it (only the fields this service reads).
#[derive(utoipa::ToSchema)]
#[schema(as = TwilioStatusCallback)]
#[allow(dead_code, non_snake_case)] // Documents the form; the handler reads it as pairs.
pub(crate) struct StatusForm {
    /// The SMS's sid.
    MessageSid: String,
    /// `queued`, `sent`, `delivered`, `undelivered`, `failed`, ….
    MessageStatus: String,
    /// Twilio's error code, with `undelivered` and `failed`.
    #[schema(required = false)]
    ErrorCode: String,
}

#[utoipa::path(
    post,
    path = "/webhooks/twilio/status",
    tag = "webhooks",
    operation_id = "twilioStatus",
    summary = "Twilio's status callbacks for the SMS sent",
    description = "Signed callbacks are applied monotonically (a late `sent` never replaces `delivered`) and answered 200, also when they name nothing of ours.",
    params(
        ("message_id" = Option<String>, Query, description = "The message the callback is about, as put in the StatusCallback URL."),
        ("X-Twilio-Signature" = String, Header, description = "Twilio's signature of the public URL and the form."),
    ),
    request_body(content = StatusForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Applied, or nothing to apply."),
        (status = 400, description = "`invalid_body`: not a form-encoded body.", body = ErrorBody),
        (status = 403, description = "`forbidden`: `X-Twilio-Signature` missing, repeated or wrong.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<StatusCode, ApiError> {
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::InvalidBody(format!("not a form-encoded body: {e}")))?;
    // One signature, no more: a second header could only be an attempt to
    // slip a different value past a check that reads the first.
    let mut signatures = headers.get_all("x-twilio-signature").iter();
    let signature = match (signatures.next(), signatures.next()) {
        (Some(only), None) => only.to_str().unwrap_or_default(),
        (None, _) => return Err(ApiError::Forbidden("X-Twilio-Signature header missing")),
        (Some(_), Some(_)) => {
            return Err(ApiError::Forbidden(
                "more than one X-Twilio-Signature header",
            ))
        }
    };
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
    // Signed, so from Twilio; but only what our own messages and Twilio's
    // sids can look like may reach the database (which cannot store NUL
    // characters, nor index values of any length).
    if validate_message_id(&message_id).is_err() || !plausible_sid(sid) {
        tracing::warn!("Twilio callback naming no message or SMS of ours");
        return Ok(StatusCode::OK);
    }
    let Some(status) = SmsStatus::parse(status_text) else {
        let shown: String = status_text.chars().take(32).collect();
        tracing::info!(status = %shown.escape_debug(), "ignoring an unknown Twilio status");
        return Ok(StatusCode::OK);
    };
    let detail = serde_json::json!({
        "sid": sid,
        "status": status_text,
        "error_code": param("ErrorCode").filter(|c| plausible_sid(c)),
    });
    let input = Input::SmsStatus {
        sid: sid.to_owned(),
        status,
    };
    let applied = state
        .writes
        .sms_statuses
        .submit(OutsideInput {
            message_id: message_id.clone(),
            input,
            detail,
        })
        .await?;
    match applied {
        Some(applied) => {
            tracing::info!(%message_id, sid, status = status_text, state = %applied.message.state, "Twilio status applied")
        }
        None => tracing::warn!(%message_id, sid, "Twilio status for an unknown message"),
    }
    Ok(StatusCode::OK)
}

/// Twilio's sids (`SM…`, `MM…`) and error codes are short and alphanumeric.
fn plausible_sid(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}
