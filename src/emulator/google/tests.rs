use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::*;
use crate::emulator::faults::Fault;
use crate::signature::google_verify;

const PHONE: &str = "+15550001111";
/// Upper bound for an awaited event; only reached when something is broken.
const WAIT: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

fn cfg() -> GoogleEmulatorConfig {
    GoogleEmulatorConfig {
        default_phone: PhoneBehaviour::Offline,
        webhook_retry_base: Duration::from_millis(10),
        webhook_max_attempts: 4,
        ..Default::default()
    }
}

async fn emulator() -> GoogleEmulator {
    GoogleEmulator::start(cfg()).await.expect("emulator starts")
}

fn msg_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn now() -> i64 {
    Utc::now().timestamp()
}

// ---- OAuth helpers ----

fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign_jwt(header: &Value, claims: &Value) -> String {
    let key = oauth::service_key().expect("key");
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.private.clone());
    let signed = format!(
        "{}.{}",
        b64url(header.to_string()),
        b64url(claims.to_string())
    );
    let sig = signer.sign(signed.as_bytes());
    format!("{signed}.{}", b64url(sig.to_bytes()))
}

fn rs256() -> Value {
    json!({"alg": "RS256", "typ": "JWT"})
}

fn claims(emu: &GoogleEmulator) -> Value {
    let t = now();
    json!({"iss": CLIENT_EMAIL, "aud": emu.token_uri(), "scope": RBM_SCOPE, "iat": t, "exp": t + 3600})
}

async fn grant(emu: &GoogleEmulator, assertion: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(emu.token_uri())
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .send()
        .await
        .expect("token endpoint answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

async fn access_token(emu: &GoogleEmulator) -> String {
    let (status, body) = grant(emu, &sign_jwt(&rs256(), &claims(emu))).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// An RBM API client as the service would be, with a valid token.
struct Api {
    http: reqwest::Client,
    base: String,
    agent: String,
    token: String,
}

impl Api {
    async fn new(emu: &GoogleEmulator) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: emu.base_url(),
            agent: emu.agent_id().to_owned(),
            token: access_token(emu).await,
        }
    }

    async fn delete(&self, phone: &str, id: &str) -> reqwest::Response {
        self.http
            .delete(format!(
                "{}/v1/phones/{phone}/agentMessages/{id}?agentId={}",
                self.base, self.agent
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("DELETE answered")
    }

    async fn send(&self, phone: &str, query: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!(
                "{}/v1/phones/{phone}/agentMessages?{query}&agentId={}",
                self.base, self.agent
            ))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("send answered");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    async fn capabilities(&self, phone: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!(
                "{}/v1/phones/{phone}/capabilities?requestId={}&agentId={}",
                self.base,
                msg_id(),
                self.agent
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("capabilities answered");
        status_and_json(resp).await
    }
}

async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

// ---- webhook receiver ----

#[derive(Debug)]
struct Captured {
    event: Value,
    envelope: Value,
    signature_ok: bool,
}

#[derive(Clone)]
struct ReceiverState {
    client_token: String,
    tx: mpsc::UnboundedSender<Captured>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<Captured>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

async fn receive(State(rs): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if let Some(token) = envelope.get("clientToken").and_then(Value::as_str) {
        return if token == rs.client_token {
            envelope["secret"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
                .into_response()
        } else {
            StatusCode::FORBIDDEN.into_response()
        };
    }
    let data = envelope["message"]["data"]
        .as_str()
        .and_then(|d| B64.decode(d).ok())
        .unwrap_or_default();
    let signature = headers
        .get("x-goog-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let captured = Captured {
        signature_ok: google_verify(&rs.client_token, &data, signature),
        event: serde_json::from_slice(&data).unwrap_or(Value::Null),
        envelope,
    };
    let _ = rs.tx.send(captured);
    let answer = rs
        .answers
        .lock()
        .expect("answers")
        .pop_front()
        .unwrap_or(200);
    StatusCode::from_u16(answer)
        .unwrap_or(StatusCode::OK)
        .into_response()
}

impl Receiver {
    async fn start(client_token: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let state = ReceiverState {
            client_token: client_token.to_owned(),
            tx,
            answers: answers.clone(),
        };
        let app = Router::new()
            .route("/webhook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/webhook"),
            rx,
            answers,
        }
    }

    /// Starts a receiver and points the emulator's webhook at it.
    async fn for_emulator(emu: &GoogleEmulator) -> Self {
        let r = Self::start(emu.client_token()).await;
        emu.set_webhook_url(&r.url);
        r
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.answers
            .lock()
            .expect("answers")
            .extend(statuses.iter().copied());
    }

    async fn next(&mut self) -> Captured {
        let c = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a webhook within the wait bound")
            .expect("receiver alive");
        assert!(c.signature_ok, "bad signature on {c:?}");
        c
    }

    /// The next `n` events, keyed by eventType (their order is not promised).
    async fn next_by_type(&mut self, n: usize) -> HashMap<String, Captured> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let c = self.next().await;
            let t = c.event["eventType"].as_str().unwrap_or_default().to_owned();
            assert!(out.insert(t, c).is_none(), "duplicate event type");
        }
        out
    }
}

// ---- OAuth ----

#[tokio::test]
async fn yup_oauth2_service_account_gets_a_token_that_revokes() {
    let emu = emulator().await;
    let key = yup_oauth2::parse_service_account_key(emu.service_account_key_json())
        .expect("key file parses");
    let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
        .build()
        .await
        .expect("authenticator");
    let token = auth.token(&[RBM_SCOPE]).await.expect("token granted");
    let token = token.token().expect("access token").to_owned();
    assert_eq!(emu.token_requests(), 1);

    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/v1/phones/{PHONE}/agentMessages/{id}?agentId={}",
            emu.base_url(),
            emu.agent_id()
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("DELETE answered");
    assert_eq!(status_and_json(resp).await, (200, json!({})));
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Revoked));
}

#[tokio::test]
async fn token_grant_refuses_bad_assertions() {
    let emu = emulator().await;
    let good = claims(&emu);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };

    // Signed over different claims than those presented.
    let jwt = sign_jwt(&rs256(), &good);
    let mut parts: Vec<&str> = jwt.split('.').collect();
    let forged_claims = b64url(with("scope", json!("https://example.com/other")).to_string());
    parts[1] = &forged_claims;
    let forged = parts.join(".");

    let unsigned = format!(
        "{}.{}.",
        b64url(json!({"alg": "none"}).to_string()),
        b64url(good.to_string())
    );
    let hs256 = format!(
        "{}.{}.{}",
        b64url(json!({"alg": "HS256"}).to_string()),
        b64url(good.to_string()),
        b64url("mac")
    );
    let t = now();
    let cases = [
        ("forged", forged, "invalid_grant"),
        ("alg none", unsigned, "invalid_grant"),
        ("alg HS256", hs256, "invalid_grant"),
        (
            "expired",
            sign_jwt(
                &rs256(),
                &with("iat", json!(t - 7200)).tap(|c| c["exp"] = json!(t - 3600)),
            ),
            "invalid_grant",
        ),
        (
            "too long-lived",
            sign_jwt(&rs256(), &with("exp", json!(t + 7200))),
            "invalid_grant",
        ),
        (
            "from the future",
            sign_jwt(
                &rs256(),
                &with("iat", json!(t + 900)).tap(|c| c["exp"] = json!(t + 1800)),
            ),
            "invalid_grant",
        ),
        (
            "wrong aud",
            sign_jwt(
                &rs256(),
                &with("aud", json!("https://oauth2.googleapis.com/token")),
            ),
            "invalid_grant",
        ),
        (
            "wrong iss",
            sign_jwt(
                &rs256(),
                &with("iss", json!("someone@else.iam.gserviceaccount.com")),
            ),
            "invalid_grant",
        ),
        (
            "no RBM scope",
            sign_jwt(
                &rs256(),
                &with("scope", json!("https://www.googleapis.com/auth/pubsub")),
            ),
            "invalid_scope",
        ),
        (
            "wrong kid",
            sign_jwt(&json!({"alg": "RS256", "kid": "0000"}), &good),
            "invalid_grant",
        ),
        ("garbage", "not-a-jwt".to_owned(), "invalid_grant"),
        (
            "short signature",
            format!(
                "{}.{}.{}",
                b64url(rs256().to_string()),
                b64url(good.to_string()),
                b64url("sig")
            ),
            "invalid_grant",
        ),
        (
            "no iat",
            sign_jwt(
                &rs256(),
                &good.clone().tap(|c| {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("iat");
                    }
                }),
            ),
            "invalid_grant",
        ),
    ];
    for (name, assertion, error) in cases {
        let (status, body) = grant(&emu, &assertion).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"], error, "{name}: {body}");
        assert!(body["error_description"].is_string(), "{name}");
    }
    assert_eq!(emu.token_requests(), 0);

    let resp = reqwest::Client::new()
        .post(emu.token_uri())
        .form(&[("grant_type", "client_credentials"), ("assertion", "x")])
        .send()
        .await
        .expect("answered");
    assert_eq!(
        status_and_json(resp).await.1["error"],
        "unsupported_grant_type"
    );

    // The same claims, honestly signed, with the key's own kid, pass.
    let kid =
        json!({"alg": "RS256", "typ": "JWT", "kid": oauth::service_key().expect("key").key_id});
    let (status, body) = grant(&emu, &sign_jwt(&kid, &good)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(emu.token_requests(), 1);
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}
impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

