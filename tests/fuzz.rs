//! Property-based fuzzing of the service's input parsing, through its real
//! HTTP surface: REST registrations (valid requests with one field removed,
//! retyped or garbled, random JSON, random bytes), reads and list queries
//! with random ids and parameters, Google webhooks (random bodies, random
//! envelopes around random base64, signed random events, signed events
//! tampered with) and Twilio callbacks (random forms, random and replayed
//! signatures).
//!
//! For every case: never a 5xx (a panic would be a 500), every 4xx in the
//! JSON error shape, and the database (read directly) holds nothing new
//! unless the request was accepted. One service per property, started once;
//! the cases run against it one after the other.

mod common;

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rbm_fallback::signature::{google_sign, twilio_sign};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const CASES: u32 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rows {
    messages: i64,
    events: i64,
    rbm_events: i64,
}

/// The service, a client, a connection to its database, and the runtime
/// that drives them, shared by all cases of one property.
struct Fuzz {
    db: Option<PgPool>,
    h: Harness,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Fuzz {
    fn start() -> Fuzz {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let h = rt.block_on(start());
        let db = rt
            .block_on(PgPoolOptions::new().max_connections(1).connect(&h.db.url))
            .unwrap();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Fuzz {
            db: Some(db),
            h,
            http,
            rt,
        }
    }

    async fn rows(&self) -> Rows {
        let (messages, events, rbm_events): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_events),
                    (SELECT count(*) FROM rbm_events)",
        )
        .fetch_one(self.db.as_ref().unwrap())
        .await
        .unwrap();
        Rows {
            messages,
            events,
            rbm_events,
        }
    }

    /// Sends one request and checks what holds for every answer: no 5xx,
    /// and a 4xx in the JSON error shape with nothing stored. Returns the
    /// status and the rows before and after.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, Value, Rows, Rows), TestCaseError> {
        let before = self.rows().await;
        let r = req
            .send()
            .await
            .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = r.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(status < 500, "a 5xx: {status} {text}");
        let body: Value = if ct.starts_with("application/json") {
            serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("{status}: not JSON ({e}): {text}")))?
        } else {
            Value::Null
        };
        let after = self.rows().await;
        if (400..500).contains(&status) {
            prop_assert!(
                ct.starts_with("application/json"),
                "{status} as {ct:?}: {text}"
            );
            prop_assert!(body["error"]["code"].is_string(), "{status}: {text}");
            prop_assert!(body["error"]["message"].is_string(), "{status}: {text}");
            prop_assert_eq!(
                before,
                after,
                "a refused request stored something: {}",
                text
            );
        }
        Ok((status, body, before, after))
    }

    /// Runs `cases` cases of `strategy` through `test`.
    fn check<S>(
        &self,
        cases: u32,
        strategy: S,
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S: Strategy,
        S::Value: Debug,
    {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, test) {
            panic!("{e}");
        }
    }
}

impl Drop for Fuzz {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            self.rt.block_on(db.close());
        }
    }
}

