//! The measurements. Each one runs against the service child process that
//! [`Bench`] holds, and leaves the tables as it found them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::json;
use tokio::time::Instant;

use super::db::{self, phone, PgbenchResult};
use super::load::{self, LoadResult, MakeRequest};
use super::probe::{self, Usage};
use super::Bench;

/// Throughput and latency of one endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Pending messages when the measurement started.
    pub pending: i64,
    /// pgbench flat out right before the closed loop: the throughput's
    /// baseline (see `Bench::pgbench_beside`), and where the time went in it.
    pub beside: Option<(PgbenchResult, Usage)>,
    /// Closed loop at the configured concurrency.
    pub max: LoadResult,
    pub max_usage: Usage,
    /// Open loop at half the closed loop's rate.
    pub half: LoadResult,
    pub half_rate: f64,
    pub half_usage: Usage,
    /// For writes acknowledged before they are applied: how far behind the
    /// applying was.
    pub applying: Option<Applying>,
}

/// Google events are applied after their 200 (see `store::rbm_events`).
#[derive(Debug)]
pub struct Applying {
    /// The most events waiting to be applied, sampled every 20 ms.
    pub deepest: i64,
    /// From the last acknowledgement until every event was applied, or how
    /// many still waited when the bench stopped waiting.
    pub drained: Result<Duration, i64>,
    /// Events the applier set aside: it could not apply them.
    pub set_aside: i64,
}

/// How long the bench waits for acknowledged events to be applied.
pub const APPLY_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Batch {
    pub messages: u64,
    pub per_sec: f64,
    pub requests: LoadResult,
    pub usage: Usage,
}

#[derive(Debug)]
pub struct Lateness {
    pub pending: i64,
    pub expected: u64,
    /// Messages whose DELETE reached the emulator in time for the count.
    pub revoked: u64,
    /// Messages the registration refused or lost.
    pub not_registered: u64,
    /// Sorted.
    pub lateness: Vec<Duration>,
    pub usage: Usage,
    /// How the stream's messages ended, by state.
    pub states: Vec<(String, i64)>,
}

impl Lateness {
    pub fn q(&self, q: f64) -> Option<Duration> {
        load::quantile(&self.lateness, q)
    }
}

#[derive(Debug)]
pub struct Burst {
    pub messages: u64,
    /// From the shared deadline to the last SMS accepted by Twilio.
    pub pipeline: Option<Duration>,
    /// From the deadline to the last DELETE received by the emulator.
    pub revokes_span: Option<Duration>,
    /// From the deadline to the first SMS accepted.
    pub first_sms: Option<Duration>,
    pub revoked: i64,
    pub sms_accepted: i64,
    /// SMS the Twilio emulator created for the burst (more than `messages`
    /// would be duplicates).
    pub sms_created: usize,
    pub states: Vec<(String, i64)>,
    pub usage: Usage,
    /// With rate limits on: when the calls left, and when the emulators
    /// received them.
    pub limits: Option<LimitCheck>,
    /// Messages a statement of its steps carried, on average.
    pub steps_per_statement: Option<f64>,
    pub notes: Vec<String>,
}

/// PostgreSQL alone doing the burst's database work (see
/// `Bench::burst_ceiling`).
#[derive(Debug, Clone)]
pub struct Ceiling {
    /// Messages a statement carried, as in the burst.
    pub batch: u64,
    /// Messages taken through all six steps a second.
    pub per_sec: f64,
    pub usage: Usage,
}

impl Burst {
    pub fn per_sec(&self) -> Option<f64> {
        self.pipeline
            .filter(|d| !d.is_zero())
            .map(|d| self.messages as f64 / d.as_secs_f64())
    }
}

/// One outbound rate limit under a burst, judged against the token bucket
/// the service promises: `rate` per second with one second's worth of burst,
/// so that no stretch of time from t1 to t2 holds more than
/// `rate` + `rate` * (t2 - t1) calls.
#[derive(Debug)]
pub struct LimitCheck {
    pub rate: u32,
    /// When the calls left the service, by its history: what the verdict is
    /// on.
    pub left: Flows,
    /// When the emulators received them: the same calls plus the loopback's
    /// and the emulators' delays, which differ from call to call, so a
    /// stretch can hold more calls here than left in it.
    pub arrived: Flows,
}

