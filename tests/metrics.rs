//! /metrics through the real HTTP surface: counters at their call sites and
//! database figures change as messages reach each outcome; the separate
//! listener; the stuck-message listing.

mod common;

use std::time::Duration;

use common::*;
use rbm_fallback::emulator::faults::GoogleFaults;
use serde_json::Value;

fn plain() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn scrape(url: &str) -> String {
    let r = plain().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    r.text().await.unwrap()
}

/// The value of one series, e.g. `rbmf_revocations_total{result="200"}`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn v(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

/// Scrapes until `done` holds (database figures are cached for a second).
async fn scrape_until(url: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(url).await;
        if done(&text) {
            return text;
        }
        if tokio::time::Instant::now() > give_up {
            panic!("/metrics never showed {what}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_follow_messages_to_each_outcome() {
    let h = start().await;
    let url = h.url("/metrics");
    let before = scrape(&url).await;
    assert_eq!(v(&before, "rbmf_database_up"), 1.0);
    assert_eq!(v(&before, "rbmf_revocations_total{result=\"200\"}"), 0.0);
    assert!(before.contains("# TYPE rbmf_deadline_lateness_seconds histogram"));

    // rcs: delivered before its deadline; no revoke.
    let rcs_phone = "+15550001001";
    h.s.google.set_phone(
        rcs_phone,
        PhoneBehaviour::Online {
            delay: Duration::from_millis(50),
            read_after: None,
        },
    );
    let rcs = h.send_and_register(rcs_phone, 60_000).await;
    // sms: offline phone, revoked at the deadline, then the SMS.
    let sms = h.send_and_register("+15550001002", 100).await;
    // both: as sms, then a DELIVERED that arrives after the SMS went out.
    let both_phone = "+15550001003";
    let both = h.send_and_register(both_phone, 100).await;
    // 404: never reached Google, so the revoke finds nothing.
    let gone = uuid::Uuid::new_v4().to_string();
    let r = h.post(&message("+15550001004", &gone, 100)).await;
    assert_eq!(r.status(), 201);

    h.wait_outcome(&rcs, "rcs").await;
    h.wait_state(&sms, "sms_delivered").await;
    h.wait_state(&both, "sms_delivered").await;
    h.google_reports("DELIVERED", both_phone, &both).await;
    h.wait_outcome(&both, "both").await;
    h.wait_state(&gone, "delivered").await;

    let text = scrape_until(&url, "the four messages", |t| {
        v(t, "rbmf_messages{state=\"sms_delivered\",outcome=\"both\"}") == 1.0
            && v(t, "rbmf_messages{state=\"delivered\",outcome=\"rcs\"}") == 2.0
    })
    .await;
    assert_eq!(
        v(
            &text,
            "rbmf_messages{state=\"sms_delivered\",outcome=\"sms\"}"
        ),
        1.0
    );
    assert_eq!(v(&text, "rbmf_duplicate_messages"), 1.0);
    assert_eq!(v(&text, "rbmf_due_messages"), 0.0);
    assert_eq!(v(&text, "rbmf_oldest_due_age_seconds"), 0.0);
    assert_eq!(v(&text, "rbmf_stuck_messages"), 0.0);

    assert_eq!(v(&text, "rbmf_revocations_total{result=\"200\"}"), 2.0);
    assert_eq!(v(&text, "rbmf_revocations_total{result=\"404\"}"), 1.0);
    assert_eq!(v(&text, "rbmf_revocations_total{result=\"error\"}"), 0.0);
    assert_eq!(v(&text, "rbmf_sms_sends_total{result=\"accepted\"}"), 2.0);
    // Each answered revoke is one lateness observation.
    assert_eq!(v(&text, "rbmf_deadline_lateness_seconds_count"), 3.0);
    assert!(v(&text, "rbmf_deadline_lateness_seconds_sum") > 0.0);
    assert_eq!(
        v(
            &text,
            "rbmf_outbound_duration_seconds_count{upstream=\"google\",operation=\"revoke\"}"
        ),
        3.0
    );
    assert_eq!(
        v(
            &text,
            "rbmf_outbound_duration_seconds_count{upstream=\"twilio\",operation=\"send\"}"
        ),
        2.0
    );
    assert_eq!(v(&text, "rbmf_token_refreshes_total{result=\"ok\"}"), 1.0);
    // The rcs message's DELIVERED (from the emulated phone) and ours.
    assert!(
        v(
            &text,
            "rbmf_webhook_ack_seconds_count{source=\"rbm\",status=\"200\"}"
        ) >= 2.0
    );
    // Twilio reported both SMS delivered.
    assert!(
        v(
            &text,
            "rbmf_webhook_ack_seconds_count{source=\"twilio\",status=\"200\"}"
        ) >= 2.0
    );
}

#[tokio::test]
async fn failed_calls_are_counted_by_upstream_and_kind() {
    let h = start().await;
    let url = h.url("/metrics");
    // An outage, token endpoint included: nothing can be revoked.
    h.s.google.set_faults(GoogleFaults {
        unavailable: true,
        ..GoogleFaults::default()
    });
    let id = h.send_and_register("+15550002001", 50).await;
    let text = scrape_until(&url, "failed revokes", |t| {
        v(t, "rbmf_revocations_total{result=\"error\"}") >= 2.0
    })
    .await;
    assert!(
        v(&text, "rbmf_token_refreshes_total{result=\"error\"}") >= 2.0,
        "{text}"
    );
    assert_eq!(v(&text, "rbmf_token_refreshes_total{result=\"ok\"}"), 0.0);
    assert!(
        v(
            &text,
            "rbmf_outbound_errors_total{upstream=\"google_oauth\",operation=\"token\",kind=\"retryable\"}"
        ) >= 2.0
    );

    // Resets: each DELETE may have taken effect, so the message is in doubt.
    h.s.google.set_faults(GoogleFaults {
        reset_rate: 1.0,
        ..GoogleFaults::default()
    });
    let text = scrape_until(&url, "ambiguous revokes", |t| {
        v(
            t,
            "rbmf_outbound_errors_total{upstream=\"google\",operation=\"revoke\",kind=\"ambiguous\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(v(&text, "rbmf_revocations_total{result=\"200\"}"), 0.0);

    h.s.google.set_faults(GoogleFaults::default());
    h.wait_state(&id, "sms_delivered").await;
    let text = scrape_until(&url, "the revoke that worked", |t| {
        v(t, "rbmf_revocations_total{result=\"200\"}")
            + v(t, "rbmf_revocations_total{result=\"404\"}")
            == 1.0
    })
    .await;
    assert_eq!(v(&text, "rbmf_token_refreshes_total{result=\"ok\"}"), 1.0);

    // The answers of calls that left say when; the retries for want of a
    // token made no call, and say nothing of one.
    let m = h.get(&id).await;
    let answers: Vec<&Value> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] != "revoke_attempt" && e["kind"].as_str().unwrap().starts_with("revoke_")
        })
        .collect();
    let (left, no_token): (Vec<&Value>, Vec<&Value>) = answers
        .into_iter()
        .partition(|e| e["detail"].get("sent_at").is_some());
    assert!(!no_token.is_empty() && !left.is_empty(), "{m:#}");
    for e in no_token {
        let error = e["detail"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("access token"), "{e:#}");
    }
    for e in left {
        let error = e["detail"]["error"].as_str().unwrap_or_default();
        assert!(!error.contains("access token"), "{e:#}");
    }
}

#[tokio::test]
async fn in_doubt_messages_are_listed_as_stuck_until_settled() {
    let h = start().await;
    h.s.google.set_faults(GoogleFaults {
        reset_rate: 1.0,
        ..GoogleFaults::default()
    });
    let phone = "+15550003001";
    let id = h.send_and_register(phone, 50).await;
    let fine = h.send_and_register("+15550003002", 60_000).await;

    let r = plain()
        .get(h.url("/v1/operations/stuck"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the listing needs the API token");

    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let r = h
            .api
            .get(h.url("/v1/operations/stuck?limit=10"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        let messages = page["messages"].as_array().unwrap().clone();
        if !messages.is_empty() {
            assert!(page["next_cursor"].is_null());
            break messages;
        }
        assert!(tokio::time::Instant::now() < give_up, "never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    let m = &listed[0];
    assert_eq!(m["message_id"], id.as_str());
    assert_ne!(m["message_id"], fine.as_str());
    assert_eq!(m["reason"], "in_doubt");
    assert_eq!(m["in_doubt"], true);
    assert_eq!(m["phone"], phone);
    assert!(m["attempts"].as_i64().unwrap() >= 1);
    // Past its deadline, which is what matters while its retries go on.
    assert!(m["waiting_secs"].as_f64().unwrap() > 0.0, "{m}");

    let text = scrape_until(&h.url("/metrics"), "the stuck message", |t| {
        v(t, "rbmf_stuck_messages") == 1.0
    })
    .await;
    assert_eq!(
        v(&text, "rbmf_messages{state=\"pending\",outcome=\"none\"}")
            + v(&text, "rbmf_messages{state=\"revoking\",outcome=\"none\"}"),
        2.0
    );

    let r = h
        .api
        .get(h.url("/v1/operations/stuck?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .api
        .get(h.url("/v1/operations/stuck?cursor=nonsense"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Once Google answers again the doubt is settled and the message moves on.
    h.s.google.set_faults(GoogleFaults::default());
    h.wait_state(&id, "sms_delivered").await;
    let page: Value = h.get_json("/v1/operations/stuck").await;
    assert_eq!(page["messages"], serde_json::json!([]));
}

#[tokio::test]
async fn stuck_listing_pages_by_cursor() {
    let h = start().await;
    h.s.google.set_faults(GoogleFaults {
        reset_rate: 1.0,
        ..GoogleFaults::default()
    });
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(h.send_and_register(&format!("+1555000400{i}"), 50).await);
    }
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page: Value = h.get_json("/v1/operations/stuck?limit=500").await;
        if page["messages"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "never all listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = h.url("/v1/operations/stuck?limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = h.api.get(url).send().await.unwrap().json().await.unwrap();
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["message_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every stuck message once, oldest first");
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = rbm_fallback::sandbox::free_port().unwrap();
    let h = start_with(|cfg| {
        cfg.env
            .push(("RBMF__METRICS__LISTEN".into(), format!("127.0.0.1:{port}")));
    })
    .await;
    let own = format!("http://127.0.0.1:{port}");
    // The listener starts with the service; wait for it.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while plain().get(format!("{own}/metrics")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "metrics listener never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = scrape(&format!("{own}/metrics")).await;
    assert_eq!(v(&text, "rbmf_database_up"), 1.0);
    let r = plain().get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404, "not on the main listener any more");
    let r = plain().get(h.url("/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = h.api.get(format!("{own}/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = plain()
        .get(format!("{own}/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the API stays on the main listener");
}
