//! Loopback emulator of Google for RBM: the OAuth token endpoint of a
//! generated service account, the RBM REST API (send, revoke, capabilities)
//! and a population of phones whose behaviour produces signed webhooks.
//!
//! Wire formats follow shared/rbm-facts.md §1–2. Where Google's documents
//! disagree (revoke semantics), each reading is a `PhoneBehaviour`, so the
//! service can be tested under both.
//!
//! Phone behaviours: `Online` (delivers, then read), `Offline` (never
//! delivers), `RevokeRace` (delivered after a revoke answered 200),
//! `TtlRevokeFails` and `TtlRace` (TTL expiry racing delivery), `NotRcs`
//! (no RCS, or a carrier without RBM: send and capabilities answer 404),
//! `NotLaunched` (the agent may not reach this user: 403) and
//! `ContentUnsupported` (the device cannot show what is sent: a send answers
//! 400, the capability check 200).
//!
//! A send is checked as Google checks it, before the phone is looked at:
//! one kind of content, text of at most 3072 characters, a known traffic
//! type, an expiry within 15 days; anything else is answered 400. A
//! messageId already known is answered its stored resource and changes
//! nothing. Every send and every revoke received is recorded (`sends`,
//! `revokes`).
//!
//! [`GoogleFaults`], switched with `set_faults`, make it misbehave: API
//! errors, hangs, resets, slowness, a full outage, and webhooks duplicated,
//! reordered or never sent.

mod api;
mod oauth;
mod send_body;
mod webhook;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use webhook::Outgoing;

pub use super::faults::GoogleFaults;

pub const RBM_SCOPE: &str = "https://www.googleapis.com/auth/rcsbusinessmessaging";

const AGENT_DOMAIN: &str = "@rbm.goog";
const CLIENT_EMAIL: &str = "rbm-fallback@sandbox-project.iam.gserviceaccount.com";
const PROJECT_ID: &str = "sandbox-project";

#[derive(Clone, Debug)]
pub struct GoogleEmulatorConfig {
    /// Bare id, e.g. "sandbox-agent"; payloads carry "sandbox-agent@rbm.goog".
    pub agent_id: String,
    /// The webhook HMAC key.
    pub client_token: String,
    /// Where signed webhooks go; may be set later with `set_webhook_url`.
    pub webhook_url: Option<String>,
    /// Behaviour of phones not set explicitly.
    pub default_phone: PhoneBehaviour,
    /// First retry delay for a webhook not answered 200; doubles each retry.
    pub webhook_retry_base: Duration,
    /// The longest delay between two tries (Google's is 600 s).
    pub webhook_retry_cap: Duration,
    pub webhook_max_attempts: u32,
    /// Seeds what may be deterministic (the service account's client_id).
    /// Identifiers that a receiver dedupes on stay random, so that two
    /// emulators with the same seed never collide in one database.
    pub seed: u64,
}

