//! Several RBM agents in one deployment, through the real HTTP surface: the
//! sandbox's own agent (A, configured by environment as a single-agent
//! deployment would be) plus a second one (B) from `[[agents]]` in a config
//! file, each with its own Google emulator, service account, client token,
//! relay URL, default deadline, SMS sender and API token.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::time::Duration;

use common::*;
use rbm_fallback::emulator::google::{GoogleEmulator, GoogleEmulatorConfig};
use receiver::Receiver;
use serde_json::{json, Value};

const B: &str = "agent-b";
const B_CLIENT_TOKEN: &str = "AGENTBCLIENTTOKEN";
const B_API_TOKEN: &str = "agent-b-only-token-0123456789";
const B_FROM: &str = "+15005550009";
const WAIT: Duration = Duration::from_secs(15);

struct Two {
    h: Harness,
    /// Agent B's Google.
    b: GoogleEmulator,
    /// Agent B's own webhook endpoint, where its events are relayed.
    relay_b: Receiver,
    dir: std::path::PathBuf,
}

impl Drop for Two {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_two() -> Two {
    start_two_with("").await
}

/// As [`start_two`], with `extra` lines in agent B's entry.
async fn start_two_with(extra: &str) -> Two {
    let relay_b = Receiver::start().await;
    let b = GoogleEmulator::start(GoogleEmulatorConfig {
        agent_id: B.into(),
        client_token: B_CLIENT_TOKEN.into(),
        default_phone: PhoneBehaviour::Offline,
        ..GoogleEmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("rbmf-agents-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("agent-b.json");
    std::fs::write(&key, b.service_account_key_json()).unwrap();
    let config = dir.join("agents.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[agents]]
id = "{B}@rbm.goog"
base_url = "{base}"
service_account_key = "{key}"
client_token = "{B_CLIENT_TOKEN}"
relay_url = "{relay}/b"
default_deadline_secs = 1
sms_from = "{B_FROM}"
api_tokens = ["{B_API_TOKEN}"]
{extra}
"#,
            base = b.base_url(),
            key = key.display(),
            relay = relay_b.url,
        ),
    )
    .unwrap();
    let h = start_with(|cfg| cfg.config_file = Some(config)).await;
    b.set_webhook_url(&format!("{}/webhooks/rbm/{B}", h.s.url));
    Two { h, b, relay_b, dir }
}

fn client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .build()
        .unwrap()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Registers a message of agent B, sent through B's Google, due in 10 minutes.
async fn register_b(t: &Two, phone: &str) -> String {
    let id = new_id();
    t.b.agent_send(phone, &id, None);
    let r =
        t.h.post(
            &json!({ "agent_id": format!("{B}@rbm.goog"), "phone": phone, "message_id": id,
                       "revoke_after_secs": 600, "sms": { "body": "code 1" } }),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    id
}

fn delivered(agent: &str, phone: &str, id: &str) -> Value {
    json!({ "senderPhoneNumber": phone, "eventType": "DELIVERED",
            "eventId": format!("ev-{}", uuid::Uuid::new_v4().simple()),
            "messageId": id, "sendTime": "2026-01-15T10:00:01.123456Z",
            "agentId": format!("{agent}@rbm.goog") })
}

async fn post_signed(t: &Two, path: &str, body: String, signature: &str) -> u16 {
    reqwest::Client::new()
        .post(t.h.url(path))
        .header("content-type", "application/json")
        .header("x-goog-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn each_agent_s_revoke_reaches_its_own_google_with_its_own_settings() {
    let t = start_two().await;
    let a_phone = "+14155550301";
    let b_phone = "+14155550302";
    let a_id = t.h.send_and_register(a_phone, 300).await;

    // B's registration gives no deadline: its default_deadline_secs applies,
    // and its default SMS sender.
    let b_id = new_id();
    t.b.agent_send(b_phone, &b_id, None);
    let r =
        t.h.post(
            &json!({ "agent_id": B, "phone": b_phone, "message_id": b_id,
                       "sms": { "body": "Your code is 4242" } }),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["agent_id"], B);
    assert_eq!(m["sms"]["from"], B_FROM);

    let a = t.h.wait_outcome(&a_id, "sms").await;
    let b = t.h.wait_outcome(&b_id, "sms").await;
    assert_ne!(a["sms"]["from"], B_FROM);
    assert_eq!(b["sms"]["from"], B_FROM);

    // Each Google saw only its own agent's revoke, authorised by a token
    // its own token endpoint issued (the emulators refuse any other).
    let a_revokes = t.h.s.google.revokes();
    let b_revokes = t.b.wait_for_revokes(1, WAIT).await.unwrap();
    assert!(
        a_revokes.iter().all(|r| r.message_id == a_id),
        "{a_revokes:?}"
    );
    assert!(
        b_revokes.iter().all(|r| r.message_id == b_id),
        "{b_revokes:?}"
    );
    assert_eq!(a_revokes[0].status, 200, "{a_revokes:?}");
    assert_eq!(b_revokes[0].status, 200, "{b_revokes:?}");
    assert_eq!(b_revokes[0].agent_id, B);
    assert_eq!(a_revokes[0].agent_id, t.h.s.google.agent_id());

    // An agent that is not configured is refused, naming the field.
    let r =
        t.h.post(
            &json!({ "agent_id": "agent-c", "phone": b_phone, "message_id": new_id(),
                       "revoke_after_secs": 60, "sms": { "body": "x" } }),
        )
        .await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "agent_id");
}

#[tokio::test]
async fn webhooks_are_verified_with_their_agent_s_token_and_relayed_to_its_url() {
    let t = start_two().await;
    let phone = "+14155550311";
    let first = register_b(&t, phone).await;
    let second = register_b(&t, phone).await;
    let third = register_b(&t, phone).await;

    // B's Google signs with B's token, at B's own webhook URL.
    t.b.deliver(&first, true).await;
    t.h.applied().await;
    assert_eq!(t.h.get(&first).await["state"], "delivered");

    // Signed with A's token but claiming to be B's: refused on both routes,
    // nothing recorded.
    let (body, sig) = t.h.s.google.envelope(&delivered(B, phone, &second));
    assert_eq!(
        post_signed(&t, "/webhooks/rbm", body.clone(), &sig).await,
        403
    );
    assert_eq!(
        post_signed(&t, &format!("/webhooks/rbm/{B}"), body, &sig).await,
        401
    );
    let m = t.h.get(&second).await;
    assert_eq!(m["state"], "pending");
    assert_eq!(kinds(&m), ["registered"]);

    // B's signature on the shared URL is found among the agents' tokens.
    let (body, sig) = t.b.envelope(&delivered(B, phone, &second));
    assert_eq!(
        post_signed(&t, "/webhooks/rbm", body.clone(), &sig).await,
        200
    );
    t.h.applied().await;
    assert_eq!(t.h.get(&second).await["state"], "delivered");
    // ...but not on A's own URL.
    let a_path = format!("/webhooks/rbm/{}", t.h.s.google.agent_id());
    let (body, sig) = t.b.envelope(&delivered(B, phone, &third));
    assert_eq!(post_signed(&t, &a_path, body, &sig).await, 401);
    assert_eq!(t.h.get(&third).await["state"], "pending");
    assert_eq!(
        post_signed(&t, "/webhooks/rbm/agent-c", "{}".into(), "x").await,
        404
    );

    // The handshake at B's URL knows only B's client token.
    let handshake = |token: &str| {
        let url = t.h.url(&format!("/webhooks/rbm/{B}"));
        let body = json!({ "clientToken": token, "secret": "s3cret" });
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let a_token = t.h.s.google.client_token().to_owned();
    assert_eq!(handshake(&a_token).await.status(), 403);
    let ok = handshake(B_CLIENT_TOKEN).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "s3cret");

    // B's two accepted events went to B's relay URL; A's agent relays nowhere.
    let relayed = t.relay_b.wait_accepted(2).await;
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    for r in &relayed {
        assert_eq!(r.target, "/b");
        let data = r.json()["message"]["data"].as_str().unwrap().to_owned();
        use base64::Engine;
        let event: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(event["agentId"], format!("{B}@rbm.goog"));
    }
}

#[tokio::test]
async fn an_agent_s_api_token_acts_only_for_that_agent() {
    let t = start_two().await;
    let phone = "+14155550321";
    let a_id = t.h.send_and_register(phone, 600_000).await;
    let b_only = client(B_API_TOKEN);

    // Without agent_id, the token's only agent is meant.
    let b_id = new_id();
    let r = b_only
        .post(t.h.url("/v1/messages"))
        .json(
            &json!({ "phone": phone, "message_id": b_id, "revoke_after_secs": 600,
                       "sms": { "body": "x" } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["agent_id"], B);

    // A's agent is out of its reach: registering, reading, cancelling.
    let a_agent = t.h.s.google.agent_id().to_owned();
    let r = b_only
        .post(t.h.url("/v1/messages"))
        .json(
            &json!({ "agent_id": a_agent, "phone": phone, "message_id": new_id(),
                       "revoke_after_secs": 600, "sms": { "body": "x" } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let path = t.h.url(&format!("/v1/messages/{a_id}"));
    assert_eq!(b_only.get(&path).send().await.unwrap().status(), 403);
    assert_eq!(b_only.delete(&path).send().await.unwrap().status(), 403);
    assert_eq!(t.h.get(&a_id).await["state"], "pending");

    // Listing shows it only B's messages; the deployment's token sees both.
    let ids = |v: Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mine: Value = b_only
        .get(t.h.url("/v1/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(mine), std::slice::from_ref(&b_id));
    let all: Value = t.h.get_json("/v1/messages").await;
    let all = ids(all);
    assert!(all.contains(&a_id) && all.contains(&b_id), "{all:?}");

    // The operator page shows every agent: not for a limited token.
    let page = t.h.url("/dashboard");
    assert_eq!(b_only.get(&page).send().await.unwrap().status(), 401);
    assert_eq!(t.h.api.get(&page).send().await.unwrap().status(), 200);

    // Its own message it may cancel.
    let r = b_only
        .delete(t.h.url(&format!("/v1/messages/{b_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_early_delivery_applies_to_its_agent_s_message_in_a_mixed_batch() {
    let t = start_two().await;
    let (a_phone, b_phone) = ("+14155550321", "+14155550322");
    let (a_id, b_id) = (new_id(), new_id());
    t.h.s.google.agent_send(a_phone, &a_id, None);
    t.b.agent_send(b_phone, &b_id, None);
    // B's phone was online at once: its DELIVERED arrives before the agent
    // registers the message.
    let (body, sig) = t.b.envelope(&delivered(B, b_phone, &b_id));
    assert_eq!(
        post_signed(&t, &format!("/webhooks/rbm/{B}"), body, &sig).await,
        200
    );
    // Applied, and found no message yet: the registration applies it.
    t.h.applied().await;
    // One batch, agent A's message first.
    let r = reqwest::Client::new()
        .post(t.h.url("/v1/messages:batch"))
        .bearer_auth(&t.h.s.api_token)
        .json(&json!({ "messages": [
            { "phone": a_phone, "message_id": a_id, "revoke_after_secs": 600,
              "sms": { "body": "code a" } },
            { "agent_id": format!("{B}@rbm.goog"), "phone": b_phone, "message_id": b_id,
              "revoke_after_secs": 600, "sms": { "body": "code b" } },
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = t.h.get(&b_id).await;
    assert_eq!(m["state"], "delivered", "{m:#}");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(t.h.get(&a_id).await["state"], "pending");
}

#[tokio::test]
async fn an_agent_s_own_rate_limit_spaces_its_revokes_and_only_its_own() {
    // B may make 2 calls a second (with a burst of 2); A, as the deployment,
    // is not limited.
    let t = start_two_with("rbm_rate_per_sec = 2").await;
    let n = 5;
    let (mut a_ids, mut b_ids) = (Vec::new(), Vec::new());
    for i in 0..n {
        a_ids.push(t.h.send_and_register(&format!("+1415555040{i}"), 300).await);
        let (phone, id) = (format!("+1415555041{i}"), new_id());
        t.b.agent_send(&phone, &id, None);
        let r =
            t.h.post(&json!({ "agent_id": B, "phone": phone, "message_id": id,
                           "revoke_after_secs": 1, "sms": { "body": "code b" } }))
                .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        b_ids.push(id);
    }
    let b = revokes_left(&t, b_ids).await;
    // Call k (from 0) of a bucket of 2 a second with a burst of 2 cannot
    // leave before (k - 1) / 2 seconds after the first, less 2 ms for the
    // wall clock against the bucket's monotonic one.
    for (k, at) in b.iter().enumerate().skip(2) {
        let earliest = chrono::TimeDelta::milliseconds((k as i64 - 1) * 500 - 2);
        assert!(
            *at - b[0] >= earliest,
            "B's call {k} left {:?} after the first",
            *at - b[0]
        );
    }
    // A's revokes, due as close together, were not held to B's rate: under
    // it the fifth could not have left before 1.5 s after the first.
    let a = revokes_left(&t, a_ids).await;
    assert!(
        a[n - 1] - a[0] < chrono::TimeDelta::milliseconds(1500),
        "{a:?}"
    );
}

/// When the revokes of `ids` left, by the history of their answers, once
/// each message has its SMS; sorted.
async fn revokes_left(t: &Two, ids: Vec<String>) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut times = Vec::new();
    for id in ids {
        let m = t.h.wait_outcome(&id, "sms").await;
        times.push(time(&event(&m, "revoke_ok")["detail"]["sent_at"]));
    }
    times.sort();
    times
}
