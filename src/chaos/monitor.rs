//! Watching a run from the database side: how much work is still open, when
//! a backlog has drained, which claims a killed process held.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::domain::State;
use crate::sandbox::Rig;

/// A small pool of its own on the run's database, apart from the service's.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await?)
}

/// Messages with work still open.
pub async fn open_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE state = ANY($1)")
            .bind(State::unsettled_names())
            .fetch_one(pool)
            .await?,
    )
}

/// Messages whose work has started or is due: the backlog at this moment.
pub async fn backlog(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT message_id FROM messages
         WHERE state = ANY($1) AND (deadline <= now() OR state <> 'pending')",
    )
    .bind(State::unsettled_names())
    .fetch_all(pool)
    .await?)
}

async fn still_open(pool: &PgPool, ids: &[String]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE message_id = ANY($1) AND state = ANY($2)",
    )
    .bind(ids)
    .bind(State::unsettled_names())
    .fetch_one(pool)
    .await?)
}

/// A claim held by some worker.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claim {
    pub message_id: String,
    pub state: String,
    /// When its lease expires.
    pub expiry: DateTime<Utc>,
}

/// Claims held at this moment.
pub async fn claims(pool: &PgPool) -> anyhow::Result<Vec<Claim>> {
    Ok(sqlx::query_as(
        "SELECT message_id, state, due_at AS expiry FROM messages
         WHERE lease_token IS NOT NULL AND due_at IS NOT NULL AND state = ANY($1)",
    )
    .bind(State::unsettled_names())
    .fetch_all(pool)
    .await?)
}

/// Waits until every message in `ids` has left the open states; returns
/// the time from `since`. Database errors (an outage) are waited out. None
/// if `limit` passes first.
pub async fn drained(
    pool: &PgPool,
    ids: Vec<String>,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let give_up = Instant::now() + limit;
    loop {
        if let Ok(0) = still_open(pool, &ids).await {
            return Some(since.elapsed());
        }
        if Instant::now() > give_up {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the run is over: no message has open work, and neither
/// emulator has anything under way (phone timers, webhooks, status
/// callbacks), twice in a row. False if `limit` passes first.
pub async fn settled(pool: &PgPool, rig: &Arc<Rig>, limit: Duration) -> bool {
    let give_up = Instant::now() + limit;
    let mut quiet = 0;
    loop {
        let open = open_count(pool).await.unwrap_or(-1);
        let idle = rig.google.busy() == 0 && rig.twilio.busy() == 0;
        if open == 0 && idle {
            quiet += 1;
            if quiet >= 3 {
                return true;
            }
        } else {
            quiet = 0;
        }
        if Instant::now() > give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// One `/readyz` poll.
#[derive(Clone, Debug)]
pub struct Poll {
    pub sent: DateTime<Utc>,
    /// 0 when no answer came within 10 s.
    pub status: u16,
    pub took: Duration,
}

/// Polls `/readyz` of `url` every 50 ms (one at a time) until stopped.
pub struct ReadyWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Poll>>,
}

impl ReadyWatch {
    pub fn start(url: &str) -> ReadyWatch {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let url = format!("{url}/readyz");
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("static client configuration");
            let mut seen = Vec::new();
            while !*rx.borrow() {
                let sent = Utc::now();
                let started = Instant::now();
                let status = match http.get(&url).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                seen.push(Poll {
                    sent,
                    status,
                    took: started.elapsed(),
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = rx.changed() => {}
                }
            }
            seen
        });
        ReadyWatch { stop, task }
    }

    pub async fn finish(self) -> Vec<Poll> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
