//! Claiming due work and recording its results.
//!
//! A claim is a short transaction: lock due rows with SKIP LOCKED (so replicas
//! share the work instead of queueing behind each other), step each one with
//! the machine, store a fresh lease token and push `due_at` out by the lease,
//! commit. The worker then calls Google or Twilio with no transaction open,
//! and records the result with [`Store::record_result`], which the machine
//! discards as stale unless the row still carries the worker's token. A
//! worker that dies simply lets `due_at` pass: the row is due again and the
//! next claim treats the unanswered call as "in doubt".

use uuid::Uuid;

use super::transitions::{lock_by_id, Caller};
use super::{Applied, MessageRow, Store, StoreError};
use crate::domain::{Action, Input, Policy, Verdict};

/// A message a worker now holds, and what it must do.
#[derive(Debug)]
pub struct Claimed {
    pub message: MessageRow,
    pub action: Action,
    pub token: Uuid,
}

impl Store {
    pub async fn claim_due(&self, limit: i64, policy: &Policy) -> Result<Vec<Claimed>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Literal `due_at IS NOT NULL` lets the planner use the partial index.
        let rows = sqlx::query_as!(
            MessageRow,
            "SELECT * FROM messages
             WHERE due_at IS NOT NULL AND due_at <= now()
             ORDER BY due_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
            limit
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let attempt = row.attempts + 1;
            let detail = serde_json::json!({ "attempt": attempt });
            // A claim pushes due_at out by the lease: nothing to wake for.
            let (applied, _) = self
                .apply_locked(&mut tx, row, Caller::Outside, &Input::Claim, detail, policy)
                .await?;
            if let Verdict::Apply(step) = &applied.verdict {
                if let (Some(action), Some(token)) = (step.action, applied.message.lease_token) {
                    claimed.push(Claimed {
                        message: applied.message,
                        action,
                        token,
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records what a worker's call came to. Stale when the claim has moved
    /// on; the machine then only records the answer in the history.
    pub async fn record_result(
        &self,
        claim: &Claimed,
        input: &Input,
        detail: serde_json::Value,
        policy: &Policy,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = lock_by_id(&mut tx, claim.message.id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: claim.message.id,
                what: "claimed message vanished".into(),
            })?;
        let (applied, due_in) = self
            .apply_locked(
                &mut tx,
                row,
                Caller::Worker(claim.token),
                input,
                detail,
                policy,
            )
            .await?;
        tx.commit().await?;
        self.poke(due_in);
        Ok(applied)
    }
}
