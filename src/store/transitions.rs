//! Applying inputs to messages: lock the rows, ask the state machine, store
//! the steps and append the events, all in the caller's transaction.
//!
//! Everything goes through [`Store::apply_all`], which takes any number of
//! inputs (several may concern one message; they apply in order) and writes
//! them with a fixed number of statements: one INSERT for every history
//! event and one UPDATE for every changed row. A batch of results then costs
//! PostgreSQL one commit, not one per message.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::Incoming;
use super::{MessageRow, Store, StoreError};
use crate::domain::{self, Due, Input, Lease, Outcome, Policy, RcsSendResult, Verdict};

/// Who applies an input; decides what "a claim is in flight" means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A webhook or the API.
    Outside,
    /// A worker reporting the result of the claim holding this token.
    Worker(Uuid),
}

#[derive(Debug)]
pub struct Applied {
    pub verdict: Verdict,
    /// The message after the input (unchanged unless the verdict applied).
    pub message: MessageRow,
}

/// An input from outside (the API, a webhook) for the message with this
/// API id.
#[derive(Debug)]
pub struct OutsideInput {
    pub message_id: String,
    pub input: Input,
    pub detail: serde_json::Value,
}

/// One input for one locked message.
pub(super) struct Change<'a> {
    pub id: i64,
    pub caller: Caller,
    pub input: &'a Input,
    pub detail: serde_json::Value,
}

/// A message's stored fields after every change in a batch, and when its
/// next step falls due (`Due::Keep` when no step said).
struct Pending {
    row: MessageRow,
    due: Due,
    dirty: bool,
}

/// History events to append, as parallel arrays for one UNNEST.
#[derive(Default)]
struct Events {
    ids: Vec<i64>,
    kinds: Vec<String>,
    before: Vec<Option<String>>,
    after: Vec<String>,
    details: Vec<String>,
}

impl Events {
    fn push(
        &mut self,
        id: i64,
        kind: &str,
        before: Option<&str>,
        after: &str,
        detail: serde_json::Value,
    ) {
        self.ids.push(id);
        self.kinds.push(kind.to_owned());
        self.before.push(before.map(str::to_owned));
        self.after.push(after.to_owned());
        self.details.push(detail.to_string());
    }
}

