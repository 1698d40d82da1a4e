//! Hostile and bad input, through the real HTTP surface of the real service
//! (a fresh database per test): bodies no parser should choke on, at every
//! endpoint; oversized and garbled heads; slow clients (slowloris, trickled
//! bodies); tampered and replayed webhooks; hostile values that are signed
//! (and so reach the database); and phone numbers in the logs.
//!
//! tests/api.rs and tests/webhooks.rs hold the ordinary bad-input cases
//! (field validation, path tricks, signatures); this file adds what they do
//! not cover. The rule everywhere: a 4xx with the JSON error shape, nothing
//! stored, and never a 5xx (a panic would show as a 500).

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use rbm_fallback::signature::{google_sign, twilio_sign};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// Rows in every table the service writes: what "nothing stored" is
/// checked against, read directly from the test's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rows {
    messages: i64,
    events: i64,
    rbm_events: i64,
}

async fn rows(h: &Harness) -> Rows {
    let mut conn = PgConnection::connect(&h.db.url).await.unwrap();
    let (messages, events, rbm_events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_events),
                (SELECT count(*) FROM rbm_events)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    Rows {
        messages,
        events,
        rbm_events,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A valid registration due in ten minutes (the scheduler leaves it alone).
fn valid(phone: &str, id: &str) -> Value {
    let deadline = chrono::Utc::now() + chrono::TimeDelta::minutes(10);
    json!({
        "phone": phone,
        "message_id": id,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "sms": { "body": "Your code is 123456" },
    })
}

/// Asserts an answer to bad input: a 4xx, JSON, `{"error": {"code", "message"}}`.
fn assert_json_4xx(case: &str, status: u16, content_type: &str, body: &[u8]) -> Value {
    assert!(
        (400..500).contains(&status),
        "{case}: status {status}: {}",
        String::from_utf8_lossy(body)
    );
    assert!(
        content_type.starts_with("application/json"),
        "{case}: {status} with Content-Type {content_type:?}: {}",
        String::from_utf8_lossy(body)
    );
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{case}: {status} body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(v["error"]["code"].is_string(), "{case}: {v:#}");
    assert!(v["error"]["message"].is_string(), "{case}: {v:#}");
    v
}

async fn answer(case: &str, r: reqwest::Response) -> (u16, String, Vec<u8>) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.bytes().await.unwrap().to_vec();
    assert!(
        status < 500,
        "{case}: a 5xx: {status} {}",
        String::from_utf8_lossy(&body)
    );
    (status, ct, body)
}

/// What came back on a raw connection: the status (if an answer came before
/// the server closed) and the rest of the bytes.
#[derive(Debug)]
struct Raw {
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
}

/// Writes `bytes` on a fresh connection and reads until the server closes it
/// (requests say `Connection: close`; a protocol error closes it anyway).
async fn raw(h: &Harness, bytes: &[u8]) -> Raw {
    let addr = h.s.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    parse_raw(&got)
}

fn parse_raw(got: &[u8]) -> Raw {
    let split = got.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&got[..i], got[i + 4..].to_vec()),
        None => (got, Vec::new()),
    };
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    Raw { status, head, body }
}

fn header_of<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Bodies at every endpoint

