//! Google's webhook: the verification handshake, then signed events. The
//! handler verifies, records in one statement and answers (the applier
//! applies the event right after, see `store::rbm_events`); it never calls
//! out. Anything but a 200 makes Google retry, which
//! is what we want whenever we could not record the event.
//!
//! Decoding and verifying is a pure function, [`decode_for`], so that it can be
//! fuzzed directly; the handler only adds the database.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::RawBody;
use super::messages::validate_message_id;
use super::openapi::{NotFound, PayloadTooLarge, Unavailable};
use super::AppState;
use crate::config::bare_agent_id;
use crate::domain::Input;
use crate::signature::{google_verify, secret_eq};
use crate::store::{Ingested, RbmEvent};

/// The longest agent id or event key stored as is. Both form the primary key
/// of `rbm_events`, and PostgreSQL refuses index entries of more than about
/// 2.7 kB, so a longer one is stored as its digest instead.
const MAX_KEY_BYTES: usize = 256;

/// A signed event, in a Pub/Sub push envelope.
#[derive(Deserialize, ToSchema)]
#[schema(as = RbmEventEnvelope)]
pub(crate) struct Envelope {
    message: PubSubMessage,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = RbmPubSubMessage)]
pub(crate) struct PubSubMessage {
    /// The event JSON, base64-encoded; `X-Goog-Signature` signs its bytes.
    data: String,
    /// `type: agent_launch_event` marks an agent launch event.
    #[serde(default)]
    #[schema(value_type = Object)]
    attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
}

/// Google's verification handshake, sent when the webhook URL is set.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RbmVerification)]
#[allow(dead_code)] // Documents the body; `handshake` reads it as JSON.
pub(crate) struct Verification {
    /// Must equal `rbm.client_token`.
    client_token: String,
    /// Answered back as the body of the 200.
    secret: String,
}

/// What Google posts: the handshake once, then events.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(as = RbmWebhookRequest)]
#[allow(dead_code)] // Documents the body; `decode` reads it without this type.
pub(crate) enum WebhookRequest {
    Verification(Verification),
    Event(Envelope),
}

/// A webhook request, decoded and verified.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Google's verification handshake, with the right client token: answer
    /// with this secret.
    Handshake {
        secret: String,
    },
    Event(Event),
}

/// A signed event, in the form it is stored: text free of NUL characters
/// (PostgreSQL text and jsonb cannot hold them) and keys short enough to index.
#[derive(Debug, PartialEq)]
pub(crate) struct Event {
    /// Bare agent id.
    pub agent_id: String,
    pub event_key: String,
    pub event_type: String,
    /// Our message id, for events that can concern one of our messages and
    /// name an id we could have registered.
    pub message_id: Option<String>,
    pub input: Option<Input>,
    pub payload: serde_json::Value,
}

/// Decodes a webhook request and checks its signature (or, for the
/// handshake, its client token). Never panics, whatever the input.
#[cfg(test)]
pub(crate) fn decode(
    body: &[u8],
    headers: &HeaderMap,
    client_token: &str,
    default_agent: &str,
) -> Result<Decoded, ApiError> {
    decode_for(body, headers, &[(default_agent, client_token)], None)
}