impl Store {
    /// Applies `input` to the message with this API id, in its own transaction.
    /// `None` when no such message exists.
    pub async fn apply_to(
        &self,
        message_id: &str,
        caller: Caller,
        input: &Input,
        detail: serde_json::Value,
        policy: &Policy,
    ) -> Result<Option<Applied>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = lock_by_message_id(&mut tx, message_id).await? else {
            return Ok(None);
        };
        let change = Change {
            id: row.id,
            caller,
            input,
            detail,
        };
        let (mut applied, due_in) = self
            .apply_all(&mut tx, vec![row], vec![change], policy)
            .await?;
        tx.commit().await?;
        self.poke(due_in);
        Ok(applied.pop())
    }

    /// Applies inputs from outside to the messages they name, in order, in
    /// one transaction; `None` for an input naming no message.
    pub async fn apply_to_many(
        &self,
        incoming: Incoming<OutsideInput>,
        policy: &Policy,
    ) -> Result<Vec<Option<Applied>>, StoreError> {
        let (mut tx, inputs) = incoming.open(&self.pool).await?;
        let names: Vec<String> = inputs.iter().map(|i| i.message_id.clone()).collect();
        let rows = lock_by_message_ids(&mut tx, &names).await?;
        let ids: HashMap<&str, i64> = rows.iter().map(|r| (r.message_id.as_str(), r.id)).collect();
        let targets: Vec<Option<i64>> = inputs
            .iter()
            .map(|i| ids.get(i.message_id.as_str()).copied())
            .collect();
        let changes = inputs
            .iter()
            .zip(&targets)
            .filter_map(|(i, id)| {
                Some(Change {
                    id: (*id)?,
                    caller: Caller::Outside,
                    input: &i.input,
                    detail: i.detail.clone(),
                })
            })
            .collect();
        let (applied, due_in) = self.apply_all(&mut tx, rows, changes, policy).await?;
        tx.commit().await?;
        self.poke(due_in);
        let mut applied = applied.into_iter();
        Ok(targets
            .into_iter()
            .map(|t| t.and_then(|_| applied.next()))
            .collect())
    }

    /// Applies `changes`, in order, to `rows` (locked in `conn`'s
    /// transaction; a change whose row is not among them is a bug). Returns
    /// one [`Applied`] per change, and how soon the earliest step it
    /// scheduled falls due, for the caller to wake the scheduler once
    /// committed.
    pub(super) async fn apply_all(
        &self,
        conn: &mut PgConnection,
        rows: Vec<MessageRow>,
        changes: Vec<Change<'_>>,
        policy: &Policy,
    ) -> Result<(Vec<Applied>, Option<Duration>), StoreError> {
        let mut pending: HashMap<i64, Pending> = rows
            .into_iter()
            .map(|row| {
                (
                    row.id,
                    Pending {
                        row,
                        due: Due::Keep,
                        dirty: false,
                    },
                )
            })
            .collect();
        let mut events = Events::default();
        let mut reach = Reachability::default();
        let mut applied = Vec::with_capacity(changes.len());
        // Copies of rows are kept only where a callback may be owed.
        let default_url = self.default_callback_url.clone();
        let wants_callbacks =
            |row: &MessageRow| default_url.is_some() || row.callback_url.is_some();
        let mut soonest: Option<Duration> = None;
        // (before, after) of every applied step, for outcome callbacks.
        let mut owed = Vec::new();
        for change in changes {
            let p = pending
                .get_mut(&change.id)
                .ok_or_else(|| StoreError::Corrupt {
                    id: change.id,
                    what: "a change for a row that was not locked".into(),
                })?;
            let row = &mut p.row;
            let before = if wants_callbacks(row) {
                Some(row.clone())
            } else {
                None
            };
            let verdict = domain::apply(
                &row.facts(change.caller, matches!(change.input, Input::Claim))?,
                change.input,
                &row.policy(policy)?,
            );
            let known_delivered = row.rcs_delivered && !row.rcs_inferred;
            match &verdict {
                Verdict::Apply(step) => {
                    if let Input::RcsSend(RcsSendResult::Unreachable { status, detail }) =
                        change.input
                    {
                        reach.unreachable(row, *status, detail);
                    }
                    // The event first, while the row still holds the state
                    // the step leaves.
                    events.push(
                        row.id,
                        step.event,
                        Some(&row.state),
                        step.state.as_str(),
                        with_note(change.detail, step.note),
                    );
                    let state_changed = step.state.as_str() != row.state;
                    row.attempts = if state_changed { 0 } else { row.attempts }
                        + i32::from(step.lease == Lease::Take);
                    row.state = step.state.as_str().to_owned();
                    row.outcome = Outcome::of(step.state, step.rcs_delivered)
                        .as_str()
                        .to_owned();
                    row.rcs_delivered = step.rcs_delivered;
                    row.rcs_inferred = step.rcs_inferred;
                    row.in_doubt = step.in_doubt;
                    row.sms_sid = step.sms_sid.clone();
                    row.sms_status = step.sms_status.map(|s| s.as_str().to_owned());
                    row.lease_token = match step.lease {
                        Lease::Take => Some(Uuid::new_v4()),
                        Lease::Release => None,
                        Lease::Keep => row.lease_token,
                    };
                    if step.due != Due::Keep {
                        p.due = step.due;
                    }
                    let due_in = match step.due {
                        Due::In(d) => Some(d),
                        Due::AtDeadline => Some(
                            (row.deadline - Utc::now())
                                .to_std()
                                .unwrap_or_default()
                                .saturating_sub(self.claim_lead),
                        ),
                        Due::Never | Due::Keep => None,
                    };
                    if let Some(d) = due_in {
                        soonest = Some(soonest.map_or(d, |s| s.min(d)));
                    }
                    if step.rcs_delivered && !step.rcs_inferred && !known_delivered {
                        reach.reachable(row);
                    }
                    p.dirty = true;
                    if let Some(before) = before {
                        owed.push((before, row.clone()));
                    }
                }
                Verdict::Record { event, note } => {
                    let detail = with_note(change.detail, Some(note));
                    events.push(row.id, event, Some(&row.state), &row.state, detail);
                }
                Verdict::Refuse { .. } => {}
            }
            applied.push(Applied {
                verdict,
                message: p.row.clone(),
            });
        }
        reach.mark_unreachable(conn, self.unreachable_for).await?;
        let stored = write_steps(
            conn,
            events,
            pending.into_values().filter(|p| p.dirty),
            reach.reachable,
            self.claim_lead_ms(),
        )
        .await?;
        // What the database set (due time, update time) is what callers see.
        for m in applied
            .iter_mut()
            .map(|a| &mut a.message)
            .chain(owed.iter_mut().map(|(_, after)| after))
        {
            if let Some(&(due_at, updated_at)) = stored.get(&m.id) {
                m.due_at = due_at;
                m.updated_at = updated_at;
            }
        }
        let default_url = self.default_callback_url.as_deref();
        let callbacks: Vec<_> = owed
            .iter()
            .flat_map(|(before, after)| {
                crate::outbox::callbacks_for_step(default_url, before, after)
            })
            .collect();
        crate::outbox::enqueue_callbacks(conn, &callbacks).await?;
        self.announce(conn, soonest).await?;
        Ok((applied, soonest))
    }
}

