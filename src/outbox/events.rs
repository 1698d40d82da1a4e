//! Outcome callbacks: which transitions owe the agent an event, and its JSON.

use chrono::SecondsFormat;
use sqlx::PgConnection;

use crate::domain::State;
use crate::store::MessageRow;

/// Called in the transaction that moved a message from `before` to `after`:
/// queues a `message.sms_status` event when the SMS status changed, and a
/// `message.outcome` event when the message reached a final state (or its
/// outcome changed while final, as when a late DELIVERED makes `sms` into
/// `both`). Nothing when the message has no callback URL and no default
/// is configured.
pub async fn enqueue_for_step(
    conn: &mut PgConnection,
    default_url: Option<&str>,
    before: &MessageRow,
    after: &MessageRow,
) -> Result<(), sqlx::Error> {
    let Some(url) = after.callback_url.as_deref().or(default_url) else {
        return Ok(());
    };
    let is_final = after.state.parse::<State>().is_ok_and(State::is_final);
    if after.sms_status.is_some() && after.sms_status != before.sms_status {
        let body = event("message.sms_status", after);
        super::queue::enqueue_callback(conn, url, &body).await?;
    }
    if is_final && (after.state != before.state || after.outcome != before.outcome) {
        let body = event("message.outcome", after);
        super::queue::enqueue_callback(conn, url, &body).await?;
    }
    Ok(())
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
