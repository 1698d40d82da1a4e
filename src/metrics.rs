//! Prometheus metrics: one registry per service instance, with typed handles
//! that the call sites (worker, outbound clients, webhooks) update. Figures
//! that describe the database (messages by state and outcome, due work,
//! stuck messages) are read from PostgreSQL when scraped, so every replica
//! reports the same truth; the read is cached briefly so that frequent
//! scrapes cannot load the database.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Mutex;

use crate::google::Revoked;
use crate::outbound::CallError;
use crate::store::Store;
use crate::twilio::SmsRecord;

/// How long one reading of the database serves scrapes.
const DB_READ_TTL: Duration = Duration::from_secs(1);

/// The Content-Type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    upstream: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    upstream: &'static str,
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    source: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
    outcome: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms to about 40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn ack_histogram() -> Histogram {
    // 1 ms to about 8 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    revocations: Family<ResultLabels, Counter>,
    rcs_sends: Family<ResultLabels, Counter>,
    sms: Family<ResultLabels, Counter>,
    lateness: Histogram,
    webhook_ack: Histograms<WebhookLabels>,
    outbound_duration: Histograms<CallLabels>,
    outbound_errors: Family<ErrorLabels, Counter>,
    token_refreshes: Family<ResultLabels, Counter>,
    messages: Family<StateLabels, Gauge>,
    duplicates: Gauge,
    due_depth: Gauge,
    oldest_due: Gauge<f64, AtomicU64>,
    stuck: Gauge,
    google_waiting: Gauge,
    google_set_aside: Gauge,
    database_up: Gauge,
    /// When the database was last read; held while reading, so concurrent
    /// scrapes wait for one query instead of each running their own.
    last_read: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rbmf");
        let revocations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "revocations",
            "Revoke calls by result: 200, 404 or error",
            revocations.clone(),
        );
        let rcs_sends = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rcs_sends",
            "RBM sends in send mode by result: 200, 400, 403, 404, retry, expired",
            rcs_sends.clone(),
        );
        let sms = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sms_sends",
            "SMS send attempts by result: accepted, retry, ambiguous, rejected, found_earlier",
            sms.clone(),
        );
        // 10 ms to about 5 min.
        let lateness = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register_with_unit(
            "deadline_lateness",
            "Time from a message's deadline until its revoke was answered",
            Unit::Seconds,
            lateness.clone(),
        );
        let webhook_ack: Histograms<WebhookLabels> =
            Family::new_with_constructor(ack_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "webhook_ack",
            "Time to answer a webhook (Google: after the event is recorded)",
            Unit::Seconds,
            webhook_ack.clone(),
        );
        let outbound_duration: Histograms<CallLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "outbound_duration",
            "Duration of calls to Google and Twilio, whatever their result",
            Unit::Seconds,
            outbound_duration.clone(),
        );
        let outbound_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "outbound_errors",
            "Failed calls to Google and Twilio by kind: retryable, ambiguous, rejected",
            outbound_errors.clone(),
        );
        let token_refreshes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Google OAuth access token requests by result: ok, error",
            token_refreshes.clone(),
        );
        let messages = Family::<StateLabels, Gauge>::default();
        registry.register(
            "messages",
            "Messages held in the database by state and outcome",
            messages.clone(),
        );
        let duplicates = Gauge::default();
        registry.register(
            "duplicate_messages",
            "Messages held in the database that reached the user twice (outcome both)",
            duplicates.clone(),
        );
        let due_depth = Gauge::default();
        registry.register(
            "due_messages",
            "Messages whose next step is due and not claimed by any worker",
            due_depth.clone(),
        );
        let oldest_due = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "oldest_due_age",
            "How long the longest-waiting due message has been due (0 when none is)",
            Unit::Seconds,
            oldest_due.clone(),
        );
        let stuck = Gauge::default();
        registry.register(
            "stuck_messages",
            "Rows of the stuck_messages view (overdue, in doubt, or awaiting an SMS status)",
            stuck.clone(),
        );
        let google_waiting = Gauge::default();
        registry.register(
            "google_events_waiting",
            "Google events acknowledged and not yet applied to their messages",
            google_waiting.clone(),
        );
        let google_set_aside = Gauge::default();
        registry.register(
            "google_events_set_aside",
            "Google events set aside because applying them failed even alone (see the logs)",
            google_set_aside.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 if the last read of the database figures succeeded",
            database_up.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            revocations,
            rcs_sends,
            sms,
            lateness,
            webhook_ack,
            outbound_duration,
            outbound_errors,
            token_refreshes,
            messages,
            duplicates,
            due_depth,
            oldest_due,
            stuck,
            google_waiting,
            google_set_aside,
            database_up,
            last_read: Mutex::new(None),
        }))
    }

    /// A revoke's answer, and for an answered one how late it came.
    pub fn revocation(&self, result: &Result<Revoked, CallError>, deadline: DateTime<Utc>) {
        let result = match result {
            Ok(Revoked::Ok) => "200",
            Ok(Revoked::NotFound) => "404",
            Err(_) => "error",
        };
        self.0
            .revocations
            .get_or_create(&ResultLabels { result })
            .inc();
        if result != "error" {
            let late = (Utc::now() - deadline).num_milliseconds().max(0) as f64 / 1000.0;
            self.0.lateness.observe(late);
        }
    }

    /// One send-mode RBM send, by the status answered (`retry` for a failure
    /// that will be retried, `expired` when the deadline came first).
    pub fn rcs_send(&self, result: &'static str) {
        self.0
            .rcs_sends
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// An SMS send's answer.
    pub fn sms(&self, result: &Result<SmsRecord, CallError>) {
        self.sms_result(match result {
            Ok(_) => "accepted",
            Err(CallError::Retryable { .. }) => "retry",
            Err(CallError::Ambiguous { .. }) => "ambiguous",
            Err(CallError::Rejected { .. }) => "rejected",
        });
    }

    /// An SMS outcome without a send, e.g. `found_earlier` when a
    /// reconciliation finds that an earlier attempt had sent it.
    pub fn sms_result(&self, result: &'static str) {
        self.0.sms.get_or_create(&ResultLabels { result }).inc();
    }

    /// Makes one call to an upstream (`google`, `twilio`), timing it and
    /// counting its failures by kind.
    pub async fn outbound<T>(
        &self,
        upstream: &'static str,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        let started = Instant::now();
        let result = call.await;
        self.record_outbound(upstream, operation, started, &result);
        result
    }

    fn record_outbound<T>(
        &self,
        upstream: &'static str,
        operation: &'static str,
        started: Instant,
        result: &Result<T, CallError>,
    ) {
        self.0
            .outbound_duration
            .get_or_create(&CallLabels {
                upstream,
                operation,
            })
            .observe(started.elapsed().as_secs_f64());
        let kind = match result {
            Ok(_) => return,
            Err(CallError::Retryable { .. }) => "retryable",
            Err(CallError::Ambiguous { .. }) => "ambiguous",
            Err(CallError::Rejected { .. }) => "rejected",
        };
        self.0
            .outbound_errors
            .get_or_create(&ErrorLabels {
                upstream,
                operation,
                kind,
            })
            .inc();
    }

    /// One request to Google's token endpoint.
    pub fn token_refresh(&self, ok: bool, started: Instant) {
        let result = if ok { "ok" } else { "error" };
        self.0
            .token_refreshes
            .get_or_create(&ResultLabels { result })
            .inc();
        let labels = CallLabels {
            upstream: "google_oauth",
            operation: "token",
        };
        self.0
            .outbound_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if !ok {
            let labels = ErrorLabels {
                upstream: "google_oauth",
                operation: "token",
                kind: "retryable",
            };
            self.0.outbound_errors.get_or_create(&labels).inc();
        }
    }

    /// A webhook answered with `status` after `elapsed`.
    pub fn webhook_ack(&self, source: &'static str, status: u16, elapsed: Duration) {
        self.0
            .webhook_ack
            .get_or_create(&WebhookLabels { source, status })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the database figures refreshed if they are
    /// older than a second. If the database cannot be read, the last figures
    /// stay and `rbmf_database_up` is 0.
    pub async fn render(&self, store: &Store) -> String {
        // Encoding under the lock too: another scrape's refresh clears the
        // per-state gauges before setting them again.
        let mut last = self.0.last_read.lock().await;
        if last.is_none_or(|at| at.elapsed() >= DB_READ_TTL) {
            match store.overview().await {
                Ok(o) => {
                    self.0.messages.clear();
                    let mut duplicates = 0;
                    for (state, outcome, n) in o.counts {
                        if outcome == "both" {
                            duplicates += n;
                        }
                        self.0
                            .messages
                            .get_or_create(&StateLabels { state, outcome })
                            .set(n);
                    }
                    self.0.duplicates.set(duplicates);
                    self.0.due_depth.set(o.due_depth);
                    self.0.oldest_due.set(o.oldest_due_secs.unwrap_or(0.0));
                    self.0.stuck.set(o.stuck);
                    self.0.google_waiting.set(o.google_events_waiting);
                    self.0.google_set_aside.set(o.google_events_set_aside);
                    self.0.database_up.set(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the database figures for /metrics");
                    self.0.database_up.set(0);
                }
            }
            *last = Some(Instant::now());
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.0.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
