//! Outcome and SMS-status callbacks, through the real HTTP surface: signed
//! per Standard Webhooks (checked here with an independent implementation),
//! sent to the message's own URL when it has one, retried after failures
//! with the same webhook-id.

mod common;
#[path = "common/receiver.rs"]
mod receiver;
#[path = "common/replica.rs"]
mod replica;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use receiver::{Received, Receiver};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::Connection;

const KEY: [u8; 32] = *b"an-example-key-of-32-bytes-long!";

fn secret() -> String {
    format!("whsec_{}", B64.encode(KEY))
}

async fn start_calling_back(default_url: Option<&str>) -> Harness {
    let default_url = default_url.map(str::to_owned);
    start_with(move |c| {
        if let Some(url) = default_url {
            c.env.push(("RBMF_CALLBACK_URL".into(), url));
        }
        c.env.push(("RBMF_CALLBACK_SECRET".into(), secret()));
        fast_outbox(c);
    })
    .await
}

/// What a receiver does, written from the specification: the signed
/// content is "{id}.{timestamp}.{body}", the key the base64 after "whsec_",
/// and the header a space-separated list of "v1,<base64>" entries.
fn verify(r: &Received) -> Result<(), String> {
    let id = r.header("webhook-id");
    let timestamp = r.header("webhook-timestamp");
    let ts: i64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return Err(format!("timestamp {ts} outside tolerance"));
    }
    let key = B64
        .decode(secret().strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&r.body);
    let expected = B64.encode(mac.finalize().into_bytes());
    let ok = r
        .header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "no matching signature in {:?}",
            r.header("webhook-signature")
        ))
    }
}

fn of_type<'a>(got: &'a [Received], kind: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.json()["type"] == kind).collect()
}

#[tokio::test]
async fn a_delivered_message_calls_back_its_outcome_signed() {
    let receiver = Receiver::start().await;
    let h = start_calling_back(Some(&format!("{}/hooks?x=1", receiver.url))).await;
    let phone = "+15558880001";
    let id = h.send_and_register(phone, 600_000).await;
    h.s.google.deliver(&id, true).await;
    h.wait_state(&id, "delivered").await;

    let got = receiver.wait_accepted(1).await;
    assert_eq!(got.len(), 1, "one event: {got:?}");
    let r = &got[0];
    verify(r).unwrap();
    assert_eq!(r.target, "/hooks?x=1");
    assert_eq!(r.header("content-type"), "application/json");
    assert!(!r.header("webhook-id").is_empty());
    let event = r.json();
    assert_eq!(event["type"], "message.outcome");
    assert!(event["timestamp"].is_string());
    assert_eq!(event["data"]["message_id"], id.as_str());
    assert_eq!(event["data"]["state"], "delivered");
    assert_eq!(event["data"]["outcome"], "rcs");
    assert_eq!(event["data"]["agent_id"], h.s.google.agent_id());

    // A tampered body no longer verifies: the check above can fail.
    let mut tampered = r.clone();
    tampered.body = r.body.iter().rev().copied().collect::<Vec<u8>>().into();
    assert!(verify(&tampered).is_err());
}

#[tokio::test]
async fn an_sms_fallback_calls_back_each_status_and_the_outcome() {
    let receiver = Receiver::start().await;
    let h = start_calling_back(Some(&receiver.url)).await;
    let phone = "+15558880002";
    let id = h.send_and_register(phone, 300).await;
    h.wait_state(&id, "sms_delivered").await;

    // Callbacks are delivered concurrently, so in any order: wait for both.
    let got = receiver
        .wait("the outcome and the delivered status", |all| {
            !of_type(all, "message.outcome").is_empty()
                && of_type(all, "message.sms_status")
                    .iter()
                    .any(|r| r.json()["data"]["sms_status"] == "delivered")
        })
        .await;
    for r in &got {
        verify(r).unwrap();
    }
    let statuses: Vec<Value> = of_type(&got, "message.sms_status")
        .iter()
        .map(|r| r.json()["data"]["sms_status"].clone())
        .collect();
    assert!(statuses.contains(&json!("delivered")), "{statuses:?}");
    assert!(statuses.len() >= 2, "each status change: {statuses:?}");
    let outcome = of_type(&got, "message.outcome");
    assert_eq!(outcome.len(), 1);
    let data = &outcome[0].json()["data"];
    assert_eq!(data["state"], "sms_delivered");
    assert_eq!(data["outcome"], "sms");
    assert!(data["sms_sid"].is_string());
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), got.len(), "one id per event");
}