/// As [`decode`] for a deployment of several agents, given as (bare id,
/// client token). The request must be signed with the token of `only` if
/// given, else with any agent's; its event is that agent's. An event that
/// names another configured agent than the one whose token signed it is
/// refused: one agent's token must not speak for another.
pub(crate) fn decode_for(
    body: &[u8],
    headers: &HeaderMap,
    agents: &[(&str, &str)],
    only: Option<&str>,
) -> Result<Decoded, ApiError> {
    let candidates: Vec<(&str, &str)> = agents
        .iter()
        .copied()
        .filter(|(id, _)| only.is_none_or(|o| o == *id))
        .collect();
    let value: serde_json::Value = super::extract::parse(body)?;
    if value.get("message").is_none() && value.get("clientToken").is_some() {
        return handshake(&value, &candidates);
    }
    let envelope: Envelope = serde_json::from_value(value)
        .map_err(|e| ApiError::InvalidJson(format!("not a webhook envelope: {e}")))?;

    let data = STANDARD
        .decode(envelope.message.data.trim())
        .or_else(|_| STANDARD_NO_PAD.decode(envelope.message.data.trim()))
        .map_err(|_| ApiError::BadSignature("message.data is not base64"))?;
    let mut signatures = headers.get_all("x-goog-signature").iter();
    let signature = match (signatures.next(), signatures.next()) {
        (Some(only), None) => only
            .to_str()
            .map_err(|_| ApiError::BadSignature("X-Goog-Signature is not base64"))?,
        (None, _) => return Err(ApiError::BadSignature("X-Goog-Signature header missing")),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadSignature(
                "more than one X-Goog-Signature header",
            ))
        }
    };
    // Every token is tried, so timing does not tell which one matched.
    let mut signer = None;
    for (id, token) in &candidates {
        if google_verify(token, &data, signature) && signer.is_none() {
            signer = Some(*id);
        }
    }
    let Some(signer) = signer else {
        tracing::warn!("rejected a Google webhook with a bad signature");
        return Err(ApiError::BadSignature("X-Goog-Signature does not match"));
    };

    let event: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| ApiError::InvalidJson(format!("message.data is not JSON: {e}")))?;
    if !event.is_object() {
        return Err(ApiError::InvalidJson(
            "message.data is not a JSON object".into(),
        ));
    }
    let event = without_nul(event);
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
    let input = Input::from_rbm_event(event_type);
    // Only our own messages' events carry a messageId we assigned; a user
    // message's messageId is the phone's. An id we would have refused at
    // registration cannot be one of ours.
    let message_id = if input.is_some() {
        text("messageId").filter(|id| validate_message_id(id).is_ok())
    } else {
        None
    };
    let agent_id = text("agentId").map_or(signer, bare_agent_id);
    if agent_id != signer && agents.iter().any(|(id, _)| *id == agent_id) {
        tracing::warn!(
            signer,
            agent_id,
            "refused a Google event signed with another agent's client token"
        );
        return Err(ApiError::Forbidden(
            "the event names another agent than the one whose client token signed it",
        ));
    }
    let event_key = match (
        text("eventId"),
        text("messageId"),
        envelope.message.message_id.as_deref(),
    ) {
        (Some(id), _, _) | (None, Some(id), _) | (None, None, Some(id)) => key(id),
        (None, None, None) => digest(&data),
    };
    Ok(Decoded::Event(Event {
        agent_id: key(agent_id),
        event_key,
        event_type: key(event_type),
        message_id: message_id.map(str::to_owned),
        input,
        payload: event,
    }))
}

/// Google proves we own the URL: echo its secret, but only if it knows our
/// client token.
fn handshake(value: &serde_json::Value, agents: &[(&str, &str)]) -> Result<Decoded, ApiError> {
    let token = value
        .get("clientToken")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let secret = value
        .get("secret")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::InvalidJson("verification request without a secret".into()))?;
    let mut known = false;
    for (_, client_token) in agents {
        known |= secret_eq(token, client_token);
    }
    if !known {
        tracing::warn!("refused a webhook verification with the wrong client token");
        return Err(ApiError::Forbidden("client token does not match"));
    }
    Ok(Decoded::Handshake {
        secret: secret.to_owned(),
    })
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A key column's value: NUL-free (by now) and short enough to index.
fn key(text: &str) -> String {
    if text.len() > MAX_KEY_BYTES {
        digest(text.as_bytes())
    } else {
        text.to_owned()
    }
}

/// The same JSON with every NUL character (in keys and strings) replaced by
/// U+FFFD: PostgreSQL's jsonb and text cannot store NUL, and a user's text
/// message may well contain one.
fn without_nul(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn clean(s: String) -> String {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s
        }
    }
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The headers the agent's own endpoint needs to verify the webhook as if
/// Google had sent it: the signature over the decoded data, and the type.
fn relayed_headers(headers: &HeaderMap) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for name in ["content-type", "x-goog-signature"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.to_owned(), value.into());
        }
    }
    serde_json::Value::Object(out)
}

