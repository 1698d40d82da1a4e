//! Google's webhook events: recorded in one statement before Google gets its
//! 200, so an event is never acknowledged and then lost, and applied to their
//! messages right after, by this process's applier ([`Store::apply_recorded`]).
//! Events that arrive together are recorded together (see [`super::batch`]).
//!
//! Recording queues each new event that names a message in `rbm_inbox`, in
//! the order received; the applier takes the queue from its head, under the
//! same message-key locks as registrations. An event that names a message
//! not registered yet stays recorded, and its registration applies it (see
//! migration 11 for who owns an event when).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::Notify;

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
    /// Set only for events that can concern one of our messages.
    pub message_id: Option<String>,
    pub payload: serde_json::Value,
    /// The webhook as received, when it is to be relayed to the agent.
    pub relay: Option<crate::outbox::Relay>,
}

#[derive(Debug)]
pub enum Ingested {
    /// Seen before: nothing done again.
    Duplicate,
    /// Recorded, and queued for the applier if it names a message.
    Recorded,
}

/// A recorded event, applied to its message.
#[derive(Debug)]
pub struct AppliedEvent {
    pub event_type: String,
    pub applied: Applied,
}

/// What became of the event at the head of the queue, applied alone.
#[derive(Debug)]
pub enum AppliedHead {
    /// Applied: the steps it made, if it changed a message.
    Applied(Vec<AppliedEvent>),
    /// It failed, with an error a retry will not cure, and was set aside.
    SetAside {
        agent_id: String,
        event_key: String,
        error: StoreError,
    },
}

