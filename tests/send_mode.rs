//! Send mode and per-message policies, end to end: rbm-fallback sends the
//! RBM message itself (TTL just after the deadline), falls back at once for phones
//! Google cannot reach, remembers them, and applies each message's policy
//! (on_uncertain, confirm window, quiet hours) and SMS checks.

mod common;
#[path = "common/replica.rs"]
mod replica;

use std::time::Duration;

use common::*;
use rbm_fallback::emulator::google::{GoogleFaults, PhoneBehaviour};
use rbm_fallback::sandbox::demo::quiet_hours_now;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn in_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A send-mode registration due `deadline_ms` from now.
fn send(phone: &str, deadline_ms: i64) -> Value {
    json!({
        "phone": phone,
        "message_id": uuid::Uuid::new_v4().to_string(),
        "deadline": in_ms(deadline_ms),
        "rcs": {
            "contentMessage": { "text": "Your code is 424242" },
            "messageTrafficType": "TRANSACTION"
        },
        "sms": { "body": "Your code is 424242" },
    })
}

async fn create(h: &Harness, body: &Value) -> Value {
    let r = h.post(body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v:#}");
    v
}

#[tokio::test]
async fn sends_the_rbm_message_with_its_ttl_at_the_deadline() {
    let h = start().await;
    let phone = "+15557000001";
    h.s.google.set_phone(
        phone,
        PhoneBehaviour::Online {
            delay: Duration::from_millis(100),
            read_after: None,
        },
    );
    let body = send(phone, 60_000);
    let m = create(&h, &body).await;
    assert_eq!(m["mode"], "send");
    assert_eq!(m["rcs"], body["rcs"]);
    assert_eq!(m["traffic_type"], "TRANSACTION");
    let id = m["message_id"].as_str().unwrap().to_owned();

    let sends = h.s.google.wait_for_sends(1, WAIT).await.unwrap();
    assert_eq!(sends[0].message_id, id);
    assert_eq!(sends[0].status, 200);
    assert_eq!(sends[0].traffic_type.as_deref(), Some("TRANSACTION"));
    // Google's TTL ends just after our deadline, so that our revoke comes first.
    let deadline = chrono::DateTime::parse_from_rfc3339(m["deadline"].as_str().unwrap()).unwrap();
    let expire = sends[0].expire_time.as_deref().expect("an expireTime");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(expire).unwrap(),
        deadline + chrono::TimeDelta::from_std(rbm_fallback::domain::RCS_TTL_MARGIN).unwrap()
    );
    assert_eq!(sends[0].ttl, None);

    let m = h.wait_state(&id, "delivered").await;
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(
        kinds(&m),
        [
            "registered",
            "rcs_send_attempt",
            "rcs_sent",
            "rcs_delivered"
        ]
    );
    assert!(h.s.google.revokes().is_empty());
    assert_eq!(h.sms_to(phone).await, 0);
}

