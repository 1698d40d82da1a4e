//! The body of a send (an AgentMessage) and the checks Google makes on it
//! before it looks at the phone: known fields only, exactly one kind of
//! content, text length, traffic type, and an expiry within 15 days.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::Expiry;

/// Longest `contentMessage.text`, in characters.
pub(super) const MAX_TEXT_CHARS: usize = 3072;
/// Longest `ttl`, and the furthest ahead an `expireTime` may be.
pub(super) const MAX_TTL: Duration = Duration::from_secs(15 * 24 * 3600);

/// AgentMessage fields a request may carry; `name` and `sendTime` are
/// output only, but the JSON parser accepts them.
const MESSAGE_FIELDS: [&str; 6] = [
    "name",
    "sendTime",
    "contentMessage",
    "messageTrafficType",
    "expireTime",
    "ttl",
];

/// The members of the `content` oneof of AgentContentMessage.
const CONTENT_KINDS: [&str; 5] = [
    "text",
    "fileName",
    "uploadedRbmFile",
    "richCard",
    "contentInfo",
];

const TRAFFIC_TYPES: [&str; 6] = [
    "MESSAGE_TRAFFIC_TYPE_UNSPECIFIED",
    "AUTHENTICATION",
    "TRANSACTION",
    "PROMOTION",
    "SERVICEREQUEST",
    "ACKNOWLEDGEMENT",
];

/// Why a send body is refused; each is answered 400 INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum BadSend {
    #[error("Invalid JSON payload received. {0}")]
    Json(String),
    #[error(
        "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
    )]
    UnknownField { name: String, at: &'static str },
    #[error("Invalid JSON payload received. Invalid value at '{at}' ({expected}), {value}")]
    WrongType {
        at: String,
        expected: &'static str,
        value: String,
    },
    #[error("contentMessage is required.")]
    NoContent,
    #[error(
        "contentMessage must set exactly one of text, fileName, uploadedRbmFile, richCard, \
         contentInfo; it sets {0}."
    )]
    ContentKinds(String),
    #[error("contentMessage.text has {0} characters; at most {MAX_TEXT_CHARS} are allowed.")]
    TextTooLong(usize),
    #[error(
        "messageTrafficType {0} is not one of AUTHENTICATION, TRANSACTION, PROMOTION, \
         SERVICEREQUEST, ACKNOWLEDGEMENT."
    )]
    TrafficType(String),
    #[error("only one of ttl and expireTime may be set.")]
    TtlAndExpireTime,
    #[error("invalid ttl {0}.")]
    Ttl(String),
    #[error("ttl {0} is longer than the 15 days (1296000s) allowed.")]
    TtlTooLong(String),
    #[error("invalid expireTime {0}.")]
    ExpireTime(String),
    #[error("expireTime {0} is more than 15 days ahead.")]
    ExpireTimeTooFar(String),
}

#[derive(Debug)]
pub(super) struct SendBody {
    pub content: Value,
    pub traffic_type: Option<String>,
    pub expiry: Option<Expiry>,
}

/// Parses and checks a send body received at `now`.
pub(super) fn parse_send_body(body: &[u8], now: DateTime<Utc>) -> Result<SendBody, BadSend> {
    let v: Value = serde_json::from_slice(body).map_err(|e| BadSend::Json(e.to_string()))?;
    let Value::Object(msg) = v else {
        return Err(wrong_type("agent_message", "TYPE_MESSAGE", &v));
    };
    known_fields_only(&msg, &MESSAGE_FIELDS, "agent_message")?;
    let content = match present(&msg, "contentMessage") {
        Some(Value::Object(c)) => c,
        Some(other) => return Err(wrong_type("contentMessage", "TYPE_MESSAGE", other)),
        None => return Err(BadSend::NoContent),
    };
    check_content(content)?;
    let traffic_type = match present(&msg, "messageTrafficType") {
        None => None,
        Some(Value::String(t)) if TRAFFIC_TYPES.contains(&t.as_str()) => Some(t.clone()),
        Some(other) => return Err(BadSend::TrafficType(other.to_string())),
    };
    let expiry = match (present(&msg, "ttl"), present(&msg, "expireTime")) {
        (Some(_), Some(_)) => return Err(BadSend::TtlAndExpireTime),
        (Some(t), None) => {
            let ttl = t
                .as_str()
                .and_then(parse_duration)
                .ok_or_else(|| BadSend::Ttl(t.to_string()))?;
            if ttl > MAX_TTL {
                return Err(BadSend::TtlTooLong(t.to_string()));
            }
            Some(Expiry::Ttl(ttl))
        }
        (None, Some(e)) => {
            let at = e
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .ok_or_else(|| BadSend::ExpireTime(e.to_string()))?
                .with_timezone(&Utc);
            let limit = chrono::TimeDelta::from_std(MAX_TTL)
                .ok()
                .and_then(|d| now.checked_add_signed(d));
            if limit.is_some_and(|limit| at > limit) {
                return Err(BadSend::ExpireTimeTooFar(e.to_string()));
            }
            Some(Expiry::At(at))
        }
        (None, None) => None,
    };
    Ok(SendBody {
        content: Value::Object(content.clone()),
        traffic_type,
        expiry,
    })
}

