//! The outbox table: enqueue in the caller's transaction; claim, settle and
//! prune in short statements of their own.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::OutboxError;

/// A Google webhook to relay, as it arrived.
#[derive(Debug)]
pub struct Relay {
    pub url: String,
    /// Bare agent id: the ordering key.
    pub agent_id: String,
    /// Header name (lower case) -> value, to send unchanged.
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
}

/// Queues callbacks in the caller's transaction.
pub async fn enqueue_callbacks(
    conn: &mut PgConnection,
    callbacks: &[super::Callback],
) -> Result<(), sqlx::Error> {
    if callbacks.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO outbox (kind, target_url, headers, body)
           SELECT 'callback', u, '{"content-type": "application/json"}', b
           FROM UNNEST($1::text[], $2::bytea[]) AS t(u, b)"#,
        &callbacks.iter().map(|c| c.url.clone()).collect::<Vec<_>>(),
        &callbacks.iter().map(|c| c.body.clone()).collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A row this process now holds the lease of.
#[derive(Debug)]
pub(super) struct Delivery {
    pub id: i64,
    pub kind: String,
    pub target_url: String,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub attempts: i32,
    pub lease_token: Uuid,
}

/// Leases up to `limit` due rows: of each ordered queue only its oldest
/// undelivered row (which blocks the rest until it is delivered), then
/// independent rows. Single statements, so no transaction outlives them.
/// SKIP LOCKED lets replicas claim side by side; a head another replica is
/// leasing right now is skipped, and so is everything queued behind it.
pub(super) async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Delivery>, OutboxError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    // The distinct keys by a loose index scan (one probe per key), then the
    // oldest undelivered row of each.
    let mut rows = sqlx::query_as!(
        Delivery,
        r#"WITH RECURSIVE queues(key) AS (
               (SELECT ordering_key FROM outbox
                WHERE delivered_at IS NULL AND ordering_key IS NOT NULL
                ORDER BY ordering_key LIMIT 1)
               UNION ALL
               SELECT (SELECT o.ordering_key FROM outbox o
                       WHERE o.delivered_at IS NULL AND o.ordering_key IS NOT NULL
                         AND o.ordering_key > q.key
                       ORDER BY o.ordering_key LIMIT 1)
               FROM queues q WHERE q.key IS NOT NULL
           ), heads(id) AS (
               SELECT (SELECT o.id FROM outbox o
                       WHERE o.delivered_at IS NULL AND o.ordering_key = q.key
                       ORDER BY o.id LIMIT 1)
               FROM queues q WHERE q.key IS NOT NULL
           )
           UPDATE outbox SET
               attempts = attempts + 1,
               lease_token = gen_random_uuid(),
               next_attempt_at = clock_timestamp() + $2::bigint * interval '1 millisecond'
           WHERE id IN (
               SELECT id FROM outbox
               WHERE id IN (SELECT id FROM heads)
                 AND delivered_at IS NULL AND next_attempt_at <= now()
               LIMIT $1
               FOR UPDATE SKIP LOCKED)
           RETURNING id, kind, target_url, headers, body, attempts,
                     lease_token AS "lease_token!""#,
        limit,
        lease_ms,
    )
    .fetch_all(pool)
    .await?;
    let left = limit - rows.len() as i64;
    if left > 0 {
        rows.extend(
            sqlx::query_as!(
                Delivery,
                r#"UPDATE outbox SET
                       attempts = attempts + 1,
                       lease_token = gen_random_uuid(),
                       next_attempt_at = clock_timestamp() + $2::bigint * interval '1 millisecond'
                   WHERE id IN (
                       SELECT id FROM outbox
                       WHERE delivered_at IS NULL AND ordering_key IS NULL
                         AND next_attempt_at <= now()
                       ORDER BY next_attempt_at
                       LIMIT $1
                       FOR UPDATE SKIP LOCKED)
                   RETURNING id, kind, target_url, headers, body, attempts,
                             lease_token AS "lease_token!""#,
                left,
                lease_ms,
            )
            .fetch_all(pool)
            .await?,
        );
    }
    Ok(rows)
}

/// Marks a delivery done, unless its lease was lost meanwhile (then the
/// row was taken over and its new holder settles it).
pub(super) async fn delivered(pool: &PgPool, d: &Delivery) -> Result<bool, OutboxError> {
    let done = sqlx::query!(
        "UPDATE outbox SET delivered_at = now(), lease_token = NULL, last_error = NULL
         WHERE id = $1 AND lease_token = $2",
        d.id,
        d.lease_token,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Schedules the next try after a failure.
pub(super) async fn failed(
    pool: &PgPool,
    d: &Delivery,
    retry_in: Duration,
    error: &str,
) -> Result<(), OutboxError> {
    let retry_ms = i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX);
    sqlx::query!(
        "UPDATE outbox SET
             lease_token = NULL,
             last_error = $3,
             next_attempt_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
         WHERE id = $1 AND lease_token = $2",
        d.id,
        d.lease_token,
        error,
        retry_ms,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes up to `batch` rows delivered more than `keep` ago.
pub(super) async fn prune(pool: &PgPool, keep: Duration, batch: i64) -> Result<u64, OutboxError> {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    Ok(sqlx::query!(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE delivered_at IS NOT NULL
               AND delivered_at < now() - $1::bigint * interval '1 millisecond'
             ORDER BY delivered_at
             LIMIT $2)",
        keep_ms,
        batch,
    )
    .execute(pool)
    .await?
    .rows_affected())
}