impl Store {
    /// Records `events` (and queues their relays) in one statement, committed
    /// as it answers; answers each, in order. A redelivery, even within the
    /// batch, is a duplicate of the first.
    pub async fn ingest_rbm_events(
        &self,
        incoming: Incoming<RbmEvent>,
    ) -> Result<Vec<Ingested>, StoreError> {
        let (mut conn, events) = incoming.acquire(&self.pool).await?;
        fn column<T>(events: &[RbmEvent], f: impl Fn(&RbmEvent) -> T) -> Vec<T> {
            events.iter().map(f).collect()
        }
        fn relay(e: &RbmEvent) -> Option<&crate::outbox::Relay> {
            e.relay.as_ref()
        }
        // The places in the batch (from 1) of the events recorded: the first
        // of each new key.
        let fresh: HashSet<i64> = sqlx::query_scalar!(
            r#"WITH input AS MATERIALIZED (
                   -- The first of each key, with its place in the batch.
                   SELECT DISTINCT ON (agent_id, event_key) *
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                               $6::text[], $7::jsonb[], $8::bytea[]) WITH ORDINALITY
                       AS t(agent_id, event_key, event_type, message_id, payload,
                            relay_url, relay_headers, relay_body, ord)
                   ORDER BY agent_id, event_key, ord
               ), ins AS (
                   INSERT INTO rbm_events (agent_id, event_key, event_type, message_id, payload,
                                           received_at)
                   -- The statement's time: the batch's connection was taken
                   -- before the events arrived (see `batch`).
                   SELECT agent_id, event_key, event_type, message_id, payload,
                          statement_timestamp()
                   FROM input
                   -- In key order, so two batches holding the same keys cannot
                   -- deadlock on the unique index.
                   ORDER BY agent_id, event_key
                   ON CONFLICT (agent_id, event_key) DO NOTHING
                   RETURNING agent_id, event_key
               ), fresh AS MATERIALIZED (
                   SELECT input.* FROM input JOIN ins USING (agent_id, event_key)
               ), queued AS (
                   -- In the order received: ids are the applier's order.
                   INSERT INTO rbm_inbox (agent_id, event_key)
                   SELECT agent_id, event_key FROM fresh WHERE message_id IS NOT NULL ORDER BY ord
               ), relayed AS (
                   -- Only what Google sends for the first time goes to the
                   -- agent, in the order received.
                   INSERT INTO outbox (kind, ordering_key, target_url, headers, body)
                   SELECT 'relay', agent_id, relay_url, relay_headers, relay_body
                   FROM fresh WHERE relay_url IS NOT NULL ORDER BY ord
               )
               SELECT ord AS "ord!" FROM fresh"#,
            &column(&events, |e| e.agent_id.clone()),
            &column(&events, |e| e.event_key.clone()),
            &column(&events, |e| e.event_type.clone()),
            &column(&events, |e| e.message_id.clone()) as &[Option<String>],
            &column(&events, |e| e.payload.clone()),
            &column(&events, |e| relay(e).map(|r| r.url.clone())) as &[Option<String>],
            &column(&events, |e| relay(e).map(|r| r.headers.clone()))
                as &[Option<serde_json::Value>],
            &column(&events, |e| relay(e).map(|r| r.body.clone())) as &[Option<Vec<u8>>],
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        // The next batch's turn.
        drop(conn);
        if events.iter().any(|e| e.message_id.is_some()) {
            self.recorded.notify_one();
        }
        Ok((1..=events.len() as i64)
            .map(|ord| {
                if fresh.contains(&ord) {
                    Ingested::Recorded
                } else {
                    Ingested::Duplicate
                }
            })
            .collect())
    }

    /// What wakes the applier: events were recorded for it.
    pub fn recorded_handle(&self) -> Arc<Notify> {
        self.recorded.clone()
    }

    /// Applies up to `limit` recorded events from the head of the queue, in
    /// one transaction, in the order received; returns how many it took from
    /// the queue and the steps of those that changed a message.
    ///
    /// Appliers of several replicas take turns: each locks the rows it takes,
    /// and one that waited for them finds them gone.
    pub async fn apply_recorded(
        &self,
        limit: i64,
        policy: &Policy,
    ) -> Result<(usize, Vec<AppliedEvent>), StoreError> {
        let mut tx = self.begin_applying().await?;
        let taken = take_queued(&mut tx, limit).await?;
        if taken.is_empty() {
            return Ok((0, Vec::new()));
        }
        let (applied, due_in) = self.apply_taken(&mut tx, &taken, policy).await?;
        tx.commit().await?;
        self.poke(due_in);
        Ok((taken.len(), applied))
    }

    /// Applies the event at the head of the queue alone (`None` if there is
    /// none). If that fails with an error a retry will not cure, the event is
    /// set aside rather than left to block the queue: the applier's way out
    /// of a batch that fails.
    pub async fn apply_head(&self, policy: &Policy) -> Result<Option<AppliedHead>, StoreError> {
        let mut tx = self.begin_applying().await?;
        let Some(head) = take_queued(&mut tx, 1).await?.pop() else {
            return Ok(None);
        };
        let error = match self
            .apply_taken(&mut tx, std::slice::from_ref(&head), policy)
            .await
        {
            Ok((applied, due_in)) => match tx.commit().await {
                Ok(()) => {
                    self.poke(due_in);
                    return Ok(Some(AppliedHead::Applied(applied)));
                }
                // A check deferred to the commit (a constraint trigger)
                // refused it, and the transaction is rolled back.
                Err(e) => StoreError::from(e),
            },
            Err(e) => {
                // Now, not when the connection is next used: until then the
                // transaction would keep the lock on the event's queue row
                // that setting it aside waits for.
                tx.rollback().await?;
                e
            }
        };
        if error.is_transient() {
            return Err(error);
        }
        // The event is back in the queue, unless another replica's applier
        // has taken it since.
        let set_aside = sqlx::query!(
            "WITH taken AS (
                 DELETE FROM rbm_inbox WHERE id = $1 RETURNING id, agent_id, event_key
             )
             INSERT INTO rbm_inbox_set_aside (id, agent_id, event_key, error)
             SELECT id, agent_id, event_key, $2 FROM taken",
            head.id,
            error.to_string()
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        if set_aside == 0 {
            // Another replica's applier took it: its to apply or set aside.
            return Ok(Some(AppliedHead::Applied(Vec::new())));
        }
        Ok(Some(AppliedHead::SetAside {
            agent_id: head.agent_id,
            event_key: head.event_key,
            error,
        }))
    }

    /// The applier's transaction, committed without waiting for its WAL
    /// flush: the events leave the queue in the same transaction as they
    /// apply, so a crash that loses the commit loses both, and they are
    /// applied again. Whatever acts on an applied step (a claim, a delivery's
    /// lease) commits after it, and a commit flushes the WAL before it. So the
    /// webhook's own flushes do not queue behind the applier's.
    ///
    /// Its statements are planned for the tables as they are now, not once
    /// per connection: a plan kept from when the record of events was small
    /// (just after a restore, or with autovacuum behind) hash-joined every
    /// event ever recorded to each batch taken. A plan costs a fraction of a
    /// millisecond per batch of events.
    async fn begin_applying(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with(
                "BEGIN; SET LOCAL synchronous_commit = off; \
                 SET LOCAL plan_cache_mode = force_custom_plan",
            )
            .await?)
    }

    /// Applies the events `taken` from the queue, in the order taken; answers
    /// the steps of those that changed a message, and when the next step of
    /// one is due.
    async fn apply_taken(
        &self,
        tx: &mut PgConnection,
        taken: &[Queued],
        policy: &Policy,
    ) -> Result<(Vec<AppliedEvent>, Option<Duration>), StoreError> {
        let (agents, ids): (Vec<String>, Vec<String>) = taken
            .iter()
            .filter_map(|e| Some((e.agent_id.clone(), e.message_id.clone()?)))
            .unzip();
        // The message-key locks (see the store module), then the messages,
        // read and locked in a snapshot that sees what the locks waited for.
        let rows = sqlx::query_scalar!(
            r#"SELECT m AS "m!: MessageRow"
               FROM lock_message_keys_read_rows($1::text[], $2::text[], $2::text[]) AS m"#,
            &agents,
            &ids,
        )
        .fetch_all(&mut *tx)
        .await?;
        let by_id: HashMap<&str, &MessageRow> =
            rows.iter().map(|r| (r.message_id.as_str(), r)).collect();
        // Message ids are per agent: another agent's id is not ours. An event
        // for a message not registered yet waits for it.
        let targets: Vec<(i64, Input, &str, serde_json::Value)> = taken
            .iter()
            .filter_map(|e| {
                let event_type = e.event_type.as_deref()?;
                let input = Input::from_rbm_event(event_type)?;
                let row = by_id
                    .get(e.message_id.as_deref()?)
                    .filter(|row| row.agent_id == e.agent_id)?;
                let detail = serde_json::json!({
                    "event_id": e.event_id,
                    "send_time": e.send_time,
                });
                Some((row.id, input, event_type, detail))
            })
            .collect();
        let changes = targets
            .iter()
            .map(|(id, input, _, detail)| Change {
                id: *id,
                caller: Caller::Outside,
                input,
                detail: detail.clone(),
            })
            .collect();
        let (applied, due_in) = self.apply_all(tx, rows, changes, policy).await?;
        let applied = targets
            .iter()
            .zip(applied)
            .map(|((_, _, event_type, _), applied)| AppliedEvent {
                event_type: (*event_type).to_owned(),
                applied,
            })
            .collect();
        Ok((applied, due_in))
    }
}