#[tokio::test]
async fn api_refuses_missing_bad_or_expired_tokens_and_other_agents() {
    let emu = emulator().await;
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    let url = format!(
        "{}/v1/phones/{PHONE}/agentMessages/{id}?agentId={}",
        emu.base_url(),
        emu.agent_id()
    );
    let http = reqwest::Client::new();
    let unauthenticated = json!({"error": {
        "code": 401,
        "message": "Request had invalid authentication credentials.",
        "status": "UNAUTHENTICATED"
    }});

    let resp = http.delete(&url).send().await.expect("answered");
    assert_eq!(status_and_json(resp).await, (401, unauthenticated.clone()));
    let resp = http
        .delete(&url)
        .bearer_auth("ya29.made-up")
        .send()
        .await
        .expect("answered");
    assert_eq!(status_and_json(resp).await, (401, unauthenticated.clone()));

    let api = Api::new(&emu).await;
    let resp = http
        .delete(format!(
            "{}/v1/phones/{PHONE}/agentMessages/{id}?agentId=other-agent",
            emu.base_url()
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("answered");
    let (status, body) = status_and_json(resp).await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (403, &json!("PERMISSION_DENIED"))
    );
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Queued));

    // The "@rbm.goog" form names the same agent.
    let resp = http
        .delete(format!(
            "{}/v1/phones/{PHONE}/agentMessages/{id}?agentId={}%40rbm.goog",
            emu.base_url(),
            emu.agent_id()
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status().as_u16(), 200);

    emu.expire_access_tokens();
    let resp = api.delete(PHONE, &id).await;
    assert_eq!(status_and_json(resp).await, (401, unauthenticated));

    let statuses: Vec<u16> = emu.revokes().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 403, 200, 401]);
}

// ---- RBM API ----