#[utoipa::path(
    post,
    path = "/webhooks/rbm",
    tag = "webhooks",
    operation_id = "rbmWebhook",
    summary = "Google's RBM webhook: the verification handshake, then signed events",
    description = "Every signed event is recorded before the 200 (duplicates included); any other answer makes Google deliver it again.",
    params(("X-Goog-Signature" = Option<String>, Header, description = "Base64 HMAC-SHA512 of the decoded `message.data`, keyed with the client token; required for events.")),
    request_body(content = WebhookRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The handshake's `secret` as text, or `{}` once an event is recorded.", content(
            (String = "text/plain"),
            (Object = "application/json"),
        )),
        (status = 400, description = "`invalid_json`: not JSON, not an envelope, or an event that is not a JSON object; `invalid_body`: unreadable body.", body = ErrorBody),
        (status = 401, description = "`invalid_signature`: `X-Goog-Signature` missing, repeated or wrong; nothing was recorded.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a handshake with the wrong client token.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    receive_for(state, None, headers, body).await
}

#[utoipa::path(
    post,
    path = "/webhooks/rbm/{agent_id}",
    tag = "webhooks",
    operation_id = "rbmAgentWebhook",
    summary = "One agent's RBM webhook: as /webhooks/rbm, verified with that agent's client token only",
    description = "Set this URL in the RBM console when a deployment serves several agents. Every signed event is recorded before the 200; any other answer makes Google deliver it again.",
    params(
        ("agent_id" = String, Path, description = "A configured agent, with or without `@rbm.goog`."),
        ("X-Goog-Signature" = Option<String>, Header, description = "Base64 HMAC-SHA512 of the decoded `message.data`, keyed with this agent's client token; required for events."),
    ),
    request_body(content = WebhookRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The handshake's `secret` as text, or `{}` once an event is recorded.", content(
            (String = "text/plain"),
            (Object = "application/json"),
        )),
        (status = 400, description = "`invalid_json`: not JSON, not an envelope, or an event that is not a JSON object; `invalid_body`: unreadable body.", body = ErrorBody),
        (status = 401, description = "`invalid_signature`: `X-Goog-Signature` missing, repeated or not this agent's; nothing was recorded.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a handshake with the wrong client token, or an event naming another configured agent; nothing was recorded.", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    )
)]
pub async fn receive_agent(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let Some(agent) = state.settings.agent(&agent_id) else {
        let shown: String = agent_id.chars().take(128).collect();
        return Err(ApiError::NotFound(format!("no agent {shown:?}")));
    };
    let only = agent.id.clone();
    receive_for(state, Some(&only), headers, body).await
}

