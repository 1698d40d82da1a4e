//! The internal REST API, through real HTTP against the real service and a
//! real PostgreSQL (a fresh database per test): authentication, registration
//! and its idempotency, every kind of bad input, reading, cancelling, listing
//! and the operational endpoints.

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn in_minutes(m: i64) -> String {
    rfc3339(chrono::Utc::now() + chrono::TimeDelta::minutes(m))
}

/// A valid registration due in ten minutes: the scheduler leaves it alone
/// for the whole test.
fn valid(phone: &str, id: &str) -> Value {
    json!({
        "phone": phone,
        "message_id": id,
        "deadline": in_minutes(10),
        "sms": { "body": "Your code is 123456" },
    })
}

/// Status and JSON body of an answer that must be JSON.
async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "status {status}: Content-Type {ct:?}, body {text:?}"
    );
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, v)
}

/// Asserts the error format `{"error": {"code", "message", "field"?}}` and
/// its content; `says` must occur in the message.
fn check_error(status: u16, body: &Value, want: u16, code: &str, field: Option<&str>, says: &str) {
    assert_eq!(status, want, "{body:#}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body:#}");
    let message = e["message"].as_str().unwrap_or_else(|| panic!("{body:#}"));
    assert!(
        message.contains(says),
        "message {message:?} should say {says:?}"
    );
    match field {
        Some(f) => assert_eq!(e["field"], f, "{body:#}"),
        None => assert!(e.get("field").is_none(), "unexpected field: {body:#}"),
    }
}

async fn expect_error(
    resp: reqwest::Response,
    want: u16,
    code: &str,
    field: Option<&str>,
    says: &str,
) -> Value {
    let (status, body) = json_of(resp).await;
    check_error(status, &body, want, code, field, says);
    body
}

/// POSTs `body` and expects a 422 naming `field`.
async fn rejects(h: &Harness, body: &Value, field: &str, says: &str) {
    let r = h.post(body).await;
    let (status, v) = json_of(r).await;
    assert_eq!(status, 422, "for {body}: {v:#}");
    check_error(status, &v, 422, "invalid_field", Some(field), says);
}

async fn raw_post(h: &Harness, content_type: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut req = h.api.post(h.url("/v1/messages")).body(body);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    req.send().await.unwrap()
}

async fn get_status(h: &Harness, id: &str) -> (u16, Value) {
    let r = h
        .api
        .get(h.url(&format!("/v1/messages/{id}")))
        .send()
        .await
        .unwrap();
    json_of(r).await
}

async fn delete(h: &Harness, id: &str) -> (u16, Value) {
    let r = h
        .api
        .delete(h.url(&format!("/v1/messages/{id}")))
        .send()
        .await
        .unwrap();
    json_of(r).await
}

async fn list(h: &Harness, query: &str) -> (u16, Value) {
    let r = h
        .api
        .get(h.url(&format!("/v1/messages{query}")))
        .send()
        .await
        .unwrap();
    json_of(r).await
}

/// Every message the list shows, following cursors.
async fn list_all(h: &Harness) -> Vec<Value> {
    let mut all = Vec::new();
    let mut query = "?limit=500".to_owned();
    loop {
        let (status, page) = list(h, &query).await;
        assert_eq!(status, 200, "{page:#}");
        all.extend(page["messages"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=500&cursor={c}"),
            None => return all,
        }
    }
}

/// Nothing under these ids, and the list holds exactly `expected` messages.
async fn assert_stored_only(h: &Harness, absent: &[&str], expected: &[&str]) {
    for id in absent {
        if id.is_empty()
            || id.contains(['/', '?', '#', '%'])
            || id.contains(|c: char| c.is_whitespace() || !c.is_ascii())
        {
            // Not expressible as a path segment; the list below covers it.
            continue;
        }
        let (status, body) = get_status(h, id).await;
        assert_eq!(status, 404, "{id:?} was stored: {body:#}");
    }
    let mut ids: Vec<String> = list_all(h)
        .await
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(ids, want, "stored messages");
}

/// One request over a fresh TCP connection, the path sent byte for byte (a
/// URL library would normalise dot segments before they reach the server).
async fn raw_http(h: &Harness, method: &str, path: &str) -> (u16, String, String) {
    let addr = h.s.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        h.s.api_token
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let ct = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ct, body.to_owned())
}