#[tokio::test]
async fn send_then_delete_revokes_and_a_second_delete_is_404() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    let id = msg_id();
    let body = json!({"contentMessage": {"text": "code 1234"}, "messageTrafficType": "AUTHENTICATION", "ttl": "600s"});
    let (status, resource) = api.send(PHONE, &format!("messageId={id}"), &body).await;
    assert_eq!(status, 200, "{resource}");
    assert_eq!(
        resource["name"],
        format!("phones/{PHONE}/agentMessages/{id}")
    );
    assert_eq!(resource["contentMessage"], body["contentMessage"]);
    assert_eq!(resource["messageTrafficType"], "AUTHENTICATION");
    let sent = DateTime::parse_from_rfc3339(resource["sendTime"].as_str().expect("sendTime"))
        .expect("RFC 3339");
    let expires =
        DateTime::parse_from_rfc3339(resource["expireTime"].as_str().expect("expireTime"))
            .expect("RFC 3339");
    assert_eq!(expires - sent, chrono::TimeDelta::seconds(600));

    // A repeated messageId is ignored, and answers the original resource.
    let other = json!({"contentMessage": {"text": "something else"}});
    let again = api.send(PHONE, &format!("messageId={id}"), &other).await;
    assert_eq!(again, (200, resource));

    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Queued));
    assert_eq!(
        status_and_json(api.delete(PHONE, &id).await).await,
        (200, json!({}))
    );
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Revoked));
    let (status, body) = status_and_json(api.delete(PHONE, &id).await).await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (404, &json!("NOT_FOUND"))
    );
    let (status, _) = status_and_json(api.delete(PHONE, &msg_id()).await).await;
    assert_eq!(status, 404);

    let revokes = emu.wait_for_revokes(3, WAIT).await.expect("three revokes");
    let seen: Vec<(&str, u16)> = revokes
        .iter()
        .map(|r| (r.message_id.as_str(), r.status))
        .collect();
    assert_eq!(seen[..2], [(id.as_str(), 200), (id.as_str(), 404)]);
    assert_eq!(revokes[0].phone, PHONE);
    assert_eq!(revokes[0].agent_id, emu.agent_id());
    assert!(emu.wait_for_revokes(4, 20 * MS).await.is_err());
}

#[tokio::test]
async fn send_refuses_bad_arguments() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    let text = json!({"contentMessage": {"text": "hi"}});
    let id = msg_id();
    let cases = [
        (PHONE, String::new(), text.clone()),
        (PHONE, "messageId=not-a-uuid".to_owned(), text.clone()),
        ("15550001111", format!("messageId={id}"), text.clone()),
        ("+1555abc", format!("messageId={id}"), text.clone()),
        (
            PHONE,
            format!("messageId={id}"),
            json!({"text": "no contentMessage"}),
        ),
        (
            PHONE,
            format!("messageId={id}"),
            json!({"contentMessage": {"text": "hi"}, "ttl": "10s", "expireTime": "2030-01-01T00:00:00Z"}),
        ),
        (
            PHONE,
            format!("messageId={id}"),
            json!({"contentMessage": {"text": "hi"}, "ttl": "ten seconds"}),
        ),
    ];
    for (phone, query, body) in cases {
        let (status, answer) = api.send(phone, &query, &body).await;
        assert_eq!(status, 400, "{phone} {query} {body}: {answer}");
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT");
    }
    assert_eq!(emu.message_state(&id), None);

    // An expireTime is answered back in Google's form, in UTC.
    let tomorrow = (Utc::now() + chrono::TimeDelta::days(1)).date_naive();
    let (status, resource) = api
        .send(
            PHONE,
            &format!("messageId={id}"),
            &json!({"contentMessage": {"text": "hi"}, "expireTime": format!("{tomorrow}T01:00:00+01:00")}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        resource["expireTime"],
        format!("{tomorrow}T00:00:00.000000Z")
    );

    let (status, caps) = api.capabilities(PHONE).await;
    assert_eq!(status, 200);
    assert!(caps["features"]
        .as_array()
        .expect("features")
        .contains(&json!("RICHCARD_STANDALONE")));
}

#[tokio::test]
async fn delete_after_delivery_is_404() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    emu.deliver(&id, false).await;
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Delivered));
    let (status, body) = status_and_json(api.delete(PHONE, &id).await).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Delivered));
    // No webhook was asked for.
    assert!(emu.webhooks_sent().is_empty());
}

#[tokio::test]
async fn queued_faults_answer_first_and_leave_the_message_alone() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    emu.queue_revoke_faults(&[500, 429, 503]);

    let resp = api.delete(PHONE, &id).await;
    assert_eq!(resp.status().as_u16(), 500);
    let resp = api.delete(PHONE, &id).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let (status, body) = status_and_json(resp).await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (429, &json!("RESOURCE_EXHAUSTED"))
    );
    let (status, body) = status_and_json(api.delete(PHONE, &id).await).await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (503, &json!("UNAVAILABLE"))
    );
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Queued));

    assert_eq!(api.delete(PHONE, &id).await.status().as_u16(), 200);
    let statuses: Vec<u16> = emu.revokes().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 429, 503, 200]);
}

// ---- phones and webhooks ----

#[tokio::test]
async fn online_phone_sends_signed_delivered_then_read() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    emu.set_phone(
        PHONE,
        PhoneBehaviour::Online {
            delay: 10 * MS,
            read_after: Some(10 * MS),
        },
    );
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    let events = rx.next_by_type(2).await;
    let delivered = &events["DELIVERED"];
    let ev = &delivered.event;
    assert_eq!(ev["senderPhoneNumber"], PHONE);
    assert_eq!(ev["messageId"], id.as_str());
    assert_eq!(ev["agentId"], "sandbox-agent@rbm.goog");
    let event_id = ev["eventId"].as_str().expect("eventId");
    assert!(
        event_id.starts_with("Mx") && event_id.len() == 24,
        "{event_id}"
    );
    let send_time = ev["sendTime"].as_str().expect("sendTime");
    assert!(DateTime::parse_from_rfc3339(send_time).is_ok());
    assert!(send_time.ends_with('Z') && send_time.len() == "2026-01-15T10:00:01.123456Z".len());
    assert_ne!(events["READ"].event["eventId"], ev["eventId"]);

    let msg = &delivered.envelope["message"];
    assert_eq!(msg["attributes"]["product"], "RBM");
    assert_eq!(msg["attributes"]["business_id"], "sandbox-agent@rbm.goog");
    assert_eq!(msg["messageId"], msg["message_id"]);
    assert_eq!(msg["publishTime"], msg["publish_time"]);
    assert_eq!(
        delivered.envelope["subscription"],
        "projects/rbm-sandbox/subscriptions/rbm-agent"
    );
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Delivered));

    let records = emu.wait_for_webhooks(2, WAIT).await.expect("two webhooks");
    assert!(records.iter().all(|r| r.message_id == id
        && r.attempts == 1
        && r.status == Some(200)
        && r.phone == PHONE));
}