#[derive(Debug, Default)]
pub struct Flows {
    pub google: Flow,
    pub twilio: Flow,
}

#[derive(Debug, Default)]
pub struct Flow {
    pub calls: usize,
    /// Calls per second from the first to the last.
    pub mean: f64,
    /// The most calls in any one second (for Twilio's receive times, which
    /// have whole seconds only: in any calendar second).
    pub max_1s: usize,
    /// The largest count of any stretch minus what the rate alone allows for
    /// it: within the limit when at most the burst (plus, for Twilio's
    /// receive times, one second's worth for their resolution).
    pub excess: f64,
}

impl LimitCheck {
    /// Whether the limit held the pipeline back at all: the DELETEs left at
    /// (nearly) the limit. If not, the pipeline was slower than the limit
    /// and "honoured" says little.
    pub fn binding(&self) -> bool {
        self.left.google.mean >= 0.9 * f64::from(self.rate)
    }

    /// The calls left within the token bucket's bound, allowing a few for
    /// the timer: a wait for a slot ends on the next millisecond at the
    /// soonest, a little later on a busy machine. Every call received must
    /// have its departure recorded, or there is nothing to judge.
    pub fn honoured(&self) -> bool {
        let rate = f64::from(self.rate);
        let slack = (rate * 0.01).max(3.0);
        let (left, arrived) = (&self.left, &self.arrived);
        left.google.calls >= arrived.google.calls
            && left.twilio.calls >= arrived.twilio.calls
            && left.google.excess <= rate + slack
            && left.twilio.excess <= rate + slack
    }
}