// ---------------------------------------------------------------------------
// Generators

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => ".{0,16}",
        1 => Just(String::new()),
        1 => Just("\u{0}".to_owned()),
        1 => "[ -~]{0,40}",
        1 => "[0-9+]{0,20}",
        1 => (1usize..3000).prop_map(|n| "x".repeat(n)),
        2 => prop::sample::select(vec![
            "+14155550123",
            "+0",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "2030-02-30T10:00:00Z",
            "'; DROP TABLE messages; --",
            "\" OR \"1\"=\"1",
            "../../etc/passwd",
            "%00",
            "\u{202e}",
            "DELIVERED",
            "READ",
            "TTL_EXPIRATION_REVOKED",
            "delivered",
            "sent",
        ])
        .prop_map(str::to_owned),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, i64::MAX, i64::MIN, 2_592_000, 2_592_001])
            .prop_map(Value::from),
        nasty_string().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(nasty_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The fields of a registration, by their path.
const FIELDS: &[&str] = &[
    "agent_id",
    "phone",
    "message_id",
    "deadline",
    "revoke_after_secs",
    "sms",
    "sms.body",
    "sms.from",
    "metadata",
];

/// How a valid request is spoilt (or not).
#[derive(Clone, Debug)]
enum Mutation {
    Keep,
    Remove(&'static str),
    Set(&'static str, Value),
    AddUnknown(bool, String, Value),
    DuplicateKey(&'static str, Value),
    Truncate(prop::sample::Index),
    SetByte(prop::sample::Index, u8),
    InsertByte(prop::sample::Index, u8),
    Nest(usize),
    Json(Value),
    Bytes(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = prop::sample::select(FIELDS);
    prop_oneof![
        1 => Just(Mutation::Keep),
        2 => field.clone().prop_map(Mutation::Remove),
        6 => (field.clone(), json_value()).prop_map(|(f, v)| Mutation::Set(f, v)),
        1 => (any::<bool>(), nasty_string(), json_value())
            .prop_map(|(nested, k, v)| Mutation::AddUnknown(nested, k, v)),
        1 => (field, json_value()).prop_map(|(f, v)| Mutation::DuplicateKey(f, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(i, b)| Mutation::InsertByte(i, b)),
        1 => (1usize..300).prop_map(Mutation::Nest),
        1 => json_value().prop_map(Mutation::Json),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Mutation::Bytes),
    ]
}

fn set_path(v: &mut Value, path: &str, value: Option<Value>) {
    let (parent, key) = match path.split_once('.') {
        Some((p, k)) => (&mut v[p], k),
        None => (v, path),
    };
    if let Some(obj) = parent.as_object_mut() {
        match value {
            Some(x) => {
                obj.insert(key.to_owned(), x);
            }
            None => {
                obj.remove(key);
            }
        }
    }
}

/// A valid registration, then the mutation: the body to send.
fn spoil(id: &str, m: &Mutation) -> Vec<u8> {
    let deadline = chrono::Utc::now() + chrono::TimeDelta::minutes(10);
    let mut v = json!({
        "phone": "+14155550400",
        "message_id": id,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "sms": { "body": "Your code is 123456", "from": "Shop" },
        "metadata": { "order": "A-1" },
    });
    let text = |v: &Value| v.to_string().into_bytes();
    match m {
        Mutation::Keep => text(&v),
        Mutation::Remove(f) => {
            set_path(&mut v, f, None);
            text(&v)
        }
        Mutation::Set(f, x) => {
            set_path(&mut v, f, Some(x.clone()));
            text(&v)
        }
        Mutation::AddUnknown(nested, k, x) => {
            let target = if *nested { &mut v["sms"] } else { &mut v };
            if let Some(o) = target.as_object_mut() {
                if !o.contains_key(k) {
                    o.insert(k.clone(), x.clone());
                }
            }
            text(&v)
        }
        Mutation::DuplicateKey(f, x) => {
            let key = f.rsplit('.').next().unwrap();
            let mut s = v.to_string();
            s.pop();
            s.push_str(&format!(",{}:{}}}", json!(key), x));
            s.into_bytes()
        }
        Mutation::Truncate(i) => {
            let mut b = text(&v);
            b.truncate(i.index(b.len()));
            b
        }
        Mutation::SetByte(i, byte) => {
            let mut b = text(&v);
            let i = i.index(b.len());
            b[i] = *byte;
            b
        }
        Mutation::InsertByte(i, byte) => {
            let mut b = text(&v);
            let i = i.index(b.len());
            b.insert(i, *byte);
            b
        }
        Mutation::Nest(depth) => {
            format!("{}{}{}", "[".repeat(*depth), v, "]".repeat(*depth)).into_bytes()
        }
        Mutation::Json(x) => text(x),
        Mutation::Bytes(b) => b.clone(),
    }
}

// ---------------------------------------------------------------------------
// The internal API

#[test]
fn registrations_never_5xx_and_store_only_what_is_accepted() {
    let fz = Fuzz::start();
    let n = AtomicU64::new(0);
    let content_type = prop_oneof![
        8 => Just("application/json"),
        1 => Just("application/json; charset=utf-8"),
        1 => Just("text/plain"),
    ];
    fz.check(CASES, (mutation(), content_type), |(m, ct)| {
        let id = format!("fz-{}", n.fetch_add(1, Ordering::Relaxed));
        let body = spoil(&id, &m);
        fz.rt.block_on(async {
            let req = fz
                .http
                .post(fz.h.url("/v1/messages"))
                .bearer_auth(&fz.h.s.api_token)
                .header(CONTENT_TYPE, ct)
                .body(body.clone());
            let (status, answer, before, after) = fz.send(req).await?;
            match status {
                201 => {
                    prop_assert_eq!(after.messages, before.messages + 1);
                    prop_assert_eq!(after.events, before.events + 1);
                    prop_assert!(answer["message_id"].is_string(), "{answer}");
                }
                // An identical repeat of an earlier registration.
                200 => prop_assert_eq!(before, after),
                s => prop_assert!((400..500).contains(&s), "{s}"),
            }
            if matches!(m, Mutation::Keep) && ct.starts_with("application/json") {
                prop_assert_eq!(status, 201, "the valid request: {}", answer);
            }
            Ok(())
        })
    });
}

#[test]
fn reads_cancels_and_lists_with_random_ids_and_queries_never_5xx() {
    let fz = Fuzz::start();
    let pending = fz.rt.block_on(async {
        let r =
            fz.h.post(&message("+14155550401", "fuzz-kept-pending", 600_000))
                .await;
        assert_eq!(r.status(), 201);
        fz.rows().await
    });
    let segment = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        nasty_string().prop_map(String::into_bytes),
    ];
    let query = prop::collection::vec(
        (
            prop_oneof![
                Just("state".to_owned()),
                Just("limit".to_owned()),
                Just("cursor".to_owned()),
                nasty_string()
            ],
            prop_oneof![nasty_string(), any::<i64>().prop_map(|i| i.to_string())],
        ),
        0..4,
    );
    fz.check(CASES, (0..3u8, segment, query), |(what, segment, query)| {
        fz.rt.block_on(async {
            // Every byte percent-encoded: the server sees exactly these bytes.
            let encoded: String = segment.iter().map(|b| format!("%{b:02X}")).collect();
            let req = match what {
                0 => fz.http.get(fz.h.url(&format!("/v1/messages/{encoded}"))),
                1 => fz.http.delete(fz.h.url(&format!("/v1/messages/{encoded}"))),
                _ => {
                    let q = serde_urlencoded::to_string(&query).unwrap();
                    fz.http.get(fz.h.url(&format!("/v1/messages?{q}")))
                }
            };
            let req = req.header(AUTHORIZATION, format!("Bearer {}", fz.h.s.api_token));
            let (status, answer, _, after) = fz.send(req).await?;
            match what {
                0 | 1 => prop_assert_eq!(status, 404, "{}", answer),
                _ => prop_assert!(status == 200 || status == 400, "{status}: {answer}"),
            }
            prop_assert_eq!(after, pending, "nothing may change");
            Ok(())
        })
    });
    let m = fz.rt.block_on(fz.h.get("fuzz-kept-pending"));
    assert_eq!(m["state"], "pending");
}

// ---------------------------------------------------------------------------
// Google's webhook

#[derive(Clone, Debug)]
enum GoogleInput {
    Bytes(Vec<u8>),
    Json(Value),
    /// An envelope around random data, base64-encoded (then perhaps garbled),
    /// with a random signature header or none.
    Envelope {
        data: Vec<u8>,
        garble: Option<String>,
        attributes: Value,
        signature: Option<Vec<u8>>,
    },
    /// A random event, correctly signed.
    Signed(Value),
    /// The genuine DELIVERED for our pending message, its data changed,
    /// under the genuine signature.
    Tampered {
        at: prop::sample::Index,
        how: u8,
        byte: u8,
    },
    Handshake(Value, Value),
}

fn google_input() -> impl Strategy<Value = GoogleInput> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(GoogleInput::Bytes),
        1 => json_value().prop_map(GoogleInput::Json),
        3 => (
            prop::collection::vec(any::<u8>(), 0..200),
            prop::option::of(".{1,4}"),
            json_value(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..100)),
        )
            .prop_map(|(data, garble, attributes, signature)| GoogleInput::Envelope {
                data,
                garble,
                attributes,
                signature,
            }),
        3 => json_value().prop_map(GoogleInput::Signed),
        3 => (any::<prop::sample::Index>(), 0..4u8, any::<u8>())
            .prop_map(|(at, how, byte)| GoogleInput::Tampered { at, how, byte }),
        1 => (json_value(), json_value()).prop_map(|(t, s)| GoogleInput::Handshake(t, s)),
    ]
}

#[test]
fn google_webhooks_never_5xx_and_record_only_signed_events() {
    let fz = Fuzz::start();
    let token = fz.h.s.google.client_token().to_owned();
    let phone = "+14155550410";
    let (id, genuine) = fz.rt.block_on(async {
        let id = fz.h.send_and_register(phone, 600_000).await;
        let event = google_event(&fz.h, "DELIVERED", phone, &id);
        (id, event.to_string())
    });
    fz.check(CASES, google_input(), |input| {
        fz.rt.block_on(async {
            let mut signed = false;
            let (body, signature): (Vec<u8>, Option<Vec<u8>>) = match &input {
                GoogleInput::Bytes(b) => (b.clone(), None),
                GoogleInput::Json(v) => (v.to_string().into_bytes(), None),
                GoogleInput::Envelope {
                    data,
                    garble,
                    attributes,
                    signature,
                } => {
                    let mut encoded = B64.encode(data);
                    if let Some(g) = garble {
                        encoded.push_str(g);
                    }
                    let envelope =
                        json!({ "message": { "data": encoded, "attributes": attributes } });
                    (envelope.to_string().into_bytes(), signature.clone())
                }
                GoogleInput::Signed(event) => {
                    signed = true;
                    let data = event.to_string();
                    let envelope = json!({ "message": { "data": B64.encode(&data) } });
                    (
                        envelope.to_string().into_bytes(),
                        Some(google_sign(&token, data.as_bytes()).into_bytes()),
                    )
                }
                GoogleInput::Tampered { at, how, byte } => {
                    let mut data = genuine.clone().into_bytes();
                    let i = at.index(data.len());
                    match how {
                        0 => data[i] ^= (*byte).max(1),
                        1 => data.truncate(i),
                        2 => data.insert(i, *byte),
                        _ => {
                            data.remove(i);
                        }
                    }
                    let envelope = json!({ "message": { "data": B64.encode(&data) } });
                    (
                        envelope.to_string().into_bytes(),
                        Some(google_sign(&token, genuine.as_bytes()).into_bytes()),
                    )
                }
                GoogleInput::Handshake(t, s) => (
                    json!({ "clientToken": t, "secret": s })
                        .to_string()
                        .into_bytes(),
                    None,
                ),
            };
            let mut req = fz
                .http
                .post(fz.h.url("/webhooks/rbm"))
                .header(CONTENT_TYPE, "application/json")
                .body(body);
            if let Some(v) = signature
                .as_deref()
                .and_then(|s| HeaderValue::from_bytes(s).ok())
            {
                req = req.header("X-Goog-Signature", v);
            }
            let (status, answer, before, after) = fz.send(req).await?;
            if status == 200 {
                prop_assert!(signed, "accepted without a valid signature: {input:?}");
                prop_assert!(after.rbm_events - before.rbm_events <= 1);
                prop_assert_eq!(after.messages, before.messages);
            } else {
                prop_assert!((400..500).contains(&status), "{status}: {answer}");
            }
            if matches!(input, GoogleInput::Tampered { .. }) {
                prop_assert_eq!(status, 401, "{}", answer);
            }
            Ok(())
        })
    });
    // No case could deliver our message: random events name random ids, and
    // the genuine one was only ever sent tampered with.
    let m = fz.rt.block_on(fz.h.get(&id));
    assert_eq!(m["state"], "pending", "{m:#}");
    assert_eq!(kinds(&m), ["registered"]);
}

// ---------------------------------------------------------------------------
// Twilio's status callbacks

#[derive(Clone, Debug)]
enum TwilioInput {
    Bytes(Vec<u8>),
    /// A random form, to a random message id, signed correctly or not.
    Form {
        message_id: String,
        params: Vec<(String, String)>,
        signature: Option<Vec<u8>>,
        sign: bool,
    },
    /// The genuine callback of our SMS, its parameters changed, under the
    /// genuine signature.
    Replayed {
        edit: u8,
        name: String,
        value: String,
        at: prop::sample::Index,
    },
}

fn twilio_input() -> impl Strategy<Value = TwilioInput> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "MessageSid",
            "MessageStatus",
            "SmsStatus",
            "ErrorCode",
            "To",
            "From",
            "AccountSid"
        ])
        .prop_map(str::to_owned),
        nasty_string(),
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(TwilioInput::Bytes),
        4 => (
            nasty_string(),
            prop::option::of(prop_oneof!["SM[0-9a-f]{32}", nasty_string()]),
            prop::option::of(prop_oneof![
                prop::sample::select(vec!["queued", "sent", "delivered", "undelivered", "failed"])
                    .prop_map(str::to_owned),
                nasty_string()
            ]),
            prop::collection::vec((name.clone(), nasty_string()), 0..4),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            prop::bool::weighted(0.7),
        )
            .prop_map(|(message_id, sid, status, extra, signature, sign)| {
                let mut params = Vec::new();
                if let Some(sid) = sid {
                    params.push(("MessageSid".to_owned(), sid));
                }
                if let Some(status) = status {
                    params.push(("MessageStatus".to_owned(), status));
                }
                params.extend(extra);
                TwilioInput::Form {
                    message_id,
                    params,
                    signature,
                    sign,
                }
            }),
        4 => (0..4u8, name, nasty_string(), any::<prop::sample::Index>())
            .prop_map(|(edit, name, value, at)| TwilioInput::Replayed { edit, name, value, at }),
    ]
}

