//! Webhooks from the emulated RBM platform: the decoded event payloads, the
//! Pub/Sub-push envelope around them, the signature, and Google's retrying
//! delivery.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::{rfc3339, Inner, WebhookAttempt, WebhookRecord};
use crate::signature::google_sign;

/// Google caps its back-off between tries at 600 s.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// One event ready to go out: its exact decoded bytes (what is signed) and
/// what the delivery log needs to know about it.
#[derive(Clone)]
pub(super) struct Outgoing {
    data: Vec<u8>,
    /// The envelope's `attributes.type`. Only "agent_launch_event" is
    /// documented; the other names are unconfirmed, and receivers route on
    /// the decoded payload anyway.
    kind: &'static str,
    event_id: String,
    event_type: String,
    message_id: String,
    phone: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserEvent<'a> {
    sender_phone_number: &'a str,
    event_type: &'a str,
    event_id: &'a str,
    message_id: &'a str,
    send_time: String,
    agent_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerEvent<'a> {
    phone_number: &'a str,
    agent_id: &'a str,
    message_id: &'a str,
    event_type: &'a str,
    event_id: &'a str,
    send_time: String,
}

/// Google's event ids look like "MxAbCd…": a short prefix and 22 random
/// base62 characters. Random (not seeded) so ids never collide across
/// emulators, since receivers dedupe on them.
fn event_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = uuid::Uuid::new_v4().as_u128();
    let mut id = String::from("Mx");
    for _ in 0..22 {
        id.push(char::from(ALPHABET[(n % 62) as usize]));
        n /= 62;
    }
    id
}

pub(super) fn user_event(agent: &str, phone: &str, message_id: &str, event_type: &str) -> Outgoing {
    let id = event_id();
    let ev = UserEvent {
        sender_phone_number: phone,
        event_type,
        event_id: &id,
        message_id,
        send_time: rfc3339(Utc::now()),
        agent_id: agent,
    };
    Outgoing {
        data: to_bytes(&ev),
        kind: "user_event",
        event_type: event_type.to_owned(),
        message_id: message_id.to_owned(),
        phone: phone.to_owned(),
        event_id: id,
    }
}

pub(super) fn server_event(
    agent: &str,
    phone: &str,
    message_id: &str,
    event_type: &str,
) -> Outgoing {
    let id = event_id();
    let ev = ServerEvent {
        phone_number: phone,
        agent_id: agent,
        message_id,
        event_type,
        event_id: &id,
        send_time: rfc3339(Utc::now()),
    };
    Outgoing {
        data: to_bytes(&ev),
        kind: "server_event",
        event_type: event_type.to_owned(),
        message_id: message_id.to_owned(),
        phone: phone.to_owned(),
        event_id: id,
    }
}

fn to_bytes<T: Serialize>(ev: &T) -> Vec<u8> {
    // Serialising a struct of strings into memory cannot fail.
    serde_json::to_vec(ev).unwrap_or_default()
}

impl Outgoing {
    /// A crafted event, sent as given.
    pub(super) fn crafted(event: &Value) -> Self {
        let data = event.to_string().into_bytes();
        let field = |name: &str| {
            event
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let kind = if event.get("phoneNumber").is_some() {
            "server_event"
        } else if event.get("eventType").is_some() {
            "user_event"
        } else {
            "message"
        };
        let phone = match field("senderPhoneNumber") {
            p if p.is_empty() => field("phoneNumber"),
            p => p,
        };
        Self {
            data,
            kind,
            event_id: field("eventId"),
            event_type: field("eventType"),
            message_id: field("messageId"),
            phone,
        }
    }

    pub(super) fn message_id(&self) -> &str {
        &self.message_id
    }

    pub(super) fn event_type(&self) -> &str {
        &self.event_type
    }

    pub(super) fn record(&self, attempts: u32, status: Option<u16>) -> WebhookRecord {
        WebhookRecord {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            message_id: self.message_id.clone(),
            phone: self.phone.clone(),
            attempts,
            status,
        }
    }
}

/// A Pub/Sub message id: a long decimal number, fresh for every message.
fn pubsub_message_id() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 9_000_000_000_000_000 + 1_000_000_000_000_000;
    n.to_string()
}

/// The push envelope and its `X-Goog-Signature`, which covers the decoded
/// `data` bytes, not the HTTP body.
pub(super) fn envelope(inner: &Inner, out: &Outgoing) -> (String, String) {
    let id = pubsub_message_id();
    let published = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let body = json!({
        "message": {
            "data": B64.encode(&out.data),
            "attributes": {
                "product": "RBM",
                "business_id": inner.agent_email(),
                "type": out.kind,
            },
            "messageId": id,
            "message_id": id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": "projects/rbm-sandbox/subscriptions/rbm-agent",
    });
    (
        body.to_string(),
        google_sign(&inner.client_token, &out.data),
    )
}

pub(super) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: String,
    signature: &str,
) -> anyhow::Result<u16> {
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Goog-Signature", signature)
        .body(body)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// Delivers as Google does: only a literal 200 counts; anything else, or no
/// answer, is retried after a doubling delay. The URL is read at each try so
/// a webhook configured late still receives what queued up before.
pub(super) async fn deliver(inner: Arc<Inner>, out: Outgoing) {
    // One envelope for every try: a Pub/Sub redelivery keeps its messageId.
    let (body, sig) = envelope(&inner, &out);
    let mut delay = inner.retry_base;
    let mut attempts = 0;
    let mut status;
    let cap = inner.retry_cap.min(MAX_RETRY_DELAY);
    let start = inner.webhook_start();
    loop {
        let url = inner.webhook_url_for(start, attempts);
        attempts += 1;
        status = match &url {
            Some(url) => match post(&inner.http, url, body.clone(), &sig).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(error = %e, event = %out.event_type, "webhook not answered");
                    None
                }
            },
            None => None,
        };
        if let Some(url) = url {
            inner.st().webhook_attempts.push(WebhookAttempt {
                event_id: out.event_id.clone(),
                event_type: out.event_type.clone(),
                message_id: out.message_id.clone(),
                url,
                at: Utc::now(),
                status,
            });
        }
        if status == Some(200) || attempts >= inner.max_attempts {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(cap);
    }
    if status != Some(200) {
        tracing::warn!(event_id = %out.event_id, attempts, ?status, "webhook dropped");
    }
    inner.record_webhook(out.record(attempts, status));
}