impl Default for GoogleEmulatorConfig {
    fn default() -> Self {
        Self {
            agent_id: "sandbox-agent".to_owned(),
            client_token: "SANDBOXCLIENTTOKEN".to_owned(),
            webhook_url: None,
            default_phone: PhoneBehaviour::Online {
                delay: Duration::from_millis(500),
                read_after: Some(Duration::from_secs(2)),
            },
            webhook_retry_base: Duration::from_millis(50),
            webhook_retry_cap: Duration::from_secs(600),
            webhook_max_attempts: 8,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PhoneBehaviour {
    /// Delivers each message `delay` after it was sent (DELIVERED webhook), then READ after `read_after` if Some.
    Online {
        delay: Duration,
        read_after: Option<Duration>,
    },
    /// Never delivers; revokes succeed; TTL expiry revokes.
    Offline,
    /// Older-docs behaviour: the revoke answers 200, yet the message is delivered `delay` after the revoke and a DELIVERED webhook follows.
    RevokeRace { delay: Duration },
    /// At TTL expiry the revoke fails: the message is delivered and TTL_EXPIRATION_REVOKE_FAILED is sent (delivery also sends DELIVERED).
    TtlRevokeFails,
    /// At TTL expiry Google reports TTL_EXPIRATION_REVOKED, yet the phone got
    /// the message: DELIVERED follows `delay` later. Google documents that
    /// delivery and TTL expiry race and both events may come.
    TtlRace { delay: Duration },
    /// Not RCS-capable, or its carrier has not launched RBM: a send or a
    /// capability check answers 404 NOT_FOUND; nothing is stored, no webhook
    /// ever comes.
    NotRcs,
    /// The agent is not launched for this user: a send or a capability
    /// check answers 403 PERMISSION_DENIED; nothing is stored.
    NotLaunched,
    /// The device cannot show the features a message uses: a send answers
    /// 400 INVALID_ARGUMENT and nothing is stored; the capability check
    /// answers as for any RCS phone.
    ContentUnsupported,
}

impl PhoneBehaviour {
    /// Why Google refuses to reach such a phone at all, if it does.
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::NotRcs => Some(Refusal::NotRcs),
            Self::NotLaunched => Some(Refusal::NotLaunched),
            _ => None,
        }
    }

    /// Why Google refuses a message for such a phone, if it does.
    fn send_refusal(&self) -> Option<Refusal> {
        match self {
            Self::ContentUnsupported => Some(Refusal::ContentUnsupported),
            other => other.refusal(),
        }
    }
}

/// A send or capability check Google refuses because of the phone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    #[error("Requested entity was not found.")]
    NotRcs,
    #[error("The agent is not launched for this user.")]
    NotLaunched,
    #[error(
        "Request contains an invalid argument: the user's device does not support this content."
    )]
    ContentUnsupported,
}