/// `times` (sorted, in seconds) against `rate`: see [`Flow`].
fn flow(times: &[f64], rate: f64, window: f64) -> Flow {
    let n = times.len();
    if n == 0 {
        return Flow::default();
    }
    // Stretch i..=j holds j - i + 1 calls over t[j] - t[i] seconds; its
    // excess is (j - rate t[j]) - (i - rate t[i]) + 1.
    let (mut lowest, mut excess) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut max_1s, mut start) = (0, 0);
    for (j, t) in times.iter().enumerate() {
        let v = j as f64 - rate * t;
        lowest = lowest.min(v);
        excess = excess.max(v - lowest + 1.0);
        while times[start] + window <= *t {
            start += 1;
        }
        max_1s = max_1s.max(j - start + 1);
    }
    let span = times[n - 1] - times[0];
    Flow {
        calls: n,
        mean: if span > 0.0 {
            (n - 1) as f64 / span
        } else {
            0.0
        },
        max_1s,
        excess,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn millis(d: TimeDelta) -> Duration {
    d.to_std().unwrap_or(Duration::ZERO)
}

impl Bench {
    /// POST /v1/messages: closed loop at the configured concurrency, then
    /// open loop at half the rate it reached.
    pub async fn intake(&mut self, label: &str) -> anyhow::Result<Endpoint> {
        let beside = self.pgbench_beside("intake").await?;
        let pending = db::pending(&self.pool).await?;
        let before = db::max_id(&self.pool).await?;
        let make = |part: &'static str| -> MakeRequest {
            let (api, url, tag) = (
                self.api.clone(),
                format!("{}/v1/messages", self.service_url()),
                format!("in-{}-{label}-{part}-", self.tag),
            );
            Arc::new(move |n| {
                let body = format!(
                    r#"{{"phone":"{}","message_id":"{tag}{n}","revoke_after_secs":604800,"sms":{{"body":"Your code is {:06}"}}}}"#,
                    phone(n),
                    n % 1_000_000
                );
                Some(
                    api.post(&url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body),
                )
            })
        };
        let p = &self.plan;
        let s0 = self.probe.sample().await;
        let max = load::closed_loop(p.concurrency, p.warmup, p.duration, &[201], make("c")).await;
        let s1 = self.probe.sample().await;
        let half_rate = max.per_sec() / 2.0;
        let s2 = self.probe.sample().await;
        let half = load::open_loop(half_rate, p.warmup, p.duration, 4096, &[201], make("o")).await;
        let s3 = self.probe.sample().await;
        db::delete_after(&self.pool, before).await?;
        Ok(Endpoint {
            pending,
            beside,
            max,
            max_usage: probe::usage(&s0, &s1),
            half,
            half_rate,
            half_usage: probe::usage(&s2, &s3),
            applying: None,
        })
    }

    /// POST /v1/messages:batch with full batches from a few connections.
    pub async fn batch(&mut self) -> anyhow::Result<Batch> {
        let before = db::max_id(&self.pool).await?;
        let size = self.plan.batch_size as u64;
        let batches = self.plan.batch_messages.div_ceil(size);
        let (api, url, tag) = (
            self.api.clone(),
            format!("{}/v1/messages:batch", self.service_url()),
            format!("ba-{}-", self.tag),
        );
        let make: MakeRequest = Arc::new(move |b| {
            if b >= batches {
                return None;
            }
            let mut body = String::with_capacity(size as usize * 140);
            body.push_str(r#"{"messages":["#);
            for i in 0..size {
                let n = b * size + i;
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    r#"{{"phone":"{}","message_id":"{tag}{n}","revoke_after_secs":604800,"sms":{{"body":"Your code is {:06}"}}}}"#,
                    phone(n),
                    n % 1_000_000
                ));
            }
            body.push_str("]}");
            Some(
                api.post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
        });
        let s0 = self.probe.sample().await;
        let requests = load::closed_loop(
            self.plan.batch_concurrency,
            Duration::ZERO,
            Duration::from_secs(600),
            &[200],
            make,
        )
        .await;
        let s1 = self.probe.sample().await;
        let stored = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM messages WHERE id > $1 AND state = 'pending'",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await? as u64;
        db::delete_after(&self.pool, before).await?;
        let per_sec = if requests.elapsed.is_zero() {
            0.0
        } else {
            stored as f64 / requests.elapsed.as_secs_f64()
        };
        Ok(Batch {
            messages: stored,
            per_sec,
            requests,
            usage: probe::usage(&s0, &s1),
        })
    }

    /// Signed DELIVERED events for pending messages, POSTed to /webhooks/rbm:
    /// closed loop, then open loop at half the rate. Each event is new and
    /// moves its message to `delivered`, as a real delivery report does.
    pub async fn webhooks(&mut self) -> anyhow::Result<Endpoint> {
        // Before the setup, whose checkpoint then starts the measurement
        // clean of pgbench's WAL.
        let beside = self.pgbench_beside("webhooks").await?;
        let pending = db::pending(&self.pool).await?;
        let before = db::max_id(&self.pool).await?;
        let p = &self.plan;
        let targets = 12_000 * (p.duration.as_secs() + p.warmup.as_secs() + 1);
        let prefix = format!("wh-{}-", self.tag);
        db::insert_pending(
            &self.pool,
            &prefix,
            0,
            targets,
            Utc::now() + TimeDelta::days(7),
            1000,
        )
        .await?;
        db::vacuum(&self.pool).await?;
        db::checkpoint(&self.pool).await;
        let next = Arc::new(AtomicU64::new(0));
        let (api, url, google, run) = (
            self.api.clone(),
            format!("{}/webhooks/rbm", self.service_url()),
            self.rig.google.clone(),
            self.tag.clone(),
        );
        let make: MakeRequest = Arc::new(move |_| {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= targets {
                return None;
            }
            let event = json!({
                "senderPhoneNumber": phone(k),
                "eventType": "DELIVERED",
                "eventId": format!("bench-{run}-{k}"),
                "messageId": format!("{prefix}{k}"),
                "sendTime": rfc3339(Utc::now()),
                "agentId": format!("{}@rbm.goog", db::AGENT),
            });
            let (body, signature) = google.envelope(&event);
            Some(
                api.post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("X-Goog-Signature", signature)
                    .body(body),
            )
        });
        let depth = db::sample_queue(&self.pool, "rbm_inbox", Duration::from_millis(20));
        let s0 = self.probe.sample().await;
        let max =
            load::closed_loop(p.concurrency, p.warmup, p.duration, &[200], make.clone()).await;
        let s1 = self.probe.sample().await;
        let half_rate = max.per_sec() / 2.0;
        let s2 = self.probe.sample().await;
        let half = load::open_loop(half_rate, p.warmup, p.duration, 4096, &[200], make).await;
        let s3 = self.probe.sample().await;
        let acked = Instant::now();
        let drained = match db::wait_empty(&self.pool, "rbm_inbox", APPLY_PATIENCE).await? {
            Some(t) => Ok(t.saturating_duration_since(acked)),
            None => Err(db::queue_len(&self.pool, "rbm_inbox").await?),
        };
        let deepest = depth.stop().await;
        let set_aside = db::queue_len(&self.pool, "rbm_inbox_set_aside").await?;
        let delivered = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM messages WHERE id > $1 AND state = 'delivered'",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        if (delivered as u64) < max.ok + half.ok {
            self.notes.push(format!(
                "webhooks: {} events acknowledged but only {delivered} messages delivered",
                max.ok + half.ok
            ));
        }
        db::delete_after(&self.pool, before).await?;
        // With the events left unapplied, if any: a backlog left to the
        // applier would weigh on every phase after this one, and they would
        // measure it, not themselves.
        sqlx::query("TRUNCATE rbm_events, rbm_inbox, rbm_inbox_set_aside")
            .execute(&self.pool)
            .await?;
        Ok(Endpoint {
            pending,
            beside,
            max,
            max_usage: probe::usage(&s0, &s1),
            half,
            half_rate,
            half_usage: probe::usage(&s2, &s3),
            applying: Some(Applying {
                deepest,
                drained,
                set_aside,
            }),
        })
    }

    /// A stream of messages registered (in batches, every 100 ms) with
    /// deadlines spread evenly so that `deadline_rate` per second fall due,
    /// on top of the pending backlog. Each was sent to a phone that stays
    /// offline, so the whole fallback runs: revoke, confirm window, SMS,
    /// status callbacks. Lateness is when the emulator received the DELETE
    /// minus the deadline.
    pub async fn deadline(&mut self, label: &str) -> anyhow::Result<Lateness> {
        let pending = db::pending(&self.pool).await?;
        let before = db::max_id(&self.pool).await?;
        let p = &self.plan;
        let rate = u64::from(p.deadline_rate.max(10));
        const TICKS_PER_SEC: u64 = 10;
        let per_tick = rate / TICKS_PER_SEC;
        let ticks = p.deadline_secs * TICKS_PER_SEC;
        let total = per_tick * ticks;
        let lead = TimeDelta::milliseconds(2000);
        let prefix = format!("dl-{}-{label}-", self.tag);
        let revokes_before = self.rig.google.revokes().len();
        let url = format!("{}/v1/messages:batch", self.service_url());
        let start = Instant::now();
        let base = Utc::now() + lead;
        let deadline_of = |k: u64| base + TimeDelta::microseconds((k * 1_000_000 / rate) as i64);
        let mut posts = tokio::task::JoinSet::new();
        let s0_at = start + millis(lead);
        let mut s0 = None;
        for tick in 0..ticks {
            tokio::time::sleep_until(start + Duration::from_millis(tick * 1000 / TICKS_PER_SEC))
                .await;
            if s0.is_none() && Instant::now() >= s0_at {
                s0 = Some(self.probe.sample().await);
            }
            let mut items = Vec::with_capacity(per_tick as usize);
            for i in 0..per_tick {
                let k = tick * per_tick + i;
                let id = format!("{prefix}{k}");
                // What the agent did first: send the RCS message, which
                // stays queued at Google (the phone is offline).
                if !self.plan.revoke_only {
                    self.rig.google.agent_send(&phone(k), &id, None);
                }
                items.push(format!(
                    r#"{{"phone":"{}","message_id":"{id}","deadline":"{}","sms":{{"body":"Your code is {:06}"}}}}"#,
                    phone(k),
                    rfc3339(deadline_of(k)),
                    k % 1_000_000
                ));
            }
            let body = format!(r#"{{"messages":[{}]}}"#, items.join(","));
            let req = self
                .api
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            posts.spawn(async move {
                // Failures show up below as messages never registered.
                let _ = req.send().await.and_then(|r| r.error_for_status());
            });
            while posts.try_join_next().is_some() {}
        }
        // Bounded by the client's timeout.
        while posts.join_next().await.is_some() {}
        let registered = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages WHERE id > $1")
            .bind(before)
            .fetch_one(&self.pool)
            .await? as u64;
        // Wait for every DELETE, however late: until none has arrived for
        // 20 s after the last deadline, or 5 minutes after it.
        let last_deadline = deadline_of(total.saturating_sub(1));
        let give_up =
            Instant::now() + millis(last_deadline - Utc::now()) + Duration::from_secs(300);
        let want = revokes_before + registered as usize;
        // Progress by the emulator's request count: cheaper than copying
        // its list of revokes every time.
        let mut progress = (self.rig.google.requests(), Instant::now());
        loop {
            let got = self
                .rig
                .google
                .wait_for_revokes(want, Duration::from_secs(2))
                .await;
            if got.is_ok() || Instant::now() > give_up {
                break;
            }
            let n = self.rig.google.requests();
            if n > progress.0 {
                progress = (n, Instant::now());
            } else if Utc::now() > last_deadline && progress.1.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        let s0 = match s0 {
            Some(s) => s,
            None => self.probe.sample().await,
        };
        let s1 = self.probe.sample().await;
        let revokes = self.rig.google.revokes();
        let mut seen = std::collections::HashSet::new();
        let mut lateness = Vec::with_capacity(total as usize);
        for r in revokes.iter().skip(revokes_before) {
            let Some(k) = r
                .message_id
                .strip_prefix(&prefix)
                .and_then(|k| k.parse::<u64>().ok())
            else {
                continue;
            };
            if !seen.insert(k) {
                continue;
            }
            lateness.push(millis(r.received_at - deadline_of(k)));
        }
        lateness.sort_unstable();
        // Let the rest of the fallback (confirm window, SMS, callbacks)
        // finish before the next measurement.
        self.settle(before, Duration::from_secs(120)).await?;
        let states = db::states_after(&self.pool, before).await?;
        db::delete_after(&self.pool, before).await?;
        Ok(Lateness {
            pending,
            expected: total,
            revoked: lateness.len() as u64,
            not_registered: total.saturating_sub(registered),
            lateness,
            usage: probe::usage(&s0, &s1),
            states,
        })
    }

    /// Waits (at most `limit`) until no message above row id `after` has
    /// work left but waiting for Twilio's callbacks to end.
    async fn settle(&self, after: i64, limit: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + limit;
        while Instant::now() < give_up {
            let busy: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM messages WHERE id > $1 AND state = ANY($2)",
            )
            .bind(after)
            .bind(crate::domain::State::unsettled_names())
            .fetch_one(&self.pool)
            .await?;
            if busy == 0 {
                // The last status callbacks are 20 ms steps behind.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// `burst` messages sharing one deadline, each queued at the Google
    /// emulator for an offline phone: all must be revoked, confirmed (the
    /// window is 1 s) and sent as SMS. With `limited`, the service runs with
    /// both outbound rate limits at `rate_limit` per second.
    pub async fn burst(&mut self, limited: bool) -> anyhow::Result<Burst> {
        db::truncate(&self.pool).await?;
        db::vacuum(&self.pool).await?;
        let rate = self.plan.rate_limit;
        let env = if limited {
            vec![
                (
                    "RBMF__WORKER__RBM_RATE_PER_SEC".to_owned(),
                    rate.to_string(),
                ),
                (
                    "RBMF__WORKER__TWILIO_RATE_PER_SEC".to_owned(),
                    rate.to_string(),
                ),
            ]
        } else {
            Vec::new()
        };
        self.start_service(&env).await?;
        let m = if limited {
            self.plan.limited_burst
        } else {
            self.plan.burst
        };
        let prefix = format!("bu-{}-{}-", self.tag, if limited { "l" } else { "u" });
        let revokes_before = self.rig.google.revokes().len();
        let sms_before = self.rig.twilio.messages().len();
        for k in 0..m {
            self.rig
                .google
                .agent_send(&phone(k), &format!("{prefix}{k}"), None);
        }
        let before = db::max_id(&self.pool).await?;
        let lead = TimeDelta::milliseconds(2000 + (m as i64) / 20);
        let deadline = Utc::now() + lead;
        db::insert_pending(&self.pool, &prefix, 0, m, deadline, 0).await?;
        sqlx::query("ANALYZE messages").execute(&self.pool).await?;
        let mut notes = Vec::new();
        let start = if Utc::now() > deadline {
            notes.push(format!(
                "the burst's rows were committed {} ms after their deadline; timed from the commit",
                (Utc::now() - deadline).num_milliseconds()
            ));
            Utc::now()
        } else {
            tokio::time::sleep(millis(deadline - Utc::now())).await;
            deadline
        };
        let s0 = self.probe.sample().await;
        // Done when every message has its SMS accepted; bounded by a stall
        // (no history event written for a minute: the SMS stage may start
        // only once every revoke is done) and an overall limit.
        let hard_limit = Instant::now() + Duration::from_secs(1800);
        let mut last = (0i64, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM messages
                 WHERE id > $1 AND state IN ('sms_sent', 'sms_delivered')",
            )
            .bind(before)
            .fetch_one(&self.pool)
            .await?;
            if done as u64 >= m {
                break;
            }
            let events: i64 =
                sqlx::query_scalar("SELECT COALESCE(max(id), 0)::bigint FROM message_events")
                    .fetch_one(&self.pool)
                    .await?;
            if events > last.0 {
                last = (events, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(60) {
                notes.push(format!(
                    "stalled at {done} of {m} SMS accepted (nothing happened for a minute); \
                     stopped waiting"
                ));
                break;
            }
            if Instant::now() > hard_limit {
                notes.push(format!("gave up after 30 minutes at {done} of {m}"));
                break;
            }
        }
        let s1 = self.probe.sample().await;
        let (revoked, _, _) = db::event_span(&self.pool, before, "revoke_ok").await?;
        let (sms_accepted, first_sms, last_sms) =
            db::event_span(&self.pool, before, "sms_accepted").await?;
        let revokes: Vec<DateTime<Utc>> = self
            .rig
            .google
            .revokes()
            .into_iter()
            .skip(revokes_before)
            .filter(|r| r.message_id.starts_with(&prefix))
            .map(|r| r.received_at)
            .collect();
        let sms: Vec<DateTime<Utc>> = self
            .rig
            .twilio
            .messages()
            .into_iter()
            .skip(sms_before)
            .map(|s| s.date_created)
            .collect();
        // Let the last callbacks land before the next scenario.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let states = db::states_after(&self.pool, before).await?;
        let steps_per_statement = db::steps_per_statement(&self.pool, before).await?;
        let limits = if limited {
            let (google, twilio) = db::departures(&self.pool, before).await?;
            Some(check_limits(rate, (&google, &twilio), (&revokes, &sms)))
        } else {
            None
        };
        Ok(Burst {
            messages: m,
            pipeline: last_sms.map(|t| millis(t - start)),
            revokes_span: revokes.iter().max().map(|t| millis(*t - start)),
            first_sms: first_sms.map(|t| millis(t - start)),
            revoked,
            sms_accepted,
            sms_created: sms.len(),
            states,
            usage: probe::usage(&s0, &s1),
            limits,
            steps_per_statement,
            notes,
        })
    }
}

type Calls<'a> = (&'a [DateTime<Utc>], &'a [DateTime<Utc>]);

/// The rate limits, from when the calls (to Google, to Twilio) left the
/// service and when the emulators received them: DELETEs to the
/// microsecond, SMS creation times to the whole second, as Twilio keeps
/// them.
fn check_limits(rate: u32, left: Calls, arrived: Calls) -> LimitCheck {
    let secs = |ts: &[DateTime<Utc>]| {
        let first = ts.iter().min().copied();
        let mut v: Vec<f64> = ts
            .iter()
            .filter_map(|t| Some((*t - first?).num_microseconds()? as f64 / 1e6))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let r = f64::from(rate);
    LimitCheck {
        rate,
        left: Flows {
            google: flow(&secs(left.0), r, 1.0),
            twilio: flow(&secs(left.1), r, 1.0),
        },
        arrived: Flows {
            google: flow(&secs(arrived.0), r, 1.0),
            // Whole seconds: a calendar second is a window of (nearly) a second.
            twilio: flow(&secs(arrived.1), r, 0.5),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_windows() {
        let t0 = Utc::now();
        let ms = TimeDelta::milliseconds;
        // 10 at once, then 5 per second for 4 seconds.
        let mut calls: Vec<DateTime<Utc>> = (0..10).map(|_| t0).collect();
        calls.extend((0..20).map(|i| t0 + ms(200 + i * 200)));
        let c = check_limits(5, (&calls, &calls), (&calls, &calls));
        assert_eq!(c.left.google.max_1s, 14);
        assert_eq!(c.left.google.calls, 30);
        // The first 10 arrive at once: 5 more than a 5/s bucket's burst.
        assert!(
            (c.left.google.excess - 10.0).abs() < 1e-9,
            "{:?}",
            c.left.google
        );
        assert!(!c.honoured());
        assert!(check_limits(10, (&calls, &calls), (&calls, &calls)).honoured());

        // Steady at the rate, with the bucket full now and then: a second's
        // worth at once after a pause is allowed, more is not.
        let mut calls: Vec<DateTime<Utc>> = (0..50).map(|i| t0 + ms(i * 100)).collect();
        calls.extend((0..10).map(|_| t0 + ms(8000)));
        let c = check_limits(10, (&calls, &calls), (&calls, &calls));
        assert!(c.honoured(), "{c:?}");
        calls.extend((0..5).map(|_| t0 + ms(8000)));
        assert!(!check_limits(10, (&calls, &calls), (&calls, &calls)).honoured());
    }

    #[test]
    fn the_verdict_is_on_when_calls_left_the_service() {
        let t0 = Utc::now();
        let ms = TimeDelta::milliseconds;
        // 10 per second for 3 seconds, evenly spaced: within a 10/s bucket.
        let left: Vec<DateTime<Utc>> = (0..30).map(|i| t0 + ms(i * 100)).collect();
        // The same calls, the first twenty held up on the way: they arrive
        // together with the last ten, more than the bucket allows.
        let arrived: Vec<DateTime<Utc>> = left
            .iter()
            .enumerate()
            .map(|(i, t)| if i < 20 { t0 + ms(2000) } else { *t })
            .collect();
        let c = check_limits(10, (&left, &left), (&arrived, &left));
        assert!(c.arrived.google.excess > 10.0 + 3.0, "{:?}", c.arrived);
        assert!(c.honoured(), "{c:?}");
        // Calls to Twilio that left too close together fail it.
        let bunched: Vec<DateTime<Utc>> = (0..30).map(|i| t0 + ms(i * 50)).collect();
        assert!(!check_limits(10, (&left, &bunched), (&left, &bunched)).honoured());
        // So do calls received with no departure on record.
        assert!(!check_limits(10, (&left, &[]), (&left, &left)).honoured());
    }
}