#[tokio::test]
async fn an_undelivered_send_is_revoked_and_sent_as_sms_even_without_any_webhook() {
    let h = start().await;
    let phone = "+15557000002";
    h.s.google.set_phone(phone, PhoneBehaviour::Offline);
    // Not one event from Google reaches the service: the revoke's answer
    // alone must decide.
    h.s.google.set_faults(GoogleFaults {
        webhook_drop_rate: 1.0,
        ..GoogleFaults::default()
    });
    let m = create(&h, &send(phone, 2500)).await;
    let id = m["message_id"].as_str().unwrap();
    let m = h.wait_state(id, "sms_delivered").await;
    assert_eq!(m["outcome"], "sms");
    assert_eq!(
        &kinds(&m)[..6],
        [
            "registered",
            "rcs_send_attempt",
            "rcs_sent",
            "revoke_attempt",
            "revoke_ok",
            "sms_attempt"
        ]
    );
    assert_eq!(h.s.google.revokes()[0].status, 200);
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn a_phone_without_rcs_gets_the_sms_at_once_and_is_remembered() {
    let h = start().await;
    let phone = "+15557000003";
    h.s.google.set_phone(phone, PhoneBehaviour::NotRcs);
    // The deadline is far: the SMS must not wait for it.
    let m = create(&h, &send(phone, 600_000)).await;
    let id = m["message_id"].as_str().unwrap().to_owned();
    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(m["outcome"], "sms");
    let unreachable = event(&m, "rcs_unreachable");
    assert_eq!(unreachable["detail"]["status"], 404);
    assert!(unreachable["detail"]["error"]
        .as_str()
        .unwrap()
        .contains("not found"));
    assert!(h.s.google.revokes().is_empty());

    // The next message to that phone skips Google altogether.
    let m = create(&h, &send(phone, 600_000)).await;
    assert_eq!(m["state"], "sms_sending");
    assert!(event(&m, "registered")["detail"]["note"]
        .as_str()
        .unwrap()
        .contains("straight to SMS"));
    let second = m["message_id"].as_str().unwrap().to_owned();
    h.wait_state(&second, "sms_delivered").await;
    assert_eq!(h.s.google.sends().len(), 1);
    assert_eq!(h.sms_to(phone).await, 2);

    // A delivery to the phone (it got RCS since) ends the memory.
    let tracked = uuid::Uuid::new_v4().to_string();
    let r = h.post(&message(phone, &tracked, 600_000)).await;
    assert_eq!(r.status(), 201);
    h.google_reports("DELIVERED", phone, &tracked).await;
    h.wait_state(&tracked, "delivered").await;
    h.s.google.set_phone(phone, PhoneBehaviour::Offline);
    let m = create(&h, &send(phone, 600_000)).await;
    assert_eq!(m["state"], "rcs_sending");
    h.s.google.wait_for_sends(2, WAIT).await.unwrap();
}

#[tokio::test]
async fn an_agent_not_launched_for_the_user_falls_back_at_once() {
    let h = start().await;
    let phone = "+15557000004";
    h.s.google.set_phone(phone, PhoneBehaviour::NotLaunched);
    let m = create(&h, &send(phone, 600_000)).await;
    let id = m["message_id"].as_str().unwrap();
    let m = h.wait_state(id, "sms_delivered").await;
    assert_eq!(event(&m, "rcs_unreachable")["detail"]["status"], 403);
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn content_google_refuses_fails_the_message_with_its_words() {
    let h = start().await;
    let phone = "+15557000005";
    // Content that passes every check, which the device cannot show:
    // Google answers 400.
    h.s.google
        .set_phone(phone, PhoneBehaviour::ContentUnsupported);
    let m = create(&h, &send(phone, 600_000)).await;
    let id = m["message_id"].as_str().unwrap();
    let m = h.wait_state(id, "failed").await;
    assert_eq!(m["outcome"], "none");
    let rejected = event(&m, "rcs_rejected");
    assert_eq!(rejected["detail"]["status"], 400);
    assert!(rejected["detail"]["error"]
        .as_str()
        .unwrap()
        .contains("invalid argument"));
    assert_eq!(h.sms_to(phone).await, 0);
}

#[tokio::test]
async fn failed_sends_are_retried_with_the_same_message_id() {
    let h = start().await;
    let phone = "+15557000006";
    h.s.google.set_phone(
        phone,
        PhoneBehaviour::Online {
            delay: Duration::from_millis(50),
            read_after: None,
        },
    );
    h.s.google.set_faults(GoogleFaults {
        error_rate: 1.0,
        ..GoogleFaults::default()
    });
    let m = create(&h, &send(phone, 600_000)).await;
    let id = m["message_id"].as_str().unwrap().to_owned();
    h.s.google.wait_for_sends(2, WAIT).await.unwrap();
    h.s.google.set_faults(GoogleFaults::default());
    let m = h.wait_state(&id, "delivered").await;
    let sends = h.s.google.sends();
    assert!(sends.len() >= 3, "{sends:?}");
    assert!(sends.iter().all(|s| s.message_id == id));
    assert_eq!(sends.iter().filter(|s| s.status == 200).count(), 1);
    assert!(kinds(&m).contains(&"rcs_send_retry".to_owned()));
}

#[tokio::test]
async fn with_no_memory_of_unreachable_phones_every_message_tries_rcs_first() {
    let h = start_with(|cfg| {
        cfg.env.push((
            "RBMF__FALLBACK__RCS_UNREACHABLE_TTL_SECS".into(),
            "0".into(),
        ));
    })
    .await;
    let phone = "+15557000017";
    h.s.google.set_phone(phone, PhoneBehaviour::NotRcs);
    for n in 1..=2 {
        let m = create(&h, &send(phone, 600_000)).await;
        assert_eq!(m["state"], "rcs_sending", "message {n}");
        let id = m["message_id"].as_str().unwrap().to_owned();
        let m = h.wait_state(&id, "sms_delivered").await;
        assert_eq!(event(&m, "rcs_unreachable")["detail"]["status"], 404);
    }
    assert_eq!(h.s.google.sends().len(), 2);
}

#[tokio::test]
async fn send_mode_requests_are_checked_and_nothing_is_stored_on_error() {
    let h = start().await;
    let phone = "+15557000007";
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({ "message_id": "not-a-uuid" }),
            "message_id",
            "must be a UUID",
        ),
        (
            json!({ "rcs": { "contentMessage": { "text": "x" }, "ttl": "60s" } }),
            "rcs.ttl",
            "set by rbm-fallback",
        ),
        (
            json!({ "rcs": { "contentMessage": { "text": "x" },
                             "expireTime": "2030-01-01T00:00:00Z" } }),
            "rcs.expireTime",
            "set by rbm-fallback",
        ),
        (
            json!({ "rcs": { "messageTrafficType": "PROMOTION" } }),
            "rcs.contentMessage",
            "required",
        ),
        (
            json!({ "rcs": { "contentMessage": { "text": "x" }, "messageTrafficType": "SPAM" } }),
            "rcs.messageTrafficType",
            "AUTHENTICATION",
        ),
        (
            json!({ "rcs": { "contentMessage": { "text": "x" }, "colour": 1 } }),
            "rcs.colour",
            "unknown field",
        ),
        (json!({ "rcs": "hello" }), "rcs", "must be an object"),
        // What Google would answer 400 at send time, leaving no SMS.
        (
            json!({ "rcs": { "contentMessage": { "text": "x", "fileName": "x.png" } } }),
            "rcs.contentMessage",
            "exactly one of",
        ),
        (
            json!({ "rcs": { "contentMessage": { "suggestions": [] } } }),
            "rcs.contentMessage",
            "it sets none",
        ),
        (
            json!({ "rcs": { "contentMessage": { "text": "x".repeat(3073) } } }),
            "rcs.contentMessage.text",
            "at most 3072",
        ),
        (
            json!({ "rcs": { "contentMessage": { "text": "x", "colour": "red" } } }),
            "rcs.contentMessage.colour",
            "unknown field",
        ),
        (
            json!({ "rcs": { "contentMessage": { "richCard": "card" } } }),
            "rcs.contentMessage.richCard",
            "an object",
        ),
        (
            json!({ "traffic_type": "PROMOTION" }),
            "traffic_type",
            "differs from rcs.messageTrafficType",
        ),
        (
            json!({ "deadline": in_ms(16 * 24 * 3600 * 1000) }),
            "deadline",
            "seconds ahead",
        ),
        (
            json!({ "policy": { "on_uncertain": "maybe" } }),
            "policy.on_uncertain",
            "skip, send_sms",
        ),
        (
            json!({ "policy": { "confirm_window_ms": 3_600_001 } }),
            "policy.confirm_window_ms",
            "at most",
        ),
        (
            json!({ "policy": { "quiet_hours": { "start": "21:00", "end": "08:00", "time_zone": "Mars/Olympus" } } }),
            "policy.quiet_hours",
            "Mars/Olympus",
        ),
    ];
    for (patch, field, says) in cases {
        let mut body = send(phone, 60_000);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = h.post(&body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 422, "{patch}: {v:#}");
        assert_eq!(v["error"]["field"], field, "{patch}: {v:#}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{patch}: {message}");
    }
    // A track-mode message still needs its id.
    let mut body = send(phone, 60_000);
    body.as_object_mut().unwrap().remove("rcs");
    body.as_object_mut().unwrap().remove("message_id");
    let v: Value = h.post(&body).await.json().await.unwrap();
    assert_eq!(v["error"]["field"], "message_id");

    let listed: Value = h.get_json("/v1/messages").await;
    assert_eq!(listed["messages"], json!([]));
    assert!(h.s.google.sends().is_empty());
}