pub(super) async fn lock_by_message_id(
    conn: &mut PgConnection,
    message_id: &str,
) -> Result<Option<MessageRow>, StoreError> {
    Ok(sqlx::query_as!(
        MessageRow,
        "SELECT * FROM messages WHERE message_id = $1 FOR UPDATE",
        message_id
    )
    .fetch_optional(conn)
    .await?)
}

/// Locks the rows with these API ids, in id order so that two batches
/// cannot deadlock.
async fn lock_by_message_ids(
    conn: &mut PgConnection,
    message_ids: &[String],
) -> Result<Vec<MessageRow>, StoreError> {
    Ok(sqlx::query_as!(
        MessageRow,
        "SELECT * FROM messages WHERE message_id = ANY($1) ORDER BY id FOR UPDATE",
        message_ids
    )
    .fetch_all(conn)
    .await?)
}

/// Locks these rows, in id order so that two batches cannot deadlock.
pub(super) async fn lock_by_ids(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<MessageRow>, StoreError> {
    Ok(sqlx::query_as!(
        MessageRow,
        "SELECT * FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        ids
    )
    .fetch_all(conn)
    .await?)
}

/// What a batch of steps taught about phones' reachability over RCS, per
/// agent: a send answered 404/403 marks the phone unreachable for a while
/// (send mode then skips the RCS), a delivery proves it reachable again.
#[derive(Default)]
struct Reachability {
    unreachable: Vec<(String, String, String)>,
    reachable: Vec<(String, String)>,
}

impl Reachability {
    /// Google's answer to a send, kept as the entry's reason for operators.
    fn unreachable(&mut self, row: &MessageRow, status: u16, detail: &str) {
        self.unreachable.push((
            row.agent_id.clone(),
            row.phone.clone(),
            format!("{status}: {detail}"),
        ));
    }

    fn reachable(&mut self, row: &MessageRow) {
        self.reachable
            .push((row.agent_id.clone(), row.phone.clone()));
    }

    /// Rare (a send answered 404/403), so a statement of its own; phones
    /// proved reachable are written with the steps (see [`write_steps`]).
    async fn mark_unreachable(
        &mut self,
        conn: &mut PgConnection,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if !self.unreachable.is_empty() && !ttl.is_zero() {
            let mut seen = std::collections::HashSet::new();
            let (mut agents, mut phones, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
            // ON CONFLICT may not touch one row twice in a statement.
            for (agent, phone, reason) in std::mem::take(&mut self.unreachable) {
                if seen.insert((agent.clone(), phone.clone())) {
                    agents.push(agent);
                    phones.push(phone);
                    reasons.push(reason);
                }
            }
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            sqlx::query!(
                "INSERT INTO rcs_unreachable (agent_id, phone, until, reason)
                 SELECT agent, phone, statement_timestamp() + $4::bigint * interval '1 millisecond',
                        reason
                 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(agent, phone, reason)
                 ORDER BY agent, phone
                 ON CONFLICT (agent_id, phone)
                 DO UPDATE SET until = EXCLUDED.until, reason = EXCLUDED.reason",
                &agents,
                &phones,
                &reasons,
                ttl_ms
            )
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

fn with_note(detail: serde_json::Value, note: Option<&str>) -> serde_json::Value {
    match (detail, note) {
        (serde_json::Value::Object(mut map), Some(note)) => {
            map.insert("note".into(), note.into());
            serde_json::Value::Object(map)
        }
        (serde_json::Value::Null, Some(note)) => serde_json::json!({ "note": note }),
        (serde_json::Value::Null, None) => serde_json::json!({}),
        (detail, _) => detail,
    }
}

/// Writes a batch's steps in one statement (one round trip, which on a busy
/// machine costs as much as the writes): the history events, the final
/// fields of every changed row, and the phones a delivery proved reachable
/// again. Returns what the database chose of each row, its due and update
/// times, by id: the service computed the rest, and a whole row would cost
/// both sides its encoding on every step.
async fn write_steps(
    conn: &mut PgConnection,
    events: Events,
    rows: impl Iterator<Item = Pending>,
    reachable: Vec<(String, String)>,
    claim_lead_ms: i64,
) -> Result<HashMap<i64, (Option<DateTime<Utc>>, DateTime<Utc>)>, StoreError> {
    let mut ids = Vec::new();
    let mut states = Vec::new();
    let mut outcomes = Vec::new();
    let mut delivered = Vec::new();
    let mut inferred = Vec::new();
    let mut doubt = Vec::new();
    let mut sids: Vec<Option<String>> = Vec::new();
    let mut statuses: Vec<Option<String>> = Vec::new();
    let mut due_modes = Vec::new();
    let mut due_ms = Vec::new();
    let mut tokens: Vec<Option<Uuid>> = Vec::new();
    let mut attempts = Vec::new();
    for Pending { row, due, .. } in rows {
        let (mode, ms) = match due {
            Due::Never => ("never", 0i64),
            // Rounded up: a step is never due before the time it asked for
            // (a quiet-hours wait that ended a fraction early would only be
            // deferred again).
            Due::In(d) => (
                "in",
                i64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX),
            ),
            // Claimed ahead; the worker holds the revoke until the deadline.
            Due::AtDeadline => ("deadline", claim_lead_ms),
            Due::Keep => ("keep", 0),
        };
        ids.push(row.id);
        states.push(row.state);
        outcomes.push(row.outcome);
        delivered.push(row.rcs_delivered);
        inferred.push(row.rcs_inferred);
        doubt.push(row.in_doubt);
        sids.push(row.sms_sid);
        statuses.push(row.sms_status);
        due_modes.push(mode.to_owned());
        due_ms.push(ms);
        tokens.push(row.lease_token);
        attempts.push(row.attempts);
    }
    if ids.is_empty() && events.ids.is_empty() && reachable.is_empty() {
        return Ok(HashMap::new());
    }
    let (reach_agents, reach_phones): (Vec<String>, Vec<String>) = reachable.into_iter().unzip();
    // The three parts touch different tables, so sharing one snapshot is
    // harmless. UNNEST yields rows in array order, so event ids follow the
    // order in which the inputs applied. One instant, taken once, is both the
    // events' time and the start of the waits they schedule, so the history
    // shows every wait at its full length.
    let updated = sqlx::query!(
        r#"WITH instant AS MATERIALIZED (
               SELECT clock_timestamp() AS at
           ), history AS (
               INSERT INTO message_events (message_id, at, kind, state_before, state_after, detail)
               SELECT id, instant.at, kind, before, after, detail::jsonb
               FROM UNNEST($13::bigint[], $14::text[], $15::text[], $16::text[], $17::text[])
                    AS t(id, kind, before, after, detail)
               CROSS JOIN instant
           ), reachable AS (
               -- Locked in key order, as `mark_unreachable` writes them: the
               -- batches of other writers (worker results, Google events,
               -- Twilio statuses) write their steps at the same time and must
               -- not take the same phones in opposite orders.
               DELETE FROM rcs_unreachable AS u USING (
                   SELECT agent_id, phone FROM rcs_unreachable
                   WHERE (agent_id, phone) IN (SELECT * FROM UNNEST($18::text[], $19::text[]))
                   ORDER BY agent_id, phone
                   FOR UPDATE
               ) AS l
               WHERE u.agent_id = l.agent_id AND u.phone = l.phone
           )
           UPDATE messages AS m SET
               state = u.state,
               outcome = u.outcome,
               rcs_delivered = u.rcs_delivered,
               rcs_inferred = u.rcs_inferred,
               in_doubt = u.in_doubt,
               sms_sid = u.sms_sid,
               sms_status = u.sms_status,
               due_at = CASE u.due_mode
                   WHEN 'never' THEN NULL
                   WHEN 'in' THEN instant.at + u.due_ms * interval '1 millisecond'
                   WHEN 'deadline' THEN m.deadline - u.due_ms * interval '1 millisecond'
                   ELSE m.due_at END,
               lease_token = u.lease_token,
               attempts = u.attempts,
               updated_at = instant.at
           FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bool[], $5::bool[], $6::bool[],
                       $7::text[], $8::text[], $9::text[], $10::bigint[], $11::uuid[], $12::int[])
                AS u(id, state, outcome, rcs_delivered, rcs_inferred, in_doubt,
                     sms_sid, sms_status, due_mode, due_ms, lease_token, attempts)
                CROSS JOIN instant
           WHERE m.id = u.id
           RETURNING m.id, m.due_at, m.updated_at"#,
        &ids,
        &states,
        &outcomes,
        &delivered,
        &inferred,
        &doubt,
        &sids as &[Option<String>],
        &statuses as &[Option<String>],
        &due_modes,
        &due_ms,
        &tokens as &[Option<Uuid>],
        &attempts,
        &events.ids,
        &events.kinds,
        &events.before as &[Option<String>],
        &events.after,
        &events.details,
        &reach_agents,
        &reach_phones,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(updated
        .into_iter()
        .map(|r| (r.id, (r.due_at, r.updated_at)))
        .collect())
}
