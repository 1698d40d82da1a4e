//! `--log-format json` (here through RBMF_LOG_FORMAT) on the real binary:
//! one JSON object per line, and the worker's lines about a message carry
//! the `message` span with its id.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rbm_fallback::sandbox::{Rig, SandboxConfig};
use serde_json::Value;

/// The real binary with its log in a file, and one message sent to `phone`
/// that falls back to SMS. Returns the message id.
async fn service_logging(
    db: &TestDb,
    format: &str,
    phone: &str,
) -> (Rig, rbm_fallback::sandbox::ServiceProcess, String) {
    let mut cfg = SandboxConfig::new(&db.url);
    cfg.confirm_window = Duration::from_millis(200);
    cfg.env.push(("RBMF_LOG_FORMAT".into(), format.into()));
    cfg.env.push(("RUST_LOG".into(), "info".into()));
    let rig = Rig::start(&cfg).await.unwrap();
    let mut service = rig
        .spawn_process(Path::new(env!("CARGO_BIN_EXE_rbm-fallback")), 0)
        .unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    rig.google
        .set_webhook_url(&format!("{}/webhooks/rbm", service.url));
    let id = uuid::Uuid::new_v4().to_string();
    rig.google.agent_send(phone, &id, None);
    let r = rig
        .api()
        .post(format!("{}/v1/messages", service.url))
        .json(&message(phone, &id, 50))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    (rig, service, id)
}

#[tokio::test]
async fn json_logs_carry_the_message_span() {
    let db = TestDb::new().await;
    let phone = "+15550007001";
    let (_rig, mut service, id) = service_logging(&db, "json", phone).await;

    // The revoke and the SMS send are each logged inside the span.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(service.log_path()).unwrap_or_default();
        // Only whole lines: the last one may still be being written.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        let in_span =
            |l: &&Value| l["span"]["name"] == "message" && l["span"]["message_id"] == id.as_str();
        let said = |what: &str| {
            lines
                .iter()
                .filter(in_span)
                .any(|l| l["fields"]["message"] == what)
        };
        if said("revoke answered") && said("SMS send answered") {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no such lines in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let revoke = lines
        .iter()
        .find(|l| l["fields"]["message"] == "revoke answered")
        .unwrap();
    assert_eq!(revoke["level"], "INFO");
    assert!(revoke["timestamp"].is_string());
    assert!(
        revoke["span"]["action"]
            .as_str()
            .unwrap()
            .contains("Revoke"),
        "{revoke}"
    );
    // Phones are masked in the log.
    assert!(!lines.iter().any(|l| l.to_string().contains(phone)));
    service.kill();
}

#[tokio::test]
async fn text_logs_in_a_file_are_plain_text() {
    let db = TestDb::new().await;
    let (_rig, mut service, _id) = service_logging(&db, "text", "+15550007002").await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(service.log_path()).unwrap_or_default();
        if text.contains("SMS send answered") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no such line in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Terminal colour codes would only garble a file or a collector.
    assert!(!text.contains('\x1b'), "escape codes in the log:\n{text}");
    assert!(text.contains(" INFO "), "{text}");
    service.kill();
}