impl Refusal {
    fn status(self) -> u16 {
        match self {
            Self::NotRcs => 404,
            Self::NotLaunched => 403,
            Self::ContentUnsupported => 400,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmuMessageState {
    Queued,
    Delivered,
    /// Revoked by a DELETE.
    Revoked,
    /// Revoked by Google itself at TTL expiry.
    Expired,
}

#[derive(Clone, Debug)]
pub struct RevokeRecord {
    pub phone: String,
    pub message_id: String,
    /// The `agentId` query parameter as received ("" when absent).
    pub agent_id: String,
    pub received_at: DateTime<Utc>,
    /// The status answered, or for an answer lost to a fault (hang, reset)
    /// the one that would have been (0 when the request was not carried out).
    pub status: u16,
    /// When the answer went out (or was lost).
    pub answered_at: DateTime<Utc>,
    /// A fault dropped the connection instead of answering.
    pub answer_lost: bool,
}

/// One POST to the send endpoint, whatever was answered.
#[derive(Clone, Debug)]
pub struct SendRecord {
    pub phone: String,
    /// The `messageId` query parameter as received ("" when absent).
    pub message_id: String,
    /// The `agentId` query parameter as received ("" when absent).
    pub agent_id: String,
    pub received_at: DateTime<Utc>,
    /// The status answered, or for an answer lost to a fault (hang, reset)
    /// the one that would have been (0 when the request was not carried out).
    pub status: u16,
    /// When the answer went out (or was lost).
    pub answered_at: DateTime<Utc>,
    /// A fault dropped the connection instead of answering.
    pub answer_lost: bool,
    /// `messageTrafficType` as sent (JSON text when not a string).
    pub traffic_type: Option<String>,
    /// `ttl` as sent, e.g. "600s".
    pub ttl: Option<String>,
    /// `expireTime` as sent.
    pub expire_time: Option<String>,
}

/// One try to deliver one webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookAttempt {
    pub event_id: String,
    pub event_type: String,
    pub message_id: String,
    pub url: String,
    pub at: DateTime<Utc>,
    /// None when no answer came.
    pub status: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRecord {
    pub event_id: String,
    /// `eventType` of the event ("" for an event without one).
    pub event_type: String,
    /// "" for an event without a messageId.
    pub message_id: String,
    /// `senderPhoneNumber` or `phoneNumber` of the event.
    pub phone: String,
    pub attempts: u32,
    /// The last HTTP status answered; None when no answer came (no URL
    /// configured, connection refused, timeout).
    pub status: Option<u16>,
}

/// When a sent message expires: relative (`ttl`) or absolute (`expireTime`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expiry {
    Ttl(Duration),
    At(DateTime<Utc>),
}

/// Cheap to clone; all clones drive the same emulator. The server runs until
/// the tokio runtime that started it shuts down.
#[derive(Clone)]
pub struct GoogleEmulator {
    inner: Arc<Inner>,
}

struct Message {
    phone: String,
    state: EmuMessageState,
    /// Fixed at send time: a phone's behaviour is what it was when the
    /// message reached it, whatever `set_phone` says later.
    behaviour: PhoneBehaviour,
    /// The AgentMessage resource, answered again for a repeated messageId.
    resource: Value,
}

struct State {
    /// Where webhooks go; with several, each try goes to the next one, as
    /// through a load balancer.
    webhook_urls: Vec<String>,
    next_url: usize,
    faults: GoogleFaults,
    /// Every request to the RBM API or the token endpoint.
    requests: usize,
    /// DELETEs per message, which names each one for the fault draw.
    deletes_for: HashMap<String, u64>,
    /// Other API calls, likewise.
    other_calls: u64,
    /// Webhooks per (message, event type), likewise.
    webhooks_for: HashMap<(String, String), u64>,
    dropped_webhooks: Vec<WebhookRecord>,
    webhook_attempts: Vec<WebhookAttempt>,
    phones: HashMap<String, PhoneBehaviour>,
    messages: HashMap<String, Message>,
    revoke_faults: VecDeque<u16>,
    revokes: Vec<RevokeRecord>,
    sends: Vec<SendRecord>,
    webhooks: Vec<WebhookRecord>,
    access_tokens: HashMap<String, Instant>,
    token_grants: usize,
}

struct Inner {
    agent_id: String,
    client_token: String,
    default_phone: PhoneBehaviour,
    retry_base: Duration,
    retry_cap: Duration,
    max_attempts: u32,
    client_id: String,
    base_url: String,
    key: &'static oauth::ServiceKey,
    /// Captured at start so the synchronous API (`agent_send`, `set_phone`)
    /// can schedule phone behaviour from any thread.
    runtime: tokio::runtime::Handle,
    http: reqwest::Client,
    state: Mutex<State>,
    revoke_count: watch::Sender<usize>,
    send_count: watch::Sender<usize>,
    webhook_count: watch::Sender<usize>,
    /// Webhooks the faults dropped.
    dropped_count: watch::Sender<usize>,
    /// While true, DELETEs wait before being answered (a hung Google).
    revoke_hold: watch::Sender<bool>,
    /// DELETEs that have arrived, answered or not.
    revoke_arrivals: watch::Sender<usize>,
    /// Phone timers and webhook deliveries under way.
    busy: AtomicUsize,
}

/// Counts one piece of pending work for as long as it lives.
struct Busy(Arc<Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GoogleEmulator {
    /// Binds 127.0.0.1:0 and serves in a spawned task.
    pub async fn start(cfg: GoogleEmulatorConfig) -> anyhow::Result<Self> {
        // Key generation takes a while; keep it off the async workers.
        let key = tokio::task::spawn_blocking(oauth::service_key).await??;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // A proxy from the environment must never see loopback traffic.
            .no_proxy()
            .pool_idle_timeout(crate::emulator::CLIENT_IDLE)
            .build()?;
        let agent_id = bare_agent(&cfg.agent_id).to_owned();
        let inner = Arc::new(Inner {
            agent_id,
            client_token: cfg.client_token,
            default_phone: cfg.default_phone,
            retry_base: cfg.webhook_retry_base,
            retry_cap: cfg.webhook_retry_cap,
            max_attempts: cfg.webhook_max_attempts.max(1),
            client_id: client_id_from_seed(cfg.seed),
            base_url: format!("http://{addr}"),
            key,
            runtime: tokio::runtime::Handle::current(),
            http,
            state: Mutex::new(State {
                webhook_urls: cfg.webhook_url.into_iter().collect(),
                next_url: 0,
                faults: GoogleFaults::default(),
                requests: 0,
                deletes_for: HashMap::new(),
                other_calls: 0,
                webhooks_for: HashMap::new(),
                dropped_webhooks: Vec::new(),
                webhook_attempts: Vec::new(),
                phones: HashMap::new(),
                messages: HashMap::new(),
                revoke_faults: VecDeque::new(),
                revokes: Vec::new(),
                sends: Vec::new(),
                webhooks: Vec::new(),
                access_tokens: HashMap::new(),
                token_grants: 0,
            }),
            revoke_count: watch::channel(0).0,
            send_count: watch::channel(0).0,
            webhook_count: watch::channel(0).0,
            dropped_count: watch::channel(0).0,
            revoke_hold: watch::channel(false).0,
            revoke_arrivals: watch::channel(0).0,
            busy: AtomicUsize::new(0),
        });
        let app = api::router(inner.clone())
            .into_make_service_with_connect_info::<super::conn::ConnKill>();
        inner.runtime.spawn(async move {
            let listener = super::conn::KillableListener(listener);
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "google emulator server stopped");
            }
        });
        tracing::info!(%addr, "google emulator listening");
        Ok(Self { inner })
    }

    /// "http://127.0.0.1:PORT", the RBM API base.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn token_uri(&self) -> String {
        self.inner.token_uri()
    }

