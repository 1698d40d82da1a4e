//! Claiming due work and recording its results.
//!
//! A claim is a short transaction: lock due rows with SKIP LOCKED (so replicas
//! share the work instead of queueing behind each other), step each one with
//! the machine, store a fresh lease token and push `due_at` out by the lease,
//! commit. The worker then calls Google or Twilio with no transaction open,
//! and records the result with [`Store::record_results`], which the machine
//! discards as stale unless the row still carries the worker's token. A
//! worker that dies simply lets `due_at` pass: the row is due again and the
//! next claim treats the unanswered call as "in doubt".
//!
//! Both sides work in batches: a claim takes up to `limit` rows, and results
//! that arrive together are recorded together, each batch with one commit.

use std::time::Duration;

use uuid::Uuid;

use super::batch::Incoming;
use super::transitions::{lock_by_ids, Caller, Change};
use super::{Applied, MessageRow, Store, StoreError};
use crate::domain::{Action, Input, Policy, Verdict};

/// A message a worker now holds, and what it must do.
#[derive(Debug)]
pub struct Claimed {
    pub message: MessageRow,
    pub action: Action,
    pub token: Uuid,
    /// When the call may leave: a revoke claimed before its deadline waits
    /// for it (see `worker.claim_lead_ms`).
    pub not_before: Option<tokio::time::Instant>,
}

/// What a worker's call came to, for [`Store::record_results`].
#[derive(Debug)]
pub struct WorkResult {
    pub id: i64,
    pub token: Uuid,
    pub input: Input,
    pub detail: serde_json::Value,
}

impl Store {
    pub async fn claim_due(&self, limit: i64, policy: &Policy) -> Result<Vec<Claimed>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Literal `due_at IS NOT NULL` lets the planner use the partial index.
        // Each row comes with how long its deadline is away, by the database
        // clock: a pending message falls due `claim_lead` early.
        let mut rows = Vec::new();
        let mut to_deadline = Vec::new();
        for r in sqlx::query!(
            r#"SELECT m AS "m!: MessageRow",
                      (EXTRACT(EPOCH FROM m.deadline - clock_timestamp()) * 1000)::float8
                          AS "to_deadline_ms!"
               FROM messages m
               WHERE due_at IS NOT NULL AND due_at <= now()
               ORDER BY due_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED"#,
            limit
        )
        .fetch_all(&mut *tx)
        .await?
        {
            to_deadline.push(r.to_deadline_ms);
            rows.push(r.m);
        }
        // Taken after the answer, so a wait measured from here ends no
        // earlier than the deadline by the database clock.
        let answered = tokio::time::Instant::now();
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let changes = rows
            .iter()
            .map(|row| Change {
                id: row.id,
                caller: Caller::Outside,
                input: &Input::Claim,
                detail: serde_json::json!({ "attempt": row.attempts + 1 }),
            })
            .collect();
        // A claim pushes due_at out by the lease: nothing to wake for.
        let (applied, _) = self.apply_all(&mut tx, rows, changes, policy).await?;
        tx.commit().await?;
        // One applied per change, in the order of the rows read.
        Ok(applied
            .into_iter()
            .zip(to_deadline)
            .filter_map(|(a, ms)| match a.verdict {
                Verdict::Apply(step) => {
                    let action = step.action?;
                    // A revoke never leaves before the deadline.
                    let not_before = match action {
                        Action::Revoke { .. } if ms > 0.0 => {
                            Some(answered + Duration::from_secs_f64(ms / 1000.0))
                        }
                        _ => None,
                    };
                    Some(Claimed {
                        action,
                        token: a.message.lease_token?,
                        message: a.message,
                        not_before,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Records what workers' calls came to, in one transaction. A result is
    /// stale when its claim has moved on; the machine then only records the
    /// answer in the history. Returns one [`Applied`] per result, in order.
    pub async fn record_results(
        &self,
        incoming: Incoming<WorkResult>,
        policy: &Policy,
    ) -> Result<Vec<Applied>, StoreError> {
        let (mut tx, results) = incoming.open(&self.pool).await?;
        let mut ids: Vec<i64> = results.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows = lock_by_ids(&mut tx, &ids).await?;
        if let Some(gone) = ids.iter().find(|id| !rows.iter().any(|r| r.id == **id)) {
            return Err(StoreError::Corrupt {
                id: *gone,
                what: "claimed message vanished".into(),
            });
        }
        let changes = results
            .iter()
            .map(|r| Change {
                id: r.id,
                caller: Caller::Worker(r.token),
                input: &r.input,
                detail: r.detail.clone(),
            })
            .collect();
        let (applied, due_in) = self.apply_all(&mut tx, rows, changes, policy).await?;
        tx.commit().await?;
        self.poke(due_in);
        Ok(applied)
    }

    /// Hands claims back at shutdown: each message still held by its claim
    /// falls due once a call started before now must have ended
    /// (`longest_call`), or at its lease's end if that comes first. The
    /// claim's token stays, so the next claim knows the call may have taken
    /// effect, and looks before acting again. Returns how many were handed
    /// back.
    pub async fn release_claims(
        &self,
        claims: &[(i64, Uuid)],
        longest_call: std::time::Duration,
    ) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let (ids, tokens): (Vec<i64>, Vec<Uuid>) = claims.iter().copied().unzip();
        let call_ms = i64::try_from(longest_call.as_millis()).unwrap_or(i64::MAX);
        Ok(sqlx::query!(
            "UPDATE messages AS m
             SET due_at = LEAST(m.due_at, clock_timestamp() + $3::bigint * interval '1 millisecond')
             FROM UNNEST($1::bigint[], $2::uuid[]) AS c(id, token)
             WHERE m.id = c.id AND m.lease_token = c.token",
            &ids,
            &tokens,
            call_ms
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