#[tokio::test]
async fn policies_resolve_from_the_message_the_traffic_type_and_the_defaults() {
    let h = start().await;
    let phone = "+15557000008";
    let mut otp = send(phone, 600_000);
    otp["rcs"]["messageTrafficType"] = "AUTHENTICATION".into();
    otp.as_object_mut().unwrap().remove("message_id");
    let m = create(&h, &otp).await;
    // An id was made: a UUID, as Google requires.
    uuid::Uuid::parse_str(m["message_id"].as_str().unwrap()).unwrap();
    assert_eq!(m["policy"]["on_uncertain"], "send_sms");
    assert_eq!(m["policy"]["quiet_hours"], Value::Null);
    assert_eq!(m["policy"]["confirm_window_ms"], 400);

    let mut promo = send(phone, 600_000);
    promo["rcs"]["messageTrafficType"] = "PROMOTION".into();
    let m = create(&h, &promo).await;
    assert_eq!(m["policy"]["on_uncertain"], "skip");
    assert_eq!(
        m["policy"]["quiet_hours"],
        json!({ "start": "21:00", "end": "08:00", "time_zone": "auto", "action": "wait" })
    );

    // The message's own word wins, one setting at a time.
    let mut own = promo.clone();
    own["message_id"] = uuid::Uuid::new_v4().to_string().into();
    own["policy"] =
        json!({ "on_uncertain": "send_sms", "confirm_window_ms": 1234, "quiet_hours": "off" });
    let m = create(&h, &own).await;
    assert_eq!(
        m["policy"],
        json!({ "on_uncertain": "send_sms", "confirm_window_ms": 1234, "quiet_hours": null })
    );

    // Track mode takes its traffic type from the request.
    let mut tracked = message(phone, "track-otp-1", 600_000);
    tracked["traffic_type"] = "AUTHENTICATION".into();
    let m = create(&h, &tracked).await;
    assert_eq!(m["mode"], "track");
    assert_eq!(m["traffic_type"], "AUTHENTICATION");
    assert_eq!(m["policy"]["on_uncertain"], "send_sms");
}

