//! Shared by the integration tests: a fresh PostgreSQL database per test,
//! the sandbox (real service + emulators) on it, and small helpers for the
//! API. Nothing here is a mock: every test talks HTTP to the real service.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use rbm_fallback::sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

pub use rbm_fallback::emulator::google::PhoneBehaviour;
pub use rbm_fallback::emulator::twilio::{CreateFault, RecipientBehaviour};

/// The server the tests use: TEST_DATABASE_URL, else DATABASE_URL, else the
/// local default. Each test gets its own database on it, dropped afterwards.
fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub url: String,
    name: String,
    admin: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let mut admin = reqwest::Url::parse(&server_url()).expect("database URL");
        admin.set_path("/postgres");
        let name = format!("rbmf_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin.as_str())
            .await
            .expect("PostgreSQL must be reachable for the integration tests");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut url = admin.clone();
        url.set_path(&format!("/{name}"));
        TestDb {
            url: url.to_string(),
            name,
            admin: admin.to_string(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs outside any runtime we may block on: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

pub struct Harness {
    pub s: Sandbox,
    pub api: reqwest::Client,
    pub db: TestDb,
    inbox: tokio::sync::OnceCell<sqlx::PgPool>,
}

pub async fn start() -> Harness {
    start_with(|_| {}).await
}

/// Relays and callbacks retried within a test's patience.
pub fn fast_outbox(c: &mut SandboxConfig) {
    for (name, value) in [
        ("RBMF__OUTBOX__RETRY_BASE_MS", "50"),
        ("RBMF__OUTBOX__RETRY_CAP_MS", "200"),
        ("RBMF__OUTBOX__MAX_IDLE_MS", "100"),
    ] {
        c.env.push((name.into(), value.into()));
    }
}

pub async fn start_with(configure: impl FnOnce(&mut SandboxConfig)) -> Harness {
    let db = TestDb::new().await;
    let mut cfg = SandboxConfig::new(&db.url);
    cfg.confirm_window = Duration::from_millis(400);
    cfg.env
        .push(("RBMF__WORKER__RETRY_BASE_MS".into(), "50".into()));
    cfg.env
        .push(("RBMF__WORKER__RETRY_CAP_MS".into(), "200".into()));
    cfg.env
        .push(("RBMF__WORKER__MAX_IDLE_MS".into(), "100".into()));
    configure(&mut cfg);
    let s = Sandbox::start(cfg).await.expect("sandbox starts");
    let api = s.api();
    let h = Harness {
        s,
        api,
        db,
        inbox: Default::default(),
    };
    h.wait_ready().await;
    h
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.s.url, path)
    }

    /// Waits until /readyz answers 200: migrations applied, service serving.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        for _ in 0..500 {
            if let Ok(r) = client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("service never became ready");
    }

    pub async fn post(&self, body: &Value) -> reqwest::Response {
        self.api
            .post(self.url("/v1/messages"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Registers a message the agent sent to `phone` (the emulator gets it
    /// too), due `deadline_ms` from now. Returns its id.
    pub async fn send_and_register(&self, phone: &str, deadline_ms: i64) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.s.google.agent_send(phone, &id, None);
        let r = self.post(&message(phone, &id, deadline_ms)).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        id
    }

    /// GETs an API path with the API token and reads the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        self.api
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The dashboard page, as the API token sees it.
    pub async fn dashboard(&self) -> String {
        let r = self.api.get(self.url("/dashboard")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/html"), "{ct}");
        r.text().await.unwrap()
    }

    /// A scrape of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.api.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    pub async fn get(&self, id: &str) -> Value {
        let r = self
            .api
            .get(self.url(&format!("/v1/messages/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Polls the API until the message is in `state` (it changes in the
    /// service's own time); fails with the last resource seen.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_until(id, &format!("state {state}"), |m| m["state"] == state)
            .await
    }

    pub async fn wait_outcome(&self, id: &str, outcome: &str) -> Value {
        self.wait_until(id, &format!("outcome {outcome}"), |m| {
            m["outcome"] == outcome
        })
        .await
    }

    pub async fn wait_until(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..1000 {
            last = self.get(id).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        panic!("message {id} never reached {what}; last seen: {last:#}");
    }

    /// Google reports `event_type` for the message, signed, and the
    /// service acknowledges it. Returns the event as sent.
    pub async fn google_reports(&self, event_type: &str, phone: &str, message_id: &str) -> Value {
        let event = google_event(self, event_type, phone, message_id);
        self.google_posts(&event).await;
        event
    }

    /// Google posts `event`, signed, the service acknowledges it, and has
    /// applied it by the time this returns.
    pub async fn google_posts(&self, event: &Value) {
        let status = self.s.google.post_event(event).await.unwrap();
        assert_eq!(status, 200, "not acknowledged: {event}");
        self.applied().await;
    }

    /// Waits until the service has applied every Google event it
    /// acknowledged: it records them before the 200 and applies them right
    /// after, from a queue in the database.
    pub async fn applied(&self) {
        // One connection per harness, however many tasks wait.
        let pool = self
            .inbox
            .get_or_init(|| async {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&self.db.url)
                    .await
                    .unwrap()
            })
            .await;
        for _ in 0..1000 {
            let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM rbm_inbox")
                .fetch_one(pool)
                .await
                .unwrap();
            if waiting == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("acknowledged Google events were never applied");
    }

    pub async fn sms_to(&self, phone: &str) -> usize {
        self.s
            .twilio
            .messages()
            .iter()
            .filter(|m| m.to == phone)
            .count()
    }
}

/// A registration body due `deadline_ms` from now.
pub fn message(phone: &str, id: &str, deadline_ms: i64) -> Value {
    let deadline = chrono::Utc::now() + chrono::TimeDelta::milliseconds(deadline_ms);
    json!({
        "phone": phone,
        "message_id": id,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "sms": { "body": format!("Your code is {}", &id[..6]) },
    })
}

/// The first history entry of `kind` in a message resource.
pub fn event<'a>(m: &'a Value, kind: &str) -> &'a Value {
    m["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {m:#}"))
}

/// A time the API answered, parsed.
pub fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("not an RFC 3339 time ({e}): {v}"))
        .with_timezone(&chrono::Utc)
}

pub fn kinds(resource: &Value) -> Vec<String> {
    resource["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// A Google user or server event as the emulator would send it.
pub fn google_event(h: &Harness, event_type: &str, phone: &str, message_id: &str) -> Value {
    let event_id = format!("ev-{}", uuid::Uuid::new_v4().simple());
    let agent = format!("{}@rbm.goog", h.s.google.agent_id());
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    if event_type.starts_with("TTL_") {
        json!({ "phoneNumber": phone, "agentId": agent, "messageId": message_id,
                "eventType": event_type, "eventId": event_id, "sendTime": time })
    } else {
        json!({ "senderPhoneNumber": phone, "eventType": event_type, "eventId": event_id,
                "messageId": message_id, "sendTime": time, "agentId": agent })
    }
}
