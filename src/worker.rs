//! The scheduler and its workers: claim due messages, make the one outbound
//! call each needs (revoke at Google, send at Twilio) with no transaction
//! open, and record the result.
//!
//! The scheduler sleeps until the earliest due time (read from the database
//! clock), or until woken: by this process after a commit that made work due
//! soon, or by another replica's NOTIFY. It never sleeps longer than
//! `max_idle`, because notifications can be lost (a listener reconnecting
//! drops them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::{RetentionSettings, WorkerSettings};
use crate::domain::backoff::Backoff;
use crate::domain::phone::mask;
use crate::domain::ratelimit::TokenBucket;
use crate::domain::{
    Action, Input, Policy, RcsSendResult, RevokeResult, SmsResult, SmsStatus, Verdict,
    RCS_TTL_MARGIN,
};
use crate::google::{RbmClient, Revoked, SendAnswer};
use crate::outbound::CallError;
use crate::store::batch::{Batcher, Incoming};
use crate::store::{Applied, Claimed, Store, WorkResult, DUE_CHANNEL};
use crate::twilio::TwilioClient;

/// Less time than this before the deadline, and sending the RCS is
/// pointless: it would expire before the phone could fetch it.
const MIN_RCS_TTL: Duration = Duration::from_secs(1);

pub struct Worker {
    pub store: Store,
    pub rbm: RbmClient,
    pub twilio: TwilioClient,
    pub policy: Policy,
    pub settings: WorkerSettings,
    /// Base of the StatusCallback URLs given to Twilio.
    pub public_url: String,
    pub limits: Limits,
    pub metrics: crate::metrics::Metrics,
    /// The longest an outbound call can last (the larger of the RBM and
    /// Twilio timeouts): a claim handed back at shutdown falls due no
    /// sooner than this, so no other worker looks for a call's effect
    /// before the call must have ended.
    pub longest_call: Duration,
}

/// Outbound rate limits: one token bucket per agent (RBM API) and per
/// sender (Twilio).
pub struct Limits {
    rbm_rate: u32,
    twilio_rate: u32,
    /// Agents' own rates (RBM, Twilio), where they differ from the above.
    agent_rates: HashMap<String, (u32, u32)>,
    buckets: std::sync::Mutex<HashMap<String, TokenBucket>>,
}

impl Limits {
    pub fn new(settings: &WorkerSettings) -> Limits {
        Limits {
            rbm_rate: settings.rbm_rate_per_sec,
            twilio_rate: settings.twilio_rate_per_sec,
            agent_rates: HashMap::new(),
            buckets: Default::default(),
        }
    }

    pub fn with_agents(mut self, agents: &[crate::config::AgentSettings]) -> Limits {
        for a in agents {
            let rates = (
                a.rbm_rate_per_sec.unwrap_or(self.rbm_rate),
                a.twilio_rate_per_sec.unwrap_or(self.twilio_rate),
            );
            self.agent_rates.insert(a.id.clone(), rates);
        }
        self
    }

    fn rates_of(&self, agent_id: &str) -> (u32, u32) {
        self.agent_rates
            .get(agent_id)
            .copied()
            .unwrap_or((self.rbm_rate, self.twilio_rate))
    }

    /// How long to wait for the next slot under `key`, if within `max_wait`.
    fn reserve(&self, key: String, rate: u32, max_wait: Duration) -> Result<Duration, Duration> {
        if rate == 0 {
            return Ok(Duration::ZERO);
        }
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(f64::from(rate), f64::from(rate), now))
            .reserve(now, max_wait)
    }
}