#[tokio::test]
async fn every_endpoint_answers_hostile_bodies_with_a_json_4xx_and_stores_nothing() {
    let h = start().await;
    let before = rows(&h).await;
    let token = h.s.api_token.clone();

    let nested_arrays = "[".repeat(40_000);
    let nested_objects = format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let mut bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("malformed", br#"{"phone": "+14155550123", "#.to_vec()),
        (
            "wrong types",
            br#"{"phone": 14155550123, "message_id": [], "deadline": {}, "sms": "x"}"#.to_vec(),
        ),
        ("invalid UTF-8", b"{\"phone\": \"+1415\xff\xfe\"}".to_vec()),
        ("overlong UTF-8 NUL", b"{\"a\": \"\xc0\x80\"}".to_vec()),
        ("raw NUL", b"{\"phone\": \"+1415\x00\"}".to_vec()),
        (
            "escaped NUL",
            br#"{"phone": "\u0000", "\u0000": 1}"#.to_vec(),
        ),
        ("lone surrogate", br#"{"phone": "\ud800"}"#.to_vec()),
        ("deeply nested arrays", nested_arrays.into_bytes()),
        ("deeply nested objects", nested_objects.into_bytes()),
        (
            "duplicate keys",
            br#"{"phone": "+14155550123", "phone": "+14155550124"}"#.to_vec(),
        ),
        ("enormous exponent", b"1e999999".to_vec()),
        (
            "enormous integer",
            format!(r#"{{"revoke_after_secs": {}}}"#, "9".repeat(5000)).into_bytes(),
        ),
        (
            "unknown fields only",
            br#"{"zzz": 1, "__proto__": {}}"#.to_vec(),
        ),
        (
            "SQL",
            br#"{"phone": "'; DROP TABLE messages; --", "message_id": "' OR 1=1 --"}"#.to_vec(),
        ),
        ("a form", b"phone=%2B14155550123&message_id=x".to_vec()),
        ("binary", (0..=255u8).cycle().take(2048).collect()),
        ("BOM", b"\xef\xbb\xbf{}".to_vec()),
    ];
    // Over the 64 KiB body limit: 413 wherever a body is read.
    bodies.push(("huge", vec![b'{'; 200_000]));

    let endpoints: [(&str, &str, bool); 9] = [
        ("POST", "/v1/messages", true),
        ("GET", "/v1/messages/some-id", true),
        ("DELETE", "/v1/messages/some-id", true),
        ("GET", "/v1/messages", true),
        ("POST", "/webhooks/rbm", false),
        ("POST", "/webhooks/twilio/status?message_id=some-id", false),
        ("GET", "/healthz", false),
        ("GET", "/readyz", false),
        ("PUT", "/v1/messages", true),
    ];
    for (method, path, auth) in endpoints {
        for (name, body) in &bodies {
            for ct in ["application/json", "application/x-www-form-urlencoded"] {
                let case = format!("{method} {path} with {name} as {ct}");
                let mut req = client()
                    .request(method.parse().unwrap(), h.url(path))
                    .header(CONTENT_TYPE, ct)
                    .body(body.clone());
                if auth {
                    req = req.header(AUTHORIZATION, format!("Bearer {token}"));
                }
                let (status, got_ct, got) = answer(&case, req.send().await.unwrap()).await;
                match (method, path) {
                    // These never read a body: the answer is the usual one.
                    ("GET", "/healthz") | ("GET", "/readyz") | ("GET", "/v1/messages") => {
                        assert_eq!(status, 200, "{case}")
                    }
                    ("GET", _) | ("DELETE", _) => {
                        let v = assert_json_4xx(&case, status, &got_ct, &got);
                        assert_eq!(v["error"]["code"], "not_found", "{case}");
                    }
                    _ => {
                        let v = assert_json_4xx(&case, status, &got_ct, &got);
                        let reads_it = path != "/v1/messages" || ct == "application/json";
                        if *name == "huge" && method == "POST" && reads_it {
                            assert_eq!(status, 413, "{case}: {v:#}");
                            assert_eq!(v["error"]["code"], "payload_too_large");
                        }
                    }
                }
            }
        }
    }
    assert_eq!(rows(&h).await, before, "nothing may be stored");
    // The service is unharmed.
    assert_eq!(
        h.post(&valid("+14155550300", "after-all")).await.status(),
        201
    );
}

#[tokio::test]
async fn hostile_registration_values_are_refused_precisely() {
    let h = start().await;
    let phone = "+14155550301";
    let with = |id: &str, edit: &dyn Fn(&mut Value)| {
        let mut v = valid(phone, id);
        edit(&mut v);
        v
    };
    let deadline = |d: &str| {
        let d = d.to_owned();
        move |v: &mut Value| v["deadline"] = json!(d)
    };
    let after = |n: Value| {
        move |v: &mut Value| {
            v.as_object_mut().unwrap().remove("deadline");
            v["revoke_after_secs"] = n.clone();
        }
    };
    // (id, body, field, words the message must contain)
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "y0001",
            with("y0001", &deadline("0001-01-01T00:00:00Z")),
            "deadline",
            "in the past",
        ),
        (
            "y0000",
            with("y0000", &deadline("0000-01-01T00:00:00+23:59")),
            "deadline",
            "",
        ),
        (
            "y9999",
            with("y9999", &deadline("9999-12-31T23:59:59Z")),
            "deadline",
            "seconds ahead",
        ),
        (
            "y9999-offset",
            with("y9999-offset", &deadline("9999-12-31T23:59:59-23:59")),
            "deadline",
            "seconds ahead",
        ),
        (
            "y10000",
            with("y10000", &deadline("10000-01-01T00:00:00Z")),
            "deadline",
            "RFC 3339",
        ),
        (
            "y-neg",
            with("y-neg", &deadline("-0001-01-01T00:00:00Z")),
            "deadline",
            "RFC 3339",
        ),
        (
            "offset-99",
            with("offset-99", &deadline("2030-01-01T00:00:00+99:00")),
            "deadline",
            "RFC 3339",
        ),
        (
            "leap-61",
            with("leap-61", &deadline("2030-01-01T00:00:61Z")),
            "deadline",
            "RFC 3339",
        ),
        (
            "deadline-nul",
            with("deadline-nul", &deadline("2030-01-01T00:00:00Z\u{0}")),
            "deadline",
            "RFC 3339",
        ),
        (
            "r-i64-min",
            with("r-i64-min", &after(json!(i64::MIN))),
            "revoke_after_secs",
            "between 1 and",
        ),
        (
            "r-u64-max",
            with("r-u64-max", &after(json!(u64::MAX))),
            "revoke_after_secs",
            "",
        ),
        (
            "r-exp",
            with("r-exp", &after(json!(1e300))),
            "revoke_after_secs",
            "invalid type",
        ),
        (
            "r-bool",
            with("r-bool", &after(json!(true))),
            "revoke_after_secs",
            "invalid type",
        ),
        (
            "meta-nul",
            with("meta-nul", &|v| v["metadata"] = json!({ "a": "x\u{0}y" })),
            "metadata",
            "NUL",
        ),
        (
            "meta-nul-key",
            with("meta-nul-key", &|v| v["metadata"] = json!({ "a\u{0}": 1 })),
            "metadata",
            "NUL",
        ),
        (
            "meta-nul-deep",
            with("meta-nul-deep", &|v| {
                v["metadata"] = json!({ "a": [{ "b": ["ok", "\u{0}"] }] })
            }),
            "metadata",
            "NUL",
        ),
        (
            "from-nul",
            with("from-nul", &|v| v["sms"]["from"] = json!("Shop\u{0}")),
            "sms.from",
            "",
        ),
        (
            "agent-nul",
            with("agent-nul", &|v| v["agent_id"] = json!("\u{0}")),
            "agent_id",
            "unknown agent",
        ),
        (
            "phone-nul",
            with("phone-nul", &|v| v["phone"] = json!("+1415555\u{0}0301")),
            "phone",
            "E.164",
        ),
        (
            "phone-fullwidth",
            with("phone-fullwidth", &|v| {
                v["phone"] = json!("+１４１５５５５０３０１")
            }),
            "phone",
            "E.164",
        ),
        (
            "phone-huge",
            with("phone-huge", &|v| {
                v["phone"] = json!(format!("+1{}", "5".repeat(20_000)))
            }),
            "phone",
            "E.164",
        ),
    ];
    for (id, body, field, says) in &cases {
        let (status, ct, got) = answer(id, h.post(body).await).await;
        let v = assert_json_4xx(id, status, &ct, &got);
        assert_eq!(status, 422, "{id}: {v:#}");
        assert_eq!(v["error"]["code"], "invalid_field", "{id}: {v:#}");
        assert_eq!(v["error"]["field"], *field, "{id}: {v:#}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{id}: {message:?} lacks {says:?}");
    }

    // Raw bodies serde_json itself refuses, or that repeat a field.
    let base = serde_json::to_string(&valid(phone, "raw")).unwrap();
    let inner = base.strip_suffix('}').unwrap();
    let raw_cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "duplicate phone",
            format!(r#"{inner},"phone":"+14155550302"}}"#),
            422,
            "duplicate field `phone`",
        ),
        (
            "duplicate metadata key",
            format!(r#"{inner},"metadata":{{"a":1,"a":2}}}}"#),
            0,
            "",
        ),
        (
            "metadata nested 200 deep",
            format!(
                r#"{inner},"metadata":{{"x":{}1{}}}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            400,
            "recursion limit",
        ),
        (
            "revoke_after_secs with 400 digits",
            format!(
                r#"{{"phone":"{phone}","message_id":"raw","revoke_after_secs":{},"sms":{{"body":"x"}}}}"#,
                "9".repeat(400)
            ),
            400,
            "number out of range",
        ),
        (
            "revoke_after_secs 1e400",
            format!(
                r#"{{"phone":"{phone}","message_id":"raw","revoke_after_secs":1e400,"sms":{{"body":"x"}}}}"#
            ),
            400,
            "number out of range",
        ),
        (
            "metadata number 1e400",
            format!(r#"{inner},"metadata":{{"n":1e400}}}}"#),
            400,
            "number out of range",
        ),
    ];
    for (case, text, want, says) in &raw_cases {
        let r = client()
            .post(h.url("/v1/messages"))
            .bearer_auth(&h.s.api_token)
            .header(CONTENT_TYPE, "application/json")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        let (status, ct, got) = answer(case, r).await;
        if *want == 0 {
            // Duplicate keys inside free-form metadata: the last one wins, as
            // in every JSON parser; the registration itself is fine.
            assert_eq!(status, 201, "{case}: {}", String::from_utf8_lossy(&got));
            let stored = h.get("raw").await;
            assert_eq!(stored["metadata"], json!({ "a": 2 }));
            continue;
        }
        let v = assert_json_4xx(case, status, &ct, &got);
        assert_eq!(status, *want, "{case}: {v:#}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{case}: {message:?} lacks {says:?}");
        if *case == "duplicate phone" {
            assert_eq!(v["error"]["field"], "phone", "{v:#}");
        }
    }

    let stored = rows(&h).await;
    assert_eq!(
        (stored.messages, stored.events),
        (1, 1),
        "only the duplicate-metadata-key registration"
    );
}

// ---------------------------------------------------------------------------
// Heads: size, tokens, protocol garbage

#[tokio::test]
async fn oversized_heads_get_431_and_odd_tokens_get_401() {
    let h = start().await;
    let body = serde_json::to_vec(&valid("+14155550310", "head-1")).unwrap();
    let before = rows(&h).await;

    // Over the 16 KiB head limit: 431, whatever the header.
    let big = "v".repeat(20_000);
    let r = client()
        .get(h.url("/healthz"))
        .header("X-Big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let mut many = client().get(h.url("/healthz"));
    for i in 0..150 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(many.send().await.unwrap().status(), 431, "too many headers");
    let long_path = format!("/v1/messages/{}", "p".repeat(20_000));
    let r = client()
        .get(h.url(&long_path))
        .bearer_auth(&h.s.api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431, "a huge request line");

    // Tokens that are not the token, however odd: 401 in the JSON format,
    // as long as the head fits; then 431.
    let tokens: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "8 KiB",
            [b"Bearer ".as_slice(), &[b'a'; 8192]].concat(),
            401,
        ),
        (
            "15 KiB",
            [b"Bearer ".as_slice(), &[b'a'; 15_000]].concat(),
            401,
        ),
        (
            "40 KiB",
            [b"Bearer ".as_slice(), &[b'a'; 40_000]].concat(),
            431,
        ),
        (
            "UTF-8",
            "Bearer tökén-ünïcödé-ŧøķęñ".as_bytes().to_vec(),
            401,
        ),
        ("obs-text", b"Bearer \x80\x81\xfe\xff".to_vec(), 401),
        (
            "the token plus UTF-8",
            format!("Bearer {}é", h.s.api_token).into_bytes(),
            401,
        ),
        (
            "tab inside",
            format!("Bearer {}\tx", h.s.api_token).into_bytes(),
            401,
        ),
        (
            "many spaces",
            format!("Bearer{}", " ".repeat(5000)).into_bytes(),
            401,
        ),
    ];
    for (case, value, want) in tokens {
        let r = client()
            .post(h.url("/v1/messages"))
            .header(
                AUTHORIZATION,
                reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
            )
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, ct, got) = answer(case, r).await;
        assert_eq!(status, want, "{case}");
        if want == 401 {
            let v = assert_json_4xx(case, status, &ct, &got);
            assert_eq!(v["error"]["code"], "unauthorized", "{case}");
        }
    }
    assert_eq!(rows(&h).await, before);
    // The right token still works afterwards.
    assert_eq!(h.post(&valid("+14155550310", "head-1")).await.status(), 201);
}

