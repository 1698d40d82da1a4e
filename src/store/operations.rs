//! What operators read: counts for the metrics and the dashboard, and the
//! stuck or overdue messages (the `stuck_messages` view). Read-only, and each
//! query is served by a partial index or a small group-by.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// The database's view of the work, as of one moment.
#[derive(Clone, Debug, Default)]
pub struct Overview {
    /// (state, outcome, messages).
    pub counts: Vec<(String, String, i64)>,
    /// Messages whose next step is due and not claimed.
    pub due_depth: i64,
    /// How long the oldest of them has been due, in seconds.
    pub oldest_due_secs: Option<f64>,
    /// Rows of `stuck_messages`.
    pub stuck: i64,
    /// Google events acknowledged and not applied yet (the applier's queue).
    pub google_events_waiting: i64,
    /// Google events the applier set aside: they failed even alone.
    pub google_events_set_aside: i64,
}

/// Figures over the last hour, from the history (true across replicas).
#[derive(Clone, Debug, Default)]
pub struct LastHour {
    /// Revokes answered (200 or 404).
    pub revokes: i64,
    /// Seconds from a message's deadline to its revoke being answered.
    pub lateness_p50: Option<f64>,
    pub lateness_p99: Option<f64>,
    /// Messages that finished with something delivered, and of them those
    /// that reached the user twice (outcome `both`).
    pub reached: i64,
    pub duplicates: i64,
}

#[derive(Clone, Debug)]
pub struct StuckRow {
    pub id: i64,
    pub message_id: String,
    pub agent_id: String,
    pub phone: String,
    pub state: String,
    pub outcome: String,
    pub deadline: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub in_doubt: bool,
    pub updated_at: DateTime<Utc>,
    pub reason: String,
    pub waiting_secs: f64,
}

impl Store {
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        let counts = sqlx::query!(
            r#"SELECT state AS "state!", outcome AS "outcome!", count(*) AS "n!"
               FROM messages GROUP BY state, outcome"#
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|r| (r.state, r.outcome, r.n))
        .collect();
        let due = sqlx::query!(
            r#"SELECT count(*) AS "depth!",
                      EXTRACT(EPOCH FROM now() - min(due_at))::float8 AS oldest_secs,
                      (SELECT count(*) FROM stuck_messages) AS "stuck!",
                      (SELECT count(*) FROM rbm_inbox) AS "waiting!",
                      (SELECT count(*) FROM rbm_inbox_set_aside) AS "set_aside!"
               FROM messages WHERE due_at IS NOT NULL AND due_at <= now()"#
        )
        .fetch_one(self.pool())
        .await?;
        Ok(Overview {
            counts,
            due_depth: due.depth,
            oldest_due_secs: due.oldest_secs,
            stuck: due.stuck,
            google_events_waiting: due.waiting,
            google_events_set_aside: due.set_aside,
        })
    }

    pub async fn last_hour(&self) -> Result<LastHour, StoreError> {
        let late = sqlx::query!(
            r#"SELECT count(*) AS "revokes!",
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY lateness) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY lateness) AS p99
               FROM (SELECT EXTRACT(EPOCH FROM e.at - m.deadline)::float8 AS lateness
                     FROM message_events e JOIN messages m ON m.id = e.message_id
                     WHERE e.kind IN ('revoke_ok', 'revoke_not_found')
                       AND e.at > now() - interval '1 hour') answered"#
        )
        .fetch_one(self.pool())
        .await?;
        let dup = sqlx::query!(
            r#"SELECT count(*) FILTER (WHERE outcome <> 'none') AS "reached!",
                      count(*) FILTER (WHERE outcome = 'both') AS "both!"
               FROM messages
               WHERE due_at IS NULL AND updated_at > now() - interval '1 hour'"#
        )
        .fetch_one(self.pool())
        .await?;
        Ok(LastHour {
            revokes: late.revokes,
            lateness_p50: late.p50,
            lateness_p99: late.p99,
            reached: dup.reached,
            duplicates: dup.both,
        })
    }

    /// A page of `stuck_messages` in id order, after the id `after`.
    pub async fn stuck(&self, after: Option<i64>, limit: i64) -> Result<Vec<StuckRow>, StoreError> {
        Ok(sqlx::query_as!(
            StuckRow,
            r#"SELECT id AS "id!", message_id AS "message_id!", agent_id AS "agent_id!",
                      phone AS "phone!", state AS "state!", outcome AS "outcome!",
                      deadline AS "deadline!", due_at, attempts AS "attempts!",
                      in_doubt AS "in_doubt!", updated_at AS "updated_at!",
                      reason AS "reason!", waiting_secs AS "waiting_secs!"
               FROM stuck_messages WHERE id > $1 ORDER BY id LIMIT $2"#,
            after.unwrap_or(0),
            limit
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The stuck messages that have waited longest.
    pub async fn longest_stuck(&self, limit: i64) -> Result<Vec<StuckRow>, StoreError> {
        Ok(sqlx::query_as!(
            StuckRow,
            r#"SELECT id AS "id!", message_id AS "message_id!", agent_id AS "agent_id!",
                      phone AS "phone!", state AS "state!", outcome AS "outcome!",
                      deadline AS "deadline!", due_at, attempts AS "attempts!",
                      in_doubt AS "in_doubt!", updated_at AS "updated_at!",
                      reason AS "reason!", waiting_secs AS "waiting_secs!"
               FROM stuck_messages ORDER BY waiting_secs DESC, id LIMIT $1"#,
            limit
        )
        .fetch_all(self.pool())
        .await?)
    }
}
