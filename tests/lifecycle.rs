//! Every arrow of the lifecycle, end to end: the real service on a real
//! PostgreSQL, talking HTTP to the Google and Twilio emulators.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn delivered_in_time_means_no_revoke_and_no_sms() {
    let h = start().await;
    let phone = "+15550000001";
    h.s.google.set_phone(
        phone,
        PhoneBehaviour::Online {
            delay: Duration::from_millis(50),
            read_after: Some(Duration::from_millis(50)),
        },
    );
    let id = h.send_and_register(phone, 60_000).await;
    let m = h.wait_state(&id, "delivered").await;
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(m["next_action_at"], serde_json::Value::Null);
    // The READ that follows is recorded without changing anything.
    h.s.google.wait_for_webhooks(2, WAIT).await.unwrap();
    h.applied().await;
    let m = h.get(&id).await;
    assert_eq!(kinds(&m), ["registered", "rcs_delivered", "rcs_read"]);
    assert!(h.s.google.revokes().is_empty());
    assert_eq!(h.sms_to(phone).await, 0);
}

#[tokio::test]
async fn offline_phone_is_revoked_at_the_deadline_then_sent_as_sms() {
    let h = start().await;
    let phone = "+15550000002";
    let id = h.send_and_register(phone, 300).await;
    let registered = h.get(&id).await;
    let deadline: chrono::DateTime<chrono::Utc> =
        registered["deadline"].as_str().unwrap().parse().unwrap();

    let revokes = h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    assert_eq!(revokes[0].message_id, id);
    assert_eq!(revokes[0].phone, phone);
    assert_eq!(revokes[0].agent_id, h.s.google.agent_id());
    assert_eq!(revokes[0].status, 200);
    assert!(
        revokes[0].received_at >= deadline,
        "revoked before the deadline"
    );

    let sms = h.s.twilio.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(sms[0].to, phone);
    assert_eq!(sms[0].body, format!("Your code is {}", &id[..6]));
    assert_eq!(
        sms[0].from.as_deref(),
        Some(rbm_fallback::sandbox::SANDBOX_FROM)
    );
    let callback = sms[0].status_callback.clone().unwrap();
    assert_eq!(
        callback,
        format!("{}/webhooks/twilio/status?message_id={id}", h.s.url)
    );

    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(m["outcome"], "sms");
    assert_eq!(m["sms"]["sid"], sms[0].sid.as_str());
    assert_eq!(m["sms"]["status"], "delivered");
    let k = kinds(&m);
    assert_eq!(
        &k[..5],
        [
            "registered",
            "revoke_attempt",
            "revoke_ok",
            "sms_attempt",
            "sms_accepted"
        ]
    );
    assert_eq!(k.last().unwrap(), "sms_status");
    // The SMS waited out the confirm window after the revoke.
    let at = |kind: &str| time(&event(&m, kind)["at"]);
    assert!(at("sms_attempt") - at("revoke_ok") >= chrono::TimeDelta::milliseconds(400));
    assert_eq!(h.sms_to(phone).await, 1);
    // One token served every call.
    assert_eq!(h.s.google.token_requests(), 1);
}