/// An event taken from the queue, with what its record says (nothing if
/// retention deleted the record).
struct Queued {
    id: i64,
    agent_id: String,
    event_key: String,
    message_id: Option<String>,
    event_type: Option<String>,
    event_id: Option<serde_json::Value>,
    send_time: Option<serde_json::Value>,
}

/// Takes up to `limit` events from the head of the queue, in the order
/// received.
///
/// The ids are handed to the DELETE as an array: given `id IN (subquery)`,
/// the planner joined the whole queue to the ids, a scan of every row it held
/// since its last vacuum (dead ones too) on every take, which under load cost
/// more than applying the events.
async fn take_queued(tx: &mut PgConnection, limit: i64) -> Result<Vec<Queued>, StoreError> {
    Ok(sqlx::query_as!(
        Queued,
        r#"WITH taken AS (
               DELETE FROM rbm_inbox WHERE id = ANY(ARRAY(
                   SELECT id FROM rbm_inbox ORDER BY id LIMIT $1 FOR UPDATE
               ))
               RETURNING id, agent_id, event_key
           )
           -- Every row taken comes back, so that the count is true and
           -- a row whose event retention deleted (an applier down for
           -- longer than `retention.keep_days`) leaves the queue too.
           SELECT t.id AS "id!", t.agent_id AS "agent_id!", t.event_key AS "event_key!",
                  r.message_id AS "message_id?", r.event_type AS "event_type?",
                  r.payload->'eventId' AS "event_id?", r.payload->'sendTime' AS "send_time?"
           FROM taken t LEFT JOIN rbm_events r USING (agent_id, event_key)
           ORDER BY t.id"#,
        limit
    )
    .fetch_all(tx)
    .await?)
}