    pub fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }

    pub fn client_token(&self) -> &str {
        &self.inner.client_token
    }

    /// A service-account key file as the Cloud console hands it out; every
    /// URL in it points at this emulator.
    pub fn service_account_key_json(&self) -> String {
        let base = &self.inner.base_url;
        json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": self.inner.key.key_id,
            "private_key": self.inner.key.pkcs8_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": self.inner.client_id,
            "auth_uri": format!("{base}/o/oauth2/auth"),
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": format!("{base}/oauth2/v1/certs"),
            "client_x509_cert_url": format!(
                "{base}/robot/v1/metadata/x509/{}",
                CLIENT_EMAIL.replace('@', "%40")
            ),
            "universe_domain": "googleapis.com",
        })
        .to_string()
    }

    pub fn set_webhook_url(&self, url: &str) {
        self.set_webhook_urls(&[url.to_owned()]);
    }

    /// Several receivers of one webhook, e.g. replicas behind a load
    /// balancer: each try goes to the next URL in turn, so a try that fails
    /// at one is retried at another.
    pub fn set_webhook_urls(&self, urls: &[String]) {
        let mut st = self.inner.st();
        st.webhook_urls = urls.to_vec();
        st.next_url = 0;
    }

    /// Switches the faults; they apply to requests and webhooks from now on.
    /// Queued revoke faults (`queue_revoke_faults`) still come first.
    pub fn set_faults(&self, faults: GoogleFaults) {
        self.inner.st().faults = faults;
    }

    pub fn faults(&self) -> GoogleFaults {
        self.inner.st().faults.clone()
    }

    /// Every request received by the RBM API and the token endpoint,
    /// including those answered with an injected fault.
    pub fn requests(&self) -> usize {
        self.inner.st().requests
    }

    /// Webhooks the faults kept from being sent at all (`attempts` 0).
    pub fn webhooks_dropped(&self) -> Vec<WebhookRecord> {
        self.inner.st().dropped_webhooks.clone()
    }

    /// Resolves once the faults have dropped at least `n` webhooks.
    pub async fn wait_for_webhooks_dropped(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<WebhookRecord>> {
        wait_count(&self.inner.dropped_count, n, timeout, "dropped webhooks").await?;
        Ok(self.webhooks_dropped())
    }

    /// Every single try to deliver a webhook, in order.
    pub fn webhook_attempts(&self) -> Vec<WebhookAttempt> {
        self.inner.st().webhook_attempts.clone()
    }

    /// Applies to messages sent from now on.
    pub fn set_phone(&self, phone: &str, behaviour: PhoneBehaviour) {
        self.inner.st().phones.insert(phone.to_owned(), behaviour);
    }

    /// What the agent does before registering with rbm-fallback: send a
    /// message (same effect as the HTTP send endpoint, but not recorded in
    /// `sends`). ttl None = no TTL. Returns the status Google answers: 200,
    /// or 404 / 403 / 400 for a `NotRcs` / `NotLaunched` /
    /// `ContentUnsupported` phone (nothing stored).
    pub fn agent_send(&self, phone: &str, message_id: &str, ttl: Option<Duration>) -> u16 {
        let content = json!({ "text": format!("sandbox message {message_id}") });
        match self
            .inner
            .send_message(phone, message_id, content, None, ttl.map(Expiry::Ttl))
        {
            Ok(_) => 200,
            Err(refusal) => refusal.status(),
        }
    }

    /// Marks a queued message delivered now; with `notify`, sends the
    /// DELIVERED webhook and returns once its delivery (with retries) ended.
    /// A message that is not queued is left alone.
    pub async fn deliver(&self, message_id: &str, notify: bool) {
        let phone = {
            let mut st = self.inner.st();
            match st.messages.get_mut(message_id) {
                Some(m) if m.state == EmuMessageState::Queued => {
                    m.state = EmuMessageState::Delivered;
                    m.phone.clone()
                }
                _ => return,
            }
        };
        if notify {
            let out =
                webhook::user_event(&self.inner.agent_email(), &phone, message_id, "DELIVERED");
            webhook::deliver(self.inner.clone(), out).await;
        }
    }

    /// Signs and POSTs one webhook with the given decoded event JSON (no
    /// retries); returns the HTTP status answered. Recorded in
    /// `webhooks_sent` like any other webhook.
    pub async fn post_event(&self, event: &Value) -> anyhow::Result<u16> {
        let out = Outgoing::crafted(event);
        let url = self
            .inner
            .webhook_url()
            .ok_or_else(|| anyhow::anyhow!("no webhook URL configured"))?;
        let (body, sig) = webhook::envelope(&self.inner, &out);
        let result = webhook::post(&self.inner.http, &url, body, &sig).await;
        self.inner
            .record_webhook(out.record(1, result.as_ref().ok().copied()));
        result
    }

    /// The (envelope body, X-Goog-Signature) pair for a decoded event, so
    /// tests can tamper with either.
    pub fn envelope(&self, event: &Value) -> (String, String) {
        let out = Outgoing::crafted(event);
        webhook::envelope(&self.inner, &out)
    }

    /// Answers for the next DELETE calls (any message), in order; normal
    /// behaviour resumes once they are used up. 429 answers carry
    /// `Retry-After: 1`.
    pub fn queue_revoke_faults(&self, statuses: &[u16]) {
        self.inner
            .st()
            .revoke_faults
            .extend(statuses.iter().copied());
    }

    /// Every DELETE received, in order.
    pub fn revokes(&self) -> Vec<RevokeRecord> {
        self.inner.st().revokes.clone()
    }

    /// Resolves once at least `n` DELETEs were received.
    pub async fn wait_for_revokes(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RevokeRecord>> {
        wait_count(&self.inner.revoke_count, n, timeout, "revokes").await?;
        Ok(self.revokes())
    }

    /// Every POST to the send endpoint, in order, including those refused
    /// or hit by a fault (not those an outage answered 503).
    pub fn sends(&self) -> Vec<SendRecord> {
        self.inner.st().sends.clone()
    }

    /// Resolves once at least `n` sends were received.
    pub async fn wait_for_sends(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<SendRecord>> {
        wait_count(&self.inner.send_count, n, timeout, "sends").await?;
        Ok(self.sends())
    }

    /// Holds every DELETE (arriving or already waiting) unanswered while
    /// `hold` is true: a Google that hangs, for crash and timeout tests.
    pub fn hold_revokes(&self, hold: bool) {
        self.inner.revoke_hold.send_replace(hold);
    }

    /// Resolves once at least `n` DELETEs have arrived, answered or held.
    pub async fn wait_for_revoke_arrivals(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_count(&self.inner.revoke_arrivals, n, timeout, "revoke arrivals").await
    }

    pub fn message_state(&self, message_id: &str) -> Option<EmuMessageState> {
        self.inner.st().messages.get(message_id).map(|m| m.state)
    }

    /// Webhooks whose delivery ended (delivered or given up), in that order.
    pub fn webhooks_sent(&self) -> Vec<WebhookRecord> {
        self.inner.st().webhooks.clone()
    }

    /// Resolves once at least `n` webhook deliveries ended.
    pub async fn wait_for_webhooks(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<WebhookRecord>> {
        wait_count(&self.inner.webhook_count, n, timeout, "webhooks").await?;
        Ok(self.webhooks_sent())
    }

    /// Phone timers (deliveries, TTL expiries, races) and webhook
    /// deliveries still under way: 0 when nothing more will happen unless
    /// asked.
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::SeqCst)
    }

    /// Successful token grants issued.
    pub fn token_requests(&self) -> usize {
        self.inner.st().token_grants
    }

    /// Makes every access token issued so far expired, as if an hour had
    /// passed, to exercise a client's re-authentication.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for exp in self.inner.st().access_tokens.values_mut() {
            *exp = now;
        }
    }

    /// Google's webhook verification handshake: POSTs
    /// `{"clientToken","secret"}` to the webhook URL and tells whether the
    /// receiver answered 200 with exactly the secret as body.
    pub async fn verify_webhook(&self) -> anyhow::Result<bool> {
        let url = self
            .inner
            .webhook_url()
            .ok_or_else(|| anyhow::anyhow!("no webhook URL configured"))?;
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let resp = self
            .inner
            .http
            .post(url)
            .json(&json!({ "clientToken": self.inner.client_token, "secret": secret }))
            .send()
            .await?;
        let ok = resp.status().as_u16() == 200;
        let body = resp.text().await?;
        Ok(ok && body == secret)
    }
}

