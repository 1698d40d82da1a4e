//! Google's webhook events: recorded and applied in one transaction, before
//! Google gets its 200, so an event is never acknowledged and then lost.

use super::transitions::{lock_by_message_id, Caller};
use super::{Applied, Store, StoreError};
use crate::domain::{Input, Policy};

pub struct RbmEvent<'a> {
    /// Bare agent id.
    pub agent_id: &'a str,
    /// The deduplication key: the eventId, or for user messages their messageId.
    pub event_key: &'a str,
    pub event_type: &'a str,
    pub message_id: Option<&'a str>,
    pub payload: &'a serde_json::Value,
    /// The webhook as received, when it is to be relayed to the agent.
    pub relay: Option<crate::outbox::Relay<'a>>,
}

#[derive(Debug)]
pub enum Ingested {
    /// Seen before: nothing done again.
    Duplicate,
    /// Recorded; needs no action, or names no message we track.
    Recorded,
    Applied(Box<Applied>),
}

impl Store {
    pub async fn ingest_rbm_event(
        &self,
        event: &RbmEvent<'_>,
        input: Option<&Input>,
        policy: &Policy,
    ) -> Result<Ingested, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(message_id) = event.message_id {
            super::lock_message_key(&mut tx, event.agent_id, &[message_id.to_owned()]).await?;
        }
        let fresh = sqlx::query_scalar!(
            "INSERT INTO rbm_events (agent_id, event_key, event_type, message_id, payload)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (agent_id, event_key) DO NOTHING
             RETURNING true",
            event.agent_id,
            event.event_key,
            event.event_type,
            event.message_id,
            event.payload,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            tx.rollback().await?;
            return Ok(Ingested::Duplicate);
        }
        if let Some(relay) = &event.relay {
            crate::outbox::enqueue_relay(&mut tx, relay).await?;
        }
        let (Some(input), Some(message_id)) = (input, event.message_id) else {
            tx.commit().await?;
            return Ok(Ingested::Recorded);
        };
        let row = match lock_by_message_id(&mut tx, message_id).await? {
            // Message ids are per agent: another agent's id is not ours.
            Some(row) if row.agent_id == event.agent_id => row,
            _ => {
                tx.commit().await?;
                return Ok(Ingested::Recorded);
            }
        };
        let detail = serde_json::json!({
            "event_id": event.payload.get("eventId"),
            "send_time": event.payload.get("sendTime"),
        });
        let (applied, due_in) = self
            .apply_locked(&mut tx, row, Caller::Outside, input, detail, policy)
            .await?;
        tx.commit().await?;
        self.poke(due_in);
        Ok(Ingested::Applied(Box::new(applied)))
    }
}