// ---------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn missing_wrong_or_malformed_token_is_401_and_stores_nothing() {
    let h = start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = h.s.api_token.clone();
    let headers: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        (
            "wrong",
            Some("Bearer sandbox-00000000000000000000000000000000".into()),
        ),
        ("token with a suffix", Some(format!("Bearer {token}x"))),
        (
            "token prefix only",
            Some(format!("Bearer {}", &token[..token.len() - 1])),
        ),
        ("no scheme", Some(token.clone())),
        ("basic scheme", Some(format!("Basic {token}"))),
        ("scheme without token", Some("Bearer".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("empty header", Some(String::new())),
        (
            "token as a second word",
            Some(format!("Bearer nope {token}")),
        ),
    ];
    for (i, (case, header)) in headers.iter().enumerate() {
        let id = format!("auth-{i}");
        let mut req = client
            .post(h.url("/v1/messages"))
            .json(&valid("+14155550101", &id));
        if let Some(v) = header {
            req = req.header(AUTHORIZATION, v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            r.headers().get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{case}"
        );
        let (status, body) = json_of(r).await;
        assert_eq!(status, 401, "{case}: {body:#}");
        check_error(status, &body, 401, "unauthorized", None, "bearer token");

        // Reads and cancels are guarded too.
        let mut get = client.get(h.url(&format!("/v1/messages/{id}")));
        let mut del = client.delete(h.url(&format!("/v1/messages/{id}")));
        let mut lst = client.get(h.url("/v1/messages"));
        if let Some(v) = header {
            get = get.header(AUTHORIZATION, v);
            del = del.header(AUTHORIZATION, v);
            lst = lst.header(AUTHORIZATION, v);
        }
        for r in [get, del, lst] {
            let (status, body) = json_of(r.send().await.unwrap()).await;
            check_error(status, &body, 401, "unauthorized", None, "bearer token");
        }
    }
    // A header that is not even text.
    let r = client
        .post(h.url("/v1/messages"))
        .header(
            AUTHORIZATION,
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .json(&valid("+14155550101", "auth-bytes"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    check_error(status, &body, 401, "unauthorized", None, "bearer token");
    // Authentication comes before the body is even looked at.
    let r = client
        .post(h.url("/v1/messages"))
        .header(CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    check_error(status, &body, 401, "unauthorized", None, "bearer token");

    let ids: Vec<String> = (0..headers.len()).map(|i| format!("auth-{i}")).collect();
    let mut absent: Vec<&str> = ids.iter().map(String::as_str).collect();
    absent.push("auth-bytes");
    assert_stored_only(&h, &absent, &[]).await;

    // The right token (also with lower-case scheme) works, so the 401s above
    // were about the token.
    let r = h.post(&valid("+14155550101", "auth-ok")).await;
    assert_eq!(r.status(), 201);
    let r = client
        .get(h.url("/v1/messages/auth-ok"))
        .header(AUTHORIZATION, format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------
// Registration

#[tokio::test]
async fn post_creates_the_resource_and_an_identical_retry_returns_it() {
    let h = start().await;
    let deadline = chrono::Utc::now() + chrono::TimeDelta::minutes(10);
    let body = json!({
        "phone": "+14155550102",
        "message_id": "0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10",
        "deadline": rfc3339(deadline),
        "sms": { "body": "Your code is 123456" },
        "metadata": { "order": 42, "tags": ["otp"] },
    });
    let r = h.post(&body).await;
    let (status, created) = json_of(r).await;
    assert_eq!(status, 201, "{created:#}");
    assert_eq!(
        created["message_id"],
        "0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10"
    );
    assert_eq!(created["agent_id"], h.s.google.agent_id());
    assert_eq!(created["phone"], "+14155550102");
    assert_eq!(created["state"], "pending");
    assert_eq!(created["outcome"], "none");
    assert_eq!(
        time(&created["deadline"]).timestamp_millis(),
        deadline.timestamp_millis()
    );
    assert_eq!(created["sms"]["body"], "Your code is 123456");
    assert_eq!(created["sms"]["from"], Value::Null);
    assert_eq!(created["sms"]["sid"], Value::Null);
    assert_eq!(created["sms"]["status"], Value::Null);
    assert_eq!(created["metadata"], json!({ "order": 42, "tags": ["otp"] }));
    assert_eq!(
        time(&created["next_action_at"]),
        time(&created["deadline"]) - chrono::TimeDelta::milliseconds(50),
        "the next action is the revocation, claimed worker.claim_lead_ms ahead of the deadline"
    );
    let events = created["events"].as_array().unwrap();
    assert_eq!(kinds(&created), ["registered"]);
    assert_eq!(events[0]["state"], "pending");
    assert_eq!(events[0]["state_before"], Value::Null);
    assert_eq!(
        time(&events[0]["detail"]["deadline"]),
        time(&created["deadline"])
    );

    // The identical request again: 200, the very same resource.
    let r = h.post(&body).await;
    let (status, again) = json_of(r).await;
    assert_eq!(status, 200, "{again:#}");
    assert_eq!(again, created);
    // The agent given explicitly (in either form) is the same request.
    for agent in [
        h.s.google.agent_id().to_owned(),
        format!("{}@rbm.goog", h.s.google.agent_id()),
    ] {
        let mut with_agent = body.clone();
        with_agent["agent_id"] = json!(agent);
        let (status, again) = json_of(h.post(&with_agent).await).await;
        assert_eq!(status, 200, "{agent}: {again:#}");
        assert_eq!(again, created);
    }
    assert_eq!(h.get("0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10").await, created);
    assert_eq!(list_all(&h).await.len(), 1);
}

#[tokio::test]
async fn concurrent_identical_posts_create_one_message() {
    let h = start().await;
    let body = valid("+14155550123", "race-1");
    let answers = futures::future::join_all((0..8).map(|_| h.post(&body))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 201]);
    // Concurrent conflicting ones: one wins, the others are told so.
    let bodies: Vec<Value> = (0..6)
        .map(|i| {
            let mut v = valid("+14155550123", "race-2");
            v["sms"]["body"] = json!(format!("variant {i}"));
            v
        })
        .collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| h.post(b))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409]);
    assert_eq!(kinds(&h.get("race-1").await), ["registered"]);
    assert_eq!(kinds(&h.get("race-2").await), ["registered"]);
    assert_stored_only(&h, &[], &["race-1", "race-2"]).await;
}

#[tokio::test]
async fn same_message_id_with_different_content_is_409_and_changes_nothing() {
    let h = start().await;
    let id = "conflict-1";
    let body = valid("+14155550103", id);
    let (status, created) = json_of(h.post(&body).await).await;
    assert_eq!(status, 201);

    let mut variants = Vec::new();
    let mut v = body.clone();
    v["sms"]["body"] = json!("Your code is 654321");
    variants.push(("sms body", v));
    let mut v = body.clone();
    v["phone"] = json!("+14155550199");
    variants.push(("phone", v));
    let mut v = body.clone();
    v["deadline"] = json!(in_minutes(11));
    variants.push(("deadline", v));
    let mut v = body.clone();
    v["sms"]["from"] = json!("MyBrand");
    variants.push(("sms from", v));
    let mut v = body.clone();
    v["metadata"] = json!({ "k": "v" });
    variants.push(("metadata", v));
    let mut v = body.clone();
    v.as_object_mut().unwrap().remove("deadline");
    v["revoke_after_secs"] = json!(600);
    variants.push(("revoke_after_secs instead of deadline", v));

    for (what, v) in variants {
        let r = h.post(&v).await;
        let e = expect_error(r, 409, "message_id_conflict", None, id).await;
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("different content"),
            "{what}: {e:#}"
        );
    }
    assert_eq!(h.get(id).await, created, "the stored message is untouched");
    assert_eq!(list_all(&h).await.len(), 1);
}

#[tokio::test]
async fn revoke_after_secs_is_relative_yet_idempotent() {
    let h = start().await;
    let phone = "+14155550104";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    let body = json!({
        "phone": phone,
        "message_id": id,
        "revoke_after_secs": 1,
        "sms": { "body": "Your code is 777777" },
    });
    let (status, created) = json_of(h.post(&body).await).await;
    assert_eq!(status, 201, "{created:#}");
    assert_eq!(created["state"], "pending");
    // Measured from registration, by the database clock.
    assert_eq!(
        time(&created["deadline"]) - time(&created["created_at"]),
        chrono::TimeDelta::seconds(1)
    );

    // Later: the deadline has passed and the revocation happened.
    let revokes = h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    assert_eq!(revokes[0].message_id, id);

    // The same request now is a retry, not a new registration with a new
    // deadline.
    let (status, again) = json_of(h.post(&body).await).await;
    assert_eq!(status, 200, "{again:#}");
    assert_eq!(again["deadline"], created["deadline"]);
    assert_eq!(again["created_at"], created["created_at"]);
    assert_ne!(again["state"], "pending", "it is the revoked message");
    assert!(kinds(&again).contains(&"revoke_attempt".to_owned()));
    assert_eq!(
        kinds(&again).iter().filter(|k| *k == "registered").count(),
        1
    );
    // A different relative deadline is different content.
    let mut other = body.clone();
    other["revoke_after_secs"] = json!(2);
    expect_error(h.post(&other).await, 409, "message_id_conflict", None, "").await;
    assert_eq!(list_all(&h).await.len(), 1);
    // The revoked message still falls back exactly once.
    h.wait_state(&id, "sms_delivered").await;
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn identical_retry_after_the_deadline_passed_still_returns_the_resource() {
    let h = start().await;
    let phone = "+14155550105";
    let id = uuid::Uuid::new_v4().to_string();
    h.s.google.agent_send(phone, &id, None);
    let body = message(phone, &id, 300);
    let (status, created) = json_of(h.post(&body).await).await;
    assert_eq!(status, 201);
    // The deadline has passed once the service revoked the message.
    h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    // A client retrying the request it already made (its first answer was
    // lost) must learn that the message is registered, not that its
    // request is invalid.
    let (status, again) = json_of(h.post(&body).await).await;
    assert_eq!(status, 200, "{again:#}");
    assert_eq!(again["message_id"], created["message_id"]);
    assert_eq!(again["deadline"], created["deadline"]);
}

// ---------------------------------------------------------------------------
// Bad input: 4xx with a precise message, and nothing stored

#[tokio::test]
async fn invalid_phones_are_rejected() {
    let h = start().await;
    let phones = [
        "14155550123",
        "+1 415 555 0123",
        "+1-415-555-0123",
        "(415) 555-0123",
        "+0123456789",
        "+1234567",
        "+1234567890123456",
        "+1415555012a",
        "++14155550123",
        "+",
        "",
        "+١٢٣٤٥٦٧٨٩",
        "+14155550123\n",
        " +14155550123",
    ];
    let mut ids = Vec::new();
    for (i, phone) in phones.iter().enumerate() {
        let id = format!("phone-{i}");
        rejects(&h, &valid(phone, &id), "phone", "E.164").await;
        ids.push(id);
    }
    // The boundaries are accepted (8 and 15 digits).
    for (phone, id) in [
        ("+12345678", "phone-min"),
        ("+123456789012345", "phone-max"),
    ] {
        let r = h.post(&valid(phone, id)).await;
        assert_eq!(r.status(), 201, "{phone}");
    }
    let absent: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_stored_only(&h, &absent, &["phone-min", "phone-max"]).await;
}

#[tokio::test]
async fn bad_deadlines_are_rejected() {
    let h = start().await;
    let phone = "+14155550106";
    let with = |id: &str, deadline: Value, after: Value| {
        let mut v = valid(phone, id);
        let o = v.as_object_mut().unwrap();
        o.remove("deadline");
        if !deadline.is_null() {
            o.insert("deadline".into(), deadline);
        }
        if !after.is_null() {
            o.insert("revoke_after_secs".into(), after);
        }
        v
    };
    let past = rfc3339(chrono::Utc::now() - chrono::TimeDelta::minutes(1));
    let far = rfc3339(chrono::Utc::now() + chrono::TimeDelta::days(31));
    let absurd = "9999-12-31T23:59:59Z";
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "d-past",
            with("d-past", json!(past), Value::Null),
            "deadline",
            "is in the past",
        ),
        (
            "d-epoch",
            with("d-epoch", json!("1970-01-01T00:00:00Z"), Value::Null),
            "deadline",
            "is in the past",
        ),
        (
            "d-far",
            with("d-far", json!(far), Value::Null),
            "deadline",
            "more than 2592000 seconds ahead",
        ),
        (
            "d-absurd",
            with("d-absurd", json!(absurd), Value::Null),
            "deadline",
            "more than 2592000 seconds ahead",
        ),
        (
            "d-both",
            with("d-both", json!(in_minutes(5)), json!(60)),
            "deadline",
            "not both",
        ),
        (
            "d-neither",
            with("d-neither", Value::Null, Value::Null),
            "deadline",
            "is required",
        ),
        (
            "d-no-offset",
            with("d-no-offset", json!("2030-01-15T10:00:00"), Value::Null),
            "deadline",
            "RFC 3339",
        ),
        (
            "d-words",
            with("d-words", json!("tomorrow"), Value::Null),
            "deadline",
            "RFC 3339",
        ),
        (
            "d-empty",
            with("d-empty", json!(""), Value::Null),
            "deadline",
            "RFC 3339",
        ),
        (
            "d-slashes",
            with("d-slashes", json!("15/01/2030 10:00"), Value::Null),
            "deadline",
            "RFC 3339",
        ),
        (
            "d-feb30",
            with("d-feb30", json!("2030-02-30T10:00:00Z"), Value::Null),
            "deadline",
            "RFC 3339",
        ),
        (
            "d-hour25",
            with("d-hour25", json!("2030-01-15T25:00:00Z"), Value::Null),
            "deadline",
            "RFC 3339",
        ),
        (
            "d-number",
            with("d-number", json!(1_900_000_000), Value::Null),
            "deadline",
            "invalid type",
        ),
        (
            "r-zero",
            with("r-zero", Value::Null, json!(0)),
            "revoke_after_secs",
            "between 1 and 2592000",
        ),
        (
            "r-negative",
            with("r-negative", Value::Null, json!(-5)),
            "revoke_after_secs",
            "between 1 and 2592000",
        ),
        (
            "r-far",
            with("r-far", Value::Null, json!(2_592_001)),
            "revoke_after_secs",
            "between 1 and 2592000",
        ),
        (
            "r-huge",
            with("r-huge", Value::Null, json!(i64::MAX)),
            "revoke_after_secs",
            "between 1 and 2592000",
        ),
        (
            "r-float",
            with("r-float", Value::Null, json!(1.5)),
            "revoke_after_secs",
            "invalid type",
        ),
        (
            "r-string",
            with("r-string", Value::Null, json!("60")),
            "revoke_after_secs",
            "invalid type",
        ),
        (
            "r-overflow",
            with("r-overflow", Value::Null, json!(u64::MAX)),
            "revoke_after_secs",
            "",
        ),
    ];
    for (_, body, field, says) in &cases {
        rejects(&h, body, field, says).await;
    }
    // Accepted near the limits, and with any offset.
    let near = rfc3339(chrono::Utc::now() + chrono::TimeDelta::days(29));
    let offset = (chrono::Utc::now() + chrono::TimeDelta::minutes(10))
        .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    for (id, body) in [
        ("ok-29d", with("ok-29d", json!(near), Value::Null)),
        (
            "ok-offset",
            with("ok-offset", json!(offset.clone()), Value::Null),
        ),
        (
            "ok-max-secs",
            with("ok-max-secs", Value::Null, json!(2_592_000)),
        ),
    ] {
        let (status, v) = json_of(h.post(&body).await).await;
        assert_eq!(status, 201, "{id}: {v:#}");
    }
    let stored = h.get("ok-offset").await;
    assert_eq!(
        time(&stored["deadline"]),
        chrono::DateTime::parse_from_rfc3339(&offset).unwrap()
    );
    let absent: Vec<&str> = cases.iter().map(|c| c.0).collect();
    assert_stored_only(&h, &absent, &["ok-29d", "ok-offset", "ok-max-secs"]).await;
}

#[tokio::test]
async fn sms_body_must_be_present_and_at_most_1600_characters() {
    // Segments are capped separately (see send_mode.rs); here only characters count.
    let h = start_with(|c| {
        c.env
            .push(("RBMF__FALLBACK__MAX_SMS_SEGMENTS".into(), "49".into()))
    })
    .await;
    let phone = "+14155550107";
    let with_body = |id: &str, text: &str| {
        let mut v = valid(phone, id);
        v["sms"]["body"] = json!(text);
        v
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("b-empty", String::new(), "must not be empty"),
        ("b-spaces", "   ".into(), "must not be empty"),
        (
            "b-whitespace",
            " \n\t\r\u{a0}\u{2003} ".into(),
            "must not be empty",
        ),
        (
            "b-1601",
            "x".repeat(1601),
            "is 1601 characters; at most 1600",
        ),
        (
            "b-1601-multibyte",
            "é".repeat(1601),
            "is 1601 characters; at most 1600",
        ),
        (
            "b-1601-emoji",
            "😀".repeat(1601),
            "is 1601 characters; at most 1600",
        ),
        ("b-5000", "y".repeat(5000), "is 5000 characters"),
        ("b-nul", "code\u{0}123".into(), "NUL"),
    ];
    for (id, text, says) in &cases {
        rejects(&h, &with_body(id, text), "sms.body", says).await;
    }
    // Exactly 1600 characters pass, however many bytes they take.
    let accepted = [
        ("b-ok-ascii", "x".repeat(1600)),
        ("b-ok-2byte", "é".repeat(1600)),
        ("b-ok-4byte", "😀".repeat(1600)),
        ("b-ok-mixed", "aé€😀".repeat(400)),
    ];
    for (id, text) in &accepted {
        let (status, v) = json_of(h.post(&with_body(id, text)).await).await;
        assert_eq!(status, 201, "{id}: {v:#}");
        assert_eq!(v["sms"]["body"].as_str().unwrap(), text.as_str());
        assert_eq!(
            h.get(id).await["sms"]["body"].as_str().unwrap(),
            text.as_str()
        );
    }
    let absent: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let present: Vec<&str> = accepted.iter().map(|c| c.0).collect();
    assert_stored_only(&h, &absent, &present).await;
}

#[tokio::test]
async fn only_the_configured_agent_is_accepted_in_either_form() {
    let h = start().await;
    let agent = h.s.google.agent_id().to_owned();
    let phone = "+14155550108";
    let with_agent = |id: &str, a: &str| {
        let mut v = valid(phone, id);
        v["agent_id"] = json!(a);
        v
    };
    let bad = [
        ("a-other", "other-agent".to_owned()),
        ("a-other-domain", "other-agent@rbm.goog".to_owned()),
        ("a-empty", String::new()),
        ("a-suffix-only", "@rbm.goog".to_owned()),
        ("a-wrong-domain", format!("{agent}@example.com")),
        ("a-prefixed", format!("x{agent}")),
    ];
    for (id, a) in &bad {
        rejects(&h, &with_agent(id, a), "agent_id", "unknown agent").await;
    }
    for (id, a) in [
        ("a-bare", agent.clone()),
        ("a-domain", format!("{agent}@rbm.goog")),
    ] {
        let (status, v) = json_of(h.post(&with_agent(id, &a)).await).await;
        assert_eq!(status, 201, "{a}: {v:#}");
        assert_eq!(v["agent_id"], agent.as_str(), "stored in its bare form");
    }
    let absent: Vec<&str> = bad.iter().map(|c| c.0).collect();
    assert_stored_only(&h, &absent, &["a-bare", "a-domain"]).await;
}

#[tokio::test]
async fn malformed_or_mistyped_json_is_rejected_precisely() {
    let h = start().await;
    let ok = serde_json::to_string(&valid("+14155550109", "j-trailing")).unwrap();
    // Syntax errors: 400 invalid_json.
    let syntax: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated",
            br#"{"phone": "+14155550109", "message_id": "j-1""#.to_vec(),
        ),
        ("not json", b"phone=+14155550109".to_vec()),
        ("empty", Vec::new()),
        ("trailing comma", br#"{"phone": "+14155550109",}"#.to_vec()),
        ("single quotes", br#"{'phone': '+14155550109'}"#.to_vec()),
        ("trailing garbage", format!("{ok} {{}}").into_bytes()),
    ];
    for (case, bytes) in syntax {
        let r = raw_post(&h, Some("application/json"), bytes).await;
        let (status, v) = json_of(r).await;
        assert_eq!(status, 400, "{case}: {v:#}");
        check_error(status, &v, 400, "invalid_json", None, "malformed JSON");
    }
    // Invalid UTF-8 inside an otherwise fine document.
    let mut bytes = br#"{"phone":"+14155550109","message_id":"j-utf8","revoke_after_secs":60,"sms":{"body":"caf"#.to_vec();
    bytes.extend_from_slice(b"\xe9\xff");
    bytes.extend_from_slice(br#""}}"#);
    let r = raw_post(&h, Some("application/json"), bytes).await;
    expect_error(r, 400, "invalid_json", None, "UTF-8").await;

    // Well-formed but the wrong shape: 422 with the path of the field.
    let base = || valid("+14155550109", "j-shape");
    let mut cases: Vec<(Value, &str, &str)> = Vec::new();
    let mut v = base();
    v["sms"]["body"] = json!(5);
    cases.push((v, "sms.body", "invalid type"));
    let mut v = base();
    v["sms"]["body"] = json!(null);
    cases.push((v, "sms.body", "invalid type"));
    let mut v = base();
    v["sms"]["from"] = json!(["+14155550100"]);
    cases.push((v, "sms.from", "invalid type"));
    let mut v = base();
    v["sms"] = json!("Your code is 1");
    cases.push((v, "sms", "invalid type"));
    let mut v = base();
    v["phone"] = json!(14155550109_u64);
    cases.push((v, "phone", "invalid type"));
    let mut v = base();
    v["message_id"] = json!({ "id": 1 });
    cases.push((v, "message_id", "invalid type"));
    let mut v = base();
    v["agent_id"] = json!(true);
    cases.push((v, "agent_id", "invalid type"));
    let mut v = base();
    v["metadata"] = json!([1, 2]);
    cases.push((v, "metadata", "must be a JSON object"));
    let mut v = base();
    v["metadata"] = json!("text");
    cases.push((v, "metadata", "must be a JSON object"));
    let mut v = base();
    v["metadata"] = json!({ "blob": "m".repeat(5000) });
    cases.push((v, "metadata", "at most 4096 bytes"));
    // Missing required fields.
    for field in ["phone", "message_id", "sms"] {
        let mut v = base();
        v.as_object_mut().unwrap().remove(field);
        cases.push((v, field, "missing field"));
    }
    let mut v = base();
    v["sms"].as_object_mut().unwrap().remove("body");
    cases.push((v, "sms.body", "missing field `body`"));

    for (body, field, says) in &cases {
        rejects(&h, body, field, says).await;
    }
    // Unknown fields: 422 naming them (the exact `field` is checked in
    // unknown_fields_are_named_by_their_path).
    for (body, _, says) in unknown_field_cases() {
        let (status, v) = json_of(h.post(&body).await).await;
        assert_eq!(status, 422, "{body}: {v:#}");
        assert_eq!(v["error"]["code"], "invalid_field", "{v:#}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v:#}"
        );
        assert!(v["error"]["field"].is_string(), "{v:#}");
    }
    // Not an object at all.
    for doc in ["[]", "null", "42", "\"text\""] {
        let r = raw_post(&h, Some("application/json"), doc.as_bytes().to_vec()).await;
        let (status, v) = json_of(r).await;
        assert!(status == 400 || status == 422, "{doc}: {status} {v:#}");
        assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string());
    }
    assert_stored_only(
        &h,
        &["j-1", "j-utf8", "j-shape", "j-trailing", "j-unknown"],
        &[],
    )
    .await;
}

fn unknown_field_cases() -> Vec<(Value, &'static str, &'static str)> {
    let base = || valid("+14155550109", "j-unknown");
    let mut cases = Vec::new();
    let mut v = base();
    v["priority"] = json!("high");
    cases.push((v, "priority", "unknown field `priority`"));
    let mut v = base();
    v["sms"]["to"] = json!("+14155550100");
    cases.push((v, "sms.to", "unknown field `to`"));
    let mut v = base();
    v["Phone"] = json!("+14155550109");
    cases.push((v, "Phone", "unknown field `Phone`"));
    cases
}

#[tokio::test]
async fn unknown_fields_are_named_by_their_path() {
    let h = start().await;
    for (body, field, says) in unknown_field_cases() {
        rejects(&h, &body, field, says).await;
    }
    assert_stored_only(&h, &["j-unknown"], &[]).await;
}

#[tokio::test]
async fn content_type_and_size_are_checked() {
    let h = start().await;
    let body = |id: &str| serde_json::to_vec(&valid("+14155550110", id)).unwrap();
    for (id, ct) in [
        ("ct-none", None),
        ("ct-text", Some("text/plain")),
        ("ct-form", Some("application/x-www-form-urlencoded")),
        ("ct-jsonish", Some("application/jsonp")),
        ("ct-multipart", Some("multipart/form-data; boundary=x")),
    ] {
        let r = raw_post(&h, ct, body(id)).await;
        let v = expect_error(r, 415, "unsupported_media_type", None, "application/json").await;
        assert!(v["error"]["message"].is_string(), "{id}");
    }
    // Parameters and case do not matter.
    for (id, ct) in [
        ("ct-charset", "application/json; charset=utf-8"),
        ("ct-upper", "Application/JSON"),
    ] {
        let r = raw_post(&h, Some(ct), body(id)).await;
        assert_eq!(r.status(), 201, "{ct}: {}", r.text().await.unwrap());
    }
    // Over the 64 KiB limit: 413 in our format, nothing stored. The server
    // may close the connection after answering, so each goes on a
    // connection of its own.
    let oversized = [
        ("too-big", "metadata", json!({ "pad": "p".repeat(70_000) })),
        ("too-big-sms", "sms", json!({ "body": "s".repeat(100_000) })),
    ];
    for (id, key, value) in oversized {
        let mut big = valid("+14155550110", id);
        big[key] = value;
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(h.url("/v1/messages"))
            .bearer_auth(&h.s.api_token)
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&big).unwrap())
            .send()
            .await
            .unwrap();
        expect_error(r, 413, "payload_too_large", None, "65536 bytes").await;
    }
    assert_stored_only(
        &h,
        &[
            "ct-none",
            "ct-text",
            "ct-form",
            "ct-jsonish",
            "ct-multipart",
            "too-big",
            "too-big-sms",
        ],
        &["ct-charset", "ct-upper"],
    )
    .await;
}