#[tokio::test]
async fn online_message_revoked_before_its_delivery_time_is_not_delivered() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    emu.set_phone(
        PHONE,
        PhoneBehaviour::Online {
            delay: 150 * MS,
            read_after: None,
        },
    );
    let api = Api::new(&emu).await;
    let revoked = msg_id();
    emu.agent_send(PHONE, &revoked, None);
    assert_eq!(api.delete(PHONE, &revoked).await.status().as_u16(), 200);
    // Sent later with the same delay, so its delivery comes after the
    // revoked message's delivery time has passed.
    let later = msg_id();
    emu.agent_send(PHONE, &later, None);
    let c = rx.next().await;
    assert_eq!(c.event["messageId"], later.as_str());
    assert_eq!(emu.message_state(&revoked), Some(EmuMessageState::Revoked));
    assert!(rx.rx.try_recv().is_err());
}

#[tokio::test]
async fn offline_phone_with_ttl_is_revoked_by_google() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    let id = msg_id();
    emu.agent_send(PHONE, &id, Some(20 * MS));
    let c = rx.next().await;
    assert_eq!(c.event["eventType"], "TTL_EXPIRATION_REVOKED");
    assert_eq!(c.event["phoneNumber"], PHONE);
    assert!(c.event.get("senderPhoneNumber").is_none());
    assert_eq!(c.event["messageId"], id.as_str());
    assert_eq!(c.event["agentId"], "sandbox-agent@rbm.goog");
    assert!(c.event["eventId"].is_string() && c.event["sendTime"].is_string());
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Expired));
    let api = Api::new(&emu).await;
    assert_eq!(api.delete(PHONE, &id).await.status().as_u16(), 404);
}

#[tokio::test]
async fn revoke_race_answers_200_then_delivers() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    emu.set_phone(PHONE, PhoneBehaviour::RevokeRace { delay: 10 * MS });
    let api = Api::new(&emu).await;
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    assert_eq!(
        status_and_json(api.delete(PHONE, &id).await).await,
        (200, json!({}))
    );
    let c = rx.next().await;
    assert_eq!(c.event["eventType"], "DELIVERED");
    assert_eq!(c.event["messageId"], id.as_str());
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Delivered));
}

#[tokio::test]
async fn ttl_revoke_fails_delivers_and_says_so() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    emu.set_phone(PHONE, PhoneBehaviour::TtlRevokeFails);
    let id = msg_id();
    emu.agent_send(PHONE, &id, Some(20 * MS));
    let events = rx.next_by_type(2).await;
    assert_eq!(events["DELIVERED"].event["messageId"], id.as_str());
    let failed = &events["TTL_EXPIRATION_REVOKE_FAILED"].event;
    assert_eq!(failed["messageId"], id.as_str());
    assert_eq!(failed["phoneNumber"], PHONE);
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Delivered));
}

#[tokio::test]
async fn webhook_not_answered_200_is_retried_with_the_same_event() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    rx.answer_next(&[500, 204]);
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    emu.deliver(&id, true).await;
    let tries = [rx.next().await, rx.next().await, rx.next().await];
    for c in &tries[1..] {
        assert_eq!(c.event, tries[0].event);
        assert_eq!(
            c.envelope["message"]["messageId"],
            tries[0].envelope["message"]["messageId"]
        );
    }
    let records = emu.webhooks_sent();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].attempts, records[0].status), (3, Some(200)));
    assert_eq!(records[0].event_type, "DELIVERED");
    assert_eq!(
        records[0].event_id,
        tries[0].event["eventId"].as_str().unwrap_or_default()
    );

    // Past webhook_max_attempts the event is dropped.
    rx.answer_next(&[503, 503, 503, 503]);
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    emu.deliver(&id, true).await;
    let records = emu
        .wait_for_webhooks(2, WAIT)
        .await
        .expect("two deliveries ended");
    assert_eq!((records[1].attempts, records[1].status), (4, Some(503)));
}

#[tokio::test]
async fn webhooks_wait_for_a_url_set_late() {
    // Enough tries (about 2.5 s of back-off) to outlast starting a receiver.
    let emu = GoogleEmulator::start(GoogleEmulatorConfig {
        webhook_max_attempts: 9,
        ..cfg()
    })
    .await
    .expect("emulator starts");
    let id = msg_id();
    emu.agent_send(PHONE, &id, Some(MS));
    // The expiry fires with no URL; the retries find the receiver.
    let mut rx = Receiver::start(emu.client_token()).await;
    emu.set_webhook_url(&rx.url);
    let c = rx.next().await;
    assert_eq!(c.event["eventType"], "TTL_EXPIRATION_REVOKED");
}

#[tokio::test]
async fn crafted_events_envelopes_and_the_handshake() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    let event = json!({
        "senderPhoneNumber": PHONE, "eventType": "READ", "eventId": "MxCrafted",
        "messageId": msg_id(), "sendTime": "2026-01-15T10:00:01.123456Z",
        "agentId": "sandbox-agent@rbm.goog"
    });
    assert_eq!(emu.post_event(&event).await.expect("posted"), 200);
    assert_eq!(rx.next().await.event, event);
    assert_eq!(emu.webhooks_sent()[0].event_id, "MxCrafted");

    let (body, sig) = emu.envelope(&event);
    let envelope: Value = serde_json::from_str(&body).expect("JSON envelope");
    let data = B64
        .decode(envelope["message"]["data"].as_str().expect("data"))
        .expect("base64");
    assert_eq!(
        serde_json::from_slice::<Value>(&data).expect("event"),
        event
    );
    assert!(google_verify(emu.client_token(), &data, &sig));
    let mut tampered = data.clone();
    tampered[2] ^= 1;
    assert!(!google_verify(emu.client_token(), &tampered, &sig));

    assert!(emu.verify_webhook().await.expect("handshake"));
    let stranger = Receiver::start("SOMEOTHERTOKEN").await;
    emu.set_webhook_url(&stranger.url);
    assert!(!emu.verify_webhook().await.expect("handshake"));
}

