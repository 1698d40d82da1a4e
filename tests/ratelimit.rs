//! Outbound rate limits hold under a burst: excess work waits, none is dropped.

mod common;

use chrono::TimeDelta;
use common::*;

#[tokio::test]
async fn a_burst_of_due_messages_is_revoked_and_sent_within_the_configured_rates() {
    // Twilio's limit is the tighter one, so the SMS are spaced by its
    // bucket, not by the revokes before them.
    let h = start_with(|c| {
        c.env
            .push(("RBMF__WORKER__RBM_RATE_PER_SEC".into(), "10".into()));
        c.env
            .push(("RBMF__WORKER__TWILIO_RATE_PER_SEC".into(), "5".into()));
    })
    .await;
    let n = 15;
    let mut ids = Vec::new();
    for i in 0..n {
        let phone = format!("+1555200{i:04}");
        ids.push((h.send_and_register(&phone, 300).await, phone));
    }
    for (id, phone) in &ids {
        h.wait_state(id, "sms_delivered").await;
        assert_eq!(h.sms_to(phone).await, 1);
    }
    // A bucket of `rate` per second with a burst of `rate`: call k (from 0)
    // cannot start before (k + 1 - rate) / rate seconds after the first,
    // less `leeway` milliseconds.
    let check =
        |name: &str, rate: i64, leeway: i64, mut times: Vec<chrono::DateTime<chrono::Utc>>| {
            assert_eq!(times.len(), n, "{name}");
            times.sort();
            for (k, t) in times.iter().enumerate() {
                let earliest =
                    TimeDelta::milliseconds((k as i64 + 1 - rate) * 1000 / rate - leeway);
                assert!(
                    *t - times[0] >= earliest,
                    "{name} call {k} came {:?} after the first",
                    *t - times[0]
                );
            }
        };
    // As Google received them, which adds the loopback's jitter.
    check(
        "revoke received",
        10,
        50,
        h.s.google.revokes().iter().map(|r| r.received_at).collect(),
    );
    // As they left, by the history of their answers: exact, but for the
    // wall clock against the bucket's monotonic one. Twilio keeps whole
    // seconds only, so the SMS are timed this way alone.
    let (mut revokes, mut sms) = (Vec::new(), Vec::new());
    for (id, _) in &ids {
        let m = h.get(id).await;
        let left = |kind: &str| {
            let e = event(&m, kind);
            let (at, left) = (time(&e["at"]), time(&e["detail"]["sent_at"]));
            assert!(
                left <= at,
                "{kind} recorded at {at}, before its call left at {left}"
            );
            left
        };
        revokes.push(left("revoke_ok"));
        sms.push(left("sms_accepted"));
    }
    check("revoke left", 10, 2, revokes);
    check("sms left", 5, 2, sms);
}