#[tokio::test]
async fn message_ids_with_path_tricks_never_reach_the_store_or_a_500() {
    let h = start().await;
    let phone = "+14155550111";
    let bad_ids = [
        "../x".to_owned(),
        "..".to_owned(),
        ".".to_owned(),
        "a/b".to_owned(),
        "%2e%2e".to_owned(),
        "..%2Fx".to_owned(),
        "a\\b".to_owned(),
        "a?b".to_owned(),
        "a#b".to_owned(),
        "with space".to_owned(),
        "tab\tid".to_owned(),
        "new\nline".to_owned(),
        "nul\u{0}id".to_owned(),
        "ünïcödé".to_owned(),
        String::new(),
        "x".repeat(129),
        "x".repeat(10_000),
        "x'; DROP TABLE messages; --".to_owned(),
        "\" OR \"1\"=\"1".to_owned(),
    ];
    for id in &bad_ids {
        rejects(&h, &valid(phone, id), "message_id", "1 to 128 characters").await;
    }
    // At the edges of what is allowed: every permitted punctuation, 128 long.
    let long = "y".repeat(128);
    for id in ["a:b~c.d_e-f", "...", long.as_str()] {
        let (status, v) = json_of(h.post(&valid(phone, id)).await).await;
        assert_eq!(status, 201, "{id}: {v:#}");
        assert_eq!(h.get(id).await["message_id"], id);
    }

    // The same tricks in the URL, sent byte for byte: 404 (or another 4xx)
    // in the JSON format, never a 500, never another message.
    let long_path = format!("/v1/messages/{}", "z".repeat(5000));
    let paths = [
        "/v1/messages/..%2Fx",
        "/v1/messages/%2e%2e",
        "/v1/messages/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/v1/messages/.",
        "/v1/messages/a%2Fb",
        "/v1/messages/a%2F..%2F...",
        "/v1/messages/x%27%3B%20DROP%20TABLE%20messages%3B%20--",
        "/v1/messages/%00",
        "/v1/messages/a%20b",
        "/v1/messages/%C3%BC",
        long_path.as_str(),
        "/v1/messages/a/b",
        "/v1/messages/../v1/messages/...",
        "/v1/messages/",
        "/v1/messages//",
    ];
    for path in paths {
        for method in ["GET", "DELETE"] {
            let (status, ct, body) = raw_http(&h, method, path).await;
            assert!(
                (400..500).contains(&status),
                "{method} {path}: {status} {body}"
            );
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert!(
                ct.starts_with("application/json"),
                "{method} {path}: {ct} {body}"
            );
            let v: Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"]["code"].is_string(), "{v:#}");
        }
    }
    // The message "..." survived every DELETE above.
    assert_eq!(h.get("...").await["state"], "pending");
    let absent: Vec<&str> = bad_ids.iter().map(String::as_str).collect();
    assert_stored_only(&h, &absent, &["a:b~c.d_e-f", "...", long.as_str()]).await;
}

#[tokio::test]
async fn a_non_utf8_path_segment_is_answered_in_the_json_error_format() {
    let h = start().await;
    for method in ["GET", "DELETE"] {
        let (status, ct, body) = raw_http(&h, method, "/v1/messages/%FF%FE").await;
        assert!((400..500).contains(&status), "{method}: {status} {body}");
        assert!(
            ct.starts_with("application/json"),
            "{method}: {status} {ct:?} {body:?}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"]["code"].is_string(), "{v:#}");
    }
}