#[test]
fn e164_shapes() {
    for ok in ["+15550001111", "+447700900123", "+6834002"] {
        assert!(is_e164(ok), "{ok}");
    }
    for bad in [
        "15550001111",
        "+0555000111",
        "+1555",
        "+1234567890123456",
        "+1 555 000",
        "",
    ] {
        assert!(!is_e164(bad), "{bad}");
    }
}

// ---- switchable faults ----

/// Message ids fixed by the test, so the seeded fault draws are too.
fn fixed_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

#[tokio::test]
async fn error_faults_answer_500_503_or_429_and_leave_the_message_queued() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    emu.set_faults(GoogleFaults {
        seed: 3,
        error_rate: 1.0,
        ..GoogleFaults::default()
    });
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        let id = fixed_id(i);
        emu.agent_send(PHONE, &id, None);
        let resp = api.delete(PHONE, &id).await;
        let status = resp.status().as_u16();
        if status == 429 {
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("1")
            );
        }
        let (_, body) = status_and_json(resp).await;
        assert_eq!(body["error"]["code"], status, "{body}");
        seen.insert(status);
        assert_eq!(emu.message_state(&id), Some(EmuMessageState::Queued));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [429, 500, 503]);
    assert!(emu.revokes().iter().all(|r| !r.answer_lost));

    // Switched off at run time: the next DELETE works.
    emu.set_faults(GoogleFaults::default());
    assert_eq!(api.delete(PHONE, &fixed_id(0)).await.status().as_u16(), 200);
}

#[tokio::test]
async fn hangs_outlast_the_client_timeout_and_half_of_them_revoke_first() {
    let emu = emulator().await;
    let token = access_token(&emu).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .expect("client");
    let faults = GoogleFaults {
        seed: 11,
        hang_rate: 1.0,
        hang_for: Duration::from_millis(400),
        ..GoogleFaults::default()
    };
    emu.set_faults(faults.clone());
    let n = 12;
    for i in 0..n {
        let id = fixed_id(i);
        emu.agent_send(PHONE, &id, None);
        let err = impatient
            .delete(format!(
                "{}/v1/phones/{PHONE}/agentMessages/{id}?agentId={}",
                emu.base_url(),
                emu.agent_id()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect_err("no answer within the client timeout");
        assert!(err.is_timeout(), "{err}");
    }
    let records = emu.wait_for_revokes(n, WAIT).await.expect("all recorded");
    let mut revoked = 0;
    for r in &records {
        assert!(r.answer_lost);
        assert!(r.answered_at - r.received_at >= chrono::TimeDelta::milliseconds(390));
        // What the emulator did is what the seed decided.
        let applied = match faults.plan(&["DELETE", PHONE, &r.message_id, "1"]).fault {
            Fault::Hang { applied } => applied,
            other => panic!("unexpected plan {other:?}"),
        };
        let state = emu.message_state(&r.message_id);
        if applied {
            revoked += 1;
            assert_eq!((r.status, state), (200, Some(EmuMessageState::Revoked)));
        } else {
            assert_eq!((r.status, state), (0, Some(EmuMessageState::Queued)));
        }
    }
    assert!(0 < revoked && revoked < n, "{revoked} of {n} revoked");
}

#[tokio::test]
async fn resets_drop_the_connection_without_an_answer() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    emu.set_faults(GoogleFaults {
        seed: 5,
        reset_rate: 1.0,
        ..GoogleFaults::default()
    });
    for i in 0..6 {
        let id = fixed_id(i);
        emu.agent_send(PHONE, &id, None);
        let err = api
            .http
            .delete(format!(
                "{}/v1/phones/{PHONE}/agentMessages/{id}?agentId={}",
                api.base, api.agent
            ))
            .bearer_auth(&api.token)
            .send()
            .await
            .expect_err("the connection is dropped");
        assert!(!err.is_timeout() && !err.is_connect(), "{err}");
    }
    assert!(emu.revokes().iter().all(|r| r.answer_lost));
}

#[tokio::test]
async fn latency_delays_each_answer_by_its_drawn_amount() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    let faults = GoogleFaults {
        seed: 8,
        latency: Duration::from_millis(120),
        ..GoogleFaults::default()
    };
    emu.set_faults(faults.clone());
    for i in 0..5 {
        let id = fixed_id(i);
        emu.agent_send(PHONE, &id, None);
        let planned = faults.plan(&["DELETE", PHONE, &id, "1"]).latency;
        let started = std::time::Instant::now();
        assert_eq!(api.delete(PHONE, &id).await.status().as_u16(), 200);
        assert!(started.elapsed() >= planned, "{planned:?}");
    }
}

#[tokio::test]
async fn an_outage_answers_503_everywhere_and_counts_the_requests() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    let before = emu.requests();
    emu.set_faults(GoogleFaults {
        unavailable: true,
        ..GoogleFaults::default()
    });
    let id = fixed_id(1);
    emu.agent_send(PHONE, &id, None);
    let (status, body) = status_and_json(api.delete(PHONE, &id).await).await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (503, &json!("UNAVAILABLE"))
    );
    let (status, _) = grant(&emu, &sign_jwt(&rs256(), &claims(&emu))).await;
    assert_eq!(status, 503);
    assert_eq!(emu.requests(), before + 2);
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Queued));
    emu.set_faults(GoogleFaults::default());
    assert_eq!(api.delete(PHONE, &id).await.status().as_u16(), 200);
}

#[tokio::test]
async fn webhooks_come_once_to_three_times_with_one_event_id() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    let faults = GoogleFaults {
        seed: 21,
        webhook_duplicates: 3,
        ..GoogleFaults::default()
    };
    emu.set_faults(faults.clone());
    emu.set_phone(
        PHONE,
        PhoneBehaviour::Online {
            delay: MS,
            read_after: None,
        },
    );
    let ids: Vec<String> = (0..20).map(fixed_id).collect();
    let expected: usize = ids
        .iter()
        .map(|id| faults.fanout(&["webhook", id, "DELIVERED", "1"]).len())
        .sum();
    for id in &ids {
        emu.agent_send(PHONE, id, None);
    }
    let mut copies: HashMap<String, (String, usize)> = HashMap::new();
    for _ in 0..expected {
        let c = rx.next().await;
        let id = c.event["messageId"].as_str().unwrap_or_default().to_owned();
        let event_id = c.event["eventId"].as_str().unwrap_or_default().to_owned();
        let entry = copies.entry(id).or_insert((event_id.clone(), 0));
        assert_eq!(entry.0, event_id, "copies share the eventId");
        entry.1 += 1;
    }
    for id in &ids {
        let want = faults.fanout(&["webhook", id, "DELIVERED", "1"]).len();
        assert_eq!(copies[id].1, want, "{id}");
    }
    assert!(copies.values().any(|(_, n)| *n > 1));
    assert!(copies.values().any(|(_, n)| *n == 1));
    emu.wait_for_webhooks(expected, WAIT)
        .await
        .expect("recorded");
}

