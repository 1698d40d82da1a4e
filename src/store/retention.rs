//! Retention: messages with no due work, their history, and Google events
//! older than the retention period are deleted in small batches, so that the
//! hot tables stay the size of the live work rather than of all history.

use std::time::Duration;

use super::{Store, StoreError};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub messages: u64,
    pub rbm_events: u64,
    /// Expired entries of the RCS reachability cache.
    pub unreachable: u64,
}

impl Store {
    /// Deletes at most `batch` messages (with their history) and `batch`
    /// Google events older than `keep`. Short transactions: call repeatedly.
    pub async fn prune(&self, keep: Duration, batch: i64) -> Result<Pruned, StoreError> {
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        // `due_at IS NULL` as a literal keeps the sweep on its partial index;
        // SKIP LOCKED keeps it out of the way of live transitions.
        // The history goes in the same statement: no foreign key cascades
        // (migration 10).
        let messages = sqlx::query_scalar!(
            r#"WITH gone AS (
                   DELETE FROM messages WHERE id IN (
                       SELECT id FROM messages
                       WHERE due_at IS NULL
                         AND updated_at < now() - $1::bigint * interval '1 millisecond'
                       ORDER BY updated_at
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED)
                   RETURNING id
               ), history AS (
                   DELETE FROM message_events WHERE message_id IN (SELECT id FROM gone)
               )
               SELECT count(*) AS "n!" FROM gone"#,
            keep_ms,
            batch
        )
        .fetch_one(&self.pool)
        .await? as u64;
        let rbm_events = sqlx::query!(
            "DELETE FROM rbm_events WHERE ctid IN (
                 SELECT ctid FROM rbm_events
                 WHERE received_at < now() - $1::bigint * interval '1 millisecond'
                 ORDER BY received_at
                 LIMIT $2)",
            keep_ms,
            batch
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        // Expired entries are ignored already; this only keeps the table small.
        let unreachable = sqlx::query!(
            "DELETE FROM rcs_unreachable WHERE ctid IN (
                 SELECT ctid FROM rcs_unreachable WHERE until < now() ORDER BY until LIMIT $1)",
            batch
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Pruned {
            messages,
            rbm_events,
            unreachable,
        })
    }
}
