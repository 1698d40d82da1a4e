//! PostgreSQL, the only source of truth. Every change to a message happens
//! here, in one transaction that runs the state machine, stores its step and
//! appends the event to the history. Queries are checked at compile time
//! against the schema (offline data in `.sqlx/`).

pub mod batch;
mod claims;
mod messages;
mod operations;
mod rbm_events;
mod retention;
mod transitions;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::DatabaseSettings;
use crate::domain::quiet::{self, QuietHours, QuietVerdict};
use crate::domain::{Facts, OnUncertain, Policy, SmsStatus, SmsWindow, State};

pub use claims::{Claimed, WorkResult};
pub use messages::{Deadline, ListPage, NewMessage, Registered};
pub use operations::{LastHour, Overview, StuckRow};
pub use rbm_events::{AppliedEvent, AppliedHead, Ingested, RbmEvent};
pub use retention::Pruned;
pub use transitions::{Applied, Caller, OutsideInput};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The channel on which transactions that make work due soon wake the
/// schedulers of every replica. A hint only: schedulers also poll.
pub const DUE_CHANNEL: &str = "rbmf_due";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("row {id} holds an unreadable value: {what}")]
    Corrupt { id: i64, what: String },
    /// The failure of a whole batch, shared by each of its requests.
    #[error("{0}")]
    Batch(Arc<StoreError>),
}

impl StoreError {
    /// Failures a retry may cure: those of [`StoreError::is_unavailable`], a
    /// transaction that lost a race (a deadlock, a serialization failure, a
    /// lock or statement timeout), and a server short of memory, disk or I/O.
    /// When unsure, transient: a failure taken for permanent sets a good
    /// Google event aside, while one taken for transient only holds up the
    /// queue, which its metric shows.
    pub fn is_transient(&self) -> bool {
        if let StoreError::Batch(e) = self {
            return e.is_transient();
        }
        self.is_unavailable()
            || matches!(self, StoreError::Database(sqlx::Error::WorkerCrashed))
            || matches!(self, StoreError::Database(sqlx::Error::Database(e))
            if e.code().is_some_and(|c| {
                matches!(&*c, "40001" | "40P01" | "40003" | "55P03" | "55006")
                    // Insufficient resources, operator intervention, system error.
                    || ["53", "57", "58"].iter().any(|class| c.starts_with(class))
            }))
    }

    /// The database is unreachable, restarting or out of connections (what
    /// the API answers with 503), as opposed to a bug or a broken row.
    pub fn is_unavailable(&self) -> bool {
        if let StoreError::Batch(e) = self {
            return e.is_unavailable();
        }
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
            )
        ) || matches!(self, StoreError::Database(sqlx::Error::Database(e))
            if e.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")))
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Wakes this process's scheduler after a commit that made work due.
    wake: Arc<Notify>,
    /// Wakes this process's applier of Google events after events were
    /// recorded for it.
    recorded: Arc<Notify>,
    /// Work due within this long is announced on [`DUE_CHANNEL`]; later work
    /// is found by the schedulers' periodic look.
    notify_horizon: Duration,
    /// Where outcome callbacks go for messages without their own URL.
    default_callback_url: Option<Arc<str>>,
    /// How long a phone Google could not reach over RCS goes straight to
    /// SMS in send mode; zero: never remembered.
    unreachable_for: Duration,
    /// Batches a group-commit writer has in flight at once.
    group_flushes: usize,
    /// A pending message falls due this long before its deadline
    /// (`worker.claim_lead_ms`): the claim is written ahead, and the worker
    /// holds the revoke until the deadline.
    claim_lead: Duration,
}

