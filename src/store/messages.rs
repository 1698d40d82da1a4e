//! Registering, reading and listing messages.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use sqlx::PgConnection;

use super::batch::Incoming;
use super::transitions::{Caller, Change};
use super::{EventRow, MessageRow, Store, StoreError};
use crate::domain::{Input, OnUncertain, Policy};

#[derive(Clone, Debug)]
pub enum Deadline {
    At(DateTime<Utc>),
    /// Seconds after registration, by the database clock.
    After(i64),
}

#[derive(Clone, Debug)]
pub struct NewMessage {
    pub message_id: String,
    pub agent_id: String,
    pub phone: String,
    pub deadline: Deadline,
    pub sms_body: String,
    pub sms_from: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Where this message's outcome callbacks go instead of the default.
    pub callback_url: Option<String>,
    /// Identifies the request's content, to tell a retry from a conflict.
    pub request_digest: Vec<u8>,
    /// Send mode: the RBM message to send for the agent.
    pub rcs: Option<serde_json::Value>,
    pub traffic_type: Option<String>,
    /// The resolved policy.
    pub on_uncertain: OnUncertain,
    pub confirm_window_ms: i32,
    pub quiet_hours: Option<serde_json::Value>,
}

/// A send-mode message to a phone Google recently could not reach over RCS
/// starts at the SMS.
const SKIPPED_RCS: &str = "Google could not reach this phone over RCS lately: straight to SMS";

#[derive(Debug)]
pub enum Registered {
    Created(MessageRow),
    /// The same request was registered before.
    Existing(MessageRow),
    /// The message id is taken by a different request.
    Conflict,
}

pub struct ListPage {
    pub messages: Vec<MessageRow>,
    /// The id to continue after, when more may follow.
    pub next_after: Option<i64>,
}

/// A batch of registrations as the parallel arrays of one UNNEST.
struct Columns {
    ids: Vec<String>,
    agents: Vec<String>,
    phones: Vec<String>,
    at: Vec<Option<DateTime<Utc>>>,
    after: Vec<Option<i64>>,
    bodies: Vec<String>,
    froms: Vec<Option<String>>,
    metas: Vec<Option<String>>,
    digests: Vec<Vec<u8>>,
    callbacks: Vec<Option<String>>,
    rcs: Vec<Option<String>>,
    traffic: Vec<Option<String>>,
    uncertain: Vec<String>,
    windows: Vec<i32>,
    quiet: Vec<Option<String>>,
}

impl Columns {
    fn of(batch: &[NewMessage]) -> Columns {
        let (at, after) = batch
            .iter()
            .map(|m| match &m.deadline {
                Deadline::At(a) => (Some(*a), None),
                Deadline::After(secs) => (None, Some(*secs)),
            })
            .unzip();
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        Columns {
            ids: batch.iter().map(|m| m.message_id.clone()).collect(),
            agents: batch.iter().map(|m| m.agent_id.clone()).collect(),
            phones: batch.iter().map(|m| m.phone.clone()).collect(),
            at,
            after,
            bodies: batch.iter().map(|m| m.sms_body.clone()).collect(),
            froms: batch.iter().map(|m| m.sms_from.clone()).collect(),
            metas: batch.iter().map(|m| json(&m.metadata)).collect(),
            digests: batch.iter().map(|m| m.request_digest.clone()).collect(),
            callbacks: batch.iter().map(|m| m.callback_url.clone()).collect(),
            rcs: batch.iter().map(|m| json(&m.rcs)).collect(),
            traffic: batch.iter().map(|m| m.traffic_type.clone()).collect(),
            uncertain: batch
                .iter()
                .map(|m| m.on_uncertain.as_str().to_owned())
                .collect(),
            windows: batch.iter().map(|m| m.confirm_window_ms).collect(),
            quiet: batch.iter().map(|m| json(&m.quiet_hours)).collect(),
        }
    }
}

impl Store {
    /// Registers many messages at once, the rows and their first history
    /// events in one statement (see `insert_messages`); `ON CONFLICT DO
    /// NOTHING` decides a race between identical registrations. Results are
    /// in input order.
    pub async fn register_batch(
        &self,
        batch: Vec<NewMessage>,
        policy: &Policy,
    ) -> Result<Vec<Registered>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .register_batch_with(Incoming::ready(batch), policy, false)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// As [`Store::register_batch`], with the history of each message it
    /// created (empty for the others), returned by the statement that wrote
    /// it, so that single registrations are answered with their history
    /// without a query each.
    pub async fn register_batch_with_history(
        &self,
        batch: Incoming<NewMessage>,
        policy: &Policy,
    ) -> Result<Vec<(Registered, Vec<EventRow>)>, StoreError> {
        self.register_batch_with(batch, policy, true)
            .await?
            .into_iter()
            .map(|(r, events)| match (&r, events) {
                (Registered::Created(_), Some(events)) => Ok((r, events)),
                // The statement that created the row wrote its first event.
                (Registered::Created(m), None) => Err(m.corrupt("created without its history")),
                (_, _) => Ok((r, Vec::new())),
            })
            .collect()
    }