#[tokio::test]
async fn sql_metacharacters_are_plain_data() {
    let h = start().await;
    let nasty = "'; DROP TABLE messages; --";
    let mut body = valid("+14155550112", "sql-1");
    body["sms"]["body"] = json!(nasty);
    body["metadata"] = json!({ "q": "' OR '1'='1", "x": "\\'); DELETE FROM message_events; --" });
    let (status, created) = json_of(h.post(&body).await).await;
    assert_eq!(status, 201, "{created:#}");
    assert_eq!(created["sms"]["body"], nasty);
    let got = h.get("sql-1").await;
    assert_eq!(got["sms"]["body"], nasty);
    assert_eq!(got["metadata"], body["metadata"]);
    // The table is still there and its rows intact.
    let mut second = valid("+14155550112", "sql-2");
    second["sms"]["from"] = json!("Robert Tab");
    assert_eq!(h.post(&second).await.status(), 201);
    rejects(
        &h,
        &valid("+14155550112", "x' OR '1'='1"),
        "message_id",
        "1 to 128",
    )
    .await;
    let (status, v) = list(&h, "?state=pending'%20OR%20'1'%3D'1").await;
    check_error(status, &v, 400, "invalid_query", None, "unknown state");
    assert_stored_only(&h, &[], &["sql-1", "sql-2"]).await;
    assert_eq!(kinds(&h.get("sql-1").await), ["registered"]);
}

