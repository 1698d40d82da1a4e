//! Outcome callbacks: which transitions owe the agent an event, and its JSON.

use chrono::SecondsFormat;

use crate::domain::State;
use crate::store::MessageRow;

/// The callbacks a transition from `before` to `after` owes: a
/// `message.sms_status` event when the SMS status changed, and a
/// `message.outcome` event when the message reached a final state (or its
/// outcome changed while final, as when a late DELIVERED makes `sms` into
/// `both`). None when the message has no callback URL and no default is
/// configured. They are queued in the transition's own transaction.
pub fn callbacks_for_step(
    default_url: Option<&str>,
    before: &MessageRow,
    after: &MessageRow,
) -> Vec<Callback> {
    let Some(url) = after.callback_url.as_deref().or(default_url) else {
        return Vec::new();
    };
    let mut owed = Vec::new();
    let is_final = after.state.parse::<State>().is_ok_and(State::is_final);
    if after.sms_status.is_some() && after.sms_status != before.sms_status {
        owed.push(Callback {
            url: url.to_owned(),
            body: event("message.sms_status", after),
        });
    }
    if is_final && (after.state != before.state || after.outcome != before.outcome) {
        owed.push(Callback {
            url: url.to_owned(),
            body: event("message.outcome", after),
        });
    }
    owed
}

/// A callback to queue.
#[derive(Debug)]
pub struct Callback {
    pub url: String,
    pub body: Vec<u8>,
}

fn event(kind: &str, m: &MessageRow) -> Vec<u8> {
    serde_json::json!({
        "type": kind,
        "timestamp": m.updated_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "data": {
            "message_id": m.message_id,
            "agent_id": m.agent_id,
            "state": m.state,
            "outcome": m.outcome,
            "rcs_delivered": m.rcs_delivered,
            "sms_status": m.sms_status,
            "sms_sid": m.sms_sid,
            "metadata": m.metadata,
        }
    })
    .to_string()
    .into_bytes()
}