async fn receive_for(
    state: AppState,
    only: Option<&str>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let agents: Vec<(&str, &str)> = state
        .settings
        .agents
        .iter()
        .map(|a| (a.id.as_str(), a.client_token.expose()))
        .collect();
    let event = match decode_for(&body, &headers, &agents, only)? {
        Decoded::Handshake { secret } => {
            tracing::info!("answered Google's webhook verification");
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                secret,
            )
                .into_response());
        }
        Decoded::Event(event) => event,
    };
    let (event_type, message_id, event_key) = (
        event.event_type.clone(),
        event.message_id.clone(),
        event.event_key.clone(),
    );
    let relay = crate::outbox::relay_url_for(&state.settings, &event.agent_id).map(|url| {
        crate::outbox::Relay {
            url: url.to_owned(),
            agent_id: event.agent_id.clone(),
            headers: relayed_headers(&headers),
            body: body.to_vec(),
        }
    });
    let ingested = state
        .writes
        .rbm_events
        .submit(RbmEvent {
            agent_id: event.agent_id,
            event_key: event.event_key,
            event_type: event.event_type,
            message_id: event.message_id,
            payload: event.payload,
            relay,
        })
        .await?;
    match ingested {
        Ingested::Duplicate => {
            tracing::debug!(event_type, %event_key, "duplicate Google event")
        }
        Ingested::Recorded => {
            tracing::debug!(event_type, message_id = ?message_id, "Google event recorded")
        }
    }
    Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::google_sign;
    use axum::http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::json;

    const TOKEN: &str = "client-token-for-tests";
    const AGENT: &str = "my-agent";

    fn signed(data: &[u8]) -> (Vec<u8>, HeaderMap) {
        let body = json!({ "message": { "data": STANDARD.encode(data) } })
            .to_string()
            .into_bytes();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-goog-signature",
            HeaderValue::from_str(&google_sign(TOKEN, data)).unwrap(),
        );
        (body, headers)
    }

    fn event(v: &serde_json::Value) -> Event {
        let (body, headers) = signed(v.to_string().as_bytes());
        match decode(&body, &headers, TOKEN, AGENT) {
            Ok(Decoded::Event(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_signed_delivered_names_our_message() {
        let e = event(&json!({ "eventType": "DELIVERED", "eventId": "ev1",
                               "messageId": "m-1", "agentId": "my-agent@rbm.goog" }));
        assert_eq!(e.agent_id, "my-agent");
        assert_eq!(e.event_key, "ev1");
        assert_eq!(e.event_type, "DELIVERED");
        assert_eq!(e.message_id.as_deref(), Some("m-1"));
        assert_eq!(e.input, Some(Input::Delivered { read: false }));
    }

    #[test]
    fn nul_characters_and_huge_keys_are_made_storable() {
        let e = event(&json!({ "eventType": "X\u{0}", "eventId": "k".repeat(5000),
                               "agentId": "a\u{0}".repeat(300), "text": "hi\u{0}",
                               "n\u{0}": ["\u{0}"] }));
        assert_eq!(e.event_type, "X\u{FFFD}");
        assert!(e.event_key.starts_with("sha256:") && e.event_key.len() < 100);
        assert!(e.agent_id.starts_with("sha256:"));
        assert_eq!(e.payload["text"], "hi\u{FFFD}");
        assert_eq!(e.payload["n\u{FFFD}"][0], "\u{FFFD}");
        assert!(!e.payload.to_string().contains("\\u0000"));
        // A message id we could never have registered names none of ours.
        let e = event(&json!({ "eventType": "READ", "eventId": "e", "messageId": "a\u{0}b" }));
        assert_eq!(e.message_id, None);
        assert_eq!(e.input, Some(Input::Delivered { read: true }));
    }

    #[test]
    fn signature_headers_must_be_exactly_one_valid_value() {
        let data = json!({ "eventType": "DELIVERED", "eventId": "e" }).to_string();
        let (body, good) = signed(data.as_bytes());
        let sig = good["x-goog-signature"].clone();
        let mut two_same = good.clone();
        two_same.append("x-goog-signature", sig.clone());
        let mut good_then_junk = good.clone();
        good_then_junk.append("x-goog-signature", HeaderValue::from_static("junk"));
        let mut junk_then_good = HeaderMap::new();
        junk_then_good.append("x-goog-signature", HeaderValue::from_static("junk"));
        junk_then_good.append("x-goog-signature", sig.clone());
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert("x-goog-signature", HeaderValue::from_bytes(v).unwrap());
            h
        };
        let s = sig.as_bytes();
        let cases = [
            ("two identical", two_same),
            ("good then junk", good_then_junk),
            ("junk then good", junk_then_good),
            ("trailing garbage", with(&[s, b"x"].concat())),
            ("inner space", with(&[&s[..10], b" ", &s[10..]].concat())),
            ("extra padding", with(&[s, b"=="].concat())),
            ("obs-text", with(&[s, b"\xff"].concat())),
            ("none", HeaderMap::new()),
        ];
        for (case, headers) in cases {
            let got = decode(&body, &headers, TOKEN, AGENT);
            assert!(
                matches!(got, Err(ApiError::BadSignature(_))),
                "{case}: {got:?}"
            );
        }
        assert!(decode(&body, &good, TOKEN, AGENT).is_ok());
    }

    #[test]
    fn the_handshake_needs_the_token() {
        let ok = json!({ "clientToken": TOKEN, "secret": "s" }).to_string();
        assert_eq!(
            decode(ok.as_bytes(), &HeaderMap::new(), TOKEN, AGENT).unwrap(),
            Decoded::Handshake { secret: "s".into() }
        );
        let wrong = json!({ "clientToken": "x", "secret": "s" }).to_string();
        assert!(matches!(
            decode(wrong.as_bytes(), &HeaderMap::new(), TOKEN, AGENT),
            Err(ApiError::Forbidden(_))
        ));
    }

    /// Any JSON value, nested a few levels.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
            prop_oneof![
                Just("DELIVERED"),
                Just("READ"),
                Just("TTL_EXPIRATION_REVOKED"),
                Just("TTL_EXPIRATION_REVOKE_FAILED"),
                Just("IS_TYPING"),
                Just("")
            ]
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("eventType".to_owned()),
                        Just("eventId".to_owned()),
                        Just("messageId".to_owned()),
                        Just("agentId".to_owned()),
                        ".{0,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn checked(e: &Event) -> Result<(), TestCaseError> {
        for text in [&e.agent_id, &e.event_key, &e.event_type] {
            prop_assert!(text.len() <= MAX_KEY_BYTES && !text.contains('\0'), "{e:?}");
        }
        prop_assert!(!e.payload.to_string().contains("\\u0000"), "{e:?}");
        if let Some(id) = &e.message_id {
            prop_assert!(validate_message_id(id).is_ok(), "{e:?}");
            prop_assert!(e.input.is_some(), "{e:?}");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary bytes, with or without a signature header of arbitrary
        /// bytes: never a panic, never an event unless a signature verified.
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300),
                                       sig in prop::option::of(prop::collection::vec(any::<u8>(), 0..100))) {
            let mut headers = HeaderMap::new();
            if let Some(v) = sig.as_ref().and_then(|s| HeaderValue::from_bytes(s).ok()) {
                headers.insert("x-goog-signature", v);
            }
            let got = decode(&body, &headers, TOKEN, AGENT);
            prop_assert!(!matches!(got, Ok(Decoded::Event(_))), "{got:?}");
        }

        /// Envelopes around arbitrary base64 (and not-quite-base64) data.
        #[test]
        fn random_envelopes_are_refused_unless_signed(data in prop::collection::vec(any::<u8>(), 0..200),
                                                       garble in prop::option::of(".{0,4}"),
                                                       sign in any::<bool>()) {
            let mut encoded = STANDARD.encode(&data);
            if let Some(g) = &garble { encoded.push_str(g); }
            let body = json!({ "message": { "data": encoded } }).to_string();
            let mut headers = HeaderMap::new();
            if sign {
                headers.insert("x-goog-signature",
                    HeaderValue::from_str(&google_sign(TOKEN, &data)).unwrap());
            }
            match decode(body.as_bytes(), &headers, TOKEN, AGENT) {
                Ok(Decoded::Event(e)) => {
                    prop_assert!(sign);
                    checked(&e)?;
                }
                Ok(other) => prop_assert!(false, "{other:?}"),
                Err(_) => {}
            }
        }

        /// Any signed JSON event decodes into something storable; the same
        /// data with one byte changed under the original signature is refused.
        #[test]
        fn signed_events_are_storable_and_tampering_is_caught(v in json_value(),
                                                              at in any::<prop::sample::Index>(),
                                                              flip in 1u8..=255) {
            let data = v.to_string();
            let (body, headers) = signed(data.as_bytes());
            match decode(&body, &headers, TOKEN, AGENT) {
                Ok(Decoded::Event(e)) => {
                    prop_assert!(v.is_object());
                    checked(&e)?;
                }
                Ok(other) => prop_assert!(false, "{other:?}"),
                Err(e) => prop_assert!(!v.is_object(), "{e:?}"),
            }
            let mut tampered = data.into_bytes();
            let i = at.index(tampered.len());
            tampered[i] ^= flip;
            let body = json!({ "message": { "data": STANDARD.encode(&tampered) } }).to_string();
            let got = decode(body.as_bytes(), &headers, TOKEN, AGENT);
            prop_assert!(matches!(got, Err(ApiError::BadSignature(_))), "{got:?}");
        }
    }

    #[test]
    fn an_event_belongs_to_the_agent_whose_token_signed_it() {
        let agents = [(AGENT, TOKEN), ("agent-b", "token-of-agent-b")];
        let claiming = |agent: &str| {
            json!({ "eventType": "DELIVERED", "eventId": "e", "messageId": "m",
                    "agentId": format!("{agent}@rbm.goog") })
            .to_string()
        };
        // Signed with A's token (see `signed`).
        let (body, headers) = signed(claiming("agent-b").as_bytes());
        assert!(matches!(
            decode_for(&body, &headers, &agents, None),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            decode_for(&body, &headers, &agents, Some("agent-b")),
            Err(ApiError::BadSignature(_))
        ));
        let (body, headers) = signed(claiming(AGENT).as_bytes());
        match decode_for(&body, &headers, &agents, None).unwrap() {
            Decoded::Event(e) => assert_eq!(e.agent_id, AGENT),
            other => panic!("{other:?}"),
        }
        // An agent this deployment does not serve is recorded as before.
        let (body, headers) = signed(claiming("elsewhere").as_bytes());
        assert!(decode_for(&body, &headers, &agents, None).is_ok());
    }
}