#[tokio::test]
async fn sms_from_must_be_a_number_or_an_alphanumeric_sender() {
    let h = start().await;
    let with_from = |id: &str, from: &str| {
        let mut v = valid("+14155550113", id);
        v["sms"]["from"] = json!(from);
        v
    };
    let bad = [
        ("f-punct", "not valid!"),
        ("f-zero", "+0123456789"),
        ("f-long", "ABCDEFGHIJKL"),
        ("f-digits", "12345"),
        ("f-empty", ""),
        ("f-unicode", "Brändname"),
        ("f-spaces", "   "),
    ];
    for (id, from) in bad {
        rejects(&h, &with_from(id, from), "sms.from", "E.164").await;
    }
    for (id, from) in [
        ("f-brand", "MyBrand"),
        ("f-number", "+14155550100"),
        ("f-11", "ABCDEFGHIJK"),
    ] {
        let (status, v) = json_of(h.post(&with_from(id, from)).await).await;
        assert_eq!(status, 201, "{from}: {v:#}");
        assert_eq!(v["sms"]["from"], from);
    }
    let absent: Vec<&str> = bad.iter().map(|c| c.0).collect();
    assert_stored_only(&h, &absent, &["f-brand", "f-number", "f-11"]).await;
}

// ---------------------------------------------------------------------------
// Reading

