//! Loopback emulator of Twilio's Programmable Messaging REST API (2010-04-01
//! Messages resource) and of the signed status callbacks Twilio sends.
//!
//! It speaks the real wire format (form-encoded requests, HTTP Basic auth,
//! Twilio's JSON resources and error bodies, `X-Twilio-Signature`), so the
//! service reaches it only through its Twilio base-URL setting. Tests steer it
//! per recipient ([`RecipientBehaviour`]), per create request
//! ([`CreateFault`]) and with switchable random faults ([`TwilioFaults`]:
//! errors, hangs, resets, lost answers, slowness, duplicated, reordered and
//! lost callbacks), and observe everything it was asked and everything it
//! called back.
//!
//! Status callbacks are only ever POSTed to loopback hosts: the emulator must
//! never reach out to the network, whatever URL a client hands it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveTime, SubsecRound, Utc};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::conn::{ConnKill, KillableListener};
pub use super::faults::TwilioFaults;
use super::faults::{self, Fault};
use crate::signature::{secret_eq, twilio_sign};

const API_VERSION: &str = "2010-04-01";
const MAX_BODY_CHARS: usize = 1600;
/// Twilio documents 4000 characters as the longest StatusCallback it accepts.
const MAX_CALLBACK_URL_LEN: usize = 4000;
const MAX_VALIDITY_PERIOD: u32 = 36_000;
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;
/// Twilio waits about 15 s for a status-callback answer.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(15);
/// The sender a Messaging Service "picks from its pool" when the client gave
/// only a MessagingServiceSid: real Twilio fills `from` in once it sends.
const POOL_SENDER: &str = "+15005550006";

/// How the emulator is set up at start.
#[derive(Clone, Debug)]
pub struct TwilioEmulatorConfig {
    /// `"AC"` + 32 hex digits.
    pub account_sid: String,
    /// 32 hex digits.
    pub auth_token: String,
    /// What happens to recipients without a behaviour of their own.
    pub default_recipient: RecipientBehaviour,
    /// Delay between successive status callbacks (queued→sent→delivered); e.g. 20ms.
    pub status_step: Duration,
}

impl Default for TwilioEmulatorConfig {
    fn default() -> Self {
        Self {
            account_sid: format!("AC{}", random_hex32()),
            auth_token: random_hex32(),
            default_recipient: RecipientBehaviour::Deliver,
            status_step: Duration::from_millis(20),
        }
    }
}

/// The fate of messages sent to one phone number.
#[derive(Clone, Debug, PartialEq)]
pub enum RecipientBehaviour {
    /// Callbacks: `sent`, then `delivered`.
    Deliver,
    /// Accepted; callbacks: `sent`, then `undelivered` with `ErrorCode` (e.g. 30003).
    Undeliverable { error_code: u32 },
    /// Accepted; callback: `failed` with `ErrorCode` (e.g. 30008).
    Failed { error_code: u32 },
    /// Create answers 400 code 21211.
    InvalidNumber,
    /// Create answers 400 code 21610.
    Unsubscribed,
}

impl RecipientBehaviour {
    /// The statuses a created message walks through after `queued`, each with
    /// the error code its callback carries.
    fn steps(&self) -> Vec<(&'static str, Option<u32>)> {
        match self {
            Self::Deliver => vec![("sent", None), ("delivered", None)],
            Self::Undeliverable { error_code } => {
                vec![("sent", None), ("undelivered", Some(*error_code))]
            }
            Self::Failed { error_code } => vec![("failed", Some(*error_code))],
            // Never created, so never walked.
            Self::InvalidNumber | Self::Unsubscribed => Vec::new(),
        }
    }
}

/// A misbehaviour of the create endpoint, consumed one per create request.
#[derive(Clone, Debug)]
pub enum CreateFault {
    /// Answer this HTTP status with Twilio's JSON error body; nothing is sent.
    /// 429 carries `Retry-After: 1`.
    Status(u16),
    /// Accept and create the message (it exists and progresses), but drop the
    /// connection without any HTTP response.
    ResponseLost,
    /// Accept nothing; answer (503) only after this long, to trip client
    /// timeouts. Nothing is sent.
    Hang(Duration),
}

/// A message as the emulator holds it.
#[derive(Clone, Debug)]
pub struct EmuSms {
    pub sid: String,
    pub to: String,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub body: String,
    pub status: String,
    pub status_callback: Option<String>,
    pub date_created: DateTime<Utc>,
}

/// One status-callback POST attempt (a retry is a record of its own).
#[derive(Clone, Debug)]
pub struct CallbackRecord {
    pub sid: String,
    pub status: String,
    pub error_code: Option<u32>,
    /// The StatusCallback URL exactly as the client gave it (the signed URL).
    pub url: String,
    /// What the receiver answered; `None` when no HTTP answer came (connection
    /// refused, timeout, or a non-loopback URL the emulator refused to call).
    pub http_status: Option<u16>,
    /// 1 for the first try, 2 for Twilio's single retry.
    pub attempt: u32,
    /// The form parameters POSTed.
    pub params: Vec<(String, String)>,
    /// The `X-Twilio-Signature` header sent.
    pub signature: String,
}

/// Handle on a running emulator; clones share it, and the listener stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct TwilioEmulator {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    base_url: String,
    server: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Shared {
    account_sid: String,
    auth_token: String,
    default_recipient: RecipientBehaviour,
    status_step: Duration,
    http: reqwest::Client,
    state: Mutex<Books>,
    /// Bumped (outside the state lock) whenever anything observable changes,
    /// so waiters re-check their condition instead of polling.
    changed: watch::Sender<u64>,
    /// Status walks and callback deliveries under way.
    busy: AtomicUsize,
}

/// Counts one piece of pending work for as long as it lives.
struct Busy(Arc<Shared>);