impl Worker {
    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.settings.retry_base,
            cap: self.settings.retry_cap,
        }
    }

    /// Runs until `shutdown`, then waits for calls in flight (up to `grace`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let wake = self.store.wake_handle();
        let listener = tokio::spawn(listen(self.store.clone(), wake.clone(), shutdown.clone()));
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let recorder = recorder(self.store.clone(), self.policy, self.settings.batch_size);
        // Claims being worked on, to hand back if shutdown cuts them short.
        let in_flight: Arc<std::sync::Mutex<HashMap<i64, InFlight>>> = Default::default();
        let mut db_backoff = Duration::from_millis(100);
        info!(concurrency = self.settings.concurrency, "scheduler started");

        while !shutdown.is_cancelled() {
            // Claim only as much as we can start at once, so nothing claimed
            // waits in memory while its lease runs down.
            let first = tokio::select! {
                p = permits.clone().acquire_many_owned(1) => p.expect("never closed"),
                _ = shutdown.cancelled() => break,
            };
            let mut held = vec![first];
            while held.len() < self.settings.batch_size {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            let wanted = held.len();
            match self.store.claim_due(wanted as i64, &self.policy).await {
                Ok(claims) => {
                    db_backoff = Duration::from_millis(100);
                    let full = claims.len() == wanted;
                    for (claim, permit) in claims.into_iter().zip(held.drain(..)) {
                        let (me, recorder) = (self.clone(), recorder.clone());
                        let span = tracing::info_span!("message", message_id = %claim.message.message_id, action = ?claim.action);
                        let held = in_flight.clone();
                        let id = claim.message.id;
                        let token = claim.token;
                        lock(&held).insert(id, InFlight { token, task: None });
                        let task = tokio::spawn(
                            async move {
                                me.handle(claim, &recorder).await;
                                lock(&held).remove(&id);
                                drop(permit);
                            }
                            .instrument(span),
                        );
                        if let Some(entry) = lock(&in_flight).get_mut(&id) {
                            entry.task = Some(task.abort_handle());
                        }
                    }
                    drop(held);
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    drop(held);
                    warn!(error = %e, retry_in_ms = db_backoff.as_millis() as u64, "cannot claim due work");
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            let wait = match self.store.next_due_in().await {
                Ok(Some(d)) => d.min(self.settings.max_idle),
                Ok(None) | Err(_) => self.settings.max_idle,
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }

        listener.abort();
        // Let calls in flight record their results; whatever cannot finish in
        // time is handed back: due at once, still carrying its claim, so the
        // next worker (another replica, or this one restarted) takes it over
        // without waiting for the lease and treats the call as in doubt.
        let all = self.settings.concurrency as u32;
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            // Stopped first, so that none starts a call after its claim is
            // handed back (one waiting for a rate-limit slot, say).
            let cut: Vec<(i64, uuid::Uuid)> = lock(&in_flight)
                .drain()
                .map(|(id, f)| {
                    if let Some(task) = f.task {
                        task.abort();
                    }
                    (id, f.token)
                })
                .collect();
            match self.store.release_claims(&cut, self.longest_call).await {
                Ok(n) => warn!(
                    released = n,
                    "calls still in flight at shutdown; their claims were handed back"
                ),
                Err(e) => {
                    warn!(error = %e, "calls still in flight at shutdown; their leases will expire and be taken over")
                }
            }
        }
        info!("scheduler stopped");
    }

    /// Performs one claimed action and records its result.
    async fn handle(&self, claim: Claimed, recorder: &Recorder) {
        let attempt = claim.message.attempts.max(1) as u32;
        let (input, detail) = match claim.action {
            Action::SendRcs => self.send_rcs(&claim, attempt).await,
            Action::Revoke { after_doubt } => self.revoke(&claim, attempt, after_doubt).await,
            Action::SendSms {
                reconcile,
                may_send,
            } => self.send_sms(&claim, attempt, reconcile, may_send).await,
        };
        // A database blip must not lose a result that may have cost an SMS:
        // keep trying while the lease still protects the claim.
        let mut delay = Duration::from_millis(50);
        let give_up = tokio::time::Instant::now() + self.settings.lease / 2;
        loop {
            let result = WorkResult {
                id: claim.message.id,
                token: claim.token,
                input: input.clone(),
                detail: detail.clone(),
            };
            match recorder.submit(result).await {
                Ok(applied) => {
                    match &applied.verdict {
                        // The call's answer was logged at info already; the
                        // step is in the history. One line per call, not two.
                        Verdict::Apply(step) => {
                            debug!(event = step.event, state = %step.state, "recorded")
                        }
                        Verdict::Record { event, note } => {
                            warn!(event, note, "result arrived after the message moved on")
                        }
                        Verdict::Refuse { reason } => warn!(reason, "result refused"),
                    }
                    return;
                }
                Err(e) if tokio::time::Instant::now() + delay < give_up => {
                    warn!(error = %e, "cannot record the result yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    warn!(error = %e, "result not recorded; the claim will be retried in doubt");
                    return;
                }
            }
        }
    }

    /// Waits for a rate-limit slot, unless it is so far off that holding the
    /// claim meanwhile would risk its lease: then the work goes back to the
    /// queue, due when the slot frees up.
    ///
    /// Answers when the call leaves, for its history: what an operator (and
    /// the bench) can hold against the limit, free of the network's jitter.
    async fn throttle(&self, key: String, rate: u32) -> Result<DateTime<Utc>, Duration> {
        let wait = self.limits.reserve(key, rate, self.settings.lease / 2)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(Utc::now())
    }

    /// The agent's access token, then its rate-limit slot: a call that
    /// cannot get a token is not made, and spends no slot.
    async fn google_turn(&self, agent_id: &str) -> GoogleTurn {
        if let Err(e) = self.rbm.ready(agent_id).await {
            return GoogleTurn::NoToken(e);
        }
        let rate = self.limits.rates_of(agent_id).0;
        match self.throttle(format!("rbm:{agent_id}"), rate).await {
            Ok(at) => GoogleTurn::Go(at),
            Err(free_in) => GoogleTurn::Later(free_in),
        }
    }

    fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.backoff()
            .delay(attempt, retry_after, rand::thread_rng().gen::<f64>())
    }

    /// Send mode: sends the RBM message with Google's TTL just after the
    /// deadline ([`RCS_TTL_MARGIN`]), so that Google's own expiry backs up
    /// our revoke.
    async fn send_rcs(&self, claim: &Claimed, attempt: u32) -> (Input, serde_json::Value) {
        let m = &claim.message;
        let mut body = m.rcs.clone().unwrap_or_default();
        let expire = m.deadline + chrono::TimeDelta::from_std(RCS_TTL_MARGIN).unwrap_or_default();
        body["expireTime"] = expire.to_rfc3339_opts(SecondsFormat::Millis, true).into();
        let (answer, sent_at) = match self.google_turn(&m.agent_id).await {
            GoogleTurn::Later(free_in) => {
                return Retry::rate_limited(free_in)
                    .no_later_than(m.deadline)
                    .rcs_send()
            }
            GoogleTurn::NoToken(e) => (Err(e), None),
            GoogleTurn::Go(sent_at) => {
                // After the rate limit's wait, which may have used up the time left.
                let left = (m.deadline - sent_at).to_std().unwrap_or_default();
                if left < MIN_RCS_TTL {
                    self.metrics.rcs_send("expired");
                    return (
                        Input::RcsSend(RcsSendResult::Expired),
                        serde_json::json!({ "time_left_ms": left.as_millis() as u64 }),
                    );
                }
                let answer = self
                    .rbm
                    .send(&m.agent_id, &m.phone, &m.message_id, &body)
                    .await;
                (answer, Some(sent_at))
            }
        };
        let (input, detail, result) = match answer {
            Ok(SendAnswer::Sent) => (
                Input::RcsSend(RcsSendResult::Sent),
                serde_json::json!({ "status": 200, "expire_time": body["expireTime"] }),
                "200",
            ),
            Ok(SendAnswer::Unreachable { status, detail }) => (
                Input::RcsSend(RcsSendResult::Unreachable {
                    status,
                    detail: detail.clone(),
                }),
                serde_json::json!({ "status": status, "error": detail }),
                if status == 404 { "404" } else { "403" },
            ),
            Err(e) => match self.failure(e, attempt) {
                Failure::Retry(r) => {
                    let (input, detail) = r.no_later_than(m.deadline).rcs_send();
                    (input, detail, "retry")
                }
                Failure::Rejected { status, detail, .. } => (
                    Input::RcsSend(RcsSendResult::Rejected {
                        status,
                        detail: detail.clone(),
                    }),
                    serde_json::json!({ "status": status, "error": detail }),
                    if status == 400 { "400" } else { "rejected" },
                ),
            },
        };
        self.metrics.rcs_send(result);
        info!(phone = %mask(&m.phone), attempt, answer = result, "RBM send answered");
        (input, stamped(detail, sent_at))
    }

    async fn revoke(
        &self,
        claim: &Claimed,
        attempt: u32,
        after_doubt: bool,
    ) -> (Input, serde_json::Value) {
        let m = &claim.message;
        // Claimed ahead (`worker.claim_lead_ms`), so that the claim's
        // database work does not make the revoke late; it leaves on time.
        if let Some(at) = claim.not_before {
            tokio::time::sleep_until(at).await;
        }
        let (result, sent_at) = match self.google_turn(&m.agent_id).await {
            GoogleTurn::Later(free_in) => return Retry::rate_limited(free_in).revoke(),
            GoogleTurn::NoToken(e) => (Err(e), None),
            GoogleTurn::Go(sent_at) => (
                self.rbm.revoke(&m.agent_id, &m.phone, &m.message_id).await,
                Some(sent_at),
            ),
        };
        self.metrics.revocation(&result, m.deadline);
        let (input, detail) = match result {
            Ok(Revoked::Ok) => (
                Input::Revoke(RevokeResult::Revoked),
                serde_json::json!({ "status": 200 }),
            ),
            Ok(Revoked::NotFound) => (
                Input::Revoke(RevokeResult::NotFound),
                serde_json::json!({ "status": 404, "after_doubt": after_doubt }),
            ),
            Err(e) => match self.failure(e, attempt) {
                Failure::Retry(r) => r.revoke(),
                Failure::Rejected { status, detail, .. } => (
                    Input::Revoke(RevokeResult::Rejected {
                        status,
                        detail: detail.clone(),
                    }),
                    serde_json::json!({ "status": status, "error": detail }),
                ),
            },
        };
        // Only the kind of answer: upstream error texts may quote the phone.
        let answer = match &input {
            Input::Revoke(RevokeResult::Revoked) => "revoked",
            Input::Revoke(RevokeResult::NotFound) => "not found",
            Input::Revoke(RevokeResult::Retry {
                ambiguous: true, ..
            }) => "no answer (will retry)",
            Input::Revoke(RevokeResult::Retry { .. }) => "refused for now (will retry)",
            _ => "rejected",
        };
        info!(phone = %mask(&m.phone), attempt, answer, "revoke answered");
        (input, stamped(detail, sent_at))
    }

    async fn send_sms(
        &self,
        claim: &Claimed,
        attempt: u32,
        reconcile: bool,
        may_send: bool,
    ) -> (Input, serde_json::Value) {
        let m = &claim.message;
        if reconcile {
            // An earlier attempt may have reached Twilio: look before sending again.
            match self.twilio.find(&m.phone, &m.sms_body, m.created_at).await {
                Ok(Some(found)) => {
                    info!(sid = %found.sid, "an earlier attempt had sent the SMS");
                    self.metrics.sms_result("found_earlier");
                    return accepted(found.sid, &found.status, true);
                }
                Ok(None) if !may_send => {
                    return (
                        Input::Sms(SmsResult::NotSent),
                        serde_json::json!({ "reconciled": true }),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    // Still unknown: keep the doubt and look again later.
                    return Retry {
                        delay: self.retry_delay(attempt, None),
                        ambiguous: true,
                        detail: format!("cannot check for an earlier SMS: {e}"),
                    }
                    .sms();
                }
            }
        }
        let callback = format!(
            "{}/webhooks/twilio/status?message_id={}",
            self.public_url,
            url_encode(&m.message_id)
        );
        let sender = m.sms_from.as_deref().unwrap_or("default");
        let sent_at = match self
            .throttle(
                format!("twilio:{sender}"),
                self.limits.rates_of(&m.agent_id).1,
            )
            .await
        {
            Ok(at) => at,
            Err(free_in) => return Retry::rate_limited(free_in).sms(),
        };
        let sent = self
            .twilio
            .send(&m.phone, &m.sms_body, m.sms_from.as_deref(), &callback)
            .await;
        self.metrics.sms(&sent);
        info!(phone = %mask(&m.phone), attempt, ok = sent.is_ok(), "SMS send answered");
        let (input, detail) = match sent {
            Ok(rec) => accepted(rec.sid, &rec.status, false),
            Err(e) => match self.failure(e, attempt) {
                Failure::Retry(r) => r.sms(),
                Failure::Rejected {
                    status,
                    code,
                    detail,
                } => (
                    Input::Sms(SmsResult::Rejected {
                        code,
                        detail: detail.clone(),
                    }),
                    serde_json::json!({ "status": status, "code": code, "error": detail }),
                ),
            },
        };
        (input, stamped(detail, Some(sent_at)))
    }

    /// What a failed call means for its message: a retry, after back-off,
    /// or the end.
    fn failure(&self, e: CallError, attempt: u32) -> Failure {
        match e {
            CallError::Rejected {
                status,
                code,
                detail,
            } => Failure::Rejected {
                status,
                code,
                detail,
            },
            CallError::Retryable {
                retry_after,
                detail,
            } => Failure::Retry(Retry {
                delay: self.retry_delay(attempt, retry_after),
                ambiguous: false,
                detail,
            }),
            CallError::Ambiguous { detail } => Failure::Retry(Retry {
                delay: self.retry_delay(attempt, None),
                ambiguous: true,
                detail,
            }),
        }
    }
}

/// What stands between a call to Google and its leaving.
enum GoogleTurn {
    /// It leaves now, at this instant.
    Go(DateTime<Utc>),
    /// No access token: no call.
    NoToken(CallError),
    /// The next slot is too far off to hold the claim for; free in this.
    Later(Duration),
}

enum Failure {
    Retry(Retry),
    Rejected {
        status: u16,
        code: Option<u32>,
        detail: String,
    },
}

/// A step to try again after `delay`; `ambiguous` when the failed call may
/// have taken effect.
struct Retry {
    delay: Duration,
    ambiguous: bool,
    detail: String,
}

impl Retry {
    fn rate_limited(free_in: Duration) -> Retry {
        Retry {
            delay: free_in,
            ambiguous: false,
            detail: "rate limited: waiting for a slot".into(),
        }
    }

    /// A send due after the deadline is pointless (the next claim gives it
    /// up there and then): the retry comes at the deadline at the latest,
    /// so the SMS is not held back by a long back-off or Retry-After.
    fn no_later_than(self, deadline: DateTime<Utc>) -> Retry {
        let left = (deadline - Utc::now()).to_std().unwrap_or_default();
        Retry {
            delay: self.delay.min(left),
            ..self
        }
    }

    fn history(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.detail,
            "ambiguous": self.ambiguous,
            "retry_in_ms": self.delay.as_millis() as u64,
        })
    }

    /// The retry as the worker's result, with its history detail.
    fn into_result(self, input: fn(Duration, bool, String) -> Input) -> (Input, serde_json::Value) {
        let history = self.history();
        (input(self.delay, self.ambiguous, self.detail), history)
    }

    fn revoke(self) -> (Input, serde_json::Value) {
        self.into_result(|delay, ambiguous, detail| {
            Input::Revoke(RevokeResult::Retry {
                delay,
                ambiguous,
                detail,
            })
        })
    }

    fn rcs_send(self) -> (Input, serde_json::Value) {
        self.into_result(|delay, ambiguous, detail| {
            Input::RcsSend(RcsSendResult::Retry {
                delay,
                ambiguous,
                detail,
            })
        })
    }

    fn sms(self) -> (Input, serde_json::Value) {
        self.into_result(|delay, ambiguous, detail| {
            Input::Sms(SmsResult::Retry {
                delay,
                ambiguous,
                detail,
            })
        })
    }
}