#[test]
fn twilio_callbacks_never_5xx_and_change_nothing_unless_signed() {
    let fz = Fuzz::start();
    let token = fz.h.s.twilio.auth_token().to_owned();
    let (id, genuine) = fz.rt.block_on(async {
        let id = fz.h.send_and_register("+14155550420", 100).await;
        fz.h.wait_state(&id, "sms_delivered").await;
        let cbs =
            fz.h.s
                .twilio
                .wait_for_callbacks(2, Duration::from_secs(20))
                .await
                .unwrap();
        (id, cbs[0].clone())
    });
    let resource = fz.rt.block_on(fz.h.get(&id));
    fz.check(CASES, twilio_input(), |input| {
        fz.rt.block_on(async {
            let base = fz.h.url("/webhooks/twilio/status");
            let (url, body, signature, signed) = match &input {
                TwilioInput::Bytes(b) => {
                    (format!("{base}?message_id={id}"), b.clone(), None, false)
                }
                TwilioInput::Form {
                    message_id,
                    params,
                    signature,
                    sign,
                } => {
                    let q = serde_urlencoded::to_string([("message_id", message_id)]).unwrap();
                    let url = format!("{base}?{q}");
                    let signature = if *sign {
                        Some(twilio_sign(&token, &url, params).into_bytes())
                    } else {
                        signature.clone()
                    };
                    let body = serde_urlencoded::to_string(params).unwrap().into_bytes();
                    (url, body, signature, *sign)
                }
                TwilioInput::Replayed {
                    edit,
                    name,
                    value,
                    at,
                } => {
                    let mut params = genuine.params.clone();
                    let i = at.index(params.len());
                    match edit {
                        0 => params[i].1 = value.clone(),
                        1 => params.push((name.clone(), value.clone())),
                        2 => {
                            params.remove(i);
                        }
                        _ => params[i].0 = name.clone(),
                    }
                    let body = serde_urlencoded::to_string(&params).unwrap().into_bytes();
                    // Some edits leave the signed text as it was: the same
                    // value again, a name swapped for itself, an empty pair
                    // (which adds nothing to the names and values Twilio
                    // concatenates), or a value and the next name re-split.
                    // Those are genuine replays.
                    let same = twilio_sign(&token, &genuine.url, &params) == genuine.signature;
                    (
                        genuine.url.clone(),
                        body,
                        Some(genuine.signature.clone().into_bytes()),
                        same,
                    )
                }
            };
            let mut req = fz
                .http
                .post(&url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body);
            if let Some(v) = signature
                .as_deref()
                .and_then(|s| HeaderValue::from_bytes(s).ok())
            {
                req = req.header("X-Twilio-Signature", v);
            }
            let (status, answer, before, after) = fz.send(req).await?;
            if signed {
                prop_assert_eq!(status, 200, "{}", answer);
            } else {
                prop_assert!(status == 403 || status == 400, "{status}: {answer}");
            }
            prop_assert_eq!(after.messages, before.messages);
            if !signed || !matches!(input, TwilioInput::Replayed { .. }) {
                // Random message ids name no message of ours.
                prop_assert_eq!(after, before);
            }
            Ok(())
        })
    });
    // Whatever was replayed genuinely only added history; the SMS's status
    // and the message's state are as Twilio reported them.
    let now = fz.rt.block_on(fz.h.get(&id));
    assert_eq!(now["state"], resource["state"]);
    assert_eq!(now["sms"], resource["sms"]);
}