impl Busy {
    fn new(shared: &Arc<Shared>) -> Busy {
        shared.busy.fetch_add(1, Ordering::SeqCst);
        Busy(shared.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Books {
    messages: Vec<StoredMessage>,
    /// Where each sid sits in `messages`, so that a status step or a fetch
    /// does not scan every message ever created (a benchmark burst creates
    /// a hundred thousand).
    by_sid: HashMap<String, usize>,
    recipients: HashMap<String, RecipientBehaviour>,
    faults: VecDeque<CreateFault>,
    create_requests: usize,
    callbacks: Vec<CallbackRecord>,
    /// Switchable random faults, applied after the queued ones.
    random: TwilioFaults,
    /// Every API request (create, list, fetch), faulted ones included.
    requests: usize,
    /// Create requests per `To`, which names each one for the fault draw.
    creates_to: HashMap<String, u64>,
    /// Callbacks per (To, status), likewise.
    callbacks_for: HashMap<(String, String), u64>,
    /// Callbacks the faults kept from being sent.
    dropped_callbacks: Vec<CallbackRecord>,
}

struct StoredMessage {
    sms: EmuSms,
    date_updated: DateTime<Utc>,
    date_sent: Option<DateTime<Utc>>,
    error_code: Option<u32>,
    num_segments: usize,
}

impl Books {
    fn find(&self, sid: &str) -> Option<&StoredMessage> {
        self.by_sid.get(sid).map(|&i| &self.messages[i])
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, Books> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn recipient(&self, state: &Books, to: &str) -> RecipientBehaviour {
        state
            .recipients
            .get(to)
            .cloned()
            .unwrap_or_else(|| self.default_recipient.clone())
    }

    fn record_callback(&self, record: CallbackRecord) {
        self.state().callbacks.push(record);
        self.bump();
    }
}

impl TwilioEmulator {
    /// Starts the emulator on 127.0.0.1 with a port chosen by the OS.
    pub async fn start(cfg: TwilioEmulatorConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(CALLBACK_TIMEOUT)
            // Callbacks go to loopback only; an ambient HTTP(S)_PROXY must not
            // capture them.
            .no_proxy()
            .user_agent("TwilioProxy/1.1")
            .pool_idle_timeout(crate::emulator::CLIENT_IDLE)
            .build()
            .context("building the status-callback HTTP client")?;
        let shared = Arc::new(Shared {
            account_sid: cfg.account_sid,
            auth_token: cfg.auth_token,
            default_recipient: cfg.default_recipient,
            status_step: cfg.status_step,
            http,
            state: Mutex::new(Books::default()),
            changed: watch::channel(0).0,
            busy: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Twilio emulator to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let make = app.into_make_service_with_connect_info::<ConnKill>();
            if let Err(e) = axum::serve(KillableListener(listener), make).await {
                tracing::warn!(error = %e, "twilio emulator stopped serving");
            }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                base_url: format!("http://{addr}"),
                server: server.abort_handle(),
            }),
        })
    }

    /// What `RBMF_TWILIO_BASE_URL` would be (the real one is `https://api.twilio.com`).
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn account_sid(&self) -> &str {
        &self.inner.shared.account_sid
    }

    pub fn auth_token(&self) -> &str {
        &self.inner.shared.auth_token
    }

    /// Gives one phone number (E.164, as the client sends `To`) a behaviour of its own.
    pub fn set_recipient(&self, phone: &str, behaviour: RecipientBehaviour) {
        self.inner
            .shared
            .state()
            .recipients
            .insert(phone.to_owned(), behaviour);
    }

    /// Queues faults, consumed one per create request, in order.
    pub fn queue_create_faults(&self, faults: Vec<CreateFault>) {
        self.inner.shared.state().faults.extend(faults);
    }

    /// Switches the random faults; they apply to requests and callbacks from
    /// now on. Queued [`CreateFault`]s still come first.
    pub fn set_faults(&self, faults: TwilioFaults) {
        self.inner.shared.state().random = faults;
    }

    pub fn faults(&self) -> TwilioFaults {
        self.inner.shared.state().random.clone()
    }

    /// Every API request received (create, list and fetch), including those
    /// answered with an injected fault.
    pub fn requests(&self) -> usize {
        self.inner.shared.state().requests
    }

    /// Status callbacks that the faults dropped (never sent): `attempt` 0,
    /// no `http_status`.
    pub fn callbacks_dropped(&self) -> Vec<CallbackRecord> {
        self.inner.shared.state().dropped_callbacks.clone()
    }

    /// Status walks and status callbacks still under way: 0 when nothing
    /// more will happen unless asked.
    pub fn busy(&self) -> usize {
        self.inner.shared.busy.load(Ordering::SeqCst)
    }

    /// Every message created, in order of creation, with its current status.
    pub fn messages(&self) -> Vec<EmuSms> {
        snapshot_messages(&self.inner.shared.state())
    }

    /// Resolves once at least `n` messages exist; an error after `timeout`.
    pub async fn wait_for_messages(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<EmuSms>> {
        self.wait_until(timeout, &format!("{n} messages"), |st| {
            (st.messages.len() >= n).then(|| snapshot_messages(st))
        })
        .await
    }

    /// Every create request received, faults and rejected ones included.
    pub fn create_requests(&self) -> usize {
        self.inner.shared.state().create_requests
    }

    /// Every status-callback POST attempt, in order.
    pub fn callbacks(&self) -> Vec<CallbackRecord> {
        self.inner.shared.state().callbacks.clone()
    }

    /// Resolves once at least `n` callback attempts are recorded; an error after `timeout`.
    pub async fn wait_for_callbacks(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<CallbackRecord>> {
        self.wait_until(timeout, &format!("{n} status callbacks"), |st| {
            (st.callbacks.len() >= n).then(|| st.callbacks.clone())
        })
        .await
    }

    /// Sends one signed status callback for an existing message with the given
    /// status (for tests of late/out-of-order callbacks); returns the HTTP
    /// status answered. The stored status is left alone, as a late duplicate
    /// from Twilio would, and there is no retry.
    pub async fn send_status_callback(
        &self,
        sid: &str,
        status: &str,
        error_code: Option<u32>,
    ) -> anyhow::Result<u16> {
        let shared = &self.inner.shared;
        let (url, params) = {
            let st = shared.state();
            let msg = st.find(sid).ok_or_else(|| anyhow!("no message {sid}"))?;
            let url = msg
                .sms
                .status_callback
                .clone()
                .ok_or_else(|| anyhow!("message {sid} has no StatusCallback"))?;
            (url, callback_params(shared, &msg.sms, status, error_code))
        };
        let signature = twilio_sign(&shared.auth_token, &url, &params);
        let outcome = post_callback(shared, &url, &params, &signature).await;
        shared.record_callback(CallbackRecord {
            sid: sid.to_owned(),
            status: status.to_owned(),
            error_code,
            url: url.clone(),
            http_status: outcome.as_ref().ok().copied(),
            attempt: 1,
            params,
            signature,
        });
        outcome.map_err(|e| anyhow!("status callback to {url} got no answer: {e}"))
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&Books) -> Option<T>,
    ) -> anyhow::Result<T> {
        let shared = &self.inner.shared;
        // Subscribing before the first probe means a change between the probe
        // and the wait is still seen by `changed()`.
        let mut rx = shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = probe(&shared.state());
            if let Some(v) = found {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("twilio emulator shut down while waiting for {what}"),
                Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }
}

fn snapshot_messages(st: &Books) -> Vec<EmuSms> {
    st.messages.iter().map(|m| m.sms.clone()).collect()
}

// ---------------------------------------------------------------------------
// HTTP surface

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/2010-04-01/Accounts/{file}", get(fetch_account))
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages.json",
            post(create_message).get(list_messages),
        )
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages/{file}",
            get(fetch_message),
        )
        .route("/emulator/faults", get(get_faults).post(set_faults))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

fn twilio_error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    let body = json!({
        "code": code,
        "message": message.into(),
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    let mut resp = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
    }
    resp
}

fn unauthorized() -> Response {
    twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
}

fn bad_request(code: u32, message: impl Into<String>) -> Response {
    twilio_error(StatusCode::BAD_REQUEST, code, message)
}

async fn not_found(OriginalUri(uri): OriginalUri) -> Response {
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        format!("The requested resource {} was not found", uri.path()),
    )
}

async fn method_not_allowed() -> Response {
    twilio_error(StatusCode::METHOD_NOT_ALLOWED, 20004, "Method not allowed")
}

/// Twilio's error body for an injected HTTP status.
fn fault_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = match status.as_u16() {
        401 => 20003,
        405 => 20004,
        s => 20_000 + u32::from(s),
    };
    let message = if status == StatusCode::UNAUTHORIZED {
        "Authenticate"
    } else {
        status.canonical_reason().unwrap_or("Error")
    };
    let mut resp = twilio_error(status, code, message);
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn authorized(shared: &Shared, path_account: &str, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = B64.decode(encoded.trim()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return false;
    };
    // Evaluate all three so the time taken does not say which one was wrong.
    let user_ok = secret_eq(user, &shared.account_sid);
    let password_ok = secret_eq(password, &shared.auth_token);
    let path_ok = secret_eq(path_account, &shared.account_sid);
    user_ok & password_ok & path_ok
}

fn first<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Like [`first`], but an empty value counts as absent, as Twilio treats it.
fn non_empty<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    first(params, name).filter(|v| !v.is_empty())
}

async fn create_message(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The recipient names the request for the random draw, so that a seed
    // fixes which attempt to which phone fails, whatever the arrival order.
    let to = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()
        .and_then(|p| first(&p, "To").map(str::to_owned))
        .unwrap_or_default();
    let (fault, random, unavailable) = {
        let mut st = shared.state();
        st.create_requests += 1;
        st.requests += 1;
        let n = st.creates_to.entry(to.clone()).or_insert(0);
        *n += 1;
        let key = ["create", to.as_str(), &n.to_string()];
        let random = st.random.plan(&key);
        (st.faults.pop_front(), random, st.random.unavailable)
    };
    shared.bump();
    match fault {
        Some(CreateFault::Status(status)) => return fault_response(status),
        Some(CreateFault::Hang(delay)) => {
            tokio::time::sleep(delay).await;
            return fault_response(503);
        }
        Some(CreateFault::ResponseLost) => {
            // The request is processed in full; only the answer is lost.
            let resp = handle_create(&shared, &account_sid, &headers, &body);
            conn.kill();
            return resp;
        }
        None => {}
    }
    if unavailable {
        return fault_response(503);
    }
    tokio::time::sleep(random.latency).await;
    let create = || handle_create(&shared, &account_sid, &headers, &body);
    match random.fault {
        Fault::None => create(),
        Fault::Status(status) => fault_response(status),
        Fault::Hang { applied } => {
            let resp = if applied {
                create()
            } else {
                fault_response(503)
            };
            let hang_for = shared.state().random.hang_for;
            tokio::time::sleep(hang_for).await;
            conn.kill();
            resp
        }
        Fault::Reset { applied } => {
            let resp = if applied {
                create()
            } else {
                fault_response(503)
            };
            conn.kill();
            resp
        }
        Fault::ResponseLost => {
            let resp = create();
            conn.kill();
            resp
        }
    }
}

/// An outage of the whole API (`TwilioFaults::unavailable`), counted like
/// any request; None when the request may go on.
fn outage(shared: &Shared) -> Option<Response> {
    let unavailable = {
        let mut st = shared.state();
        st.requests += 1;
        st.random.unavailable
    };
    shared.bump();
    unavailable.then(|| fault_response(503))
}