#[tokio::test]
async fn delayed_webhooks_overtake_each_other() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    emu.set_faults(GoogleFaults {
        seed: 2,
        webhook_delay: Duration::from_millis(300),
        ..GoogleFaults::default()
    });
    let ids: Vec<String> = (0..20).map(fixed_id).collect();
    for (i, id) in ids.iter().enumerate() {
        let phone = format!("+1555000{i:04}");
        emu.set_phone(
            &phone,
            PhoneBehaviour::Online {
                delay: MS * (5 * i as u32),
                read_after: None,
            },
        );
        emu.agent_send(&phone, id, None);
    }
    let mut order = Vec::new();
    for _ in 0..ids.len() {
        let c = rx.next().await;
        order.push(c.event["messageId"].as_str().unwrap_or_default().to_owned());
    }
    assert_ne!(
        order, ids,
        "generated in order, yet arrived in the same order"
    );
}

#[tokio::test]
async fn dropped_webhooks_are_never_sent_but_are_recorded() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    emu.set_faults(GoogleFaults {
        webhook_drop_rate: 1.0,
        ..GoogleFaults::default()
    });
    emu.set_phone(
        PHONE,
        PhoneBehaviour::Online {
            delay: MS,
            read_after: Some(MS),
        },
    );
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    let dropped = emu
        .wait_for_webhooks_dropped(2, WAIT)
        .await
        .expect("both dropped");
    let mut types: Vec<&str> = dropped.iter().map(|r| r.event_type.as_str()).collect();
    types.sort();
    assert_eq!(types, ["DELIVERED", "READ"]);
    assert!(dropped
        .iter()
        .all(|r| r.attempts == 0 && r.status.is_none()));
    assert!(emu.webhooks_sent().is_empty() && emu.webhook_attempts().is_empty());
    assert!(rx.rx.try_recv().is_err());
    // Google still delivered the message to the phone.
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Delivered));
}

#[tokio::test]
async fn ttl_race_reports_the_revocation_and_then_the_delivery() {
    let emu = emulator().await;
    let mut rx = Receiver::for_emulator(&emu).await;
    emu.set_phone(PHONE, PhoneBehaviour::TtlRace { delay: 30 * MS });
    let id = msg_id();
    emu.agent_send(PHONE, &id, Some(10 * MS));
    let first = rx.next().await;
    assert_eq!(first.event["eventType"], "TTL_EXPIRATION_REVOKED");
    let second = rx.next().await;
    assert_eq!(second.event["eventType"], "DELIVERED");
    assert_eq!(second.event["messageId"], id.as_str());
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Delivered));
    let api = Api::new(&emu).await;
    assert_eq!(api.delete(PHONE, &id).await.status().as_u16(), 404);
}

#[tokio::test]
async fn several_webhook_urls_take_turns_so_a_failing_one_is_retried_elsewhere() {
    let emu = emulator().await;
    let mut down = Receiver::start(emu.client_token()).await;
    let mut up = Receiver::start(emu.client_token()).await;
    down.answer_next(&[503; 8]);
    emu.set_webhook_urls(&[down.url.clone(), up.url.clone()]);
    let id = msg_id();
    emu.agent_send(PHONE, &id, None);
    emu.deliver(&id, true).await;
    assert_eq!(down.next().await.event["messageId"], id.as_str());
    assert_eq!(up.next().await.event["messageId"], id.as_str());
    let attempts = emu.webhook_attempts();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.url.clone(), a.status))
            .collect::<Vec<_>>(),
        [(down.url.clone(), Some(503)), (up.url.clone(), Some(200))]
    );
    assert_eq!(emu.webhooks_sent()[0].attempts, 2);
}

#[tokio::test]
async fn faults_can_be_switched_over_http() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let url = format!("{}/emulator/faults", emu.base_url());
    let set = |body: &'static str| http.post(&url).body(body).send();
    let resp = set("google.error_rate=0.25,webhook_duplicates=2")
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.text().await.expect("text"),
        "seed=0,error_rate=0.25,webhook_duplicates=2"
    );
    assert_eq!(emu.faults().error_rate, 0.25);
    let resp = set("hang_rate=0.5").await.expect("answer");
    assert_eq!(resp.status().as_u16(), 200);
    let now = emu.faults();
    assert_eq!((now.error_rate, now.hang_rate), (0.25, 0.5));
    let resp = set("nonsense=1").await.expect("answer");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp
        .text()
        .await
        .expect("text")
        .contains("unknown Google fault"));
    assert_eq!(set("").await.expect("answer").status().as_u16(), 200);
    assert!(emu.faults().is_none());
    let shown = http.get(&url).send().await.expect("answer");
    assert_eq!(shown.text().await.expect("text"), "seed=0");
    // The control plane is not counted as Google traffic.
    assert_eq!(emu.requests(), 0);
}

// ---- phones Google cannot reach, content it refuses, what was sent ----

const OTHER: &str = "+15550002222";

fn text(t: &str) -> Value {
    json!({"contentMessage": {"text": t}})
}