impl Store {
    pub async fn connect(
        db: &DatabaseSettings,
        notify_horizon: Duration,
    ) -> Result<Store, StoreError> {
        let options: PgConnectOptions = db.url.expose().parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections)
            .acquire_timeout(db.acquire_timeout)
            // Lazily: the server starts (and /readyz reports) while the
            // database is still coming up.
            .connect_lazy_with(
                options
                    .application_name("rbm-fallback")
                    // Every statement here has the same shape whatever its
                    // parameters (keys, id arrays, due work from a partial
                    // index), so a custom plan per call only adds planning:
                    // it was a third of the database's time in intake.
                    .options([("plan_cache_mode", "force_generic_plan")]),
            );
        let mut store = Store::new(pool, notify_horizon);
        store.group_flushes = db.group_commit_flushes;
        Ok(store)
    }

    pub fn new(pool: PgPool, notify_horizon: Duration) -> Store {
        Store {
            pool,
            wake: Arc::new(Notify::new()),
            recorded: Arc::new(Notify::new()),
            notify_horizon,
            default_callback_url: None,
            unreachable_for: Duration::ZERO,
            group_flushes: 2,
            claim_lead: Duration::ZERO,
        }
    }

    /// Transitions owe callbacks to this URL unless their message names one.
    pub fn with_default_callback_url(mut self, url: Option<&str>) -> Store {
        self.default_callback_url = url.map(Arc::from);
        self
    }

    /// Makes pending messages due `lead` before their deadlines.
    pub fn with_claim_lead(mut self, lead: Duration) -> Store {
        self.claim_lead = lead;
        self
    }

    fn claim_lead_ms(&self) -> i64 {
        i64::try_from(self.claim_lead.as_millis()).unwrap_or(i64::MAX)
    }

    /// Remembers for `ttl` that Google could not reach a phone over RCS.
    pub fn with_unreachable_ttl(mut self, ttl: Duration) -> Store {
        self.unreachable_for = ttl;
        self
    }

    /// How many batches each group-commit writer (see [`Batcher`]) may have
    /// in flight: `database.group_commit_flushes`.
    pub fn group_flushes(&self) -> usize {
        self.group_flushes
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Ready when the database answers and every migration this binary knows
    /// has been applied successfully.
    pub async fn readiness(&self) -> Result<(), String> {
        // sqlx's own bookkeeping table is not part of our schema, so this one
        // query is checked at run time.
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("database: {e}"))?;
        let missing: Vec<i64> = MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("migrations not applied: {missing:?}"))
        }
    }

    /// How long until the earliest due work, by the database clock; zero if
    /// some is due now, `None` if there is none.
    pub async fn next_due_in(&self) -> Result<Option<Duration>, StoreError> {
        let ms = sqlx::query_scalar!(
            r#"SELECT (EXTRACT(EPOCH FROM (min(due_at) - clock_timestamp())) * 1000)::float8 AS "ms"
               FROM messages WHERE due_at IS NOT NULL"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)))
    }

    /// After a commit that made work due within `due_in`: wake this process's
    /// scheduler. (Other replicas were told inside the transaction.)
    fn poke(&self, due_in: Option<Duration>) {
        if due_in.is_some_and(|d| d <= self.notify_horizon) {
            self.wake.notify_one();
        }
    }

    async fn announce(
        &self,
        conn: &mut PgConnection,
        due_in: Option<Duration>,
    ) -> Result<(), StoreError> {
        if due_in.is_some_and(|d| d <= self.notify_horizon) {
            sqlx::query!("SELECT pg_notify($1, '')", DUE_CHANNEL)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

// Message-key locks. The transactions that register messages and those
// that record Google's events about them take, per agent and message id, the
// same transaction-scoped advisory lock (the SQL function
// `lock_message_keys`, migrations 7 and 8): without it, a DELIVERED committing while
// the registration commits is seen by neither. Each side reads the other
// side's rows only after taking them, in a snapshot that sees what the lock
// waited for: within its first statement, through a volatile PL/pgSQL
// function that takes the lock and then reads (migration 9).

/// A message as stored. The fields are in the table's column order: rows
/// also arrive whole, as one composite value, where a statement returns
/// them beside other columns.
#[derive(Clone, Debug, sqlx::Type)]
#[sqlx(type_name = "messages")]
pub struct MessageRow {
    pub id: i64,
    pub message_id: String,
    pub agent_id: String,
    pub phone: String,
    pub deadline: DateTime<Utc>,
    pub sms_body: String,
    pub sms_from: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub request_digest: Vec<u8>,
    pub state: String,
    pub outcome: String,
    pub rcs_delivered: bool,
    pub in_doubt: bool,
    pub attempts: i32,
    pub due_at: Option<DateTime<Utc>>,
    pub lease_token: Option<Uuid>,
    pub sms_sid: Option<String>,
    pub sms_status: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub rcs_inferred: bool,
    pub callback_url: Option<String>,
    /// Send mode: the RBM message to send (contentMessage, messageTrafficType).
    pub rcs: Option<serde_json::Value>,
    pub traffic_type: Option<String>,
    pub on_uncertain: String,
    /// `None`: the deployment's confirm window.
    pub confirm_window_ms: Option<i32>,
    pub quiet_hours: Option<serde_json::Value>,
}

#[derive(Clone, Debug)]
pub struct EventRow {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub state_before: Option<String>,
    pub state_after: String,
    pub detail: serde_json::Value,
}

impl MessageRow {
    pub fn state(&self) -> Result<State, StoreError> {
        self.state.parse().map_err(|e| StoreError::Corrupt {
            id: self.id,
            what: format!("{e}"),
        })
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            id: self.id,
            what: what.into(),
        }
    }

    /// The message's own confirm window, or the deployment's `base`.
    pub fn confirm_window(&self, base: Duration) -> Duration {
        self.confirm_window_ms
            .map_or(base, |ms| Duration::from_millis(ms.max(0) as u64))
    }

    /// The message's own policy over the deployment's `base`.
    pub fn policy(&self, base: &Policy) -> Result<Policy, StoreError> {
        Ok(Policy {
            confirm_window: self.confirm_window(base.confirm_window),
            lease: base.lease,
            on_uncertain: OnUncertain::parse(&self.on_uncertain)
                .ok_or_else(|| self.corrupt(format!("on_uncertain {:?}", self.on_uncertain)))?,
        })
    }

    pub fn quiet_hours(&self) -> Result<Option<QuietHours>, StoreError> {
        self.quiet_hours
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| self.corrupt(format!("quiet_hours: {e}")))
    }

    /// Whether the recipient's quiet hours let an SMS go out at `now`.
    fn sms_window(&self, state: State, now: DateTime<Utc>) -> Result<SmsWindow, StoreError> {
        // Only a state about to send its first SMS asks.
        if !matches!(
            state,
            State::Confirming | State::Verifying | State::SmsSending
        ) {
            return Ok(SmsWindow::Open);
        }
        let Some(rule) = self.quiet_hours()? else {
            return Ok(SmsWindow::Open);
        };
        Ok(match quiet::verdict(now, &rule, &self.phone) {
            QuietVerdict::Allowed => SmsWindow::Open,
            QuietVerdict::WaitUntil(at) => SmsWindow::WaitFor(
                // At least a second, so a rounding never makes a busy loop.
                (at - now)
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_secs(1)),
            ),
            QuietVerdict::Drop => SmsWindow::Closed,
        })
    }

    /// The machine's view. `in_flight` depends on who asks: for a worker
    /// reporting a result it means "your claim is still the current one".
    /// Only a claim can start an SMS, so only a claim (`for_claim`) pays for
    /// the quiet-hours look-up; any other input sees the window open.
    pub fn facts(&self, caller: Caller, for_claim: bool) -> Result<Facts, StoreError> {
        let state = self.state()?;
        Ok(Facts {
            sms_window: if for_claim {
                self.sms_window(state, Utc::now())?
            } else {
                SmsWindow::Open
            },
            state,
            rcs_delivered: self.rcs_delivered,
            rcs_inferred: self.rcs_inferred,
            in_flight: match caller {
                Caller::Outside => self.lease_token.is_some(),
                Caller::Worker(token) => self.lease_token == Some(token),
            },
            in_doubt: self.in_doubt,
            sms_sid: self.sms_sid.clone(),
            sms_status: self.sms_status.as_deref().and_then(SmsStatus::parse),
        })
    }
}