#[tokio::test]
async fn get_unknown_is_404_json() {
    let h = start().await;
    for id in ["nope", "0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10"] {
        let (status, v) = get_status(&h, id).await;
        check_error(
            status,
            &v,
            404,
            "not_found",
            None,
            &format!("no message \"{id}\""),
        );
    }
    // Registering one does not make another appear.
    assert_eq!(h.post(&valid("+14155550114", "known")).await.status(), 201);
    let (status, _) = get_status(&h, "known2").await;
    assert_eq!(status, 404);
    let (status, _) = get_status(&h, "know").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn get_returns_the_ordered_event_history() {
    let h = start().await;
    let phone = "+14155550115";
    // One refused send first, so the history holds a retry too.
    h.s.twilio
        .queue_create_faults(vec![CreateFault::Status(503)]);
    let id = h.send_and_register(phone, 300).await;
    let done = h.wait_state(&id, "sms_delivered").await;
    let events = done["events"].as_array().unwrap();
    let k = kinds(&done);
    assert_eq!(k[0], "registered", "{k:?}");
    // The lifecycle's steps appear in the order they happened.
    let mut pos = 0;
    for step in [
        "registered",
        "revoke_attempt",
        "revoke_ok",
        "sms_attempt",
        "sms_retry",
        "sms_attempt",
    ] {
        pos += k[pos..]
            .iter()
            .position(|x| x == step)
            .unwrap_or_else(|| panic!("{step} missing or out of order in {k:?}"));
    }
    // Each event starts where the one before left off, in time order, and
    // the last one is where the message is.
    for pair in events.windows(2) {
        assert_eq!(pair[1]["state_before"], pair[0]["state"], "{k:?}");
        assert!(time(&pair[1]["at"]) >= time(&pair[0]["at"]), "{pair:?}");
    }
    assert_eq!(events.last().unwrap()["state"], "sms_delivered");
    assert_eq!(done["outcome"], "sms");
    assert!(done["sms"]["sid"].as_str().unwrap().starts_with("SM"));
    assert_eq!(done["sms"]["status"], "delivered");
    assert_eq!(done["next_action_at"], Value::Null);
    // The revocation was claimed no more than the claim lead ahead and
    // answered after the deadline; the SMS went after the window.
    let at = |kind: &str| time(&events.iter().find(|e| e["kind"] == kind).unwrap()["at"]);
    let deadline = time(&done["deadline"]);
    assert!(at("revoke_attempt") >= deadline - chrono::TimeDelta::milliseconds(50));
    assert!(at("revoke_ok") >= deadline);
    assert!(at("sms_attempt") - at("revoke_ok") >= chrono::TimeDelta::milliseconds(380));
    assert_eq!(h.sms_to(phone).await, 1);
}

#[tokio::test]
async fn get_shows_an_rcs_delivery_in_the_history() {
    let h = start().await;
    let phone = "+14155550121";
    h.s.google.set_phone(
        phone,
        PhoneBehaviour::Online {
            delay: Duration::from_millis(20),
            read_after: Some(Duration::from_millis(20)),
        },
    );
    let id = h.send_and_register(phone, 600_000).await;
    let hooks = h.s.google.wait_for_webhooks(2, WAIT).await.unwrap();
    h.applied().await;
    let m = h.get(&id).await;
    assert_eq!(m["state"], "delivered");
    assert_eq!(m["outcome"], "rcs");
    assert_eq!(kinds(&m), ["registered", "rcs_delivered", "rcs_read"]);
    let events = m["events"].as_array().unwrap();
    // Each history entry names the webhook of its type. The emulator records
    // a webhook once answered, so the two can be listed in either order.
    let hook = |event_type: &str| {
        let found: Vec<_> = hooks
            .iter()
            .filter(|w| w.event_type == event_type)
            .collect();
        assert_eq!(found.len(), 1, "one {event_type} webhook");
        found[0].event_id.as_str()
    };
    assert_eq!(events[1]["detail"]["event_id"], hook("DELIVERED"));
    assert_eq!(events[2]["detail"]["event_id"], hook("READ"));
    assert!(time(&events[1]["at"]) <= time(&events[2]["at"]));
    assert_eq!(events[2]["state_before"], "delivered");
}

#[tokio::test]
async fn get_shows_the_twilio_error_of_a_refused_sms() {
    let h = start().await;
    let phone = "+14155550122";
    h.s.twilio
        .set_recipient(phone, RecipientBehaviour::InvalidNumber);
    let id = h.send_and_register(phone, 200).await;
    let m = h.wait_state(&id, "failed").await;
    assert_eq!(m["outcome"], "none");
    assert_eq!(m["sms"]["sid"], Value::Null);
    let rejected = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "sms_rejected")
        .unwrap_or_else(|| panic!("{m:#}"));
    assert_eq!(rejected["detail"]["code"], 21211, "{rejected:#}");
    assert_eq!(rejected["state"], "failed");
    assert_eq!(h.sms_to(phone).await, 0);
}