/// The fields of a send body as they were sent, read leniently so that a
/// refused body is recorded too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct AsSent {
    pub traffic_type: Option<String>,
    pub ttl: Option<String>,
    pub expire_time: Option<String>,
}

impl AsSent {
    pub fn read(body: &[u8]) -> Self {
        let Ok(Value::Object(msg)) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        // A string as its text, anything else as JSON.
        let field = |key| {
            present(&msg, key).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        Self {
            traffic_type: field("messageTrafficType"),
            ttl: field("ttl"),
            expire_time: field("expireTime"),
        }
    }
}

/// In proto3 JSON a null field is an absent one.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn known_fields_only(
    obj: &Map<String, Value>,
    known: &[&str],
    at: &'static str,
) -> Result<(), BadSend> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(name) => Err(BadSend::UnknownField {
            name: name.clone(),
            at,
        }),
        None => Ok(()),
    }
}

fn wrong_type(at: &str, expected: &'static str, value: &Value) -> BadSend {
    BadSend::WrongType {
        at: at.to_owned(),
        expected,
        value: value.to_string(),
    }
}

/// AgentContentMessage: one kind of content (plus optional suggestions),
/// each field of its JSON type, and text no longer than a device shows.
fn check_content(content: &Map<String, Value>) -> Result<(), BadSend> {
    let mut known = CONTENT_KINDS.to_vec();
    known.push("suggestions");
    known_fields_only(content, &known, "agent_message.content_message")?;
    for (key, value) in content.iter().filter(|(_, v)| !v.is_null()) {
        let (ok, expected) = match key.as_str() {
            "text" | "fileName" => (value.is_string(), "TYPE_STRING"),
            "suggestions" => (value.is_array(), "TYPE_MESSAGE"),
            _ => (value.is_object(), "TYPE_MESSAGE"),
        };
        if !ok {
            return Err(wrong_type(
                &format!("agent_message.content_message.{key}"),
                expected,
                value,
            ));
        }
    }
    let kinds: Vec<&str> = CONTENT_KINDS
        .into_iter()
        .filter(|k| present(content, k).is_some())
        .collect();
    if kinds.len() != 1 {
        let set = if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        };
        return Err(BadSend::ContentKinds(set));
    }
    if let Some(text) = present(content, "text").and_then(Value::as_str) {
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(BadSend::TextTooLong(chars));
        }
    }
    Ok(())
}