#[tokio::test]
async fn undeliverable_sms_ends_sms_failed_with_outcome_none() {
    let h = start().await;
    let phone = "+15550000003";
    h.s.twilio.set_recipient(
        phone,
        RecipientBehaviour::Undeliverable { error_code: 30003 },
    );
    let id = h.send_and_register(phone, 200).await;
    let m = h.wait_state(&id, "sms_failed").await;
    assert_eq!(m["outcome"], "none");
    assert_eq!(m["sms"]["status"], "undelivered");
    let last = m["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["detail"]["error_code"], "30003");
}

#[tokio::test]
async fn revoke_answered_404_without_proof_means_delivered_under_skip() {
    let h = start().await;
    let phone = "+15550000004";
    let id = h.send_and_register(phone, 300).await;
    // Delivered at Google, but the DELIVERED webhook never reaches us.
    h.s.google.deliver(&id, false).await;
    h.wait_state(&id, "verifying").await;
    // No proof within the confirm window: the default policy trusts Google.
    let m = h.wait_state(&id, "delivered").await;
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(m["policy"]["on_uncertain"], "skip");
    assert_eq!(
        kinds(&m),
        [
            "registered",
            "revoke_attempt",
            "revoke_not_found",
            "unconfirmed"
        ]
    );
    assert_eq!(h.s.google.revokes()[0].status, 404);
    assert_eq!(h.sms_to(phone).await, 0);
}

#[tokio::test]
async fn delivered_inside_the_confirm_window_cancels_the_sms() {
    let h = start_with(|c| c.confirm_window = Duration::from_millis(1500)).await;
    let phone = "+15550000005";
    // Google answers the DELETE 200, yet delivers shortly after (older docs).
    h.s.google.set_phone(
        phone,
        PhoneBehaviour::RevokeRace {
            delay: Duration::from_millis(100),
        },
    );
    let id = h.send_and_register(phone, 200).await;
    let m = h.wait_state(&id, "delivered").await;
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(
        kinds(&m),
        ["registered", "revoke_attempt", "revoke_ok", "rcs_delivered"]
    );
    assert_eq!(m["next_action_at"], serde_json::Value::Null);
    assert_eq!(h.sms_to(phone).await, 0);
}

#[tokio::test]
async fn ttl_revoked_by_google_goes_through_confirm_then_sms_without_a_delete() {
    let h = start().await;
    let phone = "+15550000006";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google
        .agent_send(phone, &id, Some(Duration::from_millis(300)));
    let r = h.post(&message(phone, &id, 600_000)).await;
    assert_eq!(r.status(), 201);
    let sms = h.s.twilio.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(sms[0].to, phone);
    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(m["outcome"], "sms");
    assert_eq!(
        &kinds(&m)[..4],
        ["registered", "ttl_revoked", "sms_attempt", "sms_accepted"]
    );
    assert!(
        h.s.google.revokes().is_empty(),
        "TTL revoked it; no DELETE needed"
    );
}

#[tokio::test]
async fn ttl_revoke_failed_means_delivered() {
    let h = start().await;
    let phone = "+15550000007";
    h.s.google.set_phone(phone, PhoneBehaviour::TtlRevokeFails);
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google
        .agent_send(phone, &id, Some(Duration::from_millis(200)));
    assert_eq!(h.post(&message(phone, &id, 600_000)).await.status(), 201);
    let m = h.wait_state(&id, "delivered").await;
    assert_eq!(m["outcome"], "rcs");
    // Both the DELIVERED and the TTL event arrive; whichever is second is only recorded.
    h.s.google.wait_for_webhooks(2, WAIT).await.unwrap();
    h.applied().await;
    let k = kinds(&h.get(&id).await);
    assert!(k.contains(&"ttl_revoke_failed".to_owned()), "{k:?}");
    assert_eq!(h.sms_to(phone).await, 0);
}

#[tokio::test]
async fn ttl_revoked_while_the_delete_is_in_flight_sends_one_sms() {
    let h = start().await;
    let phone = "+15550000008";
    h.s.google.hold_revokes(true);
    let id = h.send_and_register(phone, 100).await;
    h.s.google.wait_for_revoke_arrivals(1, WAIT).await.unwrap();
    assert_eq!(h.get(&id).await["state"], "revoking");
    h.google_reports("TTL_EXPIRATION_REVOKED", phone, &id).await;
    assert_eq!(h.get(&id).await["state"], "confirming");
    // The DELETE's late answer must not disturb the confirm window.
    h.s.google.hold_revokes(false);
    let m = h.wait_state(&id, "sms_delivered").await;
    let k = kinds(&m);
    assert!(
        k.contains(&"revoke_ok".to_owned()) || k.contains(&"revoke_not_found".to_owned()),
        "{k:?}"
    );
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn twilio_refusing_the_number_fails_the_message_with_the_code() {
    let h = start().await;
    let phone = "+15550000009";
    h.s.twilio
        .set_recipient(phone, RecipientBehaviour::InvalidNumber);
    let id = h.send_and_register(phone, 100).await;
    let m = h.wait_state(&id, "failed").await;
    assert_eq!(m["outcome"], "none");
    let last = m["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "sms_rejected");
    assert_eq!(last["detail"]["code"], 21211);
    assert_eq!(h.sms_to(phone).await, 0);
    assert_eq!(
        h.s.twilio.create_requests(),
        1,
        "a permanent error is not retried"
    );
}

#[tokio::test]
async fn delivered_after_the_sms_went_out_is_recorded_as_both() {
    let h = start().await;
    let phone = "+15550000010";
    let id = h.send_and_register(phone, 100).await;
    h.wait_state(&id, "sms_delivered").await;
    h.google_reports("DELIVERED", phone, &id).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "sms_delivered", "never moves backwards");
    assert_eq!(m["outcome"], "both");
    assert_eq!(kinds(&m).last().unwrap(), "rcs_delivered");
}

#[tokio::test]
async fn google_errors_are_retried_with_backoff() {
    let h = start().await;
    let phone = "+15550000011";
    h.s.google.queue_revoke_faults(&[503, 429, 500]);
    let id = h.send_and_register(phone, 100).await;
    let m = h.wait_state(&id, "sms_delivered").await;
    let k = kinds(&m);
    assert_eq!(
        k.iter().filter(|k| *k == "revoke_retry").count(),
        3,
        "{k:?}"
    );
    let statuses: Vec<u16> = h.s.google.revokes().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 429, 500, 200]);
    // The 429 carried Retry-After: 1, which the next attempt honoured.
    let r = h.s.google.revokes();
    assert!(r[2].received_at - r[1].received_at >= chrono::TimeDelta::milliseconds(1000));
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn twilio_errors_are_retried_and_send_one_sms() {
    let h = start().await;
    let phone = "+15550000012";
    h.s.twilio
        .queue_create_faults(vec![CreateFault::Status(500), CreateFault::Status(503)]);
    let id = h.send_and_register(phone, 100).await;
    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(kinds(&m).iter().filter(|k| *k == "sms_retry").count(), 2);
    assert_eq!(h.s.twilio.create_requests(), 3);
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn a_lost_twilio_response_is_reconciled_not_sent_again() {
    let h = start().await;
    let phone = "+15550000013";
    // Twilio creates the SMS but the answer never arrives.
    h.s.twilio
        .queue_create_faults(vec![CreateFault::ResponseLost]);
    let id = h.send_and_register(phone, 100).await;
    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(h.sms_to(phone).await, 1, "sent twice");
    assert_eq!(h.s.twilio.create_requests(), 1);
    let retry = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "sms_retry");
    // Either the status callback proved the send first, or the retry
    // reconciled it; both must end with one SMS and its sid.
    if let Some(retry) = retry {
        assert_eq!(retry["detail"]["ambiguous"], true);
    }
    assert_eq!(m["sms"]["sid"], h.s.twilio.messages()[0].sid.as_str());
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_revocation_loses_nothing_and_sends_one_sms() {
    let mut h = start_with(|c| {
        c.env.push(("RBMF__WORKER__LEASE_MS".into(), "1500".into()));
        c.env.push(("RBMF__RBM__TIMEOUT_MS".into(), "1000".into()));
        c.env
            .push(("RBMF__TWILIO__TIMEOUT_MS".into(), "1000".into()));
    })
    .await;
    let phone = "+15550000014";
    h.s.google.hold_revokes(true);
    let id = h.send_and_register(phone, 100).await;
    h.s.google.wait_for_revoke_arrivals(1, WAIT).await.unwrap();
    assert_eq!(h.get(&id).await["state"], "revoking");

    // Kill the service while its DELETE is unanswered, then let Google act
    // on it: the revoke succeeded, but nobody heard.
    h.s.crash();
    h.s.google.hold_revokes(false);
    let first = h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    assert_eq!(first[0].status, 200);
    h.s.restart().unwrap();
    h.wait_ready().await;

    // The new process takes the claim over once the lease expires, revokes
    // again (404: already gone), and must not read that as "delivered".
    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(m["outcome"], "sms");
    let events = m["events"].as_array().unwrap();
    let attempts: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "revoke_attempt")
        .collect();
    assert!(
        attempts.len() >= 2,
        "the claim was taken over after the crash"
    );
    let not_found = events
        .iter()
        .find(|e| e["kind"] == "revoke_not_found")
        .unwrap();
    assert_eq!(not_found["state"], "confirming");
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn a_crash_during_the_sms_send_sends_exactly_one_sms() {
    let mut h = start_with(|c| {
        c.env.push(("RBMF__WORKER__LEASE_MS".into(), "1500".into()));
        c.env.push(("RBMF__RBM__TIMEOUT_MS".into(), "1000".into()));
        c.env
            .push(("RBMF__TWILIO__TIMEOUT_MS".into(), "1000".into()));
    })
    .await;
    let phone = "+15550000015";
    // Twilio takes the message, then the process dies before hearing back.
    h.s.twilio
        .queue_create_faults(vec![CreateFault::Hang(Duration::from_millis(800))]);
    let id = h.send_and_register(phone, 100).await;
    h.wait_state(&id, "sms_sending").await;
    h.s.crash();
    h.s.restart().unwrap();
    h.wait_ready().await;
    let m = h.wait_state(&id, "sms_delivered").await;
    let attempts = kinds(&m).iter().filter(|k| *k == "sms_attempt").count();
    // At least one more attempt took the claim over (a slow machine may
    // need more: each looks at Twilio first); still one SMS.
    assert!(attempts >= 2, "the claim was taken over after the crash");
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn graceful_shutdown_exits_cleanly_and_work_resumes_after_restart() {
    let mut h = start().await;
    let phone = "+15550000016";
    let id = h.send_and_register(phone, 1_500).await;
    h.s.stop().expect("clean shutdown");
    h.s.restart().unwrap();
    h.wait_ready().await;
    h.wait_state(&id, "sms_delivered").await;
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn shutdown_hands_back_claims_it_cannot_finish() {
    // A lease far longer than the test: the message can only move on after
    // the restart if the shutdown handed its claim back.
    let mut h = start_with(|c| {
        c.env
            .push(("RBMF__WORKER__LEASE_MS".into(), "600000".into()));
        c.env
            .push(("RBMF__SERVER__SHUTDOWN_GRACE_MS".into(), "200".into()));
        c.env.push(("RBMF__RBM__TIMEOUT_MS".into(), "1000".into()));
        c.env
            .push(("RBMF__TWILIO__TIMEOUT_MS".into(), "1500".into()));
    })
    .await;
    let phone = "+15550000017";
    // Twilio takes the SMS but answers only long after the shutdown.
    h.s.twilio
        .queue_create_faults(vec![CreateFault::Hang(Duration::from_secs(20))]);
    let id = h.send_and_register(phone, 100).await;
    h.wait_state(&id, "sms_sending").await;
    h.s.stop().expect("clean shutdown");
    h.s.restart().unwrap();
    h.wait_ready().await;
    let m = h.wait_state(&id, "sms_delivered").await;
    // The next claim treated the cut-short send as in doubt: it looked at
    // Twilio first and found the SMS instead of sending another.
    assert!(kinds(&m).iter().filter(|k| *k == "sms_attempt").count() >= 2);
    assert_eq!(h.sms_to(phone).await, 1);
}

/// A registration whose deadline falls within the schedulers' longest sleep
/// announces it on the due channel as it commits, so that every replica's
/// scheduler wakes for it rather than at its next look. Nothing else is due
/// in the test, so the first notification is the registration's own.
#[tokio::test]
async fn a_registration_due_soon_wakes_the_schedulers() {
    let h = start_with(|c| {
        c.env
            .push(("RBMF__WORKER__MAX_IDLE_MS".into(), "60000".into()));
    })
    .await;
    let mut listener = sqlx::postgres::PgListener::connect(&h.db.url)
        .await
        .unwrap();
    listener
        .listen(rbm_fallback::store::DUE_CHANNEL)
        .await
        .unwrap();
    // Due in half a minute: within the one-minute horizon, and after the
    // test gives up waiting.
    h.send_and_register("+14155550731", 30_000).await;
    let woken = tokio::time::timeout(Duration::from_secs(20), listener.recv())
        .await
        .expect("no notification on the due channel")
        .unwrap();
    assert_eq!(woken.channel(), rbm_fallback::store::DUE_CHANNEL);
}

/// A claim skips what another writer holds (`SKIP LOCKED`) rather than
/// waiting for it: a message held by a transaction is passed over, and the
/// messages due with it are claimed and revoked meanwhile. Once let go, the
/// held message is claimed in its turn.
#[tokio::test]
async fn a_claim_passes_over_a_message_another_writer_holds() {
    use sqlx::Connection;
    let h = start().await;
    let (held_phone, free_phone) = ("+14155550732", "+14155550733");
    // The held message falls due first, so every claim that reaches the
    // free one has read the held one too.
    let held = h.send_and_register(held_phone, 1_500).await;
    let mut writer = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
    let mut hold = writer.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM messages WHERE message_id = $1 FOR UPDATE")
        .bind(&held)
        .execute(&mut *hold)
        .await
        .unwrap();
    let free = h.send_and_register(free_phone, 1_600).await;
    h.wait_until(&free, "its revoke answered", |m| {
        kinds(m).iter().any(|k| k == "revoke_ok")
    })
    .await;
    let m = h.get(&held).await;
    assert_eq!(m["state"], "pending", "{m:#}");
    assert_eq!(kinds(&m), ["registered"]);
    hold.commit().await.unwrap();
    h.wait_until(&held, "its revoke answered", |m| {
        kinds(m).iter().any(|k| k == "revoke_ok")
    })
    .await;
}

/// Claims made a second ahead: wide enough to tell the claim from the call.
fn a_second_of_claim_lead(c: &mut rbm_fallback::sandbox::SandboxConfig) {
    c.env
        .push(("RBMF__WORKER__CLAIM_LEAD_MS".into(), "1000".into()));
}

/// A pending message is claimed `worker.claim_lead_ms` before its deadline,
/// so that the claim's database work is done by then; the DELETE itself
/// still waits for the deadline.
#[tokio::test]
async fn a_revoke_claimed_ahead_leaves_at_the_deadline_not_before() {
    let h = start_with(a_second_of_claim_lead).await;
    let phone = "+15550000018";
    let id = h.send_and_register(phone, 2_000).await;
    let m = h.get(&id).await;
    let deadline = time(&m["deadline"]);
    assert_eq!(
        time(&m["next_action_at"]),
        deadline - chrono::Duration::seconds(1),
        "picked up a lead ahead"
    );
    let m = h
        .wait_until(&id, "its revoke answered", |m| {
            kinds(m).iter().any(|k| k == "revoke_ok")
        })
        .await;
    let claimed = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "revoke_attempt")
        .unwrap();
    assert!(
        time(&claimed["at"]) < deadline - chrono::Duration::milliseconds(500),
        "claimed ahead: {claimed} against {deadline}"
    );
    let revokes = h.s.google.revokes();
    assert_eq!(revokes.len(), 1);
    assert!(
        revokes[0].received_at >= deadline,
        "the DELETE left at {} for a deadline of {deadline}",
        revokes[0].received_at
    );
}

/// A delivery reported between the early claim and the deadline wins: the
/// held revoke still leaves (Google's answer is the arbiter), but no SMS.
#[tokio::test]
async fn a_delivery_after_an_early_claim_still_means_no_sms() {
    let h = start_with(a_second_of_claim_lead).await;
    let phone = "+15550000019";
    let id = h.send_and_register(phone, 2_000).await;
    h.wait_state(&id, "revoking").await;
    h.google_reports("DELIVERED", phone, &id).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered", "{m:#}");
    h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    let m = h
        .wait_until(&id, "the revoke's answer recorded", |m| kinds(m).len() > 3)
        .await;
    assert_eq!(m["state"], "delivered", "{m:#}");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(m["next_action_at"], serde_json::Value::Null);
    assert_eq!(h.sms_to(phone).await, 0);
    assert!(h.s.twilio.messages().is_empty());
}