// ---------------------------------------------------------------------------
// Cancelling

#[tokio::test]
async fn cancel_pending_stops_the_fallback_and_is_idempotent() {
    let h = start().await;
    let (phone_a, phone_b) = ("+14155550116", "+14155550117");
    let a = h.send_and_register(phone_a, 1500).await;
    let (status, cancelled) = delete(&h, &a).await;
    assert_eq!(status, 200, "{cancelled:#}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["outcome"], "none");
    assert_eq!(cancelled["next_action_at"], Value::Null);
    assert_eq!(kinds(&cancelled), ["registered", "cancelled"]);
    assert_eq!(cancelled["events"][1]["state_before"], "pending");
    assert_eq!(cancelled["events"][1]["detail"]["by"], "api");

    // A second message due after the first: once it is revoked, the first
    // one's deadline has long passed.
    let b = h.send_and_register(phone_b, 2000).await;
    let revokes = h.s.google.wait_for_revokes(1, WAIT).await.unwrap();
    assert_eq!(revokes[0].message_id, b);
    h.wait_state(&b, "sms_delivered").await;
    let revoked: Vec<String> =
        h.s.google
            .revokes()
            .into_iter()
            .map(|r| r.message_id)
            .collect();
    assert_eq!(
        revoked,
        std::slice::from_ref(&b),
        "only the uncancelled message was revoked"
    );
    assert_eq!(h.sms_to(phone_a).await, 0);
    assert_eq!(h.sms_to(phone_b).await, 1);
    let after = h.get(&a).await;
    assert_eq!(after["state"], "cancelled");
    assert_eq!(kinds(&after), ["registered", "cancelled"]);

    // Cancelling again is a retry: 200, nothing new in the history.
    let (status, again) = delete(&h, &a).await;
    assert_eq!(status, 200, "{again:#}");
    assert_eq!(again["state"], "cancelled");
    assert_eq!(kinds(&again), ["registered", "cancelled"]);
    assert_eq!(again, h.get(&a).await);
}

#[tokio::test]
async fn cancel_after_revocation_began_is_409() {
    let h = start().await;
    let phone = "+14155550118";
    h.s.google.hold_revokes(true);
    let id = h.send_and_register(phone, 200).await;
    h.s.google.wait_for_revoke_arrivals(1, WAIT).await.unwrap();
    let before = h.get(&id).await;
    assert_eq!(before["state"], "revoking");
    let (status, v) = delete(&h, &id).await;
    check_error(
        status,
        &v,
        409,
        "not_cancellable",
        None,
        "the fallback is already under way",
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("revoking"));
    let unchanged = h.get(&id).await;
    assert_eq!(unchanged["state"], "revoking");
    assert_eq!(
        kinds(&unchanged),
        kinds(&before),
        "a refused cancel records nothing"
    );

    h.s.google.hold_revokes(false);
    let done = h.wait_state(&id, "sms_delivered").await;
    assert!(!kinds(&done).contains(&"cancelled".to_owned()));
    assert_eq!(h.sms_to(phone).await, 1);
    // Nor can a message that reached its outcome be cancelled.
    let (status, v) = delete(&h, &id).await;
    check_error(status, &v, 409, "not_cancellable", None, "sms_delivered");
    assert_eq!(h.get(&id).await["state"], "sms_delivered");
}

#[tokio::test]
async fn cancel_unknown_is_404() {
    let h = start().await;
    let (status, v) = delete(&h, "never-registered").await;
    check_error(status, &v, 404, "not_found", None, "never-registered");
    assert_stored_only(&h, &["never-registered"], &[]).await;
}

// ---------------------------------------------------------------------------
// Listing

#[tokio::test]
async fn list_filters_by_state_and_pages_newest_first() {
    let h = start().await;
    let ids: Vec<String> = (0..7).map(|i| format!("list-{i}")).collect();
    for id in &ids {
        assert_eq!(h.post(&valid("+14155550119", id)).await.status(), 201);
    }
    for id in ["list-1", "list-4"] {
        assert_eq!(delete(&h, id).await.0, 200);
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let id_of = |m: &Value| m["message_id"].as_str().unwrap().to_owned();

    // Everything, in one page.
    let (status, page) = list(&h, "").await;
    assert_eq!(status, 200);
    let all: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(all, newest_first);
    assert_eq!(page["next_cursor"], Value::Null);
    // List entries carry the resource without its history.
    assert!(page["messages"][0].get("events").is_none());
    assert_eq!(page["messages"][0]["state"], "pending");

    // Pages of 3: 3 + 3 + 1, each message exactly once, newest first.
    for (limit, sizes) in [
        (3, vec![3, 3, 1]),
        (7, vec![7]),
        (1, vec![1; 7]),
        (6, vec![6, 1]),
    ] {
        let mut seen = Vec::new();
        let mut got_sizes = Vec::new();
        let mut query = format!("?limit={limit}");
        loop {
            let (status, page) = list(&h, &query).await;
            assert_eq!(status, 200, "{page:#}");
            let batch: Vec<String> = page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(id_of)
                .collect();
            got_sizes.push(batch.len());
            seen.extend(batch);
            match page["next_cursor"].as_str() {
                Some(c) => query = format!("?limit={limit}&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(got_sizes, sizes, "limit {limit}");
        assert_eq!(seen, newest_first, "limit {limit}");
    }

    // Filtered by state, also across pages.
    let (status, page) = list(&h, "?state=cancelled").await;
    assert_eq!(status, 200);
    let cancelled: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(cancelled, ["list-4", "list-1"]);
    let mut pending = Vec::new();
    let mut query = "?state=pending&limit=2".to_owned();
    loop {
        let (status, page) = list(&h, &query).await;
        assert_eq!(status, 200);
        for m in page["messages"].as_array().unwrap() {
            assert_eq!(m["state"], "pending");
            pending.push(id_of(m));
        }
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?state=pending&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pending, ["list-6", "list-5", "list-3", "list-2", "list-0"]);
    let (status, page) = list(&h, "?state=delivered").await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn list_rejects_bad_state_limit_and_cursor() {
    let h = start().await;
    for id in ["lb-0", "lb-1"] {
        assert_eq!(h.post(&valid("+14155550120", id)).await.status(), 201);
    }
    let (_, page) = list(&h, "?limit=1").await;
    let real_cursor = page["next_cursor"].as_str().unwrap().to_owned();

    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let cases = vec![
        ("?state=bogus".to_owned(), "unknown state"),
        ("?state=PENDING".to_owned(), "unknown state"),
        ("?state=".to_owned(), "unknown state"),
        (
            "?limit=0".to_owned(),
            "limit must be a whole number from 1 to 500",
        ),
        ("?limit=501".to_owned(), "limit must be"),
        ("?limit=-1".to_owned(), "limit must be"),
        ("?limit=abc".to_owned(), "limit must be"),
        ("?limit=2.5".to_owned(), "limit must be"),
        ("?limit=".to_owned(), "limit must be"),
        ("?limit=99999999999999999999".to_owned(), "limit must be"),
        (
            "?cursor=abc".to_owned(),
            "cursor is not one this API returned",
        ),
        ("?cursor=".to_owned(), "cursor"),
        (format!("?cursor={}", b64("v2:5")), "cursor"),
        (format!("?cursor={}", b64("v1:abc")), "cursor"),
        (format!("?cursor={}", b64("v1:1 OR 1=1")), "cursor"),
        (format!("?cursor={}x", real_cursor), "cursor"),
        (format!("?cursor={}", real_cursor.to_uppercase()), "cursor"),
        ("?cursor=%FF%FE".to_owned(), "cursor"),
        ("?sort=asc".to_owned(), "sort"),
    ];
    for (query, says) in cases {
        let (status, v) = list(&h, &query).await;
        assert_eq!(status, 400, "{query}: {v:#}");
        check_error(status, &v, 400, "invalid_query", None, says);
    }
    // The real cursor still works.
    let (status, page) = list(&h, &format!("?limit=1&cursor={real_cursor}")).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"][0]["message_id"], "lb-0");
    assert_eq!(page["next_cursor"], Value::Null);
}

// ---------------------------------------------------------------------------
// Routes and health

#[tokio::test]
async fn unknown_routes_and_methods_are_json_and_health_checks_answer() {
    let h = start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in [
        "/nope",
        "/v1",
        "/v2/messages",
        "/v1/messages/a/b",
        "/webhooks",
    ] {
        let r = h.api.get(h.url(path)).send().await.unwrap();
        expect_error(r, 404, "no_route", None, "no route").await;
    }
    let r = client.get(h.url("/nope")).send().await.unwrap();
    expect_error(r, 404, "no_route", None, "no route").await;

    let wrong_methods = [
        (reqwest::Method::PUT, "/v1/messages"),
        (reqwest::Method::PATCH, "/v1/messages/x"),
        (reqwest::Method::POST, "/v1/messages/x"),
        (reqwest::Method::DELETE, "/v1/messages"),
        (reqwest::Method::POST, "/healthz"),
        (reqwest::Method::GET, "/webhooks/rbm"),
        (reqwest::Method::GET, "/webhooks/twilio/status"),
    ];
    for (method, path) in wrong_methods {
        let r = h
            .api
            .request(method.clone(), h.url(path))
            .send()
            .await
            .unwrap();
        let (status, v) = json_of(r).await;
        assert_eq!(status, 405, "{method} {path}: {v:#}");
        check_error(
            status,
            &v,
            405,
            "method_not_allowed",
            None,
            "method not allowed",
        );
    }

    for (path, status_text) in [("/healthz", "ok"), ("/readyz", "ready")] {
        // No token needed.
        let r = client.get(h.url(path)).send().await.unwrap();
        let (status, v) = json_of(r).await;
        assert_eq!(status, 200, "{path}: {v:#}");
        assert_eq!(v["status"], status_text);
    }
}
