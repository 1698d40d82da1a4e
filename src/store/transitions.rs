//! Applying one input to one message: lock the row, ask the state machine,
//! store the step and append the event, all in the caller's transaction.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use super::{MessageRow, Store, StoreError};
use crate::domain::{self, Due, Input, Lease, Outcome, Policy, Step, Verdict};

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
        let (applied, due_in) = self
            .apply_locked(&mut tx, row, caller, input, detail, policy)
            .await?;
        tx.commit().await?;
        self.poke(due_in);
        Ok(Some(applied))
    }

    /// Applies `input` to a message already locked in `conn`'s transaction.
    /// Returns when its next step falls due, for the caller to wake the
    /// scheduler once committed.
    pub(super) async fn apply_locked(
        &self,
        conn: &mut PgConnection,
        row: MessageRow,
        caller: Caller,
        input: &Input,
        detail: serde_json::Value,
        policy: &Policy,
    ) -> Result<(Applied, Option<Duration>), StoreError> {
        let facts = row.facts(caller)?;
        let verdict = domain::apply(&facts, input, policy);
        let (message, due_in) = match &verdict {
            Verdict::Apply(step) => {
                let new_token = (step.lease == Lease::Take).then(Uuid::new_v4);
                let message = write_step(conn, &row, step, new_token, detail).await?;
                let default_url = self.default_callback_url.as_deref();
                crate::outbox::enqueue_for_step(conn, default_url, &row, &message).await?;
                let due_in = match step.due {
                    Due::In(d) => Some(d),
                    _ => None,
                };
                self.announce(conn, due_in).await?;
                (message, due_in)
            }
            Verdict::Record { event, note } => {
                let detail = with_note(detail, Some(note));
                append_event(conn, row.id, event, Some(&row.state), &row.state, detail).await?;
                (row, None)
            }
            Verdict::Refuse { .. } => (row, None),
        };
        Ok((Applied { verdict, message }, due_in))
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

pub(super) async fn lock_by_id(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<MessageRow>, StoreError> {
    Ok(sqlx::query_as!(
        MessageRow,
        "SELECT * FROM messages WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(conn)
    .await?)
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

/// Stores a step and appends its event. `new_token` is the claim taken by a
/// worker (with [`Lease::Take`]).
pub(super) async fn write_step(
    conn: &mut PgConnection,
    row: &MessageRow,
    step: &Step,
    new_token: Option<Uuid>,
    detail: serde_json::Value,
) -> Result<MessageRow, StoreError> {
    let (due_mode, due_ms) = match step.due {
        Due::Never => ("never", 0i64),
        Due::In(d) => ("in", i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        Due::Keep => ("keep", 0),
    };
    let lease_mode = match step.lease {
        Lease::Take => "take",
        Lease::Release => "release",
        Lease::Keep => "keep",
    };
    let state_changed = step.state.as_str() != row.state;
    let outcome = Outcome::of(step.state, step.rcs_delivered);
    // The event first: its time then precedes the start of any wait the
    // step schedules, so the history shows waits at their full length.
    append_event(
        conn,
        row.id,
        step.event,
        Some(&row.state),
        step.state.as_str(),
        with_note(detail, step.note),
    )
    .await?;
    let updated = sqlx::query_as!(
        MessageRow,
        r#"UPDATE messages SET
               state = $2,
               outcome = $3,
               rcs_delivered = $4,
               in_doubt = $5,
               sms_sid = $6,
               sms_status = $7,
               due_at = CASE $8::text
                   WHEN 'never' THEN NULL
                   WHEN 'in' THEN clock_timestamp() + $9::bigint * interval '1 millisecond'
                   ELSE due_at END,
               lease_token = CASE $10::text
                   WHEN 'take' THEN $11::uuid
                   WHEN 'release' THEN NULL
                   ELSE lease_token END,
               attempts = (CASE WHEN $12 THEN 0 ELSE attempts END)
                          + (CASE WHEN $10::text = 'take' THEN 1 ELSE 0 END),
               updated_at = now(),
               rcs_inferred = $13
           WHERE id = $1
           RETURNING *"#,
        row.id,
        step.state.as_str(),
        outcome.as_str(),
        step.rcs_delivered,
        step.in_doubt,
        step.sms_sid.as_deref(),
        step.sms_status.map(|s| s.as_str()),
        due_mode,
        due_ms,
        lease_mode,
        new_token,
        state_changed,
        step.rcs_inferred,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(updated)
}

pub(super) async fn append_event(
    conn: &mut PgConnection,
    id: i64,
    kind: &str,
    state_before: Option<&str>,
    state_after: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO message_events (message_id, kind, state_before, state_after, detail)
         VALUES ($1, $2, $3, $4, $5)",
        id,
        kind,
        state_before,
        state_after,
        detail,
    )
    .execute(conn)
    .await?;
    Ok(())
}