#[tokio::test]
async fn send_sms_policy_sends_when_a_failed_revoke_is_never_proven() {
    let h = start().await;
    let phone = "+15557000009";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    let mut body = message(phone, &id, 300);
    body["traffic_type"] = "AUTHENTICATION".into();
    create(&h, &body).await;
    // Delivered at Google, but the DELIVERED never reaches us: the revoke
    // answers 404 and nothing proves the arrival.
    h.s.google.deliver(&id, false).await;
    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(h.s.google.revokes()[0].status, 404);
    let k = kinds(&m);
    assert_eq!(
        &k[..4],
        [
            "registered",
            "revoke_attempt",
            "revoke_not_found",
            "sms_attempt"
        ]
    );
    assert!(event(&m, "sms_attempt")["detail"]["note"]
        .as_str()
        .unwrap()
        .contains("send_sms"));
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn quiet_hours_hold_the_sms_until_they_end_or_drop_it() {
    let h = start().await;
    let phone = "+15557000010";
    h.s.google.set_phone(phone, PhoneBehaviour::NotRcs);

    let mut wait = send(phone, 600_000);
    wait["policy"] = json!({ "quiet_hours": quiet_hours_now("wait") });
    let m = create(&h, &wait).await;
    let id = m["message_id"].as_str().unwrap().to_owned();
    let m = h
        .wait_until(&id, "the SMS deferred", |m| {
            kinds(m).contains(&"sms_deferred".to_owned())
        })
        .await;
    assert_eq!(m["state"], "sms_sending");
    // Due when the quiet hours end: the next whole minute two hours on.
    let next = chrono::DateTime::parse_from_rfc3339(m["next_action_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let end = wait["policy"]["quiet_hours"]["end"].as_str().unwrap();
    assert_eq!(next.format("%H:%M").to_string(), end, "{m:#}");
    assert!(next > chrono::Utc::now() + chrono::TimeDelta::minutes(118));

    let mut drop = send(phone, 600_000);
    drop["policy"] = json!({ "quiet_hours": quiet_hours_now("drop") });
    let m = create(&h, &drop).await;
    let id = m["message_id"].as_str().unwrap().to_owned();
    let m = h.wait_state(&id, "sms_skipped").await;
    assert_eq!(m["outcome"], "none");
    assert_eq!(m["next_action_at"], Value::Null);
    assert_eq!(h.sms_to(phone).await, 0);
}

#[tokio::test]
async fn sms_text_is_measured_and_capped_in_segments() {
    let h = start().await;
    let phone = "+15557000011";
    let mut body = message(phone, "seg-gsm", 600_000);
    body["sms"]["body"] = "x".repeat(161).into();
    let m = create(&h, &body).await;
    assert_eq!(m["sms"]["encoding"], "GSM-7");
    assert_eq!(m["sms"]["segments"], 2);

    let mut body = message(phone, "seg-ucs", 600_000);
    body["sms"]["body"] = "Code 1234 🔐".into();
    let m = create(&h, &body).await;
    assert_eq!(m["sms"]["encoding"], "UCS-2");
    assert_eq!(m["sms"]["segments"], 1);

    // Eleven segments of GSM-7, over the default cap of ten.
    let mut body = message(phone, "seg-long", 600_000);
    body["sms"]["body"] = "y".repeat(153 * 10 + 1).into();
    let r = h.post(&body).await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "sms.body");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("needs 11 SMS segments (GSM-7"));
}

#[tokio::test]
async fn a_batch_takes_send_mode_and_track_mode_items_together() {
    let h = start().await;
    let phone = "+15557000012";
    h.s.google.set_phone(phone, PhoneBehaviour::NotRcs);
    let mut bad = send(phone, 60_000);
    bad["rcs"]["ttl"] = "5s".into();
    let items = json!({ "messages": [
        send(phone, 600_000),
        message(phone, "batch-track-1", 600_000),
        bad,
    ]});
    let r = h
        .api
        .post(h.url("/v1/messages:batch"))
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[0]["message"]["mode"], "send");
    assert_eq!(results[0]["message"]["state"], "rcs_sending");
    assert_eq!(results[1]["message"]["mode"], "track");
    assert_eq!(results[1]["message"]["state"], "pending");
    assert_eq!(results[2]["status"], 422);
    assert_eq!(results[2]["error"]["field"], "rcs.ttl");
    let id = results[0]["message"]["message_id"].as_str().unwrap();
    h.wait_state(id, "sms_delivered").await;
    assert_eq!(h.s.google.sends()[0].status, 404);
}