/// `GET /emulator/faults`: the random faults in force, in the compact form.
async fn get_faults(State(shared): State<Arc<Shared>>) -> String {
    shared.state().random.to_string()
}

/// `POST /emulator/faults` with a compact fault string (`error_rate=0.2,...`,
/// with or without the `twilio.` prefix) changes the named faults; an empty
/// body turns every fault off. Not part of Twilio's API: the sandbox's own
/// control plane, so faults can be switched from a shell.
async fn set_faults(State(shared): State<Arc<Shared>>, body: String) -> Response {
    let mut next = if body.trim().is_empty() {
        TwilioFaults::default()
    } else {
        shared.state().random.clone()
    };
    match faults::parse_one(&body, "twilio", &mut |k, v| next.set(k, v)) {
        Ok(()) => {
            let text = next.to_string();
            shared.state().random = next;
            (StatusCode::OK, text).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    }
}

fn handle_create(
    shared: &Arc<Shared>,
    account_sid: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if !authorized(shared, account_sid, headers) {
        return unauthorized();
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    // Twilio reads parameters only from a form body; anything else (JSON, say)
    // arrives as no parameters at all.
    let params: Vec<(String, String)> = if is_form {
        match serde_urlencoded::from_bytes(body) {
            Ok(p) => p,
            Err(e) => return bad_request(20001, format!("Invalid form body: {e}")),
        }
    } else {
        Vec::new()
    };

    let Some(to) = non_empty(&params, "To") else {
        return bad_request(21604, "A 'To' phone number is required.");
    };
    if !is_e164(to) {
        return invalid_to(to);
    }
    let from = non_empty(&params, "From");
    let messaging_service_sid = non_empty(&params, "MessagingServiceSid");
    if from.is_none() && messaging_service_sid.is_none() {
        return bad_request(
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required",
        );
    }
    if let Some(from) = from {
        if !is_valid_sender(from) {
            return bad_request(
                21212,
                format!("The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."),
            );
        }
    }
    let Some(text) = non_empty(&params, "Body") else {
        return bad_request(21602, "Message body is required.");
    };
    if text.chars().count() > MAX_BODY_CHARS {
        return bad_request(
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    let status_callback = non_empty(&params, "StatusCallback");
    if let Some(url) = status_callback {
        if !is_valid_callback_url(url) {
            return bad_request(
                21609,
                format!("The StatusCallback URL {url} is not a valid URL."),
            );
        }
    }
    // Only validated: with status steps of milliseconds no message ever waits
    // in the queue long enough for a validity period to expire.
    if let Some(v) = non_empty(&params, "ValidityPeriod") {
        if !v
            .parse::<u32>()
            .is_ok_and(|n| (1..=MAX_VALIDITY_PERIOD).contains(&n))
        {
            return bad_request(21624, "Invalid validity period value");
        }
    }

    let now = Utc::now().trunc_subsecs(0);
    let (resource, sid, steps) = {
        let mut st = shared.state();
        let behaviour = shared.recipient(&st, to);
        match behaviour {
            RecipientBehaviour::InvalidNumber => return invalid_to(to),
            RecipientBehaviour::Unsubscribed => {
                return bad_request(21610, "Attempt to send to unsubscribed recipient")
            }
            _ => {}
        }
        let sid = format!("SM{}", random_hex32());
        let stored = StoredMessage {
            sms: EmuSms {
                sid: sid.clone(),
                to: to.to_owned(),
                from: from.map(str::to_owned),
                messaging_service_sid: messaging_service_sid.map(str::to_owned),
                body: text.to_owned(),
                // Twilio answers "accepted" while a Messaging Service still
                // has to pick a sender.
                status: if messaging_service_sid.is_some() {
                    "accepted"
                } else {
                    "queued"
                }
                .to_owned(),
                status_callback: status_callback.map(str::to_owned),
                date_created: now,
            },
            date_updated: now,
            date_sent: Some(now),
            error_code: None,
            num_segments: num_segments(text),
        };
        let resource = message_json(&shared.account_sid, &stored);
        let index = st.messages.len();
        st.by_sid.insert(sid.clone(), index);
        st.messages.push(stored);
        (resource, sid, behaviour.steps())
    };
    shared.bump();
    let busy = Busy::new(shared);
    let walk = walk_statuses(shared.clone(), sid, steps);
    tokio::spawn(async move {
        walk.await;
        drop(busy);
    });
    (StatusCode::CREATED, Json(resource)).into_response()
}

fn invalid_to(to: &str) -> Response {
    bad_request(
        21211,
        format!("The 'To' number {to} is not a valid phone number."),
    )
}

async fn list_messages(
    State(shared): State<Arc<Shared>>,
    Path(account_sid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = outage(&shared) {
        return resp;
    }
    if !authorized(&shared, &account_sid, &headers) {
        return unauthorized();
    }
    let raw: Vec<(String, String)> =
        match serde_urlencoded::from_str(query.as_deref().unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => return bad_request(20001, format!("Invalid query string: {e}")),
        };
    let filter = match ListFilter::parse(&raw) {
        Ok(f) => f,
        Err(message) => return bad_request(20001, message),
    };
    let matching: Vec<Value> = {
        let st = shared.state();
        st.messages
            .iter()
            .rev() // newest first
            .filter(|m| filter.matches(m))
            .map(|m| message_json(&shared.account_sid, m))
            .collect()
    };
    let size = filter.page_size;
    let start = filter.page.saturating_mul(size);
    let page_items: Vec<Value> = matching.iter().skip(start).take(size).cloned().collect();
    let base = format!("/2010-04-01/Accounts/{}/Messages.json", shared.account_sid);
    let page_uri = |page: usize| filter.uri(&base, page);
    let has_next = start.saturating_add(size) < matching.len();
    let end = (start + page_items.len()).saturating_sub(1);
    Json(json!({
        "messages": page_items,
        "page": filter.page,
        "page_size": size,
        "start": start,
        "end": end,
        "uri": page_uri(filter.page),
        "first_page_uri": page_uri(0),
        "next_page_uri": if has_next { Value::from(page_uri(filter.page + 1)) } else { Value::Null },
        "previous_page_uri": if filter.page > 0 { Value::from(page_uri(filter.page - 1)) } else { Value::Null },
    }))
    .into_response()
}

async fn fetch_message(
    State(shared): State<Arc<Shared>>,
    Path((account_sid, file)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = outage(&shared) {
        return resp;
    }
    if !authorized(&shared, &account_sid, &headers) {
        return unauthorized();
    }
    let found = file.strip_suffix(".json").and_then(|sid| {
        shared
            .state()
            .find(sid)
            .map(|m| message_json(&shared.account_sid, m))
    });
    match found {
        Some(resource) => Json(resource).into_response(),
        None => twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {} was not found", uri.path()),
        ),
    }
}

/// `GET /2010-04-01/Accounts/{sid}.json`: the account resource, which a
/// credentials check fetches.
async fn fetch_account(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = outage(&shared) {
        return resp;
    }
    let Some(sid) = file.strip_suffix(".json") else {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {} was not found", uri.path()),
        );
    };
    if !authorized(&shared, sid, &headers) {
        return unauthorized();
    }
    let base = format!("/{API_VERSION}/Accounts/{sid}");
    let created = rfc2822(DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::days(16_000));
    let subresources = [
        ("addresses", "Addresses"),
        ("conferences", "Conferences"),
        ("incoming_phone_numbers", "IncomingPhoneNumbers"),
        ("messages", "Messages"),
        ("notifications", "Notifications"),
        ("outgoing_caller_ids", "OutgoingCallerIds"),
        ("queues", "Queues"),
        ("recordings", "Recordings"),
        ("calls", "Calls"),
        ("usage", "Usage"),
    ];
    let uris: serde_json::Map<String, Value> = subresources
        .iter()
        .map(|(key, name)| ((*key).to_owned(), json!(format!("{base}/{name}.json"))))
        .collect();
    Json(json!({
        "auth_token": shared.auth_token,
        "date_created": created,
        "date_updated": created,
        "friendly_name": "rbm-fallback emulator",
        "owner_account_sid": sid,
        "sid": sid,
        "status": "active",
        "subresource_uris": uris,
        "type": "Full",
        "uri": format!("{base}.json"),
    }))
    .into_response()
}

fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

fn message_json(account_sid: &str, m: &StoredMessage) -> Value {
    let sms = &m.sms;
    let uri = format!(
        "/2010-04-01/Accounts/{account_sid}/Messages/{}.json",
        sms.sid
    );
    json!({
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": sms.body,
        "date_created": rfc2822(sms.date_created),
        "date_sent": m.date_sent.map(rfc2822),
        "date_updated": rfc2822(m.date_updated),
        "direction": "outbound-api",
        "error_code": m.error_code,
        "error_message": m.error_code.and_then(error_description),
        "from": sms.from,
        "messaging_service_sid": sms.messaging_service_sid,
        "num_media": "0",
        "num_segments": m.num_segments.to_string(),
        "price": Value::Null,
        "price_unit": "USD",
        "sid": sms.sid,
        "status": sms.status,
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{}/Media.json", sms.sid),
            "feedback": format!("/2010-04-01/Accounts/{account_sid}/Messages/{}/Feedback.json", sms.sid),
        },
        "to": sms.to,
        "uri": uri,
    })
}

fn error_description(code: u32) -> Option<&'static str> {
    Some(match code {
        30003 => "Unreachable destination handset",
        30004 => "Message blocked",
        30005 => "Unknown destination handset",
        30006 => "Landline or unreachable carrier",
        30007 => "Message filtered",
        30008 => "Unknown error",
        _ => return None,
    })
}

/// The list endpoint's filters and paging.
struct ListFilter {
    to: Option<String>,
    from: Option<String>,
    /// `DateSent=`: the UTC day.
    on: Option<NaiveDate>,
    /// `DateSent>=` / `DateSent>`: inclusive lower bound.
    after: Option<DateTime<Utc>>,
    /// `DateSent<=` / `DateSent<`: inclusive upper bound.
    before: Option<DateTime<Utc>>,
    page: usize,
    page_size: usize,
    /// The filter parameters as given, echoed into the paging URIs.
    echo: Vec<(String, String)>,
}

impl ListFilter {
    /// An invalid parameter yields the message of Twilio's 20001 error.
    fn parse(raw: &[(String, String)]) -> Result<Self, String> {
        let mut f = ListFilter {
            to: None,
            from: None,
            on: None,
            after: None,
            before: None,
            page: 0,
            page_size: DEFAULT_PAGE_SIZE,
            echo: Vec::new(),
        };
        for (name, value) in raw {
            // `DateSent>=2026-01-15` sent without percent-encoding splits at
            // the first `=` into name `DateSent>` and value `=2026-01-15`.
            let (name, value) = match (name.as_str(), value.strip_prefix('=')) {
                ("DateSent>" | "DateSent<", Some(rest)) => (format!("{name}="), rest),
                _ => (name.clone(), value.as_str()),
            };
            let invalid = || format!("Invalid value for {name}: {value}");
            match name.as_str() {
                "To" => f.to = Some(value.to_owned()),
                "From" => f.from = Some(value.to_owned()),
                "DateSent" => {
                    f.on = Some(
                        parse_date_bound(value, false)
                            .ok_or_else(invalid)?
                            .date_naive(),
                    )
                }
                "DateSent>=" | "DateSent>" => {
                    f.after = Some(parse_date_bound(value, false).ok_or_else(invalid)?)
                }
                "DateSent<=" | "DateSent<" => {
                    f.before = Some(parse_date_bound(value, true).ok_or_else(invalid)?)
                }
                "PageSize" => {
                    f.page_size = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                        .ok_or_else(invalid)?;
                    continue;
                }
                "Page" => {
                    f.page = value.parse().map_err(|_| invalid())?;
                    continue;
                }
                // Unknown parameters (PageToken and the like) are ignored.
                _ => continue,
            }
            f.echo.push((name, value.to_owned()));
        }
        Ok(f)
    }

    fn matches(&self, m: &StoredMessage) -> bool {
        if self.to.as_deref().is_some_and(|to| to != m.sms.to) {
            return false;
        }
        if self
            .from
            .as_deref()
            .is_some_and(|from| Some(from) != m.sms.from.as_deref())
        {
            return false;
        }
        let dated = self.on.is_some() || self.after.is_some() || self.before.is_some();
        match m.date_sent {
            None => !dated,
            Some(sent) => {
                self.on.is_none_or(|d| sent.date_naive() == d)
                    && self.after.is_none_or(|a| sent >= a)
                    && self.before.is_none_or(|b| sent <= b)
            }
        }
    }

    fn uri(&self, base: &str, page: usize) -> String {
        let mut q = self.echo.clone();
        q.push(("PageSize".into(), self.page_size.to_string()));
        q.push(("Page".into(), page.to_string()));
        match serde_urlencoded::to_string(&q) {
            Ok(qs) => format!("{base}?{qs}"),
            Err(_) => base.to_owned(),
        }
    }
}

/// A `DateSent` value: a UTC day (`YYYY-MM-DD`, its first or last second) or
/// an RFC 3339 instant, which is what Twilio's SDKs send for their
/// `date_sent_after`/`date_sent_before` arguments.
fn parse_date_bound(value: &str, end_of_day: bool) -> Option<DateTime<Utc>> {
    if let Ok(day) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let time = if end_of_day {
            NaiveTime::from_hms_opt(23, 59, 59)?
        } else {
            NaiveTime::MIN
        };
        return Some(day.and_time(time).and_utc());
    }
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

// ---------------------------------------------------------------------------
// Validation helpers

fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A phone number, a short code, or an alphanumeric sender ID.
fn is_valid_sender(s: &str) -> bool {
    let short_code = (3..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let alphanumeric = (1..=11).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && s.bytes().any(|b| b.is_ascii_alphabetic());
    is_e164(s) || short_code || alphanumeric
}

fn is_valid_callback_url(s: &str) -> bool {
    if s.len() > MAX_CALLBACK_URL_LEN {
        return false;
    }
    reqwest::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// Characters of the GSM 03.38 default alphabet (one septet each).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of its extension table (an escape plus one septet each).
const GSM7_EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// How many SMS segments Twilio bills for a body: GSM-7 when every character
/// fits, UCS-2 otherwise.
fn num_segments(body: &str) -> usize {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in body.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (units, single, multi) = if gsm {
        (septets, 160, 153)
    } else {
        (body.encode_utf16().count(), 70, 67)
    };
    if units <= single {
        1
    } else {
        units.div_ceil(multi)
    }
}

fn random_hex32() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Status progression and callbacks

async fn walk_statuses(shared: Arc<Shared>, sid: String, steps: Vec<(&'static str, Option<u32>)>) {
    for (status, error_code) in steps {
        tokio::time::sleep(shared.status_step).await;
        let outgoing = {
            let mut guard = shared.state();
            let st = &mut *guard;
            let Some(&at) = st.by_sid.get(&sid) else {
                return;
            };
            let msg = &mut st.messages[at];
            status.clone_into(&mut msg.sms.status);
            msg.date_updated = Utc::now().trunc_subsecs(0);
            msg.error_code = error_code;
            if msg.sms.from.is_none() {
                msg.sms.from = Some(POOL_SENDER.to_owned());
            }
            match msg.sms.status_callback.clone() {
                None => None,
                Some(url) => {
                    let params = callback_params(&shared, &msg.sms, status, error_code);
                    let to = msg.sms.to.clone();
                    let n = st
                        .callbacks_for
                        .entry((to.clone(), status.to_owned()))
                        .or_insert(0);
                    *n += 1;
                    let copies = st.random.fanout(&["callback", &to, status, &n.to_string()]);
                    Some((url, params, copies))
                }
            }
        };
        shared.bump();
        let Some((url, params, copies)) = outgoing else {
            continue;
        };
        if copies.is_empty() {
            let signature = twilio_sign(&shared.auth_token, &url, &params);
            shared.state().dropped_callbacks.push(CallbackRecord {
                sid: sid.clone(),
                status: status.to_owned(),
                error_code,
                url,
                http_status: None,
                attempt: 0,
                params,
                signature,
            });
            shared.bump();
            continue;
        }
        if copies == [Duration::ZERO] {
            // The plain case: one callback, in order, before the next status.
            deliver_with_retry(&shared, &sid, status, error_code, &url, params).await;
            continue;
        }
        for delay in copies {
            let (shared, sid, url, params) =
                (shared.clone(), sid.clone(), url.clone(), params.clone());
            let busy = Busy::new(&shared);
            tokio::spawn(async move {
                let _busy = busy;
                tokio::time::sleep(delay).await;
                deliver_with_retry(&shared, &sid, status, error_code, &url, params).await;
            });
        }
    }
}

fn callback_params(
    shared: &Shared,
    sms: &EmuSms,
    status: &str,
    error_code: Option<u32>,
) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = Vec::with_capacity(10);
    let mut add = |k: &str, v: &str| p.push((k.to_owned(), v.to_owned()));
    if let Some(code) = error_code {
        add("ErrorCode", &code.to_string());
    }
    add("SmsSid", &sms.sid);
    add("SmsStatus", status);
    add("MessageStatus", status);
    add("To", &sms.to);
    if let Some(mg) = &sms.messaging_service_sid {
        add("MessagingServiceSid", mg);
    }
    add("MessageSid", &sms.sid);
    add("AccountSid", &shared.account_sid);
    add("From", sms.from.as_deref().unwrap_or(POOL_SENDER));
    add("ApiVersion", API_VERSION);
    p
}

/// Why a status callback got no HTTP answer.
#[derive(Debug)]
enum CallbackError {
    /// The emulator calls loopback hosts only.
    NotLoopback,
    Transport(String),
}

impl std::fmt::Display for CallbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLoopback => f.write_str("non-loopback StatusCallback URL refused"),
            Self::Transport(e) => f.write_str(e),
        }
    }
}

/// POSTs one signed callback and answers the HTTP status the receiver gave.
async fn post_callback(
    shared: &Shared,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> Result<u16, CallbackError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| CallbackError::Transport(e.to_string()))?;
    if !is_loopback(&parsed) {
        tracing::warn!(%url, "twilio emulator refuses to call back a non-loopback URL");
        return Err(CallbackError::NotLoopback);
    }
    shared
        .http
        .post(parsed)
        .header("X-Twilio-Signature", signature)
        .form(params)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| CallbackError::Transport(e.to_string()))
}

