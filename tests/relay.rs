//! Google's webhooks relayed to the agent's own endpoint, through the real
//! HTTP surface: byte-identical body and X-Goog-Signature, one relay per
//! event however often Google redelivers it, no relay of the handshake, and
//! an upstream that is down for a while catching up in order.

mod common;
#[path = "common/receiver.rs"]
mod receiver;
#[path = "common/replica.rs"]
mod replica;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use rbm_fallback::signature::google_verify;
use receiver::{Received, Receiver};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use sqlx::Connection;

async fn start_relaying(upstream: &str) -> Harness {
    start_relaying_with(upstream, &[]).await
}

async fn start_relaying_with(upstream: &str, extra: &[(&str, &str)]) -> Harness {
    let upstream = upstream.to_owned();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    start_with(move |c| {
        c.env.extend(extra);
        c.env.push(("RBMF_RELAY_URL".into(), upstream));
        fast_outbox(c);
    })
    .await
}

/// POSTs an envelope as Google does; returns the status.
async fn post_webhook(h: &Harness, body: &str, signature: &str) -> u16 {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(h.url("/webhooks/rbm"))
        .header(CONTENT_TYPE, "application/json")
        .header("X-Goog-Signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The decoded event inside a relayed envelope.
fn event_of(r: &Received) -> Value {
    let envelope = r.json();
    let data = B64
        .decode(envelope["message"]["data"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&data).unwrap()
}

fn user_message(h: &Harness, phone: &str, text: &str) -> Value {
    json!({ "senderPhoneNumber": phone, "messageId": uuid::Uuid::new_v4().to_string(),
            "sendTime": chrono::Utc::now().to_rfc3339(),
            "agentId": format!("{}@rbm.goog", h.s.google.agent_id()), "text": text })
}

#[tokio::test]
async fn relayed_webhooks_are_byte_identical_and_verifiable_by_the_agent() {
    let upstream = Receiver::start().await;
    let h = start_relaying(&format!("{}/agent/rbm?key=k1", upstream.url)).await;
    let phone = "+15557770001";

    // A user message (ignored by us), then a DELIVERED of a message we do
    // not track: the agent gets both, exactly as Google sent them.
    let (body1, sig1) = h.s.google.envelope(&user_message(&h, phone, "hello"));
    assert_eq!(post_webhook(&h, &body1, &sig1).await, 200);
    let (body2, sig2) =
        h.s.google
            .envelope(&google_event(&h, "DELIVERED", phone, "not-ours"));
    assert_eq!(post_webhook(&h, &body2, &sig2).await, 200);

    let got = upstream.wait_accepted(2).await;
    for (r, (body, sig)) in got.iter().zip([(&body1, &sig1), (&body2, &sig2)]) {
        assert_eq!(r.body.as_ref(), body.as_bytes(), "body unchanged");
        assert_eq!(r.header("x-goog-signature"), sig.as_str());
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.target, "/agent/rbm?key=k1");
        // The agent's own check (same client token) still passes.
        let envelope = r.json();
        let data = B64
            .decode(envelope["message"]["data"].as_str().unwrap())
            .unwrap();
        assert!(google_verify(
            h.s.google.client_token(),
            &data,
            r.header("x-goog-signature")
        ));
    }
    assert_eq!(event_of(&got[0])["text"], "hello");
    assert_eq!(event_of(&got[1])["eventType"], "DELIVERED");
}

#[tokio::test]
async fn redeliveries_and_the_handshake_are_not_relayed() {
    let upstream = Receiver::start().await;
    let h = start_relaying(&upstream.url).await;
    let phone = "+15557770002";

    let first = google_event(&h, "READ", phone, "m-1");
    let (body, sig) = h.s.google.envelope(&first);
    assert_eq!(post_webhook(&h, &body, &sig).await, 200);
    // Google redelivers when it missed our 200: the same event again.
    assert_eq!(post_webhook(&h, &body, &sig).await, 200);
    assert!(h.s.google.verify_webhook().await.unwrap());
    // A forged one is refused and relayed neither.
    let (forged, _) = h.s.google.envelope(&google_event(&h, "READ", phone, "m-x"));
    assert_eq!(post_webhook(&h, &forged, &sig).await, 401);
    let last = google_event(&h, "DELIVERED", phone, "m-2");
    let (body, sig) = h.s.google.envelope(&last);
    assert_eq!(post_webhook(&h, &body, &sig).await, 200);

    // Relays go in order, so once the last event is in, anything relayed
    // before it has arrived too.
    upstream
        .wait("the last event", |all| {
            all.iter()
                .any(|r| event_of(r)["eventId"] == last["eventId"])
        })
        .await;
    let ids: Vec<Value> = upstream
        .all()
        .iter()
        .map(|r| event_of(r)["eventId"].clone())
        .collect();
    assert_eq!(ids, [first["eventId"].clone(), last["eventId"].clone()]);
}

#[tokio::test]
async fn an_upstream_down_for_a_while_gets_everything_in_order() {
    let upstream = Receiver::start().await;
    upstream.set_failing(true);
    let h = start_relaying(&upstream.url).await;
    let phone = "+15557770003";

    let mut sent = Vec::new();
    for i in 0..8 {
        let event = if i % 2 == 0 {
            google_event(&h, "DELIVERED", phone, &format!("m-{i}"))
        } else {
            user_message(&h, phone, &format!("message {i}"))
        };
        // Google is answered while the agent is down.
        assert_eq!(h.s.google.post_event(&event).await.unwrap(), 200);
        sent.push(event);
    }
    // Several tries fail; every one of them is the head of the queue.
    let tries = upstream.wait_attempts(4).await;
    let first = sent[0]["eventId"].clone();
    assert!(
        tries.iter().all(|r| event_of(r)["eventId"] == first),
        "only the oldest relay is tried while it fails"
    );

    upstream.set_failing(false);
    let got = upstream.wait_accepted(sent.len()).await;
    let key = |e: &Value| e.get("eventId").unwrap_or(&e["messageId"]).clone();
    let got: Vec<Value> = got.iter().map(|r| key(&event_of(r))).collect();
    let want: Vec<Value> = sent.iter().map(key).collect();
    assert_eq!(got, want, "all of them, once each, in order");
}

#[tokio::test]
async fn relays_survive_a_restart_before_delivery() {
    let upstream = Receiver::start().await;
    upstream.set_failing(true);
    // A short lease: the crash may come before the failed try is settled,
    // and the row is then retried once the lease has expired.
    let mut h = start_relaying_with(
        &upstream.url,
        &[
            ("RBMF__OUTBOX__TIMEOUT_MS", "1000"),
            ("RBMF__OUTBOX__LEASE_MS", "2000"),
        ],
    )
    .await;
    let event = google_event(&h, "DELIVERED", "+15557770004", "m-r");
    assert_eq!(h.s.google.post_event(&event).await.unwrap(), 200);
    upstream.wait_attempts(1).await;

    // Recorded before the 200: a crash loses nothing.
    h.s.crash();
    upstream.set_failing(false);
    h.s.restart().unwrap();
    h.wait_ready().await;
    let got = upstream.wait_accepted(1).await;
    assert_eq!(event_of(&got[0])["eventId"], event["eventId"]);
}

#[tokio::test]
async fn nothing_is_relayed_without_a_relay_url() {
    let upstream = Receiver::start().await;
    let h = start().await;
    let event = google_event(&h, "DELIVERED", "+15557770005", "m-n");
    assert_eq!(h.s.google.post_event(&event).await.unwrap(), 200);
    let mut db = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert!(upstream.all().is_empty());
}

#[tokio::test]
async fn replicas_relay_each_webhook_once_and_in_order() {
    let upstream = Receiver::start().await;
    upstream.set_failing(true);
    let h = start_relaying(&upstream.url).await;
    let _others = [
        replica::Replica::spawn(&h.s.settings),
        replica::Replica::spawn(&h.s.settings),
    ];
    let mut sent = Vec::new();
    for i in 0..20 {
        let event = google_event(&h, "DELIVERED", "+15557770006", &format!("m-{i}"));
        assert_eq!(h.s.google.post_event(&event).await.unwrap(), 200);
        sent.push(event["eventId"].clone());
    }
    upstream.wait_attempts(3).await;
    upstream.set_failing(false);
    let got = upstream.wait_accepted(sent.len()).await;
    let got: Vec<Value> = got.iter().map(|r| event_of(r)["eventId"].clone()).collect();
    assert_eq!(got, sent, "each once, in order, whichever replica sent it");
}

#[tokio::test]
async fn delivered_rows_are_pruned_after_retention_and_pending_ones_kept() {
    let upstream = Receiver::start().await;
    let h = start_relaying_with(
        &upstream.url,
        &[("RBMF__RETENTION__SWEEP_INTERVAL_MS", "100")],
    )
    .await;
    let delivered = google_event(&h, "DELIVERED", "+15557770007", "m-p1");
    assert_eq!(h.s.google.post_event(&delivered).await.unwrap(), 200);
    upstream.wait_accepted(1).await;
    upstream.set_failing(true);
    let pending = google_event(&h, "DELIVERED", "+15557770007", "m-p2");
    assert_eq!(h.s.google.post_event(&pending).await.unwrap(), 200);
    upstream.wait_attempts(2).await;

    let mut db = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
    // Everything ages past the 30 days kept by default.
    sqlx::query(
        "UPDATE outbox SET created_at = created_at - interval '40 days',
                           delivered_at = delivered_at - interval '40 days'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left: Vec<bool> =
            sqlx::query_scalar("SELECT delivered_at IS NOT NULL FROM outbox ORDER BY id")
                .fetch_all(&mut db)
                .await
                .unwrap();
        if left == [false] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered row never pruned: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