#[tokio::test]
async fn a_message_callback_url_overrides_the_default() {
    let default = Receiver::start().await;
    let own = Receiver::start().await;
    let h = start_calling_back(Some(&default.url)).await;
    let phone = "+15558880003";

    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    let mut body = message(phone, &id, 600_000);
    body["callback_url"] = json!(format!("{}/mine", own.url));
    let r = h.post(&body).await;
    assert_eq!(r.status(), 201);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["callback_url"], format!("{}/mine", own.url));
    // A retry with the same URL is the same request; another URL conflicts.
    assert_eq!(h.post(&body).await.status(), 200);
    let mut other = body.clone();
    other["callback_url"] = json!("https://elsewhere.example.com/");
    assert_eq!(h.post(&other).await.status(), 409);

    let plain = h.send_and_register(phone, 600_000).await;
    h.s.google.deliver(&id, true).await;
    h.s.google.deliver(&plain, true).await;

    let mine = own.wait_accepted(1).await;
    assert_eq!(mine[0].target, "/mine");
    assert_eq!(mine[0].json()["data"]["message_id"], id.as_str());
    verify(&mine[0]).unwrap();
    let theirs = default.wait_accepted(1).await;
    assert_eq!(theirs[0].json()["data"]["message_id"], plain.as_str());
    assert!(
        default
            .all()
            .iter()
            .all(|r| r.json()["data"]["message_id"] != id.as_str()),
        "the overridden message never goes to the default"
    );
}

#[tokio::test]
async fn callback_urls_are_validated() {
    let h = start_calling_back(None).await;
    for bad in [json!("not a url"), json!("ftp://x.example.com/"), json!(7)] {
        let mut body = message("+15558880004", &uuid::Uuid::new_v4().to_string(), 60_000);
        body["callback_url"] = bad.clone();
        let r = h.post(&body).await;
        assert_eq!(r.status(), 422, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["field"], "callback_url", "{e}");
    }
    // The batch endpoint takes and shows it too.
    let mut item = message("+15558880004", &uuid::Uuid::new_v4().to_string(), 60_000);
    item["callback_url"] = json!("https://agent.example.com/cb");
    let r = h
        .api
        .post(h.url("/v1/messages:batch"))
        .json(&json!({ "messages": [item] }))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["status"], 201, "{v}");
    assert_eq!(
        v["results"][0]["message"]["callback_url"],
        "https://agent.example.com/cb"
    );
}

#[tokio::test]
async fn callback_urls_need_a_signing_secret() {
    let h = start().await;
    let mut body = message("+15558880005", &uuid::Uuid::new_v4().to_string(), 60_000);
    body["callback_url"] = json!("https://agent.example.com/cb");
    let r = h.post(&body).await;
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "callback_url", "{e}");
    let why = e["error"]["message"].as_str().unwrap();
    assert!(why.contains("RBMF_CALLBACK_SECRET"), "{e}");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_again_with_the_same_id() {
    let receiver = Receiver::start().await;
    receiver.set_failing(true);
    let h = start_calling_back(Some(&receiver.url)).await;
    let id = h.send_and_register("+15558880006", 600_000).await;
    h.s.google.deliver(&id, true).await;

    let tries = receiver.wait_attempts(3).await;
    receiver.set_failing(false);
    let got = receiver.wait_accepted(1).await;
    verify(&got[0]).unwrap();
    let all = receiver.all();
    assert!(all.len() >= 4);
    for r in all.iter().chain(&tries) {
        assert_eq!(r.header("webhook-id"), got[0].header("webhook-id"));
        assert_eq!(r.body, got[0].body, "the same event each time");
        verify(r).unwrap();
    }
}

#[tokio::test]
async fn replicas_send_each_callback_once() {
    let receiver = Receiver::start().await;
    let h = start_calling_back(Some(&receiver.url)).await;
    let _others = [
        replica::Replica::spawn(&h.s.settings),
        replica::Replica::spawn(&h.s.settings),
    ];
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            h.send_and_register(&format!("+155588810{i:02}"), 600_000)
                .await,
        );
    }
    for id in &ids {
        h.s.google.deliver(id, true).await;
    }
    receiver.wait_accepted(ids.len()).await;
    // Once every row is settled as delivered, no replica sends it again.
    let mut db = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
                .fetch_one(&mut db)
                .await
                .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} rows never settled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = receiver.accepted();
    assert_eq!(got.len(), ids.len(), "no callback twice");
    let mut seen: Vec<String> = got
        .iter()
        .map(|r| r.json()["data"]["message_id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
}
