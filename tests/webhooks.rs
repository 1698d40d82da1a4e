//! Google's and Twilio's webhooks, through real HTTP against the real
//! service: the verification handshake, signatures, duplicates, ordering,
//! events that need no action, and monotonic SMS status callbacks.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use rbm_fallback::signature::{google_sign, twilio_sign};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
/// Far enough that the scheduler never acts during a test.
const TEN_MINUTES_MS: i64 = 600_000;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs a raw envelope to the Google webhook, with this X-Goog-Signature.
async fn post_rbm(h: &Harness, body: &str, signature: Option<&str>) -> (u16, String) {
    let mut req = client()
        .post(h.url("/webhooks/rbm"))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    if let Some(sig) = signature {
        req = req.header("X-Goog-Signature", sig);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn assert_error_json(body: &str, code: &str) {
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert_eq!(v["error"]["code"], code, "{v:#}");
    assert!(v["error"]["message"].is_string(), "{v:#}");
}

fn with_data(envelope: &str, data: &str) -> String {
    let mut v: Value = serde_json::from_str(envelope).unwrap();
    v["message"]["data"] = json!(data);
    v.to_string()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Events in the history that moved the message to another state.
fn state_changes(resource: &Value) -> usize {
    resource["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["state_before"].is_null() && e["state_before"] != e["state"])
        .count()
}

// ---------------------------------------------------------------------------
// Google: verification handshake

#[tokio::test]
async fn verification_handshake_echoes_the_secret_only_for_the_right_token() {
    let h = start().await;
    assert!(h.s.google.verify_webhook().await.unwrap());

    let token = h.s.google.client_token().to_owned();
    let secret = "s3cr3t-4Bc-verification";
    let r = client()
        .post(h.url("/webhooks/rbm"))
        .json(&json!({ "clientToken": token, "secret": secret }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert_eq!(
        r.text().await.unwrap(),
        secret,
        "the raw secret, nothing else"
    );

    // Newer docs add a header; the body decides either way.
    let r = client()
        .post(h.url("/webhooks/rbm"))
        .header("X-Goog-Webhook-Type", "verification")
        .json(&json!({ "clientToken": token, "secret": "second" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "second");

    for wrong in [
        json!({ "clientToken": "not-the-token", "secret": secret }),
        json!({ "clientToken": format!("{token} "), "secret": secret }),
        json!({ "clientToken": token.to_uppercase() + "X", "secret": secret }),
        json!({ "clientToken": "", "secret": secret }),
        json!({ "clientToken": null, "secret": secret }),
    ] {
        let r = client()
            .post(h.url("/webhooks/rbm"))
            .json(&wrong)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 403, "{wrong}: {body}");
        assert!(!body.contains(secret), "leaked the secret: {body}");
        assert_error_json(&body, "forbidden");
    }
    // No token at all: not a handshake the service answers.
    let r = client()
        .post(h.url("/webhooks/rbm"))
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert!((400..500).contains(&status), "{status}: {body}");
    assert!(!body.contains(secret), "leaked the secret: {body}");
}

// ---------------------------------------------------------------------------
// Google: delivery events

#[tokio::test]
async fn signed_delivered_for_a_pending_message_marks_it_delivered() {
    let h = start().await;
    let phone = "+14155550201";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let event = h.google_reports("DELIVERED", phone, &id).await;
    // Recorded and applied before the 200: no waiting needed.
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(
        m["next_action_at"],
        Value::Null,
        "no revocation is due any more"
    );
    assert_eq!(kinds(&m), ["registered", "rcs_delivered"]);
    let ev = &m["events"][1];
    assert_eq!(ev["state_before"], "pending");
    assert_eq!(ev["detail"]["event_id"], event["eventId"]);
    assert_eq!(ev["detail"]["send_time"], event["sendTime"]);
}

#[tokio::test]
async fn a_delivery_reported_before_registration_settles_the_registration_and_its_answer() {
    let h = start().await;
    let phone = "+14155550219";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    // The phone was online at once: Google reports before the agent registers.
    let event = h.google_reports("DELIVERED", phone, &id).await;
    let r = h.post(&message(phone, &id, TEN_MINUTES_MS)).await;
    assert_eq!(r.status(), 201);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["state"], "delivered", "{answer:#}");
    assert_eq!(answer["outcome"], "rcs");
    assert_eq!(kinds(&answer), ["registered", "rcs_delivered"]);
    assert_eq!(answer["events"][1]["detail"]["event_id"], event["eventId"]);
    // The answer is what was stored.
    assert_eq!(answer, h.get(&id).await);
}

/// An event acknowledged by a replica that died before applying it is left
/// in the queue; this replica's applier finds it on its own periodic look
/// (nothing wakes it) and applies it.
#[tokio::test]
async fn an_event_another_replica_recorded_but_never_applied_is_applied() {
    let h = start().await;
    let phone = "+14155550191";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let event = google_event(&h, "DELIVERED", phone, &id);
    // What the other replica's webhook committed before it died.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&h.db.url)
        .await
        .unwrap();
    sqlx::query(
        "WITH e AS (INSERT INTO rbm_events (agent_id, event_key, event_type, message_id, payload)
                    VALUES ($1, $2, 'DELIVERED', $3, $4))
         INSERT INTO rbm_inbox (agent_id, event_key) VALUES ($1, $2)",
    )
    .bind(h.s.google.agent_id())
    .bind(event["eventId"].as_str().unwrap())
    .bind(&id)
    .bind(&event)
    .execute(&mut conn)
    .await
    .unwrap();
    let m = h.wait_state(&id, "delivered").await;
    assert_eq!(kinds(&m), ["registered", "rcs_delivered"]);
    assert_eq!(m["events"][1]["detail"]["event_id"], event["eventId"]);
    // Google's redelivery of it is a duplicate: applied once.
    h.google_posts(&event).await;
    assert_eq!(kinds(&h.get(&id).await), ["registered", "rcs_delivered"]);
}

/// A queued event whose record retention has deleted (an applier down for
/// longer than the retention) still leaves the queue, alone or not: it must
/// not sit at the head of the queue for ever.
#[tokio::test]
async fn a_queued_event_whose_record_is_gone_leaves_the_queue() {
    let h = start().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&h.db.url)
        .await
        .unwrap();
    sqlx::query("INSERT INTO rbm_inbox (agent_id, event_key) VALUES ($1, 'pruned-long-ago')")
        .bind(h.s.google.agent_id())
        .execute(&mut conn)
        .await
        .unwrap();
    h.applied().await;
}

/// An event that fails even alone (here a trigger an operator added refuses
/// its message's history) is set aside with its error, rather than holding up
/// the events queued behind it, for every message. Queued again once the
/// cause is mended, it applies.
#[tokio::test]
async fn an_event_that_cannot_be_applied_is_set_aside_and_the_queue_goes_on() {
    set_aside_and_queued_again("CREATE TRIGGER refuse BEFORE INSERT ON message_events").await;
}

/// The same, refused by a check deferred to the commit: the statements
/// succeed, and the commit fails.
#[tokio::test]
async fn an_event_refused_at_commit_is_set_aside_too() {
    set_aside_and_queued_again(
        "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON message_events
             DEFERRABLE INITIALLY DEFERRED",
    )
    .await;
}

/// `create_trigger`: the refusing trigger, up to its `FOR EACH ROW`.
async fn set_aside_and_queued_again(create_trigger: &str) {
    let h = start().await;
    let (refused_phone, phone) = ("+14155550301", "+14155550302");
    let refused = h.send_and_register(refused_phone, TEN_MINUTES_MS).await;
    let fine = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&h.db.url)
        .await
        .unwrap();
    let row: i64 = sqlx::query_scalar("SELECT id FROM messages WHERE message_id = $1")
        .bind(&refused)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'history refused by a trigger'; END $$;
         {create_trigger} FOR EACH ROW
             WHEN (NEW.message_id = {row}) EXECUTE FUNCTION refuse();"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    // Queued in this order (each is queued before its 200), most likely
    // taken in one batch: the applier gathers events for a few milliseconds.
    let first = google_event(&h, "DELIVERED", refused_phone, &refused);
    let second = google_event(&h, "DELIVERED", phone, &fine);
    for event in [&first, &second] {
        assert_eq!(h.s.google.post_event(event).await.unwrap(), 200);
    }
    h.applied().await;

    assert_eq!(h.get(&fine).await["state"], "delivered");
    assert_eq!(kinds(&h.get(&refused).await), ["registered"]);
    let (key, error): (String, String) =
        sqlx::query_as("SELECT event_key, error FROM rbm_inbox_set_aside")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(key, first["eventId"].as_str().unwrap());
    assert!(error.contains("history refused by a trigger"), "{error}");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("\nrbmf_google_events_set_aside 1\n"),
        "{metrics}"
    );

    // Mended, and queued again as docs/operations.md says: the applier's
    // periodic look finds it.
    sqlx::raw_sql(
        "DROP TRIGGER refuse ON message_events;
         WITH back AS (DELETE FROM rbm_inbox_set_aside RETURNING id, agent_id, event_key)
         INSERT INTO rbm_inbox (id, agent_id, event_key) OVERRIDING SYSTEM VALUE
         SELECT id, agent_id, event_key FROM back ORDER BY id;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let m = h.wait_state(&refused, "delivered").await;
    assert_eq!(kinds(&m), ["registered", "rcs_delivered"]);
}

/// An event acknowledged and not applied yet counts as waiting, on the
/// metrics and on the dashboard, until it is applied.
#[tokio::test]
async fn an_event_not_applied_yet_counts_as_waiting() {
    let h = start().await;
    let phone = "+14155550303";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    // The applier takes the event from the queue, then waits for the key.
    let held = holding_message_key(&h, &id).await;
    let event = google_event(&h, "DELIVERED", phone, &id);
    assert_eq!(h.s.google.post_event(&event).await.unwrap(), 200);
    until_a_message_key_lock_is_awaited(&h).await;

    let metrics = h.metrics().await;
    assert!(
        metrics.contains("\nrbmf_google_events_waiting 1\n")
            && metrics.contains("\nrbmf_google_events_set_aside 0\n"),
        "{metrics}"
    );
    let tile = |n: u32| format!("<b>{n}</b><span>Google events to apply</span>");
    assert!(h.dashboard().await.contains(&tile(1)));

    held.rollback().await.unwrap();
    h.applied().await;
    assert!(h.dashboard().await.contains(&tile(0)));
    assert_eq!(h.get(&id).await["state"], "delivered");
}

/// A registration and Google's report on the same message, at the same
/// instant: whichever commits second must see the other, or the message stays
/// pending and gets revoked although it was delivered. Many pairs, so that
/// some land in each other's transactions.
#[tokio::test]
async fn a_delivery_racing_its_registration_is_never_lost() {
    let h = start().await;
    let pairs: Vec<(String, String)> = (0..120)
        .map(|i| {
            let phone = format!("+1415555{:04}", 3000 + i);
            let id = uuid::Uuid::new_v4().to_string();
            h.s.google.agent_send(&phone, &id, None);
            (phone, id)
        })
        .collect();
    let registrations = futures::future::join_all(pairs.iter().map(|(phone, id)| async {
        let r = h.post(&message(phone, id, TEN_MINUTES_MS)).await;
        assert_eq!(r.status(), 201);
    }));
    let reports = futures::future::join_all(
        pairs
            .iter()
            .map(|(phone, id)| h.google_reports("DELIVERED", phone, id)),
    );
    tokio::join!(registrations, reports);
    for (_, id) in &pairs {
        let m = h.get(id).await;
        assert_eq!(m["state"], "delivered", "{m:#}");
        assert_eq!(kinds(&m), ["registered", "rcs_delivered"]);
    }
}

/// The same race, pinned: Google's event is being recorded, holding its
/// message's key lock, when the registration arrives. The registration waits
/// for the lock, and must then see the event, although the event committed
/// after the registration's statement began.
#[tokio::test]
async fn a_registration_waiting_for_a_delivery_being_recorded_sees_it() {
    let h = start().await;
    let phone = "+14155550229";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    let agent = h.s.google.agent_id().to_owned();
    // What the webhook's transaction does, stopped before its commit.
    let mut event = holding_message_key(&h, &id).await;
    sqlx::query(
        "INSERT INTO rbm_events (agent_id, event_key, event_type, message_id, payload)
         VALUES ($1, 'ev-pinned', 'DELIVERED', $2, $3)",
    )
    .bind(&agent)
    .bind(&id)
    .bind(json!({ "eventId": "ev-pinned", "eventType": "DELIVERED", "messageId": id }))
    .execute(&mut *event)
    .await
    .unwrap();
    let registration = tokio::spawn({
        let (api, url, body) = (
            h.api.clone(),
            h.url("/v1/messages"),
            message(phone, &id, TEN_MINUTES_MS),
        );
        async move { api.post(url).json(&body).send().await.unwrap() }
    });
    until_a_message_key_lock_is_awaited(&h).await;
    event.commit().await.unwrap();
    let r = registration.await.unwrap();
    assert_eq!(r.status(), 201);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["state"], "delivered", "{answer:#}");
    assert_eq!(kinds(&answer), ["registered", "rcs_delivered"]);
}

/// The other side of the race, pinned: the registration is being written,
/// holding its message's key lock, when Google's DELIVERED arrives. The
/// event waits for the lock, and must then find the message and settle it,
/// although the message committed after the event's statement began.
#[tokio::test]
async fn a_delivery_waiting_for_its_registration_being_written_settles_it() {
    let h = start().await;
    let phone = "+14155550230";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    let agent = h.s.google.agent_id().to_owned();
    // What the registration's statement does, stopped before its commit.
    let mut registration = holding_message_key(&h, &id).await;
    sqlx::query(
        "WITH m AS (
             INSERT INTO messages (message_id, agent_id, phone, deadline, sms_body,
                                   request_digest, state, outcome, due_at)
             VALUES ($1, $2, $3, now() + interval '10 minutes', 'Your code is 123456',
                     '\\x00', 'pending', 'none', now() + interval '10 minutes')
             RETURNING id
         )
         INSERT INTO message_events (message_id, kind, state_after)
         SELECT id, 'registered', 'pending' FROM m",
    )
    .bind(&id)
    .bind(&agent)
    .bind(phone)
    .execute(&mut *registration)
    .await
    .unwrap();
    let event = google_event(&h, "DELIVERED", phone, &id);
    let release = async {
        until_a_message_key_lock_is_awaited(&h).await;
        registration.commit().await.unwrap();
    };
    tokio::join!(h.google_posts(&event), release);
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered", "{m:#}");
    assert_eq!(kinds(&m), ["registered", "rcs_delivered"]);
}

/// A transaction holding this message's key lock, as a writer does before
/// it reads or writes anything about the message.
async fn holding_message_key(h: &Harness, id: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let pool = sqlx::PgPool::connect(&h.db.url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT lock_message_keys($1, $2)")
        .bind(vec![h.s.google.agent_id().to_owned()])
        .bind(vec![id.to_owned()])
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Returns once some transaction waits for a message-key lock in this
/// test's database. `pg_locks` covers the whole server: the tests running
/// beside this one, each in a database of its own, wait for such locks too,
/// and one of theirs would let this test go on before its race is set up.
async fn until_a_message_key_lock_is_awaited(h: &Harness) {
    use sqlx::Connection;
    let mut watch = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND NOT granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn read_alone_implies_delivered() {
    let h = start().await;
    let phone = "+14155550202";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    h.google_reports("READ", phone, &id).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(kinds(&m), ["registered", "rcs_read"]);
}

#[tokio::test]
async fn the_emulated_phones_own_webhooks_are_accepted() {
    let h = start().await;
    let (online, ttl_fails) = ("+14155550203", "+14155550204");
    h.s.google.set_phone(
        online,
        PhoneBehaviour::Online {
            delay: Duration::from_millis(50),
            read_after: Some(Duration::from_millis(50)),
        },
    );
    h.s.google
        .set_phone(ttl_fails, PhoneBehaviour::TtlRevokeFails);
    let a = uuid::Uuid::new_v4().to_string();
    let b = uuid::Uuid::new_v4().to_string();
    for (phone, id) in [(online, &a), (ttl_fails, &b)] {
        let r = h.post(&message(phone, id, TEN_MINUTES_MS)).await;
        assert_eq!(r.status(), 201);
    }
    h.s.google.agent_send(online, &a, None);
    h.s.google
        .agent_send(ttl_fails, &b, Some(Duration::from_millis(100)));
    // DELIVERED + READ for one, DELIVERED + TTL_EXPIRATION_REVOKE_FAILED for the other.
    let hooks = h.s.google.wait_for_webhooks(4, WAIT).await.unwrap();
    for hook in &hooks {
        assert_eq!(hook.status, Some(200), "{hook:?}");
        assert_eq!(hook.attempts, 1, "{hook:?}");
    }
    h.applied().await;
    let ma = h.get(&a).await;
    assert_eq!(
        (ma["state"].as_str(), ma["outcome"].as_str()),
        (Some("delivered"), Some("rcs"))
    );
    assert_eq!(kinds(&ma), ["registered", "rcs_delivered", "rcs_read"]);
    let mb = h.get(&b).await;
    assert_eq!(
        (mb["state"].as_str(), mb["outcome"].as_str()),
        (Some("delivered"), Some("rcs"))
    );
    let kb = kinds(&mb);
    assert_eq!(count(&kb, "rcs_delivered"), 1, "{kb:?}");
    assert_eq!(count(&kb, "ttl_revoke_failed"), 1, "{kb:?}");
    assert_eq!(state_changes(&mb), 1, "{kb:?}");
}

// ---------------------------------------------------------------------------
// Google: signatures

#[tokio::test]
async fn bad_signatures_are_401_and_record_nothing() {
    let h = start().await;
    let phone = "+14155550205";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let event = google_event(&h, "DELIVERED", phone, &id);
    let data = event.to_string();
    let (body, sig) = h.s.google.envelope(&event);
    // The emulator signs what it sends: the base line is a good pair.
    assert_eq!(sig, google_sign(h.s.google.client_token(), data.as_bytes()));

    let mut modified = event.clone();
    modified["eventType"] = json!("READ");
    let modified_data = B64.encode(modified.to_string());
    let mut other_message = event.clone();
    other_message["messageId"] = json!("someone-else");
    let other_sig = google_sign(
        h.s.google.client_token(),
        other_message.to_string().as_bytes(),
    );

    let cases: Vec<(&str, String, Option<String>)> = vec![
        ("missing header", body.clone(), None),
        ("empty header", body.clone(), Some(String::new())),
        (
            "wrong key",
            body.clone(),
            Some(google_sign("not-the-client-token", data.as_bytes())),
        ),
        ("signature of other data", body.clone(), Some(other_sig)),
        (
            "replayed signature, modified data",
            with_data(&body, &modified_data),
            Some(sig.clone()),
        ),
        (
            "signature over the HTTP body",
            body.clone(),
            Some(google_sign(h.s.google.client_token(), body.as_bytes())),
        ),
        (
            "truncated signature",
            body.clone(),
            Some(sig[..40].to_owned()),
        ),
        (
            "signature minus its last byte",
            body.clone(),
            Some(B64.encode(&B64.decode(&sig).unwrap()[..63])),
        ),
        (
            "not base64 signature",
            body.clone(),
            Some("!!!not-base64!!!".into()),
        ),
        (
            "non-base64 data",
            with_data(&body, "%%% not base64 %%%"),
            Some(sig.clone()),
        ),
        (
            "SHA-256 instead of SHA-512",
            body.clone(),
            Some({
                use hmac::{Hmac, Mac};
                let mut mac =
                    Hmac::<sha2::Sha256>::new_from_slice(h.s.google.client_token().as_bytes())
                        .unwrap();
                mac.update(data.as_bytes());
                B64.encode(mac.finalize().into_bytes())
            }),
        ),
    ];
    for (case, body, sig) in &cases {
        let (status, answer) = post_rbm(&h, body, sig.as_deref()).await;
        assert_eq!(status, 401, "{case}: {answer}");
        assert_error_json(&answer, "invalid_signature");
        let m = h.get(&id).await;
        assert_eq!(m["state"], "pending", "{case}");
        assert_eq!(kinds(&m), ["registered"], "{case}");
    }
    // The event id was not taken by any of the rejected attempts: the
    // genuine event still applies.
    let (status, answer) = post_rbm(&h, &body, Some(&sig)).await;
    assert_eq!(status, 200, "{answer}");
    h.applied().await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(kinds(&m), ["registered", "rcs_delivered"]);
}

// ---------------------------------------------------------------------------
// Google: duplicates and ordering

#[tokio::test]
async fn a_redelivered_event_is_applied_once() {
    let h = start().await;
    let phone = "+14155550206";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let event = google_event(&h, "DELIVERED", phone, &id);
    for _ in 0..3 {
        h.google_posts(&event).await;
    }
    // Pub/Sub redelivery of the very same envelope too.
    let (body, sig) = h.s.google.envelope(&event);
    for _ in 0..2 {
        let (status, answer) = post_rbm(&h, &body, Some(&sig)).await;
        assert_eq!(status, 200, "{answer}");
    }
    // And with the agent in its other form: still the same event.
    let mut bare = event.clone();
    bare["agentId"] = json!(h.s.google.agent_id());
    h.google_posts(&bare).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(kinds(&m), ["registered", "rcs_delivered"]);
}

#[tokio::test]
async fn delivered_read_delivered_changes_state_once() {
    let h = start().await;
    let phone = "+14155550207";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    for kind in ["DELIVERED", "READ", "DELIVERED"] {
        h.google_reports(kind, phone, &id).await;
    }
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(
        kinds(&m),
        ["registered", "rcs_delivered", "rcs_read", "rcs_delivered"],
        "each distinct event is recorded"
    );
    assert_eq!(state_changes(&m), 1);
    for e in &m["events"].as_array().unwrap()[2..] {
        assert_eq!(e["state_before"], "delivered");
        assert_eq!(e["state"], "delivered");
    }
}

#[tokio::test]
async fn ttl_revoked_after_delivered_stays_delivered() {
    let h = start().await;
    let (phone, control_phone) = ("+14155550208", "+14155550209");
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let control = h.send_and_register(control_phone, TEN_MINUTES_MS).await;
    h.google_reports("DELIVERED", phone, &id).await;
    h.google_reports("TTL_EXPIRATION_REVOKED", phone, &id).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(m["next_action_at"], Value::Null);
    assert_eq!(kinds(&m), ["registered", "rcs_delivered", "ttl_revoked"]);
    assert_eq!(state_changes(&m), 1);

    // The same TTL event on a pending control message leads to an SMS
    // after the confirm window; once it went out, the window of the first
    // message (had it opened one) is over too.
    h.google_reports("TTL_EXPIRATION_REVOKED", control_phone, &control)
        .await;
    let sms = h.s.twilio.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(sms[0].to, control_phone);
    h.wait_state(&control, "sms_delivered").await;
    assert_eq!(h.sms_to(phone).await, 0);
    assert_eq!(h.s.twilio.messages().len(), 1);
    assert_eq!(h.get(&id).await["state"], "delivered");
}

#[tokio::test]
async fn ttl_revoked_on_pending_confirms_then_falls_back_to_sms() {
    let h = start().await;
    let phone = "+14155550210";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    h.google_reports("TTL_EXPIRATION_REVOKED", phone, &id).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "confirming");
    assert_eq!(m["outcome"], "none");
    assert!(!m["next_action_at"].is_null());

    let sms = h.s.twilio.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0].to, phone);
    assert_eq!(sms[0].body, m["sms"]["body"].as_str().unwrap());
    let done = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(done["outcome"], "sms");
    assert_eq!(done["sms"]["sid"].as_str().unwrap(), sms[0].sid);
    // Google already revoked it: the service did not revoke again.
    assert!(h.s.google.revokes().is_empty());
    // The SMS waited the whole confirm window (400 ms in the harness).
    let events = done["events"].as_array().unwrap();
    let at = |kind: &str| time(&events.iter().find(|e| e["kind"] == kind).unwrap()["at"]);
    assert!(
        at("sms_attempt") - at("ttl_revoked") >= chrono::TimeDelta::milliseconds(380),
        "{events:#?}"
    );
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn ttl_revoke_failed_on_pending_means_delivered() {
    let h = start().await;
    let phone = "+14155550211";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    h.google_reports("TTL_EXPIRATION_REVOKE_FAILED", phone, &id)
        .await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(m["next_action_at"], Value::Null);
    assert_eq!(kinds(&m), ["registered", "ttl_revoke_failed"]);
}

// ---------------------------------------------------------------------------
// Google: events that need no action

#[tokio::test]
async fn unknown_ids_and_events_needing_no_action_are_acknowledged() {
    let h = start().await;
    let phone = "+14155550212";
    let id = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let agent = h.s.google.agent_id().to_owned();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    // Events for messages we do not track.
    for kind in [
        "DELIVERED",
        "READ",
        "TTL_EXPIRATION_REVOKED",
        "TTL_EXPIRATION_REVOKE_FAILED",
    ] {
        h.google_reports(kind, phone, "not-registered-here").await;
    }
    // User events that need no action, even naming our message.
    for kind in ["IS_TYPING", "SUBSCRIBE", "UNSUBSCRIBE"] {
        h.google_reports(kind, phone, &id).await;
        let mut without_id = google_event(&h, kind, phone, &id);
        without_id.as_object_mut().unwrap().remove("messageId");
        h.google_posts(&without_id).await;
    }
    // User messages: no eventType, a messageId assigned by the phone (here
    // deliberately equal to ours, which must not matter), and no eventId.
    let user_messages = [
        json!({ "text": "STOP" }),
        json!({ "suggestionResponse": { "postbackData": "yes", "text": "Yes" } }),
        json!({ "location": { "latitude": 37.4, "longitude": -122.1 } }),
        json!({ "userFile": { "payload": { "mimeType": "image/png", "fileSizeBytes": 10,
                 "fileUri": "https://example.com/f", "fileName": "f.png" } } }),
    ];
    for content in user_messages {
        let mut ev = json!({
            "senderPhoneNumber": phone,
            "messageId": id,
            "sendTime": now,
            "agentId": format!("{agent}@rbm.goog"),
        });
        ev.as_object_mut()
            .unwrap()
            .extend(content.as_object().unwrap().clone());
        h.google_posts(&ev).await;
    }
    // An agent launch event, marked only by the envelope's attributes.
    let launch = json!({
        "agentId": format!("{agent}@rbm.goog"),
        "eventId": format!("launch-{}", uuid::Uuid::new_v4().simple()),
        "launchState": "LAUNCHED",
        "regionId": "/v1/regions/some-carrier",
        "messageId": id,
        "eventType": "DELIVERED",
    });
    let data = launch.to_string();
    let envelope = json!({
        "message": {
            "data": B64.encode(&data),
            "attributes": { "product": "RBM", "business_id": format!("{agent}@rbm.goog"),
                            "type": "agent_launch_event" },
            "messageId": "1415926535897932",
            "message_id": "1415926535897932",
            "publishTime": now,
            "publish_time": now,
        },
        "subscription": "projects/p/subscriptions/s",
    })
    .to_string();
    let (status, answer) = post_rbm(&h, &envelope, None).await;
    assert_eq!(status, 401, "launch events are signed too: {answer}");
    let sig = google_sign(h.s.google.client_token(), data.as_bytes());
    let (status, answer) = post_rbm(&h, &envelope, Some(&sig)).await;
    assert_eq!(status, 200, "{answer}");
    h.applied().await;

    let m = h.get(&id).await;
    assert_eq!(m["state"], "pending", "{m:#}");
    assert_eq!(kinds(&m), ["registered"]);
    let all = h
        .api
        .get(h.url("/v1/messages"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        all["messages"].as_array().unwrap().len(),
        1,
        "no message appeared"
    );
    // The pending message still works normally.
    h.google_reports("DELIVERED", phone, &id).await;
    assert_eq!(h.get(&id).await["state"], "delivered");
}

#[tokio::test]
async fn agent_id_with_or_without_the_domain_is_our_agent() {
    let h = start().await;
    let phone = "+14155550213";
    let agent = h.s.google.agent_id().to_owned();
    let a = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let b = h.send_and_register(phone, TEN_MINUTES_MS).await;
    let c = h.send_and_register(phone, TEN_MINUTES_MS).await;

    let mut ev = google_event(&h, "DELIVERED", phone, &a);
    ev["agentId"] = json!(agent);
    h.google_posts(&ev).await;
    let mut ev = google_event(&h, "READ", phone, &b);
    ev["agentId"] = json!(format!("{agent}@rbm.goog"));
    h.google_posts(&ev).await;
    assert_eq!(h.get(&a).await["state"], "delivered");
    assert_eq!(h.get(&b).await["state"], "delivered");

    // Another agent's event for the same message id is not about ours.
    for other in ["other-agent@rbm.goog", "other-agent", "x{agent}@rbm.goog"] {
        let mut ev = google_event(&h, "DELIVERED", phone, &c);
        ev["agentId"] = json!(other.replace("{agent}", &agent));
        h.google_posts(&ev).await;
    }
    let mc = h.get(&c).await;
    assert_eq!(mc["state"], "pending");
    assert_eq!(kinds(&mc), ["registered"]);
}

// ---------------------------------------------------------------------------
// Twilio: status callbacks

/// A message that was revoked and fell back to an SMS Twilio delivered;
/// returns its id, the SMS sid and the callback URL Twilio was given.
async fn fallen_back(h: &Harness, phone: &str) -> (String, String, String) {
    let id = h.send_and_register(phone, 200).await;
    let m = h.wait_state(&id, "sms_delivered").await;
    let sid = m["sms"]["sid"].as_str().unwrap().to_owned();
    // Twilio's own "sent" and "delivered" callbacks, both accepted.
    let callbacks = h.s.twilio.wait_for_callbacks(2, WAIT).await.unwrap();
    let url = format!("{}/webhooks/twilio/status?message_id={id}", h.s.url);
    for cb in &callbacks {
        assert_eq!(cb.http_status, Some(200), "{cb:?}");
        assert_eq!(cb.url, url);
        assert_eq!(cb.sid, sid);
    }
    (id, sid, url)
}

async fn post_twilio(
    url: &str,
    params: &[(String, String)],
    signature: Option<&str>,
) -> (u16, String) {
    let mut req = client().post(url).form(params);
    if let Some(sig) = signature {
        req = req.header("X-Twilio-Signature", sig);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn with_param(params: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| {
            if k == name {
                (k.clone(), value.to_owned())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

#[tokio::test]
async fn valid_callbacks_apply_monotonically() {
    let h = start().await;
    let phone = "+14155550214";
    let (id, sid, _) = fallen_back(&h, phone).await;
    let before = h.get(&id).await;
    assert_eq!(before["sms"]["status"], "delivered");
    assert_eq!(before["outcome"], "sms");
    let n = kinds(&before).len();

    // A late duplicate "delivered", then a late "sent" and "queued".
    assert_eq!(
        h.s.twilio
            .send_status_callback(&sid, "delivered", None)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        h.s.twilio
            .send_status_callback(&sid, "sent", None)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        h.s.twilio
            .send_status_callback(&sid, "queued", None)
            .await
            .unwrap(),
        200
    );
    let after = h.get(&id).await;
    assert_eq!(after["state"], "sms_delivered");
    assert_eq!(after["sms"]["status"], "delivered");
    assert_eq!(after["outcome"], "sms");
    let events = after["events"].as_array().unwrap();
    assert_eq!(events.len(), n + 3, "each callback is in the history");
    for (e, status) in events[n..].iter().zip(["delivered", "sent", "queued"]) {
        assert_eq!(e["kind"], "sms_status");
        assert_eq!(e["detail"]["status"], status);
        assert_eq!(e["detail"]["sid"], sid.as_str());
        assert_eq!(e["state_before"], "sms_delivered");
        assert_eq!(e["state"], "sms_delivered");
    }
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn a_late_sent_after_undelivered_keeps_the_failure() {
    let h = start().await;
    let phone = "+14155550215";
    h.s.twilio.set_recipient(
        phone,
        RecipientBehaviour::Undeliverable { error_code: 30003 },
    );
    let id = h.send_and_register(phone, 200).await;
    let m = h.wait_state(&id, "sms_failed").await;
    assert_eq!(m["outcome"], "none");
    let sid = m["sms"]["sid"].as_str().unwrap().to_owned();
    let cbs = h.s.twilio.wait_for_callbacks(2, WAIT).await.unwrap();
    let undelivered = cbs.iter().find(|c| c.status == "undelivered").unwrap();
    assert_eq!(undelivered.http_status, Some(200));
    let failed = h.wait_state(&id, "sms_failed").await;
    let ev = failed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["detail"]["status"] == "undelivered")
        .unwrap()
        .clone();
    assert_eq!(ev["detail"]["error_code"], "30003");

    assert_eq!(
        h.s.twilio
            .send_status_callback(&sid, "sent", None)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        h.s.twilio
            .send_status_callback(&sid, "delivered", None)
            .await
            .unwrap(),
        200
    );
    let after = h.get(&id).await;
    assert_eq!(after["state"], "sms_failed");
    assert_eq!(after["sms"]["status"], "undelivered");
    assert_eq!(after["outcome"], "none");
}

#[tokio::test]
async fn forged_or_misdirected_twilio_signatures_are_403_and_change_nothing() {
    let h = start().await;
    let phone = "+14155550216";
    let (id, sid, url) = fallen_back(&h, phone).await;
    let cb = h.s.twilio.callbacks()[0].clone();
    let token = h.s.twilio.auth_token().to_owned();
    // What an accepted callback would do: failed is recorded in the history.
    let params = with_param(&cb.params, "MessageStatus", "failed");
    let params = with_param(&params, "SmsStatus", "failed");
    let before = h.get(&id).await;

    let other_url = format!("{}/webhooks/twilio/status?message_id=other", h.s.url);
    let no_query = format!("{}/webhooks/twilio/status", h.s.url);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing signature", None),
        ("empty signature", Some(String::new())),
        ("forged signature", Some("dGhpcyBpcyBmb3JnZWQ=".into())),
        (
            "signature of the original parameters",
            Some(cb.signature.clone()),
        ),
        (
            "wrong auth token",
            Some(twilio_sign(
                "0123456789abcdef0123456789abcdef",
                &url,
                &params,
            )),
        ),
        (
            "another message's URL",
            Some(twilio_sign(&token, &other_url, &params)),
        ),
        (
            "URL without the query",
            Some(twilio_sign(&token, &no_query, &params)),
        ),
        (
            "another host",
            Some(twilio_sign(
                &token,
                &format!("https://evil.example/webhooks/twilio/status?message_id={id}"),
                &params,
            )),
        ),
        (
            "https instead of http",
            Some(twilio_sign(
                &token,
                &url.replace("http://", "https://"),
                &params,
            )),
        ),
    ];
    for (case, sig) in &cases {
        let (status, body) = post_twilio(&url, &params, sig.as_deref()).await;
        assert_eq!(status, 403, "{case}: {body}");
        assert_error_json(&body, "forbidden");
        assert_eq!(h.get(&id).await, before, "{case}: nothing may change");
    }
    // The same request correctly signed is accepted and recorded, so the
    // refusals above were about the signature alone.
    let (status, body) =
        post_twilio(&url, &params, Some(&twilio_sign(&token, &url, &params))).await;
    assert_eq!(status, 200, "{body}");
    let after = h.get(&id).await;
    assert_eq!(kinds(&after).len(), kinds(&before).len() + 1);
    assert_eq!(after["state"], "sms_delivered");
    assert_eq!(after["sms"]["sid"], sid.as_str());
}

#[tokio::test]
async fn callbacks_for_unknown_messages_or_sids_are_acknowledged() {
    let h = start().await;
    let phone = "+14155550217";
    let (id, _, url) = fallen_back(&h, phone).await;
    let token = h.s.twilio.auth_token().to_owned();
    let cb = h.s.twilio.callbacks()[0].clone();
    let before = h.get(&id).await;

    // An id we never registered.
    let unknown = format!(
        "{}/webhooks/twilio/status?message_id=never-registered",
        h.s.url
    );
    let (status, body) = post_twilio(
        &unknown,
        &cb.params,
        Some(&twilio_sign(&token, &unknown, &cb.params)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // No message id at all.
    let bare = format!("{}/webhooks/twilio/status", h.s.url);
    let (status, body) = post_twilio(
        &bare,
        &cb.params,
        Some(&twilio_sign(&token, &bare, &cb.params)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An unknown status.
    let odd = with_param(&cb.params, "MessageStatus", "teleported");
    let (status, body) = post_twilio(&url, &odd, Some(&twilio_sign(&token, &url, &odd))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.get(&id).await, before);

    // Our message, but an SMS it did not send: recorded, not applied.
    let foreign = with_param(
        &cb.params,
        "MessageSid",
        "SM00000000000000000000000000000000",
    );
    let foreign = with_param(&foreign, "MessageStatus", "failed");
    let (status, body) =
        post_twilio(&url, &foreign, Some(&twilio_sign(&token, &url, &foreign))).await;
    assert_eq!(status, 200, "{body}");
    let after = h.get(&id).await;
    assert_eq!(after["state"], "sms_delivered");
    assert_eq!(after["sms"]["status"], "delivered");
    assert_eq!(kinds(&after).len(), kinds(&before).len() + 1);
    let list = h
        .api
        .get(h.url("/v1/messages"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(list["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn callbacks_that_beat_a_lost_send_answer_settle_it_with_one_sms() {
    let h = start().await;
    let phone = "+14155550218";
    // Twilio creates the SMS but the service never sees the answer; the
    // signed callbacks are its proof the SMS exists.
    h.s.twilio
        .queue_create_faults(vec![CreateFault::ResponseLost]);
    let id = h.send_and_register(phone, 200).await;
    let m = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(m["outcome"], "sms");
    let sms = h.s.twilio.messages();
    assert_eq!(sms.len(), 1, "never a second SMS: {sms:?}");
    assert_eq!(m["sms"]["sid"].as_str().unwrap(), sms[0].sid);
    for cb in h.s.twilio.wait_for_callbacks(2, WAIT).await.unwrap() {
        assert_eq!(cb.http_status, Some(200), "{cb:?}");
    }
}

// ---------------------------------------------------------------------------
// Google events racing the service's own revocation

/// Polls the API until the history holds `kind` (the service records it in
/// its own time); fails with the last resource seen.
async fn wait_kind(h: &Harness, id: &str, kind: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..1000 {
        last = h.get(id).await;
        if kinds(&last).iter().any(|k| k == kind) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    panic!("message {id} never recorded {kind}; last seen: {last:#}");
}

#[tokio::test]
async fn delivered_while_the_revoke_is_in_flight_wins_and_no_sms_follows() {
    let h = start().await;
    let phone = "+14155550219";
    h.s.google.hold_revokes(true);
    let id = h.send_and_register(phone, 200).await;
    h.s.google.wait_for_revoke_arrivals(1, WAIT).await.unwrap();
    assert_eq!(h.get(&id).await["state"], "revoking");
    h.google_reports("DELIVERED", phone, &id).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");

    // The DELETE's late answer is recorded, and changes nothing.
    h.s.google.hold_revokes(false);
    h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    let m = wait_kind(&h, &id, "revoke_ok").await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(m["next_action_at"], Value::Null, "no SMS is due");
    let late = m["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(late["kind"], "revoke_ok");
    assert_eq!(late["state_before"], "delivered");
    assert_eq!(late["state"], "delivered");
    assert_eq!(h.s.twilio.create_requests(), 0);
}

#[tokio::test]
async fn ttl_revoked_while_the_revoke_is_in_flight_leads_to_one_sms() {
    let h = start().await;
    let phone = "+14155550220";
    h.s.google.hold_revokes(true);
    let id = h.send_and_register(phone, 200).await;
    h.s.google.wait_for_revoke_arrivals(1, WAIT).await.unwrap();
    h.google_reports("TTL_EXPIRATION_REVOKED", phone, &id).await;
    assert_eq!(h.get(&id).await["state"], "confirming");
    h.s.google.hold_revokes(false);

    let done = h.wait_state(&id, "sms_delivered").await;
    assert_eq!(done["outcome"], "sms");
    h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    let m = wait_kind(&h, &id, "revoke_ok").await;
    let k = kinds(&m);
    assert_eq!(count(&k, "ttl_revoked"), 1, "{k:?}");
    assert_eq!(count(&k, "sms_attempt"), 1, "{k:?}");
    assert_eq!(h.sms_to(phone).await, 1);
    assert_eq!(h.s.twilio.create_requests(), 1);
}

#[tokio::test]
async fn delivered_after_the_sms_went_out_makes_the_outcome_both() {
    let h = start().await;
    let phone = "+14155550221";
    let (id, _, _) = fallen_back(&h, phone).await;
    h.google_reports("DELIVERED", phone, &id).await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "sms_delivered", "never backwards");
    assert_eq!(m["outcome"], "both");
    let last = m["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "rcs_delivered");
    assert_eq!(last["state_before"], "sms_delivered");
    // A READ after that is only recorded.
    h.google_reports("READ", phone, &id).await;
    let again = h.get(&id).await;
    assert_eq!(again["state"], "sms_delivered");
    assert_eq!(again["outcome"], "both");
    assert_eq!(kinds(&again).len(), kinds(&m).len() + 1);
    assert_eq!(h.sms_to(phone).await, 1);
}