async fn deliver_with_retry(
    shared: &Shared,
    sid: &str,
    status: &str,
    error_code: Option<u32>,
    url: &str,
    params: Vec<(String, String)>,
) {
    // Twilio signs the URL exactly as configured, not as normalised for the request.
    let signature = twilio_sign(&shared.auth_token, url, &params);
    for attempt in 1..=2u32 {
        let outcome = post_callback(shared, url, &params, &signature).await;
        if let Err(e) = &outcome {
            tracing::debug!(%url, error = %e, attempt, "status callback got no answer");
        }
        let http_status = outcome.as_ref().ok().copied();
        shared.record_callback(CallbackRecord {
            sid: sid.to_owned(),
            status: status.to_owned(),
            error_code,
            url: url.to_owned(),
            http_status,
            attempt,
            params: params.clone(),
            signature: signature.clone(),
        });
        let done = matches!(outcome, Ok(s) if (200..300).contains(&s))
            || matches!(outcome, Err(CallbackError::NotLoopback));
        if done {
            return;
        }
        if attempt == 1 {
            tokio::time::sleep(shared.status_step).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::twilio_verify;
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(5);
    const ALICE: &str = "+15551230001";
    const BOB: &str = "+15551230002";
    const SENDER: &str = "+15557770000";

    async fn emulator() -> TwilioEmulator {
        TwilioEmulator::start(TwilioEmulatorConfig {
            status_step: Duration::from_millis(5),
            ..TwilioEmulatorConfig::default()
        })
        .await
        .expect("emulator starts")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client builds")
    }

    fn messages_url(emu: &TwilioEmulator) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            emu.base_url(),
            emu.account_sid()
        )
    }

    async fn create(
        emu: &TwilioEmulator,
        client: &reqwest::Client,
        form: &[(&str, &str)],
    ) -> reqwest::Result<reqwest::Response> {
        client
            .post(messages_url(emu))
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .form(form)
            .send()
            .await
    }

    async fn json_of(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.expect("JSON body");
        (status, body)
    }

    async fn assert_error(resp: reqwest::Response, status: u16, code: u32) -> Value {
        let (got, body) = json_of(resp).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(
            body["more_info"],
            format!("https://www.twilio.com/docs/errors/{code}")
        );
        assert!(body["message"].is_string());
        body
    }

    #[derive(Debug)]
    struct Received {
        url: String,
        signature: Option<String>,
        content_type: Option<String>,
        params: Vec<(String, String)>,
    }

    impl Received {
        fn get(&self, name: &str) -> Option<&str> {
            first(&self.params, name)
        }
    }

    /// A webhook receiver on loopback that reports every POST and answers
    /// the given statuses in turn (200 once they run out).
    async fn receiver(answers: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let origin = base.clone();
        let app = Router::new().fallback(
            move |OriginalUri(uri): OriginalUri, headers: HeaderMap, body: Bytes| {
                let (tx, answers, origin) = (tx.clone(), answers.clone(), origin.clone());
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let _ = tx.send(Received {
                        url: format!("{origin}{uri}"),
                        signature: header("x-twilio-signature"),
                        content_type: header("content-type"),
                        params: serde_urlencoded::from_bytes(&body).expect("form body"),
                    });
                    let code = answers.lock().expect("lock").pop_front().unwrap_or(200);
                    StatusCode::from_u16(code).expect("valid status")
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("callback arrives in time")
            .expect("receiver alive")
    }

    #[tokio::test]
    async fn create_with_good_auth_answers_201_with_the_resource() {
        let emu = emulator().await;
        let resp = create(
            &emu,
            &client(),
            &[
                ("To", ALICE),
                ("From", SENDER),
                ("Body", "Your code is 1234"),
            ],
        )
        .await
        .expect("answer");
        let (status, m) = json_of(resp).await;
        assert_eq!(status, 201, "{m}");
        let sid = m["sid"].as_str().expect("sid");
        assert!(sid.starts_with("SM") && sid.len() == 34);
        assert!(sid[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(m["account_sid"], emu.account_sid());
        assert_eq!(m["to"], ALICE);
        assert_eq!(m["from"], SENDER);
        assert_eq!(m["messaging_service_sid"], Value::Null);
        assert_eq!(m["body"], "Your code is 1234");
        assert_eq!(m["status"], "queued");
        assert_eq!(m["num_segments"], "1");
        assert_eq!(m["direction"], "outbound-api");
        assert_eq!(m["api_version"], "2010-04-01");
        assert_eq!(m["price"], Value::Null);
        assert_eq!(m["error_code"], Value::Null);
        assert_eq!(m["error_message"], Value::Null);
        for field in ["date_created", "date_updated", "date_sent"] {
            let text = m[field].as_str().expect("date string");
            assert!(text.ends_with(" +0000"), "{text}");
            DateTime::parse_from_rfc2822(text).expect("RFC 2822 date");
        }
        let uri = format!(
            "/2010-04-01/Accounts/{}/Messages/{sid}.json",
            emu.account_sid()
        );
        assert_eq!(m["uri"], uri);
        assert!(m["subresource_uris"]["media"]
            .as_str()
            .is_some_and(|u| u.ends_with("/Media.json")));

        let stored = emu.messages();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].sid, sid);
        assert_eq!(stored[0].from.as_deref(), Some(SENDER));
        assert_eq!(emu.create_requests(), 1);
    }

    #[tokio::test]
    async fn a_messaging_service_message_starts_accepted() {
        let emu = emulator().await;
        let mg = format!("MG{}", random_hex32());
        let resp = create(
            &emu,
            &client(),
            &[("To", ALICE), ("MessagingServiceSid", &mg), ("Body", "hi")],
        )
        .await
        .expect("answer");
        let (status, m) = json_of(resp).await;
        assert_eq!(status, 201, "{m}");
        assert_eq!(m["status"], "accepted");
        assert_eq!(m["messaging_service_sid"], mg.as_str());
        assert_eq!(m["from"], Value::Null);
    }

    #[tokio::test]
    async fn the_account_resource_needs_its_own_credentials() {
        let emu = emulator().await;
        let c = client();
        let url = format!(
            "{}/2010-04-01/Accounts/{}.json",
            emu.base_url(),
            emu.account_sid()
        );
        let ok = c
            .get(&url)
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .send()
            .await
            .expect("answer");
        let (status, body) = json_of(ok).await;
        assert_eq!(status, 200);
        assert_eq!(body["sid"], emu.account_sid());
        assert_eq!(body["status"], "active");
        assert_eq!(
            body["uri"],
            format!("/2010-04-01/Accounts/{}.json", emu.account_sid())
        );
        let wrong = c
            .get(&url)
            .basic_auth(emu.account_sid(), Some("0".repeat(32)))
            .send()
            .await
            .expect("answer");
        assert_error(wrong, 401, 20003).await;
        let other = format!(
            "{}/2010-04-01/Accounts/AC{}.json",
            emu.base_url(),
            random_hex32()
        );
        let foreign = c
            .get(other)
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .send()
            .await
            .expect("answer");
        assert_error(foreign, 401, 20003).await;
    }

    #[tokio::test]
    async fn bad_credentials_or_a_foreign_account_answer_401_20003() {
        let emu = emulator().await;
        let c = client();
        let form = [("To", ALICE), ("From", SENDER), ("Body", "x")];
        let wrong_token = c
            .post(messages_url(&emu))
            .basic_auth(emu.account_sid(), Some("0".repeat(32)))
            .form(&form)
            .send()
            .await
            .expect("answer");
        let body = assert_error(wrong_token, 401, 20003).await;
        assert_eq!(body["message"], "Authenticate");

        let none = c
            .post(messages_url(&emu))
            .form(&form)
            .send()
            .await
            .expect("answer");
        assert!(none.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_error(none, 401, 20003).await;

        let other = format!("AC{}", random_hex32());
        let foreign = c
            .post(format!(
                "{}/2010-04-01/Accounts/{other}/Messages.json",
                emu.base_url()
            ))
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .form(&form)
            .send()
            .await
            .expect("answer");
        assert_error(foreign, 401, 20003).await;

        let listing = c
            .get(messages_url(&emu))
            .basic_auth(emu.account_sid(), Some("nope"))
            .send()
            .await
            .expect("answer");
        assert_error(listing, 401, 20003).await;

        assert!(emu.messages().is_empty());
        assert_eq!(emu.create_requests(), 3);
    }

    #[tokio::test]
    async fn invalid_requests_answer_twilio_error_codes_and_create_nothing() {
        let emu = emulator().await;
        let c = client();
        let no_sender = create(&emu, &c, &[("To", ALICE), ("Body", "x")]).await;
        assert_error(no_sender.expect("answer"), 400, 21603).await;

        for bad in [
            "15551230001",
            "+0155512300",
            "+1234567",
            "+1234567890123456",
            "+1555abc0001",
        ] {
            let resp = create(&emu, &c, &[("To", bad), ("From", SENDER), ("Body", "x")]).await;
            let body = assert_error(resp.expect("answer"), 400, 21211).await;
            assert_eq!(
                body["message"],
                format!("The 'To' number {bad} is not a valid phone number.")
            );
        }

        let no_body = create(&emu, &c, &[("To", ALICE), ("From", SENDER)]).await;
        assert_error(no_body.expect("answer"), 400, 21602).await;
        let long = "a".repeat(1601);
        let too_long = create(
            &emu,
            &c,
            &[("To", ALICE), ("From", SENDER), ("Body", &long)],
        )
        .await;
        assert_error(too_long.expect("answer"), 400, 21617).await;

        emu.set_recipient(BOB, RecipientBehaviour::Unsubscribed);
        let unsubscribed = create(&emu, &c, &[("To", BOB), ("From", SENDER), ("Body", "x")]).await;
        let body = assert_error(unsubscribed.expect("answer"), 400, 21610).await;
        assert_eq!(body["message"], "Attempt to send to unsubscribed recipient");

        emu.set_recipient(BOB, RecipientBehaviour::InvalidNumber);
        let invalid = create(&emu, &c, &[("To", BOB), ("From", SENDER), ("Body", "x")]).await;
        assert_error(invalid.expect("answer"), 400, 21211).await;

        // A JSON body carries no form parameters as far as Twilio is concerned.
        let json_body = c
            .post(messages_url(&emu))
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .json(&json!({"To": ALICE, "From": SENDER, "Body": "x"}))
            .send()
            .await
            .expect("answer");
        assert_error(json_body, 400, 21604).await;

        assert!(emu.messages().is_empty());
        assert_eq!(emu.create_requests(), 11);
    }

    #[tokio::test]
    async fn list_filters_by_to_and_date_sent_and_get_fetches_by_sid() {
        let emu = emulator().await;
        let c = client();
        let mut sids = Vec::new();
        for to in [ALICE, BOB, ALICE] {
            let resp = create(&emu, &c, &[("To", to), ("From", SENDER), ("Body", "x")]).await;
            let (status, m) = json_of(resp.expect("answer")).await;
            assert_eq!(status, 201);
            sids.push(m["sid"].as_str().expect("sid").to_owned());
        }
        let today = Utc::now().date_naive();
        let list = |query: Vec<(&'static str, String)>| {
            let c = c.clone();
            let url = messages_url(&emu);
            let (user, token) = (emu.account_sid().to_owned(), emu.auth_token().to_owned());
            async move {
                let resp = c
                    .get(url)
                    .basic_auth(user, Some(token))
                    .query(&query)
                    .send()
                    .await
                    .expect("answer");
                let (status, body) = json_of(resp).await;
                assert_eq!(status, 200, "{body}");
                body
            }
        };
        let sids_of = |page: &Value| -> Vec<String> {
            page["messages"]
                .as_array()
                .expect("messages array")
                .iter()
                .map(|m| m["sid"].as_str().expect("sid").to_owned())
                .collect()
        };

        let yesterday = (today - chrono::Days::new(1)).to_string();
        let tomorrow = (today + chrono::Days::new(1)).to_string();
        let page = list(vec![
            ("To", ALICE.into()),
            ("DateSent>=", yesterday.clone()),
        ])
        .await;
        // Newest first.
        assert_eq!(sids_of(&page), vec![sids[2].clone(), sids[0].clone()]);
        assert_eq!(page["page"], 0);
        assert_eq!(page["page_size"], 50);
        assert_eq!(page["next_page_uri"], Value::Null);
        assert_eq!(page["previous_page_uri"], Value::Null);
        assert!(page["first_page_uri"].is_string() && page["uri"].is_string());

        let page = list(vec![("To", ALICE.into()), ("DateSent>=", tomorrow.clone())]).await;
        assert!(sids_of(&page).is_empty());
        let page = list(vec![("DateSent<=", yesterday)]).await;
        assert!(sids_of(&page).is_empty());
        let page = list(vec![("DateSent", today.to_string())]).await;
        assert_eq!(sids_of(&page).len(), 3);
        let page = list(vec![("To", BOB.into()), ("PageSize", "1".into())]).await;
        assert_eq!(sids_of(&page), vec![sids[1].clone()]);
        let page = list(vec![("PageSize", "2".into())]).await;
        assert_eq!(sids_of(&page), vec![sids[2].clone(), sids[1].clone()]);
        assert!(page["next_page_uri"].is_string());

        // The same filter with `>=` left unencoded, as a careless client sends it.
        let raw = c
            .get(format!(
                "{}?To=%2B15551230001&DateSent>={tomorrow}",
                messages_url(&emu)
            ))
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .send()
            .await
            .expect("answer");
        let (_, page) = json_of(raw).await;
        assert!(sids_of(&page).is_empty(), "{page}");

        let fetch = |sid: String| {
            let c = c.clone();
            let url = format!(
                "{}/2010-04-01/Accounts/{}/Messages/{sid}.json",
                emu.base_url(),
                emu.account_sid()
            );
            let (user, token) = (emu.account_sid().to_owned(), emu.auth_token().to_owned());
            async move {
                c.get(url)
                    .basic_auth(user, Some(token))
                    .send()
                    .await
                    .expect("answer")
            }
        };
        let (status, m) = json_of(fetch(sids[1].clone()).await).await;
        assert_eq!(status, 200);
        assert_eq!(m["sid"], sids[1].as_str());
        assert_eq!(m["to"], BOB);
        let unknown = fetch(format!("SM{}", random_hex32())).await;
        assert_error(unknown, 404, 20404).await;
    }

    #[tokio::test]
    async fn status_callbacks_arrive_in_order_and_signed() {
        let emu = emulator().await;
        let (base, mut rx) = receiver(vec![]).await;
        let callback = format!("{base}/webhooks/twilio/status?message_id=m1");
        let resp = create(
            &emu,
            &client(),
            &[
                ("To", ALICE),
                ("From", SENDER),
                ("Body", "x"),
                ("StatusCallback", &callback),
            ],
        )
        .await
        .expect("answer");
        let (_, m) = json_of(resp).await;
        let sid = m["sid"].as_str().expect("sid").to_owned();

        let mut seen = Vec::new();
        for _ in 0..2 {
            let got = next(&mut rx).await;
            assert_eq!(got.url, callback);
            assert_eq!(
                got.content_type.as_deref(),
                Some("application/x-www-form-urlencoded")
            );
            let signature = got.signature.clone().expect("signed");
            assert!(twilio_verify(
                emu.auth_token(),
                &callback,
                &got.params,
                &signature
            ));
            assert!(!twilio_verify("wrong", &callback, &got.params, &signature));
            assert_eq!(got.get("MessageSid"), Some(sid.as_str()));
            assert_eq!(got.get("SmsSid"), Some(sid.as_str()));
            assert_eq!(got.get("AccountSid"), Some(emu.account_sid()));
            assert_eq!(got.get("From"), Some(SENDER));
            assert_eq!(got.get("To"), Some(ALICE));
            assert_eq!(got.get("ApiVersion"), Some("2010-04-01"));
            assert_eq!(got.get("SmsStatus"), got.get("MessageStatus"));
            assert_eq!(got.get("ErrorCode"), None);
            seen.push(got.get("MessageStatus").expect("status").to_owned());
        }
        assert_eq!(seen, ["sent", "delivered"]);

        let records = emu.wait_for_callbacks(2, WAIT).await.expect("recorded");
        let statuses: Vec<_> = records.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(statuses, ["sent", "delivered"]);
        assert!(records
            .iter()
            .all(|r| r.http_status == Some(200) && r.url == callback && r.sid == sid));
        assert_eq!(emu.messages()[0].status, "delivered");
    }

    #[tokio::test]
    async fn undeliverable_and_failed_recipients_call_back_with_error_codes() {
        let emu = emulator().await;
        let (base, mut rx) = receiver(vec![]).await;
        let callback = format!("{base}/status");
        emu.set_recipient(
            ALICE,
            RecipientBehaviour::Undeliverable { error_code: 30003 },
        );
        emu.set_recipient(BOB, RecipientBehaviour::Failed { error_code: 30008 });
        let c = client();
        let form = |to| {
            [
                ("To", to),
                ("From", SENDER),
                ("Body", "x"),
                ("StatusCallback", &callback),
            ]
        };
        let (status, alice) = json_of(create(&emu, &c, &form(ALICE)).await.expect("answer")).await;
        assert_eq!(status, 201);

        let sent = next(&mut rx).await;
        assert_eq!(sent.get("MessageStatus"), Some("sent"));
        let undelivered = next(&mut rx).await;
        assert_eq!(undelivered.get("MessageStatus"), Some("undelivered"));
        assert_eq!(undelivered.get("ErrorCode"), Some("30003"));
        let signature = undelivered.signature.clone().expect("signed");
        assert!(twilio_verify(
            emu.auth_token(),
            &callback,
            &undelivered.params,
            &signature
        ));

        let fetched = c
            .get(format!(
                "{}/2010-04-01/Accounts/{}/Messages/{}.json",
                emu.base_url(),
                emu.account_sid(),
                alice["sid"].as_str().expect("sid")
            ))
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .send()
            .await
            .expect("answer");
        let (_, m) = json_of(fetched).await;
        assert_eq!(m["status"], "undelivered");
        assert_eq!(m["error_code"], 30003);

        json_of(create(&emu, &c, &form(BOB)).await.expect("answer")).await;
        let failed = next(&mut rx).await;
        assert_eq!(failed.get("MessageStatus"), Some("failed"));
        assert_eq!(failed.get("ErrorCode"), Some("30008"));
        assert_eq!(failed.get("To"), Some(BOB));
    }

    #[tokio::test]
    async fn a_failing_receiver_is_retried_once() {
        let emu = emulator().await;
        // First try of "sent" fails, its retry succeeds; both tries of
        // "delivered" fail and there is no third.
        let (base, mut rx) = receiver(vec![500, 200, 503, 502]).await;
        let callback = format!("{base}/status");
        create(
            &emu,
            &client(),
            &[
                ("To", ALICE),
                ("From", SENDER),
                ("Body", "x"),
                ("StatusCallback", &callback),
            ],
        )
        .await
        .expect("answer");
        let records = emu.wait_for_callbacks(4, WAIT).await.expect("recorded");
        let summary: Vec<_> = records
            .iter()
            .map(|r| (r.status.as_str(), r.attempt, r.http_status))
            .collect();
        assert_eq!(
            summary,
            [
                ("sent", 1, Some(500)),
                ("sent", 2, Some(200)),
                ("delivered", 1, Some(503)),
                ("delivered", 2, Some(502)),
            ]
        );
        for _ in 0..4 {
            next(&mut rx).await;
        }
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn status_faults_answer_the_status_and_create_nothing() {
        let emu = emulator().await;
        let c = client();
        emu.queue_create_faults(vec![CreateFault::Status(500), CreateFault::Status(429)]);
        let form = [("To", ALICE), ("From", SENDER), ("Body", "x")];
        let first = create(&emu, &c, &form).await.expect("answer");
        assert_error(first, 500, 20500).await;
        let second = create(&emu, &c, &form).await.expect("answer");
        assert_eq!(
            second
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert_error(second, 429, 20429).await;
        assert!(emu.messages().is_empty());
        let third = create(&emu, &c, &form).await.expect("answer");
        assert_eq!(third.status().as_u16(), 201);
        assert_eq!(emu.messages().len(), 1);
        assert_eq!(emu.create_requests(), 3);
    }

    #[tokio::test]
    async fn a_lost_response_is_a_client_error_yet_the_message_exists() {
        let emu = emulator().await;
        let (base, mut rx) = receiver(vec![]).await;
        let callback = format!("{base}/status");
        emu.queue_create_faults(vec![CreateFault::ResponseLost]);
        let c = client();
        let result = create(
            &emu,
            &c,
            &[
                ("To", ALICE),
                ("From", SENDER),
                ("Body", "x"),
                ("StatusCallback", &callback),
            ],
        )
        .await;
        let err = result.expect_err("no response must reach the client");
        assert!(!err.is_status() && err.status().is_none(), "{err:?}");

        let created = emu
            .wait_for_messages(1, WAIT)
            .await
            .expect("message exists");
        assert_eq!(created.len(), 1);
        let listed = c
            .get(messages_url(&emu))
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .query(&[
                ("To", ALICE),
                ("DateSent>=", &Utc::now().date_naive().to_string()),
            ])
            .send()
            .await
            .expect("answer");
        let (_, page) = json_of(listed).await;
        assert_eq!(page["messages"][0]["sid"], created[0].sid.as_str());
        // It progresses like any other message.
        assert_eq!(next(&mut rx).await.get("MessageStatus"), Some("sent"));
        assert_eq!(next(&mut rx).await.get("MessageStatus"), Some("delivered"));
        // The server itself keeps serving on new connections.
        let again = create(&emu, &c, &[("To", BOB), ("From", SENDER), ("Body", "x")]).await;
        assert_eq!(again.expect("answer").status().as_u16(), 201);
    }

    #[tokio::test]
    async fn a_hang_trips_the_client_timeout_and_creates_nothing() {
        let emu = emulator().await;
        emu.queue_create_faults(vec![CreateFault::Hang(Duration::from_secs(30))]);
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(100))
            .build()
            .expect("client builds");
        let err = create(&emu, &c, &[("To", ALICE), ("From", SENDER), ("Body", "x")])
            .await
            .expect_err("must time out");
        assert!(err.is_timeout(), "{err:?}");
        assert!(emu.messages().is_empty());
        assert_eq!(emu.create_requests(), 1);
    }

    #[tokio::test]
    async fn a_manual_late_callback_is_signed_and_leaves_the_status_alone() {
        let emu = emulator().await;
        let (base, mut rx) = receiver(vec![]).await;
        let callback = format!("{base}/status");
        create(
            &emu,
            &client(),
            &[
                ("To", ALICE),
                ("From", SENDER),
                ("Body", "x"),
                ("StatusCallback", &callback),
            ],
        )
        .await
        .expect("answer");
        emu.wait_for_callbacks(2, WAIT).await.expect("walk done");
        next(&mut rx).await;
        next(&mut rx).await;
        let sid = emu.messages()[0].sid.clone();

        let answered = emu
            .send_status_callback(&sid, "sent", None)
            .await
            .expect("delivered");
        assert_eq!(answered, 200);
        let late = next(&mut rx).await;
        assert_eq!(late.get("MessageStatus"), Some("sent"));
        let signature = late.signature.clone().expect("signed");
        assert!(twilio_verify(
            emu.auth_token(),
            &callback,
            &late.params,
            &signature
        ));
        assert_eq!(emu.messages()[0].status, "delivered");
        assert_eq!(emu.callbacks().len(), 3);

        assert!(emu
            .send_status_callback("SMnope", "sent", None)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn without_a_status_callback_the_status_still_progresses() {
        let emu = emulator().await;
        create(
            &emu,
            &client(),
            &[("To", ALICE), ("From", SENDER), ("Body", "x")],
        )
        .await
        .expect("answer");
        emu.wait_until(WAIT, "delivery", |b| {
            (b.messages.first()?.sms.status == "delivered").then_some(())
        })
        .await
        .expect("delivered");
        assert!(emu.callbacks().is_empty());
    }

    #[tokio::test]
    async fn waiting_for_more_than_exists_times_out() {
        let emu = emulator().await;
        let err = emu
            .wait_for_messages(1, Duration::from_millis(20))
            .await
            .expect_err("nothing was sent");
        assert!(err.to_string().contains("timed out"));
    }

    #[test]
    fn segments_follow_gsm7_and_ucs2_limits() {
        assert_eq!(num_segments(&"a".repeat(160)), 1);
        assert_eq!(num_segments(&"a".repeat(161)), 2);
        assert_eq!(num_segments(&"a".repeat(306)), 2);
        assert_eq!(num_segments(&"a".repeat(307)), 3);
        assert_eq!(num_segments(&"€".repeat(80)), 1);
        assert_eq!(num_segments(&"€".repeat(81)), 2);
        assert_eq!(num_segments(&"é".repeat(160)), 1);
        assert_eq!(num_segments(&"ł".repeat(70)), 1);
        assert_eq!(num_segments(&"ł".repeat(71)), 2);
    }

    #[test]
    fn e164_and_loopback_checks() {
        assert!(is_e164("+15551230001"));
        assert!(is_e164("+4915112345678"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1 5551230001"));
        let url = |s: &str| reqwest::Url::parse(s).expect("url");
        assert!(is_loopback(&url("http://127.0.0.1:9/x")));
        assert!(is_loopback(&url("http://localhost/x")));
        assert!(is_loopback(&url("http://[::1]:8080/x")));
        assert!(!is_loopback(&url("https://example.com/x")));
        assert!(!is_loopback(&url("http://10.0.0.1/x")));
    }

    // ---- switchable random faults ----

    /// A phone per index, so the seeded draws (keyed by `To`) are fixed.
    fn phone(i: usize) -> String {
        format!("+1555900{i:04}")
    }

    #[tokio::test]
    async fn error_faults_answer_500_503_or_429_and_create_nothing() {
        let emu = emulator().await;
        emu.set_faults(TwilioFaults {
            seed: 4,
            error_rate: 1.0,
            ..TwilioFaults::default()
        });
        let c = client();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..30 {
            let to = phone(i);
            let resp = create(&emu, &c, &[("To", &to), ("From", SENDER), ("Body", "x")])
                .await
                .expect("answer");
            let status = resp.status().as_u16();
            if status == 429 {
                assert!(resp.headers().contains_key("retry-after"));
            }
            let (_, body) = json_of(resp).await;
            assert_eq!(body["status"], status, "{body}");
            seen.insert(status);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [429, 500, 503]);
        assert!(emu.messages().is_empty());
        assert_eq!((emu.create_requests(), emu.requests()), (30, 30));
        emu.set_faults(TwilioFaults::default());
        let ok = create(&emu, &c, &[("To", ALICE), ("From", SENDER), ("Body", "x")]).await;
        assert_eq!(ok.expect("answer").status().as_u16(), 201);
    }

    #[tokio::test]
    async fn lost_responses_create_the_message_and_drop_the_answer() {
        let emu = emulator().await;
        emu.set_faults(TwilioFaults {
            response_lost_rate: 1.0,
            ..TwilioFaults::default()
        });
        let c = client();
        for i in 0..3 {
            let to = phone(i);
            let err = create(&emu, &c, &[("To", &to), ("From", SENDER), ("Body", "x")])
                .await
                .expect_err("no answer");
            assert!(!err.is_timeout() && err.status().is_none(), "{err}");
        }
        assert_eq!(emu.messages().len(), 3);
    }

    #[tokio::test]
    async fn hangs_and_resets_create_the_message_as_the_seed_decided() {
        let emu = emulator().await;
        let faults = TwilioFaults {
            seed: 17,
            hang_rate: 0.5,
            reset_rate: 0.5,
            hang_for: Duration::from_millis(300),
            ..TwilioFaults::default()
        };
        emu.set_faults(faults.clone());
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(100))
            .build()
            .expect("client");
        let n = 16;
        let mut expected = Vec::new();
        let (mut hangs, mut resets) = (0, 0);
        for i in 0..n {
            let to = phone(i);
            let planned = faults.plan(&["create", &to, "1"]).fault;
            let err = create(&emu, &c, &[("To", &to), ("From", SENDER), ("Body", "x")])
                .await
                .expect_err("no answer");
            match planned {
                Fault::Hang { applied } => {
                    hangs += 1;
                    assert!(err.is_timeout(), "{err}");
                    if applied {
                        expected.push(to);
                    }
                }
                Fault::Reset { applied } => {
                    resets += 1;
                    assert!(!err.is_timeout(), "{err}");
                    if applied {
                        expected.push(to);
                    }
                }
                other => panic!("unexpected plan {other:?}"),
            }
        }
        assert!(hangs > 0 && resets > 0);
        let created: Vec<String> = emu.messages().into_iter().map(|m| m.to).collect();
        assert_eq!(created, expected);
        assert!(!created.is_empty() && created.len() < n);
    }

    #[tokio::test]
    async fn an_outage_answers_503_to_every_api_request() {
        let emu = emulator().await;
        emu.set_faults(TwilioFaults {
            unavailable: true,
            ..TwilioFaults::default()
        });
        let c = client();
        let resp = create(&emu, &c, &[("To", ALICE), ("From", SENDER), ("Body", "x")]).await;
        assert_error(resp.expect("answer"), 503, 20503).await;
        let listed = c
            .get(messages_url(&emu))
            .basic_auth(emu.account_sid(), Some(emu.auth_token()))
            .send()
            .await
            .expect("answer");
        assert_eq!(listed.status().as_u16(), 503);
        assert_eq!(emu.requests(), 2);
        assert!(emu.messages().is_empty());
    }

    #[tokio::test]
    async fn callbacks_are_duplicated_reordered_or_dropped_as_drawn() {
        let emu = emulator().await;
        let (base, mut rx) = receiver(vec![]).await;
        let callback = format!("{base}/status");
        let faults = TwilioFaults {
            seed: 9,
            callback_duplicates: 3,
            callback_delay: Duration::from_millis(100),
            callback_drop_rate: 0.2,
            ..TwilioFaults::default()
        };
        emu.set_faults(faults.clone());
        let c = client();
        let n = 12;
        let mut wanted = 0;
        let mut dropped = 0;
        for i in 0..n {
            let to = phone(i);
            for status in ["sent", "delivered"] {
                match faults.fanout(&["callback", &to, status, "1"]).len() {
                    0 => dropped += 1,
                    k => wanted += k,
                }
            }
            let resp = create(
                &emu,
                &c,
                &[
                    ("To", &to),
                    ("From", SENDER),
                    ("Body", "x"),
                    ("StatusCallback", &callback),
                ],
            )
            .await
            .expect("answer");
            assert_eq!(resp.status().as_u16(), 201);
        }
        let mut got: HashMap<(String, String), usize> = HashMap::new();
        let mut out_of_order = false;
        let mut last_status: HashMap<String, String> = HashMap::new();
        for _ in 0..wanted {
            let r = next(&mut rx).await;
            let to = r.get("To").unwrap_or_default().to_owned();
            let status = r.get("MessageStatus").unwrap_or_default().to_owned();
            if status == "sent" && last_status.get(&to).is_some_and(|s| s == "delivered") {
                out_of_order = true;
            }
            last_status.insert(to.clone(), status.clone());
            *got.entry((to, status)).or_insert(0) += 1;
        }
        for i in 0..n {
            let to = phone(i);
            for status in ["sent", "delivered"] {
                let want = faults.fanout(&["callback", &to, status, "1"]).len();
                let have = got
                    .get(&(to.clone(), status.to_owned()))
                    .copied()
                    .unwrap_or(0);
                assert_eq!(have, want, "{to} {status}");
            }
        }
        assert!(got.values().any(|k| *k > 1), "some callback came twice");
        assert!(out_of_order, "some delivered overtook its sent");
        assert!(dropped > 0);
        assert_eq!(emu.callbacks_dropped().len(), dropped);
        assert!(emu
            .callbacks_dropped()
            .iter()
            .all(|r| r.attempt == 0 && r.http_status.is_none()));
    }

    #[tokio::test]
    async fn faults_can_be_switched_over_http() {
        let emu = emulator().await;
        let c = client();
        let url = format!("{}/emulator/faults", emu.base_url());
        let resp = c
            .post(&url)
            .body("twilio.response_lost_rate=0.5,callback_drop_rate=0.1")
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.text().await.expect("text"),
            "seed=0,response_lost_rate=0.5,callback_drop_rate=0.1"
        );
        assert_eq!(emu.faults().response_lost_rate, 0.5);
        let bad = c
            .post(&url)
            .body("twilio.error_rate=7")
            .send()
            .await
            .expect("answer");
        assert_eq!(bad.status().as_u16(), 400);
        let off = c.post(&url).body("").send().await.expect("answer");
        assert_eq!(off.status().as_u16(), 200);
        assert!(emu.faults().is_none());
    }
}