/// The JSON form of google.protobuf.Duration: seconds with up to nine
/// fractional digits and an "s" suffix, e.g. "600s" or "3.5s".
fn parse_duration(s: &str) -> Option<Duration> {
    let num = s.strip_suffix('s')?;
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod unit {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("RFC 3339")
    }

    fn parse(body: &str) -> Result<SendBody, BadSend> {
        parse_send_body(body.as_bytes(), at("2030-01-01T00:00:00Z"))
    }

    #[test]
    fn durations_in_protobuf_json_form() {
        assert_eq!(parse_duration("600s"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("3.5s"), Some(Duration::from_millis(3500)));
        assert_eq!(
            parse_duration("0.000000001s"),
            Some(Duration::from_nanos(1))
        );
        for bad in ["600", "-1s", "s", ".5s", "1.0000000001s", "1e3s", "1.5.2s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn send_body_rules() {
        let ok = parse(r#"{"contentMessage":{"text":"hi"},"ttl":"10s"}"#);
        assert_eq!(
            ok.map(|b| b.expiry),
            Ok(Some(Expiry::Ttl(Duration::from_secs(10))))
        );
        let both =
            r#"{"contentMessage":{"text":"hi"},"ttl":"10s","expireTime":"2030-01-01T00:00:00Z"}"#;
        assert_eq!(parse(both).err(), Some(BadSend::TtlAndExpireTime));
        assert_eq!(parse(r#"{"ttl":"10s"}"#).err(), Some(BadSend::NoContent));
        assert!(matches!(parse("not json"), Err(BadSend::Json(_))));
        let at_hour =
            r#"{"contentMessage":{"text":"hi"},"expireTime":"2030-01-01T01:00:00+01:00"}"#;
        assert_eq!(
            parse(at_hour).map(|b| b.expiry),
            Ok(Some(Expiry::At(at("2030-01-01T00:00:00Z"))))
        );
        // null is absent in proto3 JSON.
        let nulls = r#"{"contentMessage":{"text":"hi","richCard":null},"ttl":null,"messageTrafficType":null}"#;
        let b = parse(nulls).expect("nulls are absent");
        assert_eq!((b.expiry, b.traffic_type), (None, None));
    }

    #[test]
    fn exactly_one_kind_of_content() {
        for kind in [
            r#""text":"hi""#,
            r#""fileName":"files/abc""#,
            r#""uploadedRbmFile":{"fileName":"files/abc"}"#,
            r#""richCard":{"standaloneCard":{}}"#,
            r#""contentInfo":{"fileUrl":"https://example.com/a.png"}"#,
        ] {
            let body = format!(r#"{{"contentMessage":{{{kind},"suggestions":[]}}}}"#);
            assert!(parse(&body).is_ok(), "{body}");
        }
        assert_eq!(
            parse(r#"{"contentMessage":{"suggestions":[]}}"#).err(),
            Some(BadSend::ContentKinds("none".to_owned()))
        );
        assert_eq!(
            parse(r#"{"contentMessage":{"text":"hi","richCard":{}}}"#).err(),
            Some(BadSend::ContentKinds("text, richCard".to_owned()))
        );
        assert!(matches!(
            parse(r#"{"contentMessage":{"text":5}}"#),
            Err(BadSend::WrongType { .. })
        ));
        assert!(matches!(
            parse(r#"{"contentMessage":"hi"}"#),
            Err(BadSend::WrongType { .. })
        ));
        assert_eq!(
            parse(r#"{"contentMessage":{"text":"hi","colour":"red"}}"#).err(),
            Some(BadSend::UnknownField {
                name: "colour".to_owned(),
                at: "agent_message.content_message"
            })
        );
        assert!(matches!(
            parse(r#"{"contentMessage":{"text":"hi"},"messageTraficType":"PROMOTION"}"#),
            Err(BadSend::UnknownField { .. })
        ));
    }

    #[test]
    fn text_length_counts_characters() {
        let body = |text: &str| format!(r#"{{"contentMessage":{{"text":"{text}"}}}}"#);
        assert!(parse(&body(&"é".repeat(MAX_TEXT_CHARS))).is_ok());
        assert_eq!(
            parse(&body(&"a".repeat(MAX_TEXT_CHARS + 1))).err(),
            Some(BadSend::TextTooLong(MAX_TEXT_CHARS + 1))
        );
    }

    #[test]
    fn traffic_types() {
        // Google's names, written out: looping over TRAFFIC_TYPES itself
        // would accept whatever the constant holds.
        for t in [
            "MESSAGE_TRAFFIC_TYPE_UNSPECIFIED",
            "AUTHENTICATION",
            "TRANSACTION",
            "PROMOTION",
            "SERVICEREQUEST",
            "ACKNOWLEDGEMENT",
        ] {
            let body =
                format!(r#"{{"contentMessage":{{"text":"hi"}},"messageTrafficType":"{t}"}}"#);
            assert_eq!(parse(&body).map(|b| b.traffic_type), Ok(Some(t.to_owned())));
        }
        for bad in [r#""MARKETING""#, r#""authentication""#, "1"] {
            let body =
                format!(r#"{{"contentMessage":{{"text":"hi"}},"messageTrafficType":{bad}}}"#);
            assert_eq!(
                parse(&body).err(),
                Some(BadSend::TrafficType(bad.to_owned()))
            );
        }
    }

    #[test]
    fn expiry_at_most_fifteen_days() {
        let body = |expiry: &str| format!(r#"{{"contentMessage":{{"text":"hi"}},{expiry}}}"#);
        assert!(parse(&body(r#""ttl":"1296000s""#)).is_ok());
        assert!(matches!(
            parse(&body(r#""ttl":"1296000.000000001s""#)),
            Err(BadSend::TtlTooLong(_))
        ));
        assert!(parse(&body(r#""expireTime":"2030-01-16T00:00:00Z""#)).is_ok());
        assert!(matches!(
            parse(&body(r#""expireTime":"2030-01-16T00:00:01Z""#)),
            Err(BadSend::ExpireTimeTooFar(_))
        ));
        // Already past: accepted, the message expires at once.
        assert!(parse(&body(r#""expireTime":"2029-12-31T00:00:00Z""#)).is_ok());
    }

    #[test]
    fn fields_as_sent_even_when_refused() {
        let sent = AsSent::read(br#"{"messageTrafficType":"MARKETING","ttl":600}"#);
        assert_eq!(
            sent,
            AsSent {
                traffic_type: Some("MARKETING".to_owned()),
                ttl: Some("600".to_owned()),
                expire_time: None,
            }
        );
        assert_eq!(AsSent::read(b"not json"), AsSent::default());
    }
}