fn error_body(code: u16, message: &str, status: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

#[tokio::test]
async fn not_rcs_phone_answers_404_to_send_and_capabilities_and_stores_nothing() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    emu.set_phone(PHONE, PhoneBehaviour::NotRcs);
    let not_found = error_body(404, "Requested entity was not found.", "NOT_FOUND");
    let id = msg_id();
    let body = json!({"contentMessage": {"text": "code 1234"}, "ttl": "0.01s"});
    let query = format!("messageId={id}");
    assert_eq!(
        api.send(PHONE, &query, &body).await,
        (404, not_found.clone())
    );
    assert_eq!(api.capabilities(PHONE).await, (404, not_found.clone()));
    assert_eq!(emu.message_state(&id), None);
    assert_eq!(
        status_and_json(api.delete(PHONE, &id).await).await,
        (404, not_found.clone())
    );

    // The agent's own sends and the control plane are refused alike.
    assert_eq!(emu.agent_send(PHONE, &id, Some(MS)), 404);
    let resp = api
        .http
        .post(format!("{}/emulator/agent-send", api.base))
        .json(&json!({"phone": PHONE, "message_id": id}))
        .send()
        .await
        .expect("answered");
    assert_eq!(status_and_json(resp).await, (404, not_found));
    assert_eq!(emu.message_state(&id), None);

    // Other phones are unaffected.
    let other = msg_id();
    let (status, _) = api
        .send(OTHER, &format!("messageId={other}"), &text("hi"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.capabilities(OTHER).await.0, 200);

    // No timer, no webhook: nothing will ever happen for the refused sends.
    tokio::time::sleep(30 * MS).await;
    assert_eq!(emu.busy(), 0);
    assert!(emu.webhooks_sent().is_empty());
    assert!(emu.webhooks_dropped().is_empty());
    let statuses: Vec<u16> = emu.sends().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 200]);
}

#[tokio::test]
async fn not_launched_phone_answers_403_to_send_and_capabilities() {
    let emu = GoogleEmulator::start(GoogleEmulatorConfig {
        default_phone: PhoneBehaviour::NotLaunched,
        ..cfg()
    })
    .await
    .expect("emulator starts");
    let api = Api::new(&emu).await;
    let id = msg_id();
    let (status, body) = api
        .send(OTHER, &format!("messageId={id}"), &text("hi"))
        .await;
    assert_eq!(
        (status, &body["error"]["code"], &body["error"]["status"]),
        (403, &json!(403), &json!("PERMISSION_DENIED"))
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("agent is not launched"), "{message}");
    assert_eq!(api.capabilities(OTHER).await, (403, body));
    assert_eq!(emu.message_state(&id), None);
    assert_eq!(emu.agent_send(OTHER, &id, None), 403);

    // A phone set otherwise is reached.
    emu.set_phone(PHONE, PhoneBehaviour::Offline);
    let (status, _) = api
        .send(PHONE, &format!("messageId={id}"), &text("hi"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.capabilities(PHONE).await.0, 200);
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Queued));
}

#[tokio::test]
async fn a_device_without_the_features_refuses_sends_with_400_only() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    emu.set_phone(PHONE, PhoneBehaviour::ContentUnsupported);
    let id = msg_id();
    let (status, body) = api
        .send(PHONE, &format!("messageId={id}"), &text("hi"))
        .await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (400, &json!("INVALID_ARGUMENT"))
    );
    assert_eq!(emu.message_state(&id), None);
    assert_eq!(emu.agent_send(PHONE, &id, None), 400);
    // The phone is an RCS phone all the same.
    assert_eq!(api.capabilities(PHONE).await.0, 200);
}

#[tokio::test]
async fn content_is_checked_before_the_phone_and_refused_with_400() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    emu.set_phone(PHONE, PhoneBehaviour::NotRcs);
    emu.set_phone(OTHER, PhoneBehaviour::NotLaunched);
    let days = |d: i64| rfc3339(Utc::now() + chrono::TimeDelta::days(d));
    let cases = [
        (json!({"contentMessage": {}}), "exactly one of"),
        (
            json!({"contentMessage": {"text": "hi", "richCard": {"standaloneCard": {}}}}),
            "it sets text, richCard",
        ),
        (text(&"a".repeat(3073)), "3073 characters"),
        (
            json!({"contentMessage": {"text": "hi", "colour": "red"}}),
            "Unknown name \"colour\"",
        ),
        (
            json!({"contentMessage": {"text": "hi"}, "messageTrafficType": "MARKETING"}),
            "MARKETING",
        ),
        (
            json!({"contentMessage": {"text": "hi"}, "ttl": "1296001s"}),
            "15 days",
        ),
        (
            json!({"contentMessage": {"text": "hi"}, "expireTime": days(16)}),
            "15 days",
        ),
    ];
    // 400 for a reachable phone and, before its 404 or 403, for the others.
    for phone in [PHONE, OTHER, "+15550003333"] {
        for (body, detail) in &cases {
            let id = msg_id();
            let (status, answer) = api.send(phone, &format!("messageId={id}"), body).await;
            assert_eq!(
                (status, &answer["error"]["status"]),
                (400, &json!("INVALID_ARGUMENT")),
                "{phone} {body}: {answer}"
            );
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("Request contains an invalid argument")
                    && message.contains(detail),
                "{message}"
            );
            assert_eq!(emu.message_state(&id), None);
        }
    }

    // What a device can show passes.
    let fine = [
        text(&"é".repeat(3072)),
        json!({"contentMessage": {"fileName": "files/abc", "suggestions": []}}),
        json!({"contentMessage": {"richCard": {"standaloneCard": {}}}}),
        json!({"contentMessage": {"text": "hi"}, "ttl": "1296000s"}),
        json!({"contentMessage": {"text": "hi"}, "expireTime": days(14)}),
    ];
    let traffic = [
        "MESSAGE_TRAFFIC_TYPE_UNSPECIFIED",
        "AUTHENTICATION",
        "TRANSACTION",
        "PROMOTION",
        "SERVICEREQUEST",
        "ACKNOWLEDGEMENT",
    ]
    .map(|t| json!({"contentMessage": {"text": "hi"}, "messageTrafficType": t}));
    for body in fine.iter().chain(&traffic) {
        let (status, answer) = api
            .send("+15550003333", &format!("messageId={}", msg_id()), body)
            .await;
        assert_eq!(status, 200, "{body}: {answer}");
    }
}

