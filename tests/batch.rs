//! POST /v1/messages:batch: per-item validation and answers, one transaction
//! for the accepted items, the same idempotency as single registrations.

mod common;

use common::*;
use serde_json::{json, Value};

async fn batch(h: &Harness, messages: Vec<Value>) -> (u16, Value) {
    let r = h
        .api
        .post(h.url("/v1/messages:batch"))
        .json(&json!({ "messages": messages }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn items_are_answered_one_by_one_and_the_accepted_ones_stored() {
    let h = start().await;
    let phone = "+15554000001";
    let existing = uuid::Uuid::new_v4().to_string();
    let existing_body = message("+15554000002", &existing, 600_000);
    assert_eq!(h.post(&existing_body).await.status(), 201);
    let conflicting = {
        let mut b = existing_body.clone();
        b["sms"]["body"] = json!("something else");
        b
    };
    let fresh = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &fresh, None);
    let mut bad_phone = message("+15554000003", "bad-phone", 600_000);
    bad_phone["phone"] = json!("12345");
    let repeated = uuid::Uuid::new_v4().to_string();
    let items = vec![
        message(phone, &fresh, 300),
        existing_body.clone(),
        conflicting,
        bad_phone,
        json!({ "phone": "+15554000004" }),
        json!("not an object"),
        message("+15554000005", &repeated, 600_000),
        message("+15554000005", &repeated, 600_000),
    ];
    let (status, body) = batch(&h, items).await;
    assert_eq!(status, 200, "{body:#}");
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 200, 409, 422, 422, 422, 201, 200]);
    let r = &body["results"];
    assert_eq!(r[0]["message"]["state"], "pending");
    assert_eq!(r[2]["error"]["code"], "message_id_conflict");
    assert_eq!(r[3]["error"]["field"], "phone");
    assert_eq!(r[4]["error"]["field"], "sms");
    assert_eq!(
        (
            body["created"].as_u64(),
            body["existing"].as_u64(),
            body["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(4))
    );
    // Stored, with their history, and handled like any other message.
    let m = h.get(&fresh).await;
    assert_eq!(kinds(&m)[0], "registered");
    h.wait_state(&fresh, "sms_delivered").await;
    assert_eq!(h.sms_to(phone).await, 1);
    assert_eq!(
        h.get(&existing).await["sms"]["body"],
        existing_body["sms"]["body"]
    );
    assert_eq!(
        h.api
            .get(h.url("/v1/messages/bad-phone"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// One item of the batch was reported delivered before it was registered:
/// the whole batch is stored (the others too, and a repeat stays a repeat),
/// and that one is settled by the report.
#[tokio::test]
async fn a_batch_with_a_message_google_reported_first_stores_all_and_applies_the_report() {
    let h = start().await;
    let early_phone = "+15554000021";
    let early = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(early_phone, &early, None);
    h.google_reports("DELIVERED", early_phone, &early).await;
    let existing = uuid::Uuid::new_v4().to_string();
    let existing_body = message("+15554000022", &existing, 600_000);
    assert_eq!(h.post(&existing_body).await.status(), 201);
    let other = uuid::Uuid::new_v4().to_string();
    let items = vec![
        message("+15554000023", &other, 600_000),
        message(early_phone, &early, 600_000),
        existing_body,
    ];
    let (status, body) = batch(&h, items).await;
    assert_eq!(status, 200, "{body:#}");
    let r = &body["results"];
    let statuses: Vec<u64> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 200], "{body:#}");
    assert_eq!(r[1]["message"]["state"], "delivered", "{body:#}");
    assert_eq!(kinds(&h.get(&early).await), ["registered", "rcs_delivered"]);
    let m = h.get(&other).await;
    assert_eq!(m["state"], "pending");
    assert_eq!(kinds(&m), ["registered"]);
}

#[tokio::test]
async fn an_empty_or_oversized_batch_is_refused_and_stores_nothing() {
    let h = start().await;
    let (status, body) = batch(&h, vec![]).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "messages");
    let many: Vec<Value> = (0..1001)
        .map(|i| {
            message(
                &format!("+1555410{i:04}"),
                &format!("oversize-{i}"),
                600_000,
            )
        })
        .collect();
    let (status, _) = batch(&h, many).await;
    assert_eq!(status, 422);
    let list: Value = h.get_json("/v1/messages").await;
    assert_eq!(list["messages"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_full_batch_of_a_thousand_is_stored_in_one_go() {
    let h = start().await;
    let items: Vec<Value> = (0..1000)
        .map(|i| message(&format!("+1555420{i:04}"), &format!("full-{i}"), 600_000))
        .collect();
    let (status, body) = batch(&h, items).await;
    assert_eq!(status, 200);
    assert_eq!(body["created"], 1000);
    let page: Value = h.get_json("/v1/messages?limit=500&state=pending").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 500);
    assert!(page["next_cursor"].is_string());
}

#[tokio::test]
async fn past_deadlines_are_fine_only_for_retries_of_stored_items() {
    let h = start().await;
    let phone = "+15554000011";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    let stored = message(phone, &id, 300);
    assert_eq!(h.post(&stored).await.status(), 201);
    // The deadline has passed once the service revoked the message.
    h.s.google
        .wait_for_revokes(1, std::time::Duration::from_secs(15))
        .await
        .unwrap();
    let late = message("+15554000012", &uuid::Uuid::new_v4().to_string(), -60_000);
    let (status, body) = batch(&h, vec![stored, late]).await;
    assert_eq!(status, 200, "{body:#}");
    let r = &body["results"];
    assert_eq!(r[0]["status"], 200, "{body:#}");
    assert_eq!(r[0]["message"]["message_id"], id.as_str());
    assert_eq!(r[1]["status"], 422, "{body:#}");
    assert_eq!(r[1]["error"]["field"], "deadline");
    assert_eq!(
        (body["existing"].clone(), body["failed"].clone()),
        (json!(1), json!(1))
    );
}

/// Each of a batch's answers is the message as a read returns it, whatever
/// the request held (sender, metadata, callback, relative deadline, policy,
/// send mode). The send-mode message is compared only on what its sending
/// cannot change, as the scheduler takes it at once.
#[tokio::test]
async fn a_batch_answers_each_message_as_stored() {
    let h = start_with(|c| {
        c.env.push((
            "RBMF_CALLBACK_SECRET".into(),
            "whsec_dGVzdC1jYWxsYmFjay1zZWNyZXQtMzItYnl0ZXMh".into(),
        ));
    })
    .await;
    let mut plain = message("+15554000101", &uuid::Uuid::new_v4().to_string(), 600_000);
    plain["sms"]["from"] = json!("MyBrand");
    plain["metadata"] = json!({ "order": 42, "tags": ["otp"], "n": { "b": 1.5, "a": null } });
    plain["callback_url"] = json!("https://agent.example.com/cb");
    let relative = json!({
        "phone": "+15554000102",
        "message_id": uuid::Uuid::new_v4().to_string(),
        "revoke_after_secs": 600,
        "sms": { "body": "Your code is 777777" },
        "policy": {
            "on_uncertain": "send_sms",
            "confirm_window_ms": 2500,
            "quiet_hours": { "start": "21:00", "end": "08:00", "time_zone": "Europe/Paris" }
        },
    });
    let send = json!({
        "phone": "+15554000103",
        "message_id": uuid::Uuid::new_v4().to_string(),
        "deadline": (chrono::Utc::now() + chrono::TimeDelta::minutes(10))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "rcs": {
            "contentMessage": { "text": "Your code is 424242" },
            "messageTrafficType": "TRANSACTION"
        },
        "sms": { "body": "Your code is 424242" },
        "metadata": { "k": "v" },
    });
    let (status, body) = batch(&h, vec![plain, relative, send]).await;
    assert_eq!(status, 200, "{body:#}");
    let without_history = |mut m: Value| {
        m.as_object_mut().unwrap().remove("events");
        m
    };
    for (i, r) in body["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["status"], 201, "{r:#}");
        let answered = without_history(r["message"].clone());
        let read = without_history(h.get(answered["message_id"].as_str().unwrap()).await);
        if i < 2 {
            assert_eq!(answered, read);
        } else {
            for key in [
                "message_id",
                "agent_id",
                "phone",
                "deadline",
                "created_at",
                "metadata",
                "rcs",
                "policy",
                "callback_url",
            ] {
                assert_eq!(answered[key], read[key], "{key}");
            }
        }
    }
}
