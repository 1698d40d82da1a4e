//! The deliverer: claims due outbox rows, POSTs each with no transaction
//! open, and settles it. A 2xx answer in time means delivered; anything
//! else is retried with capped, jittered back-off, never given up.
//!
//! A crash after the POST but before the row is settled means the row is
//! sent again once its lease expires: delivery is at least once, and
//! receivers dedupe (callbacks by `webhook-id`, relayed webhooks by Google's
//! `eventId`).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::queue::{self, Delivery};
use super::signing::{sign, SigningSecret};
use crate::config::{OutboxSettings, RetentionSettings, Settings};
use crate::domain::backoff::Backoff;
use crate::outbound::{error_chain, retry_after};

/// The channel the outbox trigger notifies on commit of new rows.
const CHANNEL: &str = "rbmf_outbox";

struct Deliverer {
    pool: PgPool,
    http: reqwest::Client,
    settings: OutboxSettings,
    secret: Option<SigningSecret>,
    /// Wakes the claim loop: a new row committed, or a delivery ended (which
    /// may free the next row of its queue, and frees a slot).
    wake: Notify,
}

/// Delivers until `shutdown`, then gives deliveries in flight `grace` to
/// settle. Unsettled ones are taken over after their lease.
pub async fn run(
    pool: PgPool,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let cfg = settings.outbox.clone();
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
        // A redirected POST becomes a GET elsewhere: not a delivery.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rbm-fallback/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is static");
    let me = Arc::new(Deliverer {
        pool,
        http,
        settings: cfg.clone(),
        secret: settings.callbacks.secret.clone(),
        wake: Notify::new(),
    });
    tokio::spawn(listen(me.clone(), shutdown.clone()));
    tokio::spawn(prune(
        me.pool.clone(),
        settings.retention.clone(),
        shutdown.clone(),
    ));

    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let mut trouble = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let free = slots.available_permits();
        let mut full_batch = false;
        if free > 0 {
            match queue::claim(&me.pool, free as i64, cfg.lease).await {
                Ok(rows) => {
                    trouble = Duration::from_millis(100);
                    full_batch = rows.len() == free;
                    for d in rows {
                        let slot = slots.clone().acquire_owned().await.expect("never closed");
                        let me = me.clone();
                        tokio::spawn(async move {
                            me.deliver(d).await;
                            drop(slot);
                            me.wake.notify_one();
                        });
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot claim outbox rows; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(trouble) => {}
                        () = shutdown.cancelled() => break,
                    }
                    trouble = (trouble * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if full_batch {
            continue;
        }
        tokio::select! {
            () = me.wake.notified() => {}
            () = tokio::time::sleep(cfg.max_idle) => {}
            () = shutdown.cancelled() => break,
        }
    }
    let all = u32::try_from(cfg.concurrency).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!("outbox deliveries still in flight after the grace period");
    }
}

impl Deliverer {
    async fn deliver(&self, d: Delivery) {
        let host = reqwest::Url::parse(&d.target_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let result = self.send(&d).await;
        let settled = match &result {
            Ok(()) => queue::delivered(&self.pool, &d).await.map(|_| ()),
            Err(failure) => {
                let backoff = Backoff {
                    base: self.settings.retry_base,
                    cap: self.settings.retry_cap,
                };
                let attempt = u32::try_from(d.attempts).unwrap_or(1);
                let jitter = rand::thread_rng().gen::<f64>();
                let delay = backoff.delay(attempt, failure.retry_after, jitter);
                warn!(id = d.id, kind = %d.kind, %host, attempt, error = %failure.detail,
                      retry_in_ms = delay.as_millis() as u64, "outbox delivery failed");
                queue::failed(&self.pool, &d, delay, &failure.detail).await
            }
        };
        match settled {
            Ok(()) if result.is_ok() => {
                debug!(id = d.id, kind = %d.kind, %host, "outbox row delivered")
            }
            Ok(()) => {}
            // The lease runs out and the row is tried again: at least once.
            Err(e) => warn!(id = d.id, error = %e, "cannot settle an outbox row"),
        }
    }

    async fn send(&self, d: &Delivery) -> Result<(), Failure> {
        let mut req = self.http.post(&d.target_url);
        if let Some(headers) = d.headers.as_object() {
            for (name, value) in headers {
                if let Some(value) = value.as_str() {
                    req = req.header(name.as_str(), value);
                }
            }
        }
        if d.kind == "callback" {
            let Some(secret) = &self.secret else {
                return Err(Failure::new(
                    "RBMF_CALLBACK_SECRET is not configured; callbacks wait for it",
                ));
            };
            let id = format!("msg_{}", d.id);
            let timestamp = chrono::Utc::now().timestamp();
            req = req
                .header("webhook-signature", sign(secret, &id, timestamp, &d.body))
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string());
        }
        let resp = req
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| Failure::new(error_chain(&e.without_url())))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure {
                retry_after: retry_after(resp.headers()),
                detail: format!("answered HTTP {}", status.as_u16()),
            })
        }
    }
}

struct Failure {
    retry_after: Option<Duration>,
    detail: String,
}

impl Failure {
    fn new(detail: impl Into<String>) -> Failure {
        Failure {
            retry_after: None,
            detail: detail.into(),
        }
    }
}

/// Turns other transactions' new rows into wake-ups. A hint only: the claim
/// loop also polls every `max_idle`.
async fn listen(me: Arc<Deliverer>, shutdown: CancellationToken) {
    loop {
        match connect_listener(&me.pool).await {
            Ok(mut listener) => loop {
                tokio::select! {
                    n = listener.recv() => match n {
                        Ok(_) => me.wake.notify_one(),
                        Err(e) => {
                            debug!(error = %e, "outbox listener lost its connection");
                            break;
                        }
                    },
                    () = shutdown.cancelled() => return,
                }
            },
            Err(e) => debug!(error = %e, "cannot listen for outbox rows"),
        }
        if pause(&shutdown).await {
            return;
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Waits a moment before reconnecting; true when shutting down.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => false,
        () = shutdown.cancelled() => true,
    }
}

async fn prune(pool: PgPool, retention: RetentionSettings, shutdown: CancellationToken) {
    let Some(keep) = retention.keep else { return };
    loop {
        let mut total = 0;
        loop {
            match queue::prune(&pool, keep, retention.sweep_batch).await {
                Ok(n) => {
                    total += n;
                    if n < retention.sweep_batch as u64 || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "outbox sweep failed; the next one will retry");
                    break;
                }
            }
        }
        if total > 0 {
            info!(
                rows = total,
                "pruned delivered outbox rows past their retention"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(retention.sweep_interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