#[tokio::test]
async fn a_repeated_send_answers_the_stored_resource_and_changes_nothing() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    let id = msg_id();
    let query = format!("messageId={id}");
    let body = json!({"contentMessage": {"text": "code 1234"}, "messageTrafficType": "AUTHENTICATION", "ttl": "3.5s"});
    let (status, resource) = api.send(PHONE, &query, &body).await;
    assert_eq!(status, 200, "{resource}");
    let time = |field: &str| {
        DateTime::parse_from_rfc3339(resource[field].as_str().expect("a time")).expect("RFC 3339")
    };
    assert_eq!(
        time("expireTime") - time("sendTime"),
        chrono::TimeDelta::milliseconds(3500)
    );
    // The one TTL timer of an offline phone.
    assert_eq!(emu.busy(), 1);

    let other = json!({"contentMessage": {"text": "something else"}, "ttl": "1s"});
    assert_eq!(
        api.send(PHONE, &query, &other).await,
        (200, resource.clone())
    );
    assert_eq!(emu.busy(), 1);

    assert_eq!(api.delete(PHONE, &id).await.status().as_u16(), 200);
    assert_eq!(
        api.send(PHONE, &query, &body).await,
        (200, resource.clone())
    );
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Revoked));

    // Known is known, whatever the phone does now.
    emu.set_phone(PHONE, PhoneBehaviour::NotRcs);
    assert_eq!(api.send(PHONE, &query, &body).await, (200, resource));
    assert_eq!(emu.message_state(&id), Some(EmuMessageState::Revoked));
    let statuses: Vec<u16> = emu.sends().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200]);

    // Without ttl or expireTime the resource has no expireTime.
    let (status, resource) = api
        .send(OTHER, &format!("messageId={}", msg_id()), &text("hi"))
        .await;
    assert_eq!(status, 200);
    assert!(resource.get("expireTime").is_none(), "{resource}");
}

#[tokio::test]
async fn sends_are_recorded_with_what_was_sent_and_answered() {
    let emu = emulator().await;
    let api = Api::new(&emu).await;
    emu.set_phone(OTHER, PhoneBehaviour::NotRcs);
    let ids: Vec<String> = (0..4).map(|_| msg_id()).collect();
    let before = Utc::now();

    let resp = api
        .http
        .post(format!(
            "{}/v1/phones/{PHONE}/agentMessages?messageId={}&agentId={}",
            api.base, ids[0], api.agent
        ))
        .json(&text("no token"))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status().as_u16(), 401);
    let refused =
        json!({"contentMessage": {"text": "hi"}, "messageTrafficType": "MARKETING", "ttl": "600s"});
    let at = rfc3339(Utc::now() + chrono::TimeDelta::hours(1));
    let at = at.as_str();
    let taken = json!({"contentMessage": {"text": "hi"}, "messageTrafficType": "TRANSACTION", "expireTime": at});
    let unreachable = json!({"contentMessage": {"text": "hi"}, "ttl": "60s"});
    let answers = [
        api.send(PHONE, &format!("messageId={}", ids[1]), &refused)
            .await
            .0,
        api.send(PHONE, &format!("messageId={}", ids[2]), &taken)
            .await
            .0,
        api.send(OTHER, &format!("messageId={}", ids[3]), &unreachable)
            .await
            .0,
    ];
    assert_eq!(answers, [400, 200, 404]);

    let sends = emu.wait_for_sends(4, WAIT).await.expect("four sends");
    let seen: Vec<_> = sends
        .iter()
        .map(|r| {
            (
                r.phone.as_str(),
                r.message_id.as_str(),
                r.status,
                r.traffic_type.as_deref(),
                r.ttl.as_deref(),
                r.expire_time.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (PHONE, ids[0].as_str(), 401, None, None, None),
            (
                PHONE,
                ids[1].as_str(),
                400,
                Some("MARKETING"),
                Some("600s"),
                None
            ),
            (
                PHONE,
                ids[2].as_str(),
                200,
                Some("TRANSACTION"),
                None,
                Some(at)
            ),
            (OTHER, ids[3].as_str(), 404, None, Some("60s"), None),
        ]
    );
    for r in &sends {
        assert_eq!(r.agent_id, emu.agent_id());
        assert!(before <= r.received_at && r.received_at <= r.answered_at);
        assert!(!r.answer_lost);
    }

    // The agent's own sends do not go through the API.
    emu.agent_send(PHONE, &msg_id(), None);
    assert!(emu.wait_for_sends(5, 20 * MS).await.is_err());
}

#[tokio::test]
async fn a_hung_send_is_recorded_after_the_client_gave_up() {
    let emu = emulator().await;
    let token = access_token(&emu).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    let faults = GoogleFaults {
        seed: 11,
        hang_rate: 1.0,
        hang_for: Duration::from_millis(300),
        ..GoogleFaults::default()
    };
    emu.set_faults(faults.clone());
    let n = 12;
    for i in 0..n {
        let err = impatient
            .post(format!(
                "{}/v1/phones/{PHONE}/agentMessages?messageId={}&agentId={}",
                emu.base_url(),
                fixed_id(i),
                emu.agent_id()
            ))
            .bearer_auth(&token)
            .json(&text("hi"))
            .send()
            .await
            .expect_err("no answer within the client timeout");
        assert!(err.is_timeout(), "{err}");
    }
    let records = emu.wait_for_sends(n, WAIT).await.expect("all recorded");
    let mut stored = 0;
    for (i, r) in records.iter().enumerate() {
        assert!(r.answer_lost);
        assert!(r.answered_at - r.received_at >= chrono::TimeDelta::milliseconds(290));
        // Sends are the only calls here, so the i-th is the (i+1)-th draw.
        let applied = match faults.plan(&["send", PHONE, &(i + 1).to_string()]).fault {
            Fault::Hang { applied } => applied,
            other => panic!("unexpected plan {other:?}"),
        };
        let state = emu.message_state(&r.message_id);
        if applied {
            stored += 1;
            assert_eq!((r.status, state), (200, Some(EmuMessageState::Queued)));
        } else {
            assert_eq!((r.status, state), (0, None));
        }
    }
    assert!(0 < stored && stored < n, "{stored} of {n} stored");
}
