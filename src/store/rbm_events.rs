//! Google's webhook events: recorded and applied in one transaction, before
//! Google gets its 200, so an event is never acknowledged and then lost.
//! Events that arrive together are written together (see [`super::batch`]).

use std::collections::{HashMap, HashSet};

use super::batch::Incoming;
use super::transitions::{Caller, Change};
use super::{Applied, MessageRow, Store, StoreError};
use crate::domain::{Input, Policy};

#[derive(Debug)]
pub struct RbmEvent {
    /// Bare agent id.
    pub agent_id: String,
    /// The deduplication key: the eventId, or for user messages their messageId.
    pub event_key: String,
    pub event_type: String,
    pub message_id: Option<String>,
    pub payload: serde_json::Value,
    /// What the event means for the message it names, if anything.
    pub input: Option<Input>,
    /// The webhook as received, when it is to be relayed to the agent.
    pub relay: Option<crate::outbox::Relay>,
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
    /// Records `events` and applies those that concern a tracked message, in
    /// one transaction; answers each, in order.
    pub async fn ingest_rbm_events(
        &self,
        incoming: Incoming<RbmEvent>,
        policy: &Policy,
    ) -> Result<Vec<Ingested>, StoreError> {
        let (mut tx, events) = incoming.open(&self.pool).await?;
        let (agents, ids): (Vec<String>, Vec<String>) = events
            .iter()
            .filter_map(|e| Some((e.agent_id.clone(), e.message_id.clone()?)))
            .unzip();
        // The messages an event would change, should it be new: whether it is
        // is known only from the insert below, so a redelivery's message is
        // locked for nothing, which is rare and harmless.
        let wanted: Vec<String> = events
            .iter()
            .filter(|e| e.input.is_some())
            .filter_map(|e| e.message_id.clone())
            .collect();
        // One statement: the message-key locks (see the store module), then
        // the messages read and locked in a snapshot that sees what the locks
        // waited for (migration 9), then the events recorded. Rows come back
        // as either a new event's key or a message.
        let mut fresh = HashSet::new();
        let mut rows = Vec::new();
        for r in sqlx::query!(
            r#"WITH locked AS MATERIALIZED (
                   SELECT m FROM lock_message_keys_read_rows($6::text[], $7::text[], $8::text[]) AS m
               ), ins AS (
                   INSERT INTO rbm_events (agent_id, event_key, event_type, message_id, payload,
                                           received_at)
                   -- The statement's time: the transaction opened before the
                   -- events arrived (see `batch`).
                   SELECT t.*, statement_timestamp()
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
                       AS t(agent_id, event_key, event_type, message_id, payload)
                       -- After the locks.
                       CROSS JOIN (SELECT count(*) FROM locked) AS l
                   -- In key order, so two batches holding the same keys cannot
                   -- deadlock on the unique index.
                   ORDER BY agent_id, event_key
                   ON CONFLICT (agent_id, event_key) DO NOTHING
                   RETURNING agent_id, event_key
               )
               SELECT agent_id AS "agent_id?", event_key AS "event_key?",
                      NULL::messages AS "row?: MessageRow"
               FROM ins
               UNION ALL
               SELECT NULL, NULL, m FROM locked"#,
            &events
                .iter()
                .map(|e| e.agent_id.clone())
                .collect::<Vec<_>>(),
            &events
                .iter()
                .map(|e| e.event_key.clone())
                .collect::<Vec<_>>(),
            &events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
            &events
                .iter()
                .map(|e| e.message_id.clone())
                .collect::<Vec<_>>() as &[Option<String>],
            &events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
            &agents,
            &ids,
            &wanted,
        )
        .fetch_all(&mut *tx)
        .await?
        {
            match (r.agent_id, r.event_key, r.row) {
                (_, _, Some(row)) => rows.push(row),
                (Some(agent), Some(key), None) => {
                    fresh.insert((agent, key));
                }
                _ => {}
            }
        }
        // A redelivery within the same batch is a duplicate of the first.
        let mut seen = HashSet::new();
        let is_fresh: Vec<bool> = events
            .iter()
            .map(|e| {
                let key = (e.agent_id.clone(), e.event_key.clone());
                fresh.contains(&key) && seen.insert(key)
            })
            .collect();
        // Only what Google sends for the first time goes to the agent.
        let relays: Vec<&crate::outbox::Relay> = events
            .iter()
            .zip(&is_fresh)
            .filter(|(_, fresh)| **fresh)
            .filter_map(|(e, _)| e.relay.as_ref())
            .collect();
        crate::outbox::enqueue_relays(&mut tx, &relays).await?;
        let by_id: HashMap<&str, &MessageRow> =
            rows.iter().map(|r| (r.message_id.as_str(), r)).collect();
        let mut changes = Vec::new();
        let mut targets = Vec::with_capacity(events.len());
        for (e, fresh) in events.iter().zip(&is_fresh) {
            // Message ids are per agent: another agent's id is not ours.
            let target = match (fresh, &e.input, &e.message_id) {
                (true, Some(input), Some(id)) => by_id
                    .get(id.as_str())
                    .filter(|row| row.agent_id == e.agent_id)
                    .map(|row| (row.id, input)),
                _ => None,
            };
            if let Some((id, input)) = target {
                changes.push(Change {
                    id,
                    caller: Caller::Outside,
                    input,
                    detail: serde_json::json!({
                        "event_id": e.payload.get("eventId"),
                        "send_time": e.payload.get("sendTime"),
                    }),
                });
            }
            targets.push(target.is_some());
        }
        let (applied, due_in) = self.apply_all(&mut tx, rows, changes, policy).await?;
        tx.commit().await?;
        self.poke(due_in);
        let mut applied = applied.into_iter();
        Ok(is_fresh
            .into_iter()
            .zip(targets)
            .map(|(fresh, target)| match (fresh, target) {
                (false, _) => Ingested::Duplicate,
                (true, false) => Ingested::Recorded,
                (true, true) => {
                    Ingested::Applied(Box::new(applied.next().expect("one applied per change")))
                }
            })
            .collect())
    }
}