    async fn register_batch_with(
        &self,
        incoming: Incoming<NewMessage>,
        policy: &Policy,
        histories: bool,
    ) -> Result<Vec<(Registered, Option<Vec<EventRow>>)>, StoreError> {
        let (mut conn, batch) = incoming.acquire(&self.pool).await?;
        let columns = Columns::of(&batch);
        // As a rule one statement, committed as it answers. Should Google have
        // reported on one of these messages before its registration (rare),
        // the statement stores nothing, and the batch is written again in a
        // transaction that applies those events too.
        let (events_came_first, rows) = self.insert_messages(&mut conn, &columns, false).await?;
        let (created, mut history) = if !events_came_first {
            let mut created = Vec::with_capacity(rows.len());
            let mut history = HashMap::new();
            for (row, event) in rows {
                if histories {
                    history.insert(row.id, vec![event]);
                }
                created.push(row);
            }
            (created, history)
        } else {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let (_, rows) = self.insert_messages(&mut tx, &columns, true).await?;
            let created = rows.into_iter().map(|(row, _)| row).collect();
            let created = self.apply_early_events(&mut tx, created, policy).await?;
            let history = if histories && !created.is_empty() {
                let ids: Vec<i64> = created.iter().map(|m| m.id).collect();
                read_histories(&mut tx, &ids).await?
            } else {
                HashMap::new()
            };
            tx.commit().await?;
            (created, history)
        };
        // The next batch's turn.
        drop(conn);
        let soonest = created.iter().filter_map(|m| m.due_at).min();
        self.poke(soonest.map(|d| (d - Utc::now()).to_std().unwrap_or_default()));

        let ids = columns.ids;
        let mut by_id: HashMap<String, MessageRow> = created
            .into_iter()
            .map(|m| (m.message_id.clone(), m))
            .collect();
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !by_id.contains_key(*id))
            .cloned()
            .collect();
        let mut existing: HashMap<String, MessageRow> = if missing.is_empty() {
            Default::default()
        } else {
            sqlx::query_as!(
                MessageRow,
                "SELECT * FROM messages WHERE message_id = ANY($1)",
                &missing
            )
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|m| (m.message_id.clone(), m))
            .collect()
        };
        Ok(batch
            .iter()
            .map(|m| {
                // A second item with the same id in one batch sees the first.
                if let Some(row) = by_id.remove(&m.message_id) {
                    existing.insert(m.message_id.clone(), row.clone());
                    let events = history.remove(&row.id);
                    return (Registered::Created(row), events);
                }
                let registered = match existing.get(&m.message_id) {
                    Some(row) if row.request_digest == m.request_digest => {
                        Registered::Existing(row.clone())
                    }
                    // Taken by different content (or, at worst, pruned in between).
                    _ => Registered::Conflict,
                };
                (registered, None)
            })
            .collect())
    }

    /// Inserts the messages of `columns` not registered yet, with their
    /// first history events, after taking their message-key locks (see the
    /// store module); returns whether Google reported on any of them before,
    /// and the messages created. Unless `despite_events`, such a report makes
    /// it insert nothing: those events must apply in the same transaction.
    /// Work due within the notify horizon is announced.
    async fn insert_messages(
        &self,
        conn: &mut PgConnection,
        c: &Columns,
        despite_events: bool,
    ) -> Result<(bool, Vec<(MessageRow, EventRow)>), StoreError> {
        let horizon_ms = i64::try_from(self.notify_horizon.as_millis()).unwrap_or(i64::MAX);
        // Times are the statement's, as in every writer here (a group-commit
        // transaction opens before its requests arrive: see `batch`).
        let rows = sqlx::query!(
            r#"WITH locked AS MATERIALIZED (
                   SELECT lock_message_keys_find_events($2::text[], $1::text[]) AS early
               ), input AS (
                   SELECT t.*,
                          COALESCE(t.at, statement_timestamp() + t.after_secs * interval '1 second') AS d,
                          CASE
                              WHEN t.rcs IS NULL THEN 'pending'
                              WHEN EXISTS (SELECT 1 FROM rcs_unreachable u
                                           WHERE u.agent_id = t.agent_id AND u.phone = t.phone
                                             AND u.until > statement_timestamp())
                                  THEN 'sms_sending'
                              ELSE 'rcs_sending' END AS first_state
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[],
                               $6::text[], $7::text[], $8::text[], $9::bytea[], $10::text[],
                               $11::text[], $12::text[], $13::text[], $14::int[], $15::text[])
                        AS t(message_id, agent_id, phone, at, after_secs, sms_body, sms_from, metadata, digest,
                             callback_url, rcs, traffic_type, on_uncertain, confirm_window_ms, quiet_hours)
                   CROSS JOIN locked
                   WHERE NOT locked.early OR $17
               ), ins AS (
                   INSERT INTO messages AS m (message_id, agent_id, phone, deadline, sms_body, sms_from,
                                         metadata, request_digest, state, outcome, due_at, callback_url,
                                         rcs, traffic_type, on_uncertain, confirm_window_ms, quiet_hours,
                                         created_at, updated_at)
                   SELECT message_id, agent_id, phone, d, sms_body, sms_from, metadata::jsonb, digest,
                          first_state, 'none',
                          CASE WHEN first_state = 'pending'
                               THEN d - $20::bigint * interval '1 millisecond'
                               ELSE statement_timestamp() END,
                          callback_url, rcs::jsonb, traffic_type, on_uncertain, confirm_window_ms,
                          quiet_hours::jsonb, statement_timestamp(), statement_timestamp()
                   FROM input
                   ON CONFLICT (message_id) DO NOTHING
                   RETURNING m AS row
               ), events AS (
                   INSERT INTO message_events (message_id, kind, state_before, state_after, detail)
                   SELECT (row).id, 'registered', NULL, (row).state,
                          jsonb_build_object('deadline', (row).deadline)
                          || CASE WHEN (row).state = 'sms_sending'
                                  THEN jsonb_build_object('note', $16::text)
                                  ELSE '{}'::jsonb END
                   FROM ins
                   RETURNING message_id, at, kind, state_before, state_after, detail
               ), announced AS MATERIALIZED (
                   SELECT pg_notify($18, '')
                   WHERE EXISTS (SELECT 1 FROM ins WHERE (row).due_at
                                 <= statement_timestamp() + $19::bigint * interval '1 millisecond')
               )
               -- One row at least, for `early`.
               SELECT i.row AS "row?: MessageRow", i.at AS "at?", i.kind AS "kind?",
                      i.state_before, i.state_after AS "state_after?", i.detail AS "detail?",
                      locked.early AS "early!"
               FROM locked
               CROSS JOIN (SELECT count(*) FROM announced) AS a
               LEFT JOIN (SELECT ins.row, e.* FROM ins JOIN events e ON e.message_id = (ins.row).id) AS i
                   ON true"#,
            &c.ids,
            &c.agents,
            &c.phones,
            &c.at as &[Option<DateTime<Utc>>],
            &c.after as &[Option<i64>],
            &c.bodies,
            &c.froms as &[Option<String>],
            &c.metas as &[Option<String>],
            &c.digests,
            &c.callbacks as &[Option<String>],
            &c.rcs as &[Option<String>],
            &c.traffic as &[Option<String>],
            &c.uncertain,
            &c.windows,
            &c.quiet as &[Option<String>],
            SKIPPED_RCS,
            despite_events,
            super::DUE_CHANNEL,
            horizon_ms,
            self.claim_lead_ms(),
        )
        .fetch_all(conn)
        .await?;
        let early = rows.iter().any(|r| r.early);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let Some(row) = r.row else { continue };
            let event = match (r.at, r.kind, r.state_after, r.detail) {
                (Some(at), Some(kind), Some(state_after), Some(detail)) => EventRow {
                    at,
                    kind,
                    state_before: r.state_before,
                    state_after,
                    detail,
                },
                _ => return Err(row.corrupt("created without its history")),
            };
            out.push((row, event));
        }
        Ok((early, out))
    }

    /// Google may report on a message before the agent registers it (a phone
    /// that was online at once): those events were recorded then, and apply
    /// now, in the registration's transaction, as if they had come after it.
    async fn apply_early_events(
        &self,
        conn: &mut PgConnection,
        rows: Vec<MessageRow>,
        policy: &Policy,
    ) -> Result<Vec<MessageRow>, StoreError> {
        if rows.is_empty() {
            return Ok(rows);
        }
        // Message ids are per agent: a batch may hold several agents' rows.
        let (agents, ids): (Vec<String>, Vec<String>) = rows
            .iter()
            .map(|r| (r.agent_id.clone(), r.message_id.clone()))
            .unzip();
        let early = sqlx::query!(
            r#"SELECT agent_id, message_id AS "message_id!", event_type, payload FROM rbm_events
               WHERE (agent_id, message_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))
                 -- Still queued: the applier's to apply (migration 11).
                 AND NOT EXISTS (SELECT 1 FROM rbm_inbox i
                                 WHERE i.agent_id = rbm_events.agent_id
                                   AND i.event_key = rbm_events.event_key)
               ORDER BY received_at"#,
            &agents,
            &ids
        )
        .fetch_all(&mut *conn)
        .await?;
        if early.is_empty() {
            return Ok(rows);
        }
        let mut changes = Vec::new();
        let mut inputs = Vec::new();
        for event in &early {
            let Some(row) = rows
                .iter()
                .find(|r| r.agent_id == event.agent_id && r.message_id == event.message_id)
            else {
                continue;
            };
            if let Some(input) = Input::from_rbm_event(&event.event_type) {
                inputs.push((row.id, input, event));
            }
        }
        for (id, input, event) in &inputs {
            changes.push(Change {
                id: *id,
                caller: Caller::Outside,
                input,
                detail: serde_json::json!({
                    "event_id": event.payload.get("eventId"),
                    "send_time": event.payload.get("sendTime"),
                    "note": "reported before the message was registered",
                }),
            });
        }
        let (applied, _) = self.apply_all(conn, rows.clone(), changes, policy).await?;
        // The last change to each row holds its final form.
        let mut last: HashMap<i64, MessageRow> = applied
            .into_iter()
            .map(|a| (a.message.id, a.message))
            .collect();
        Ok(rows
            .into_iter()
            .map(|r| last.remove(&r.id).unwrap_or(r))
            .collect())
    }

    pub async fn get(&self, message_id: &str) -> Result<Option<MessageRow>, StoreError> {
        Ok(sqlx::query_as!(
            MessageRow,
            "SELECT * FROM messages WHERE message_id = $1",
            message_id
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The message and its history as of one instant: read in one
    /// snapshot, so that a step committing in between cannot show in one
    /// and not the other.
    pub async fn get_with_history(
        &self,
        message_id: &str,
    ) -> Result<Option<(MessageRow, Vec<EventRow>)>, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let Some(row) = sqlx::query_as!(
            MessageRow,
            "SELECT * FROM messages WHERE message_id = $1",
            message_id
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let events = read_histories(&mut tx, &[row.id])
            .await?
            .remove(&row.id)
            .unwrap_or_default();
        tx.commit().await?;
        Ok(Some((row, events)))
    }

    pub async fn history(&self, id: i64) -> Result<Vec<EventRow>, StoreError> {
        Ok(sqlx::query_as!(
            EventRow,
            "SELECT at, kind, state_before, state_after, detail
             FROM message_events WHERE message_id = $1 ORDER BY id",
            id
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Newest first; `after` is the id the previous page ended with.
    pub async fn list(
        &self,
        state: Option<&str>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<ListPage, StoreError> {
        // One row more than asked tells whether another page follows. Two
        // fixed queries, each a range on an index in a generic plan (see
        // `Store::connect`): `(x IS NULL OR …)` would not be.
        let before = after.unwrap_or(i64::MAX);
        let mut messages = match state {
            Some(state) => {
                sqlx::query_as!(
                    MessageRow,
                    "SELECT * FROM messages WHERE state = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                    state,
                    before,
                    limit + 1,
                )
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as!(
                    MessageRow,
                    "SELECT * FROM messages WHERE id < $1 ORDER BY id DESC LIMIT $2",
                    before,
                    limit + 1,
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        let more = messages.len() as i64 > limit;
        messages.truncate(limit as usize);
        let next_after = more.then(|| messages.last().map(|m| m.id)).flatten();
        Ok(ListPage {
            messages,
            next_after,
        })
    }
}

/// The histories of these messages, each in order, in one statement.
async fn read_histories(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<EventRow>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT message_id, at, kind, state_before, state_after, detail
         FROM message_events WHERE message_id = ANY($1) ORDER BY message_id, id",
        ids,
    )
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<i64, Vec<EventRow>> = HashMap::new();
    for r in rows {
        out.entry(r.message_id).or_default().push(EventRow {
            at: r.at,
            kind: r.kind,
            state_before: r.state_before,
            state_after: r.state_after,
            detail: r.detail,
        });
    }
    Ok(out)
}