/// The history entry of a call's answer, with when the call left (if it
/// did), to the microsecond: at 2,000 calls a second, slots are half a
/// millisecond apart.
fn stamped(mut detail: serde_json::Value, sent_at: Option<DateTime<Utc>>) -> serde_json::Value {
    debug_assert!(detail.is_object(), "a history detail is an object");
    if let (Some(fields), Some(sent_at)) = (detail.as_object_mut(), sent_at) {
        fields.insert(
            "sent_at".to_owned(),
            sent_at.to_rfc3339_opts(SecondsFormat::Micros, true).into(),
        );
    }
    detail
}

fn accepted(sid: String, status: &str, reconciled: bool) -> (Input, serde_json::Value) {
    // Twilio may add statuses; an unknown one at creation means "queued".
    let parsed = SmsStatus::parse(status).unwrap_or(SmsStatus::Queued);
    let detail = serde_json::json!({ "sid": sid, "status": status, "reconciled": reconciled });
    (
        Input::Sms(SmsResult::Accepted {
            sid,
            status: parsed,
            reconciled,
        }),
        detail,
    )
}

/// Message ids are limited to URL-safe characters at intake; this only
/// guards the invariant.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A claim being worked on.
struct InFlight {
    token: uuid::Uuid,
    task: Option<tokio::task::AbortHandle>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records workers' results in batches (group commit): under load one
/// commit covers many messages; alone, a result is written at once.
type Recorder = Batcher<WorkResult, Applied>;

fn recorder(store: Store, policy: Policy, max_batch: usize) -> Recorder {
    Batcher::start(
        max_batch,
        store.group_flushes(),
        move |results: Incoming<WorkResult>| {
            let store = store.clone();
            async move { store.record_results(results, &policy).await }
        },
    )
}

/// Forwards NOTIFYs from other replicas to the local scheduler. Reconnects
/// after a database outage; notifications lost meanwhile are covered by the
/// scheduler's bounded sleep.
async fn listen(store: Store, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(store.pool()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot LISTEN for due work; relying on polling meanwhile");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener.listen(DUE_CHANNEL).await {
            warn!(error = %e, "cannot LISTEN for due work");
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(200);
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake.notify_one(),
                // The connection was lost and re-established: anything sent
                // in between is gone, so look for work now.
                Ok(None) => wake.notify_one(),
                Err(e) => {
                    warn!(error = %e, "LISTEN connection failed");
                    break;
                }
            }
        }
    }
}

/// Deletes finished work past its retention, a small batch per transaction,
/// until none is left, then sleeps until the next sweep.
pub async fn prune(store: Store, retention: RetentionSettings, shutdown: CancellationToken) {
    let Some(keep) = retention.keep else { return };
    loop {
        let mut total = crate::store::Pruned::default();
        loop {
            match store.prune(keep, retention.sweep_batch).await {
                Ok(p) => {
                    total.messages += p.messages;
                    total.rbm_events += p.rbm_events;
                    total.unreachable += p.unreachable;
                    let batch = retention.sweep_batch as u64;
                    if (p.messages < batch && p.rbm_events < batch) || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "retention sweep failed; next sweep will retry");
                    break;
                }
            }
        }
        if total != crate::store::Pruned::default() {
            info!(
                messages = total.messages,
                rbm_events = total.rbm_events,
                unreachable = total.unreachable,
                "pruned finished work past its retention"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.sweep_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