#[tokio::test]
async fn a_retry_with_a_policy_is_recognised_after_the_defaults_change() {
    let h = start().await;
    let mut body = send("+15557000013", 600_000);
    body["policy"] = json!({ "on_uncertain": "send_sms" });
    create(&h, &body).await;
    // Another instance whose deployment confirm window differs: what the
    // message's policy resolved to then is not part of the request.
    let mut settings = h.s.settings.clone();
    settings.fallback.confirm_window = Duration::from_millis(900);
    let other = replica::Replica::spawn(&settings);
    let mut answer = None;
    for _ in 0..250 {
        if let Ok(r) = h
            .api
            .post(format!("{}/v1/messages", other.url))
            .json(&body)
            .send()
            .await
        {
            answer = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = answer.expect("the other instance answers");
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(v["policy"]["confirm_window_ms"], 400);
}

#[tokio::test]
async fn a_send_retry_never_waits_past_the_deadline() {
    // Back-off far longer than the deadline is away.
    let h = start_with(|cfg| {
        for (k, v) in [
            ("RBMF__WORKER__RETRY_BASE_MS", "20000"),
            ("RBMF__WORKER__RETRY_CAP_MS", "20000"),
        ] {
            cfg.env.push((k.into(), v.into()));
        }
    })
    .await;
    let phone = "+15557000014";
    h.s.google.set_faults(GoogleFaults {
        error_rate: 1.0,
        ..GoogleFaults::default()
    });
    let m = create(&h, &send(phone, 2500)).await;
    let id = m["message_id"].as_str().unwrap().to_owned();
    let deadline = chrono::DateTime::parse_from_rfc3339(m["deadline"].as_str().unwrap()).unwrap();
    let m = h
        .wait_until(&id, "the send given up at the deadline", |m| {
            kinds(m).contains(&"rcs_send_expired".to_owned())
        })
        .await;
    let at =
        chrono::DateTime::parse_from_rfc3339(event(&m, "rcs_send_expired")["at"].as_str().unwrap())
            .unwrap();
    assert!(
        at - deadline < chrono::TimeDelta::seconds(3),
        "gave up {} after the deadline",
        at - deadline
    );
    h.wait_state(&id, "sms_delivered").await;
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn a_message_waits_its_own_confirm_window() {
    let h = start().await;
    let phone = "+15557000013";
    let at = |e: &Value| chrono::DateTime::parse_from_rfc3339(e.as_str().unwrap()).unwrap();
    // Offline phone: the revoke answers 200 and the confirm window runs.
    let id = "own-window-1";
    h.s.google.agent_send(phone, id, None);
    let mut body = message(phone, id, 200);
    body["policy"] = json!({ "confirm_window_ms": 60_000 });
    create(&h, &body).await;
    let m = h
        .wait_until(id, "the revoke answered", |m| {
            kinds(m).contains(&"revoke_ok".to_owned())
        })
        .await;
    assert_eq!(m["state"], "confirming");
    let wait = at(&m["next_action_at"]) - at(&event(&m, "revoke_ok")["at"]);
    assert!(
        wait >= chrono::TimeDelta::seconds(60) && wait < chrono::TimeDelta::seconds(61),
        "{wait}"
    );

    // Without a policy of its own, the deployment's window (400 ms here).
    let id = "own-window-2";
    h.s.google.agent_send(phone, id, None);
    create(&h, &message(phone, id, 200)).await;
    let m = h.wait_state(id, "sms_delivered").await;
    let waited = at(&event(&m, "sms_attempt")["at"]) - at(&event(&m, "revoke_ok")["at"]);
    assert!(
        waited >= chrono::TimeDelta::milliseconds(400) && waited < chrono::TimeDelta::seconds(60),
        "{waited}"
    );
}

#[tokio::test]
async fn time_spent_waiting_for_the_rate_limit_counts_against_the_deadline() {
    // One RBM call a second: the second send waits about a second for its
    // slot, which leaves it less than the minimum time worth sending for.
    let h = start_with(|cfg| {
        cfg.env
            .push(("RBMF__WORKER__RBM_RATE_PER_SEC".into(), "1".into()));
    })
    .await;
    let first = create(&h, &send("+15557000015", 600_000)).await;
    let first_id = first["message_id"].as_str().unwrap().to_owned();
    h.wait_until(&first_id, "the first send answered", |m| {
        kinds(m).contains(&"rcs_sent".to_owned())
    })
    .await;
    let second = create(&h, &send("+15557000016", 1_500)).await;
    let id = second["message_id"].as_str().unwrap().to_owned();
    h.wait_until(&id, "the send given up", |m| {
        kinds(m).contains(&"rcs_send_expired".to_owned())
    })
    .await;
    h.wait_state(&id, "sms_delivered").await;
    assert!(
        !h.s.google.sends().iter().any(|s| s.message_id == id),
        "sent with less than a second left"
    );
}