#[tokio::test]
async fn protocol_garbage_is_refused_and_never_a_5xx() {
    let h = start().await;
    let host = h.s.url.trim_start_matches("http://").to_owned();
    let token = h.s.api_token.clone();
    let json = serde_json::to_string(&valid("+14155550311", "smuggled")).unwrap();
    let post = |extra: &str, body: &str| {
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nConnection: close\r\n{extra}\r\n{body}"
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not HTTP", b"HELLO THERE\r\n\r\n".to_vec()),
        ("binary", (0..=255u8).collect()),
        (
            "NUL in a header",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-A: a\0b\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "NUL in the path",
            format!("GET /v1/messages/a\0b HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        ),
        (
            "raw non-ASCII in the path",
            [
                b"GET /v1/messages/\xff\xfe HTTP/1.1\r\nHost: ".as_slice(),
                host.as_bytes(),
                b"\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
        ),
        (
            "unknown version",
            format!("GET /healthz HTTP/9.9\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        ),
        (
            "header without a colon",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {host}\r\nNoColon\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "space before the colon",
            format!("GET /healthz HTTP/1.1\r\nHost : {host}\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        ),
        (
            "two different Content-Lengths",
            post(
                &format!("Content-Length: {}\r\nContent-Length: 3\r\n", json.len()),
                &json,
            ),
        ),
        (
            "negative Content-Length",
            post("Content-Length: -1\r\n", &json),
        ),
        (
            "enormous Content-Length",
            post("Content-Length: 99999999999999999999999\r\n", &json),
        ),
        (
            "bad chunk size",
            post("Transfer-Encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "unknown transfer coding",
            post("Transfer-Encoding: gzip, chunked, rot13\r\n", &json),
        ),
        (
            "chunked and Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &format!("{:x}\r\n{json}\r\n0\r\n\r\n", json.len()),
            ),
        ),
    ];
    for (case, bytes) in &cases {
        let got = raw(&h, bytes).await;
        match got.status {
            // An answer must be a 4xx; ours carry the JSON error shape, and
            // hyper's own (for a request it cannot even parse) are empty.
            Some(status) => {
                assert!(
                    (400..500).contains(&status)
                        || (*case == "chunked and Content-Length" && status == 201),
                    "{case}: {got:?}"
                );
                if !got.body.is_empty() && status != 201 {
                    assert_json_4xx(
                        case,
                        status,
                        header_of(&got.head, "content-type"),
                        &got.body,
                    );
                }
            }
            // Closing without an answer is a refusal too.
            None => assert!(got.head.is_empty(), "{case}: not HTTP: {got:?}"),
        }
    }
    // No smuggled or garbled request registered anything, except possibly
    // the one whose chunked body was well-formed; and nothing broke.
    let stored = rows(&h).await;
    assert!(stored.messages <= 1, "{stored:?}");
    let r = client().get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------
// Slow clients

/// Trickles `bytes` one every `pace` on `stream` while watching for the
/// server to close it (or answer); returns how long that took and what came.
async fn trickle_until_closed(
    stream: TcpStream,
    bytes: Vec<u8>,
    pace: Duration,
    limit: Duration,
) -> (Duration, Raw) {
    let start = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await;
        }
        // Keep the write side open: the server must act, not the client.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "the server still held the connection after {limit:?}: {:?}",
        String::from_utf8_lossy(&got)
    );
    (start.elapsed(), parse_raw(&got))
}

#[tokio::test]
async fn slow_or_silent_clients_are_cut_off_at_the_header_timeout() {
    let h = start_with(|cfg| {
        cfg.env
            .push(("RBMF__SERVER__HEADER_TIMEOUT_MS".into(), "1000".into()))
    })
    .await;
    let addr = h.s.url.trim_start_matches("http://").to_owned();
    let timeout = Duration::from_millis(1000);
    let bound = timeout + Duration::from_millis(1500);

    // Slowloris: a request head, one byte every 50 ms, never finished; and
    // clients that connect and say nothing, or only half a request line.
    let endless_head: Vec<u8> = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ")
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat_n(b'a', 10_000))
        .collect();
    let mut slow = Vec::new();
    for i in 0..20 {
        let bytes = match i % 3 {
            0 => endless_head.clone(),
            1 => Vec::new(),
            _ => b"POST /v1/mess".to_vec(),
        };
        let stream = TcpStream::connect(&addr).await.unwrap();
        slow.push(tokio::spawn(trickle_until_closed(
            stream,
            bytes,
            Duration::from_millis(50),
            Duration::from_secs(10),
        )));
    }
    // Meanwhile others are served at once, again and again.
    let served_from = Instant::now();
    while served_from.elapsed() < timeout {
        let t = Instant::now();
        let r = client().get(h.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // Well before any slow client is cut off.
        assert!(
            t.elapsed() < Duration::from_millis(750),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            h.post(&valid(
                "+14155550320",
                &format!("served-{}", uuid::Uuid::new_v4())
            ))
            .await
            .status(),
            201
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in slow {
        let (took, got) = task.await.unwrap();
        assert!(
            took >= timeout - Duration::from_millis(100),
            "closed too early, after {took:?}"
        );
        assert!(took <= bound, "closed only after {took:?}");
        // Closed, or answered 408: never served.
        assert!(got.status.is_none() || got.status == Some(408), "{got:?}");
    }

    // An idle keep-alive connection is closed after the same time.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (took, got) =
        trickle_until_closed(idle, Vec::new(), Duration::ZERO, Duration::from_secs(10)).await;
    assert_eq!(got.status, Some(200), "the request itself was served");
    assert!(
        took >= timeout - Duration::from_millis(100) && took <= bound,
        "{took:?}"
    );
}

#[tokio::test]
async fn a_trickled_body_times_out_without_holding_a_database_connection() {
    // The pool has 16 connections; 24 slow clients would exhaust it if a
    // slow body held one.
    let h = start_with(|cfg| {
        cfg.env
            .push(("RBMF__SERVER__REQUEST_TIMEOUT_MS".into(), "1500".into()));
        cfg.env
            .push(("RBMF__DATABASE__ACQUIRE_TIMEOUT_MS".into(), "1000".into()));
    })
    .await;
    let addr = h.s.url.trim_start_matches("http://").to_owned();
    let token = h.s.api_token.clone();
    let before = rows(&h).await;
    let body = serde_json::to_string(&valid("+14155550321", "trickled")).unwrap();
    let mut slow = Vec::new();
    for i in 0..24 {
        let (path, ct) = match i % 3 {
            0 => ("/v1/messages", "application/json"),
            1 => ("/webhooks/rbm", "application/json"),
            _ => (
                "/webhooks/twilio/status?message_id=trickled",
                "application/x-www-form-urlencoded",
            ),
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(tokio::spawn(trickle_until_closed(
            stream,
            body.clone().into_bytes(),
            Duration::from_millis(100),
            Duration::from_secs(10),
        )));
    }
    // While they trickle (their handlers are waiting for the body by now;
    // nothing observable says so, hence the pause), requests that need the
    // database are served, well before the pool's acquire timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let t = Instant::now();
        let r = h.post(&valid("+14155550322", &format!("prompt-{i}"))).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }
    for task in slow {
        let (took, got) = task.await.unwrap();
        assert_eq!(got.status, Some(503), "{got:?}");
        let v = assert_json_4xx_or_timeout(&got);
        assert_eq!(v["error"]["code"], "timeout");
        assert!(
            took >= Duration::from_millis(1400) && took <= Duration::from_millis(3500),
            "answered after {took:?}"
        );
    }
    let after = rows(&h).await;
    assert_eq!(after.messages, before.messages + 5);
    assert_eq!(after.rbm_events, before.rbm_events);
}

/// The timeout answer is the one documented 5xx a client can cause: by
/// being too slow. It carries the JSON error shape like every other.
fn assert_json_4xx_or_timeout(got: &Raw) -> Value {
    assert!(
        header_of(&got.head, "content-type").starts_with("application/json"),
        "{got:?}"
    );
    let v: Value = serde_json::from_slice(&got.body).unwrap();
    assert!(v["error"]["message"].is_string(), "{v:#}");
    v
}

// ---------------------------------------------------------------------------
// Google's webhook: tampering the other tests leave out, and signed hostile
// values

async fn post_rbm(h: &Harness, body: &str, signatures: &[&[u8]]) -> (u16, String, Vec<u8>) {
    let mut req = client()
        .post(h.url("/webhooks/rbm"))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    for sig in signatures {
        req = req.header(
            "X-Goog-Signature",
            reqwest::header::HeaderValue::from_bytes(sig).unwrap(),
        );
    }
    answer("rbm webhook", req.send().await.unwrap()).await
}

#[tokio::test]
async fn tampered_google_webhooks_are_401_and_record_nothing() {
    let h = start().await;
    let phone = "+14155550330";
    let id = h.send_and_register(phone, 600_000).await;
    let event = google_event(&h, "DELIVERED", phone, &id);
    let (body, sig) = h.s.google.envelope(&event);
    let data = event.to_string();
    let envelope: Value = serde_json::from_str(&body).unwrap();
    let with_data = |bytes: &[u8]| {
        let mut v = envelope.clone();
        v["message"]["data"] = json!(B64.encode(bytes));
        v.to_string()
    };
    let s = sig.as_bytes();
    let before = rows(&h).await;

    let mut extra = event.clone();
    extra["eventType"] = json!("READ");
    let mut added = event.clone();
    added["injected"] = json!(true);
    let reordered = {
        let mut keys: Vec<(String, Value)> =
            event.as_object().unwrap().clone().into_iter().collect();
        keys.reverse();
        let mut text = String::from("{");
        for (i, (k, v)) in keys.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("{}:{}", json!(k), v));
        }
        text.push('}');
        text
    };
    // (case, body, signature headers, status)
    let cases: Vec<(&str, String, Vec<Vec<u8>>, u16)> = vec![
        (
            "two identical signatures",
            body.clone(),
            vec![s.to_vec(), s.to_vec()],
            401,
        ),
        (
            "good then junk",
            body.clone(),
            vec![s.to_vec(), b"junk".to_vec()],
            401,
        ),
        (
            "junk then good",
            body.clone(),
            vec![b"junk".to_vec(), s.to_vec()],
            401,
        ),
        (
            "garbage appended",
            body.clone(),
            vec![[s, b"AAAA"].concat()],
            401,
        ),
        (
            "space inside",
            body.clone(),
            vec![[&s[..20], b" ", &s[20..]].concat()],
            401,
        ),
        (
            "padding doubled",
            body.clone(),
            vec![[s, b"=="].concat()],
            401,
        ),
        (
            "obs-text appended",
            body.clone(),
            vec![[s, b"\xc3\xa9"].concat()],
            401,
        ),
        ("no signature", body.clone(), vec![], 401),
        (
            "READ under DELIVERED's signature",
            with_data(extra.to_string().as_bytes()),
            vec![s.to_vec()],
            401,
        ),
        (
            "a field added",
            with_data(added.to_string().as_bytes()),
            vec![s.to_vec()],
            401,
        ),
        (
            "same JSON, other key order",
            with_data(reordered.as_bytes()),
            vec![s.to_vec()],
            401,
        ),
        (
            "same JSON, trailing space",
            with_data(format!("{data} ").as_bytes()),
            vec![s.to_vec()],
            401,
        ),
        (
            "data truncated",
            with_data(&data.as_bytes()[..data.len() / 2]),
            vec![s.to_vec()],
            401,
        ),
        ("data empty", with_data(b""), vec![s.to_vec()], 401),
        (
            "envelope truncated",
            body[..body.len() / 2].to_owned(),
            vec![s.to_vec()],
            400,
        ),
        (
            "data a number",
            json!({ "message": { "data": 5 } }).to_string(),
            vec![s.to_vec()],
            400,
        ),
        (
            "data null",
            json!({ "message": { "data": null } }).to_string(),
            vec![s.to_vec()],
            400,
        ),
        (
            "message an array",
            json!({ "message": [envelope["message"].clone()] }).to_string(),
            vec![s.to_vec()],
            400,
        ),
        (
            "envelope an array",
            json!([envelope.clone()]).to_string(),
            vec![s.to_vec()],
            400,
        ),
        (
            "handshake fields beside a message",
            {
                let mut v = envelope.clone();
                v["clientToken"] = json!(h.s.google.client_token());
                v["secret"] = json!("s");
                v["message"]["data"] = json!(B64.encode(extra.to_string()));
                v.to_string()
            },
            vec![s.to_vec()],
            401,
        ),
    ];
    let mut cases = cases;
    let url_safe = sig.replace('+', "-").replace('/', "_");
    if url_safe != sig {
        cases.push((
            "URL-safe alphabet",
            body.clone(),
            vec![url_safe.into_bytes()],
            401,
        ));
    }
    for (case, body, sigs, want) in &cases {
        let sigs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
        let (status, ct, got) = post_rbm(&h, body, &sigs).await;
        let v = assert_json_4xx(case, status, &ct, &got);
        assert_eq!(status, *want, "{case}: {v:#}");
        assert_eq!(rows(&h).await, before, "{case}: recorded something");
    }
    assert_eq!(h.get(&id).await["state"], "pending");
    // Optional whitespace around a header value is not part of it (RFC 9110),
    // so the genuine signature padded with it is the genuine signature.
    let (status, _, got) = post_rbm(&h, &body, &[format!(" \t{sig} ").as_bytes()]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
    h.applied().await;
    assert_eq!(h.get(&id).await["state"], "delivered");
}

#[tokio::test]
async fn signed_events_with_nul_characters_or_huge_keys_are_recorded_once() {
    let h = start().await;
    let token = h.s.google.client_token().to_owned();
    let agent = format!("{}@rbm.goog", h.s.google.agent_id());
    let phone = "+14155550331";
    let id = h.send_and_register(phone, 600_000).await;
    let random = |n: usize| -> String {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..n)
            .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
            .collect()
    };
    let events = vec![
        (
            "NUL in a user's text",
            json!({ "senderPhoneNumber": phone, "messageId": "phone-assigned",
            "sendTime": "2026-01-15T10:00:00Z", "agentId": agent, "text": "hi\u{0}there" }),
        ),
        (
            "NUL in the event type",
            json!({ "eventType": "DELIVERED\u{0}", "eventId": random(20),
            "messageId": id, "agentId": agent }),
        ),
        (
            "NUL in a key",
            json!({ "eventType": "IS_TYPING", "eventId": random(20), "\u{0}": "\u{0}" }),
        ),
        (
            "NUL in the message id",
            json!({ "eventType": "DELIVERED", "eventId": random(20),
            "messageId": format!("{id}\u{0}"), "agentId": agent }),
        ),
        (
            "a 30 kB event id",
            json!({ "eventType": "DELIVERED", "eventId": random(30_000),
            "messageId": "not-ours", "agentId": agent }),
        ),
        (
            "a 20 kB agent id",
            json!({ "eventType": "READ", "eventId": random(20),
            "messageId": id, "agentId": random(20_000) }),
        ),
        (
            "a 30 kB message id",
            json!({ "eventType": "DELIVERED", "eventId": random(20),
            "messageId": random(30_000), "agentId": agent }),
        ),
        (
            "SQL everywhere",
            json!({ "eventType": "'; DROP TABLE rbm_events; --", "eventId": "' OR '1'='1",
            "messageId": "x'); DELETE FROM messages; --", "agentId": "a' --" }),
        ),
    ];
    for (case, event) in &events {
        let data = event.to_string();
        let body = json!({ "message": { "data": B64.encode(&data) } }).to_string();
        let sig = google_sign(&token, data.as_bytes());
        let before = rows(&h).await;
        let (status, _, got) = post_rbm(&h, &body, &[sig.as_bytes()]).await;
        assert_eq!(status, 200, "{case}: {}", String::from_utf8_lossy(&got));
        let after = rows(&h).await;
        assert_eq!(after.rbm_events, before.rbm_events + 1, "{case}");
        // Redelivered: a duplicate, recorded no more.
        let (status, _, _) = post_rbm(&h, &body, &[sig.as_bytes()]).await;
        assert_eq!(status, 200, "{case}");
        assert_eq!(rows(&h).await, after, "{case}: the redelivery");
    }
    // None of them named our message in a form it could be delivered by:
    // not with a NUL, not for another agent.
    let m = h.get(&id).await;
    assert_eq!(m["state"], "pending", "{m:#}");
    assert_eq!(kinds(&m), ["registered"]);
}

type Params = Vec<(String, String)>;

// ---------------------------------------------------------------------------
// Twilio's callbacks: replays with modified parameters, and signed hostile
// values

#[tokio::test]
async fn replayed_twilio_callbacks_with_modified_parameters_are_403() {
    let h = start().await;
    let phone = "+14155550340";
    let id = h.send_and_register(phone, 200).await;
    h.wait_state(&id, "sms_delivered").await;
    let cb = h.s.twilio.wait_for_callbacks(2, WAIT).await.unwrap()[0].clone();
    let url = cb.url.clone();
    assert!(url.ends_with(&format!("?message_id={id}")), "{url}");
    let token = h.s.twilio.auth_token().to_owned();
    let before = h.get(&id).await;
    let rows_before = rows(&h).await;

    let params = cb.params.clone();
    let sig = cb.signature.clone();
    let set = |name: &str, value: &str| -> Params {
        let mut p: Params = params.iter().filter(|(k, _)| k != name).cloned().collect();
        p.push((name.to_owned(), value.to_owned()));
        p
    };
    let mut duplicated = params.clone();
    duplicated.push(("MessageStatus".into(), "failed".into()));
    let renamed: Params = params
        .iter()
        .map(|(k, v)| {
            (
                if k == "MessageStatus" {
                    "messagestatus".into()
                } else {
                    k.clone()
                },
                v.clone(),
            )
        })
        .collect();
    let trailing: Params = params
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if k == "MessageStatus" {
                    format!("{v} ")
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    let dropped: Params = params.iter().filter(|(k, _)| k != "To").cloned().collect();
    let form = |p: &[(String, String)]| serde_urlencoded::to_string(p).unwrap();
    let original = form(&params);

    // (case, url, body, signature headers)
    let cases: Vec<(&str, String, String, Vec<Vec<u8>>)> = vec![
        (
            "status changed",
            url.clone(),
            form(&set("MessageStatus", "failed")),
            vec![sig.clone().into_bytes()],
        ),
        (
            "parameter added",
            url.clone(),
            form(&set("Injected", "1")),
            vec![sig.clone().into_bytes()],
        ),
        (
            "parameter dropped",
            url.clone(),
            form(&dropped),
            vec![sig.clone().into_bytes()],
        ),
        (
            "parameter repeated",
            url.clone(),
            form(&duplicated),
            vec![sig.clone().into_bytes()],
        ),
        (
            "name case changed",
            url.clone(),
            form(&renamed),
            vec![sig.clone().into_bytes()],
        ),
        (
            "value with a trailing space",
            url.clone(),
            form(&trailing),
            vec![sig.clone().into_bytes()],
        ),
        (
            "body truncated",
            url.clone(),
            original[..original.len() / 2].to_owned(),
            vec![sig.clone().into_bytes()],
        ),
        (
            "query parameter added",
            format!("{url}&message_id=other"),
            original.clone(),
            vec![sig.clone().into_bytes()],
        ),
        (
            "query changed",
            url.replace("message_id=", "message_id=x"),
            original.clone(),
            vec![sig.clone().into_bytes()],
        ),
        (
            "query moved to the body",
            url.split('?').next().unwrap().to_owned(),
            format!("{original}&message_id={id}"),
            vec![sig.clone().into_bytes()],
        ),
        (
            "two signatures, good first",
            url.clone(),
            original.clone(),
            vec![sig.clone().into_bytes(), b"junk".to_vec()],
        ),
        (
            "two signatures, good last",
            url.clone(),
            original.clone(),
            vec![b"junk".to_vec(), sig.clone().into_bytes()],
        ),
        (
            "two good signatures",
            url.clone(),
            original.clone(),
            vec![sig.clone().into_bytes(), sig.clone().into_bytes()],
        ),
        (
            "garbage appended",
            url.clone(),
            original.clone(),
            vec![format!("{sig}x").into_bytes()],
        ),
        (
            "space inside",
            url.clone(),
            original.clone(),
            vec![format!("{} {}", &sig[..10], &sig[10..]).into_bytes()],
        ),
        (
            "obs-text",
            url.clone(),
            original.clone(),
            vec![[sig.as_bytes(), b"\xff"].concat()],
        ),
        (
            "signature of the body",
            url.clone(),
            original.clone(),
            vec![twilio_sign(&token, &original, &[]).into_bytes()],
        ),
    ];
    for (case, target, body, sigs) in &cases {
        let mut req = client()
            .post(target)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.clone());
        for s in sigs {
            req = req.header(
                "X-Twilio-Signature",
                reqwest::header::HeaderValue::from_bytes(s).unwrap(),
            );
        }
        let (status, ct, got) = answer(case, req.send().await.unwrap()).await;
        let v = assert_json_4xx(case, status, &ct, &got);
        assert_eq!(status, 403, "{case}: {v:#}");
        assert_eq!(v["error"]["code"], "forbidden", "{case}");
        assert_eq!(h.get(&id).await, before, "{case}: the message changed");
        assert_eq!(
            rows(&h).await,
            rows_before,
            "{case}: something was recorded"
        );
    }
    // The genuine replay, with optional whitespace around the header value,
    // is accepted and recorded (a status Twilio already reported).
    let r = client()
        .post(&url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", format!(" {sig}\t"))
        .body(original.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(kinds(&h.get(&id).await).len(), kinds(&before).len() + 1);
}

#[tokio::test]
async fn signed_twilio_callbacks_with_hostile_values_change_nothing() {
    let h = start().await;
    let phone = "+14155550341";
    let id = h.send_and_register(phone, 200).await;
    let m = h.wait_state(&id, "sms_delivered").await;
    h.s.twilio.wait_for_callbacks(2, WAIT).await.unwrap();
    let sid = m["sms"]["sid"].as_str().unwrap().to_owned();
    let token = h.s.twilio.auth_token().to_owned();
    let base = format!("{}/webhooks/twilio/status", h.s.url);
    let ours = format!("{base}?message_id={id}");
    let p = |pairs: &[(&str, &str)]| -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let huge = "S".repeat(30_000);
    let before = h.get(&id).await;
    let rows_before = rows(&h).await;
    let cases: Vec<(&str, String, Params)> = vec![
        (
            "NUL in message_id",
            format!("{base}?message_id={id}%00"),
            p(&[("MessageSid", &sid), ("MessageStatus", "failed")]),
        ),
        (
            "SQL in message_id",
            format!("{base}?message_id=x%27%3B%20DROP%20TABLE%20messages%3B--"),
            p(&[("MessageSid", &sid), ("MessageStatus", "failed")]),
        ),
        (
            "huge message_id",
            format!("{base}?message_id={}", "m".repeat(10_000)),
            p(&[("MessageSid", &sid), ("MessageStatus", "failed")]),
        ),
        (
            "NUL in the sid",
            ours.clone(),
            p(&[
                ("MessageSid", &format!("{sid}\u{0}")),
                ("MessageStatus", "failed"),
            ]),
        ),
        (
            "huge sid",
            ours.clone(),
            p(&[("MessageSid", &huge), ("MessageStatus", "failed")]),
        ),
        (
            "NUL in the status",
            ours.clone(),
            p(&[("MessageSid", &sid), ("MessageStatus", "failed\u{0}")]),
        ),
        (
            "huge status",
            ours.clone(),
            p(&[("MessageSid", &sid), ("MessageStatus", &huge)]),
        ),
    ];
    for (case, url, params) in &cases {
        let sig = twilio_sign(&token, url, params);
        let r = client()
            .post(url)
            .header("X-Twilio-Signature", sig)
            .form(params)
            .send()
            .await
            .unwrap();
        let (status, _, got) = answer(case, r).await;
        // Signed by Twilio: acknowledged (else Twilio retries), not applied.
        assert_eq!(status, 200, "{case}: {}", String::from_utf8_lossy(&got));
        assert_eq!(h.get(&id).await, before, "{case}");
        assert_eq!(rows(&h).await, rows_before, "{case}");
    }
    // A real status with a hostile error code: recorded, without the code.
    let params = p(&[
        ("MessageSid", &sid),
        ("MessageStatus", "delivered"),
        ("ErrorCode", "3\u{0}0"),
    ]);
    let r = client()
        .post(&ours)
        .header("X-Twilio-Signature", twilio_sign(&token, &ours, &params))
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = h.get(&id).await;
    let last = after["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "sms_status", "{last:#}");
    assert_eq!(last["detail"]["error_code"], Value::Null, "{last:#}");
    assert_eq!(after["state"], "sms_delivered");
}

// ---------------------------------------------------------------------------
// Phone numbers in logs

/// Everything logged at info and above in this test binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn capture_logs() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            tracing_subscriber::fmt()
                .with_writer(captured.clone())
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .init();
            captured
        })
        .clone()
}

#[tokio::test]
async fn logs_at_info_and_above_never_show_a_phone_number() {
    let logs = capture_logs();
    // One service whose revokes fail to connect (reqwest's errors name the
    // URL, whose path holds the phone number)...
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let broken = start_with(|cfg| cfg.env.push(("RBMF_RBM_BASE_URL".into(), dead_url))).await;
    let p1 = "+14155550351";
    let id1 = broken.send_and_register(p1, 100).await;
    // ...and one that goes all the way to an SMS, its callbacks and a
    // Google event.
    let h = start().await;
    let p2 = "+14155550352";
    let id2 = h.send_and_register(p2, 100).await;
    h.wait_state(&id2, "sms_delivered").await;
    h.s.twilio.wait_for_callbacks(2, WAIT).await.unwrap();
    let p3 = "+14155550353";
    let id3 = h.send_and_register(p3, 600_000).await;
    h.google_reports("DELIVERED", p3, &id3).await;
    let retried = async {
        while !kinds(&broken.get(&id1).await)
            .iter()
            .any(|k| k == "revoke_retry")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, retried)
        .await
        .expect("the revoke failed and was retried");

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("rbm_fallback::emulator"))
        .collect();
    assert!(
        ours.iter()
            .any(|l| l.contains("revoke answered") && l.contains("will retry")),
        "the failed revoke was logged:\n{}",
        ours.join("\n")
    );
    for phone in [p1, p2, p3] {
        // The subscriber digits, with or without the prefix.
        let digits = &phone[3..];
        for line in &ours {
            assert!(!line.contains(digits), "{phone} in the log: {line}");
        }
    }
    // The worker names the phones it acts on, masked.
    for phone in [p1, p2] {
        let masked = rbm_fallback::domain::phone::mask(phone);
        assert!(
            ours.iter().any(|l| l.contains(&masked)),
            "{phone} was logged masked ({masked})"
        );
    }
}