async fn wait_count(
    counter: &watch::Sender<usize>,
    n: usize,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let mut rx = counter.subscribe();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
        .await
        .map(|r| r.is_ok());
    match reached {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!("emulator gone while waiting for {what}"),
        Err(_) => anyhow::bail!(
            "timed out after {timeout:?} waiting for {n} {what} ({} seen)",
            *counter.borrow()
        ),
    }
}

impl Inner {
    fn st(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind;
        // keep serving rather than poisoning every later test step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token_uri(&self) -> String {
        format!("{}/token", self.base_url)
    }

    fn busy_guard(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Where a delivery starts among the receivers: each delivery starts at
    /// the next one (round robin).
    fn webhook_start(&self) -> usize {
        let mut st = self.st();
        let start = st.next_url;
        st.next_url = st.next_url.wrapping_add(1);
        start
    }

    /// The URL for try `attempt` (from 0) of a delivery that started at
    /// `start`: each retry goes to the next receiver, as a load balancer
    /// retrying elsewhere would.
    fn webhook_url_for(&self, start: usize, attempt: u32) -> Option<String> {
        let st = self.st();
        if st.webhook_urls.is_empty() {
            return None;
        }
        let i = start.wrapping_add(attempt as usize) % st.webhook_urls.len();
        Some(st.webhook_urls[i].clone())
    }

    fn webhook_url(&self) -> Option<String> {
        self.webhook_url_for(self.webhook_start(), 0)
    }

    fn agent_email(&self) -> String {
        format!("{}{AGENT_DOMAIN}", self.agent_id)
    }

    fn agent_matches(&self, given: &str) -> bool {
        given == self.agent_id || given.strip_suffix(AGENT_DOMAIN) == Some(&self.agent_id)
    }

    fn behaviour_of(&self, st: &State, phone: &str) -> PhoneBehaviour {
        st.phones
            .get(phone)
            .cloned()
            .unwrap_or_else(|| self.default_phone.clone())
    }

    /// Whether Google reaches this phone for this agent (capability check).
    fn reachable(&self, phone: &str) -> Result<(), Refusal> {
        let st = self.st();
        self.behaviour_of(&st, phone).refusal().map_or(Ok(()), Err)
    }

    /// Stores a message and schedules what its phone does with it; a
    /// messageId already known is ignored and its resource answered again,
    /// whatever the phone does now. A phone Google cannot reach refuses.
    fn send_message(
        self: &Arc<Self>,
        phone: &str,
        message_id: &str,
        content: Value,
        traffic_type: Option<String>,
        expiry: Option<Expiry>,
    ) -> Result<Value, Refusal> {
        let send_time = Utc::now();
        let mut st = self.st();
        if let Some(m) = st.messages.get(message_id) {
            return Ok(m.resource.clone());
        }
        let behaviour = self.behaviour_of(&st, phone);
        if let Some(refusal) = behaviour.send_refusal() {
            return Err(refusal);
        }
        let mut resource = json!({
            "name": format!("phones/{phone}/agentMessages/{message_id}"),
            "sendTime": rfc3339(send_time),
            "contentMessage": content,
        });
        if let Some(t) = traffic_type {
            resource["messageTrafficType"] = Value::String(t);
        }
        // A TTL too large for the calendar never expires, like no TTL.
        let expire_time = match expiry {
            Some(Expiry::Ttl(ttl)) => chrono::TimeDelta::from_std(ttl)
                .ok()
                .and_then(|d| send_time.checked_add_signed(d)),
            Some(Expiry::At(at)) => Some(at),
            None => None,
        };
        // An expireTime already past expires the message at once.
        let ttl = expire_time.map(|at| (at - send_time).to_std().unwrap_or(Duration::ZERO));
        if let Some(at) = expire_time {
            resource["expireTime"] = Value::String(rfc3339(at));
        }
        st.messages.insert(
            message_id.to_owned(),
            Message {
                phone: phone.to_owned(),
                state: EmuMessageState::Queued,
                behaviour: behaviour.clone(),
                resource: resource.clone(),
            },
        );
        drop(st);
        self.schedule(phone, message_id, &behaviour, ttl);
        Ok(resource)
    }

    fn schedule(
        self: &Arc<Self>,
        phone: &str,
        message_id: &str,
        behaviour: &PhoneBehaviour,
        ttl: Option<Duration>,
    ) {
        if let PhoneBehaviour::Online { delay, read_after } = *behaviour {
            let (inner, phone, id) = (self.clone(), phone.to_owned(), message_id.to_owned());
            let busy = self.busy_guard();
            self.runtime.spawn(async move {
                let _busy = busy;
                tokio::time::sleep(delay).await;
                if !inner.transition(&id, EmuMessageState::Queued, EmuMessageState::Delivered) {
                    return;
                }
                inner.spawn_webhook(webhook::user_event(
                    &inner.agent_email(),
                    &phone,
                    &id,
                    "DELIVERED",
                ));
                if let Some(read_after) = read_after {
                    tokio::time::sleep(read_after).await;
                    inner.spawn_webhook(webhook::user_event(
                        &inner.agent_email(),
                        &phone,
                        &id,
                        "READ",
                    ));
                }
            });
        }
        if let Some(ttl) = ttl {
            let (inner, id) = (self.clone(), message_id.to_owned());
            let busy = self.busy_guard();
            self.runtime.spawn(async move {
                let _busy = busy;
                tokio::time::sleep(ttl).await;
                inner.expire(&id);
            });
        }
    }

    /// Moves a message from `from` to `to`; false if it was not in `from`.
    fn transition(&self, message_id: &str, from: EmuMessageState, to: EmuMessageState) -> bool {
        match self.st().messages.get_mut(message_id) {
            Some(m) if m.state == from => {
                m.state = to;
                true
            }
            _ => false,
        }
    }

    fn expire(self: &Arc<Self>, message_id: &str) {
        let (phone, failed, race) = {
            let mut st = self.st();
            let Some(m) = st.messages.get_mut(message_id) else {
                return;
            };
            if m.state != EmuMessageState::Queued {
                return;
            }
            let failed = m.behaviour == PhoneBehaviour::TtlRevokeFails;
            let race = match m.behaviour {
                PhoneBehaviour::TtlRace { delay } => Some(delay),
                _ => None,
            };
            m.state = if failed || race.is_some() {
                EmuMessageState::Delivered
            } else {
                EmuMessageState::Expired
            };
            (m.phone.clone(), failed, race)
        };
        let agent = self.agent_email();
        if let Some(delay) = race {
            self.spawn_webhook(webhook::server_event(
                &agent,
                &phone,
                message_id,
                "TTL_EXPIRATION_REVOKED",
            ));
            let (inner, phone, id) = (self.clone(), phone.clone(), message_id.to_owned());
            let busy = self.busy_guard();
            self.runtime.spawn(async move {
                let _busy = busy;
                tokio::time::sleep(delay).await;
                let agent = inner.agent_email();
                inner.spawn_webhook(webhook::user_event(&agent, &phone, &id, "DELIVERED"));
            });
        } else if failed {
            self.spawn_webhook(webhook::user_event(&agent, &phone, message_id, "DELIVERED"));
            self.spawn_webhook(webhook::server_event(
                &agent,
                &phone,
                message_id,
                "TTL_EXPIRATION_REVOKE_FAILED",
            ));
        } else {
            self.spawn_webhook(webhook::server_event(
                &agent,
                &phone,
                message_id,
                "TTL_EXPIRATION_REVOKED",
            ));
        }
    }

    /// The DELETE semantics after authentication: a queued fault first,
    /// else the message's fate. Returns the status to answer.
    fn revoke(self: &Arc<Self>, phone: &str, message_id: &str) -> u16 {
        let mut st = self.st();
        if let Some(fault) = st.revoke_faults.pop_front() {
            return fault;
        }
        let Some(m) = st.messages.get_mut(message_id) else {
            return 404;
        };
        if m.phone != phone || m.state != EmuMessageState::Queued {
            return 404;
        }
        m.state = EmuMessageState::Revoked;
        if let PhoneBehaviour::RevokeRace { delay } = m.behaviour {
            drop(st);
            let (inner, phone, id) = (self.clone(), phone.to_owned(), message_id.to_owned());
            let busy = self.busy_guard();
            self.runtime.spawn(async move {
                let _busy = busy;
                tokio::time::sleep(delay).await;
                if inner.transition(&id, EmuMessageState::Revoked, EmuMessageState::Delivered) {
                    inner.spawn_webhook(webhook::user_event(
                        &inner.agent_email(),
                        &phone,
                        &id,
                        "DELIVERED",
                    ));
                }
            });
        }
        200
    }

    fn record_revoke(&self, record: RevokeRecord) {
        let n = {
            let mut st = self.st();
            st.revokes.push(record);
            st.revokes.len()
        };
        self.revoke_count.send_replace(n);
    }

    fn record_send(&self, record: SendRecord) {
        let n = {
            let mut st = self.st();
            st.sends.push(record);
            st.sends.len()
        };
        self.send_count.send_replace(n);
    }

    fn record_webhook(&self, record: WebhookRecord) {
        let n = {
            let mut st = self.st();
            st.webhooks.push(record);
            st.webhooks.len()
        };
        self.webhook_count.send_replace(n);
    }

    /// Sends a webhook the way the faults say: not at all, or one or more
    /// copies, each after its own random delay.
    fn spawn_webhook(self: &Arc<Self>, out: Outgoing) {
        let copies = {
            let mut st = self.st();
            let key = (out.message_id().to_owned(), out.event_type().to_owned());
            let n = st.webhooks_for.entry(key).or_insert(0);
            *n += 1;
            let n = n.to_string();
            let faults = &st.faults;
            faults.fanout(&["webhook", out.message_id(), out.event_type(), &n])
        };
        if copies.is_empty() {
            tracing::debug!(event = out.event_type(), "webhook dropped by a fault");
            let n = {
                let mut st = self.st();
                st.dropped_webhooks.push(out.record(0, None));
                st.dropped_webhooks.len()
            };
            self.dropped_count.send_replace(n);
            return;
        }
        for delay in copies {
            let (inner, out) = (self.clone(), out.clone());
            let busy = self.busy_guard();
            self.runtime.spawn(async move {
                let _busy = busy;
                tokio::time::sleep(delay).await;
                webhook::deliver(inner, out).await;
            });
        }
    }
}

fn bare_agent(agent: &str) -> &str {
    agent.strip_suffix(AGENT_DOMAIN).unwrap_or(agent)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A 21-digit numeric id like the ones in real key files.
fn client_id_from_seed(seed: u64) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut id = String::with_capacity(21);
    id.push(char::from(b'1' + rng.gen_range(0..9u8)));
    for _ in 0..20 {
        id.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    id
}

/// E.164: '+', a non-zero leading digit, 7 to 15 digits in all.
fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}
