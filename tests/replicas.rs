//! Several replicas on one database share the work without doing any of it
//! twice, and a replica killed mid-run loses nothing.

mod common;
#[path = "common/replica.rs"]
mod replica;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use replica::Replica;

#[tokio::test]
async fn three_replicas_one_killed_mid_run_revoke_and_send_each_message_once() {
    let h = start_with(|c| {
        // Small batches and little concurrency, so that every replica gets work.
        for (k, v) in [
            ("RBMF__WORKER__BATCH_SIZE", "2"),
            ("RBMF__WORKER__CONCURRENCY", "2"),
            ("RBMF__WORKER__LEASE_MS", "1500"),
            ("RBMF__RBM__TIMEOUT_MS", "1000"),
            ("RBMF__TWILIO__TIMEOUT_MS", "1000"),
        ] {
            c.env.push((k.into(), v.into()));
        }
    })
    .await;
    let mut b = Replica::spawn(&h.s.settings);
    let _c = Replica::spawn(&h.s.settings);

    let n = 36;
    let mut ids = Vec::new();
    for i in 0..n {
        let phone = format!("+1555100{i:04}");
        ids.push((
            h.send_and_register(&phone, 300 + (i as i64 % 6) * 100)
                .await,
            phone,
        ));
    }
    // Kill one replica once the revocations are under way.
    h.s.google
        .wait_for_revoke_arrivals(4, Duration::from_secs(15))
        .await
        .unwrap();
    b.kill();

    for (id, _) in &ids {
        let m = h.wait_outcome(id, "sms").await;
        assert!(
            m["state"] == "sms_sent" || m["state"] == "sms_delivered",
            "{m:#}"
        );
    }
    // Exactly one SMS per message, whoever sent it.
    for (id, phone) in &ids {
        assert_eq!(h.sms_to(phone).await, 1, "message {id}");
    }
    // No message was revoked successfully twice.
    let mut ok_revokes: HashMap<String, usize> = HashMap::new();
    for r in h.s.google.revokes().iter().filter(|r| r.status == 200) {
        *ok_revokes.entry(r.message_id.clone()).or_default() += 1;
    }
    assert!(ok_revokes.values().all(|&c| c == 1), "{ok_revokes:?}");
    // The work really was shared: SMS went out from more than one replica.
    let senders: std::collections::HashSet<String> =
        h.s.twilio
            .messages()
            .iter()
            .filter_map(|m| {
                m.status_callback
                    .as_deref()
                    .map(|u| u.split("/webhooks").next().unwrap().to_owned())
            })
            .collect();
    assert!(senders.len() >= 2, "only {senders:?} sent SMS");
}
