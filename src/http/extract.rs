//! A JSON body extractor whose every failure says precisely what is wrong,
//! in our error format, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType {
                expected: "application/json",
            });
        }
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                // The body itself could not be read (e.g. broken chunking).
                ApiError::InvalidBody(rejection.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// The configured body limit, put in request extensions so rejections can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::InvalidJson("the body is not valid UTF-8".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                // A missing or repeated field is named only in the message
                // (the path stops at its parent); an unknown one already ends
                // the path.
                let missing = message
                    .strip_prefix("missing field `")
                    .or_else(|| message.strip_prefix("duplicate field `"))
                    .and_then(|rest| rest.split('`').next());
                let field = match (path.as_str(), missing) {
                    (".", Some(name)) => name.to_owned(),
                    (p, Some(name)) => format!("{p}.{name}"),
                    (p, None) => p.to_owned(),
                };
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_owned();
                ApiError::invalid(field, message)
            }
            _ => ApiError::InvalidJson(format!("malformed JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::InvalidJson(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// The raw body for webhooks, with an over-limit body answered in our error
/// format like everywhere else.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::InvalidBody(rejection.body_text())
                }
            })
    }
}

/// A path segment naming a message; a segment that is not even UTF-8
/// names none, so it is answered 404 like any other unknown id.
pub struct MessageIdPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MessageIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| MessageIdPath(id))
            .map_err(|_| ApiError::NotFound("no such message".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::messages::CreateMessage;
    use proptest::prelude::*;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "agent_id": "a", "phone": "+14155550123", "message_id": "m-1",
            "deadline": "2030-01-01T00:00:00Z", "sms": { "body": "b", "from": "Shop" },
            "metadata": { "k": [1, "v"] },
        })
    }

    #[test]
    fn repeated_and_missing_fields_are_named() {
        let text = r#"{"phone":"+1","phone":"+2","message_id":"m","sms":{"body":"b"}}"#;
        match parse::<CreateMessage>(text.as_bytes()) {
            Err(ApiError::Invalid { field, message }) => {
                assert_eq!(field, "phone");
                assert!(message.contains("duplicate field"), "{message}");
            }
            other => panic!("{:?}", other.err()),
        }
        let text = r#"{"phone":"+1","message_id":"m","sms":{"body":"b","body":"c"}}"#;
        match parse::<CreateMessage>(text.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => assert_eq!(field, "sms.body"),
            other => panic!("{:?}", other.err()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary bytes: an error of one of the two JSON kinds, never a panic.
        #[test]
        fn arbitrary_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            match parse::<CreateMessage>(&bytes) {
                Ok(_) => {}
                Err(ApiError::InvalidJson(m)) => prop_assert!(!m.is_empty()),
                Err(ApiError::Invalid { field, message }) => prop_assert!(
                    !message.is_empty()
                        && (!field.is_empty() || message.starts_with("unknown field ``"))
                ),
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }

        /// A valid request with one byte changed, removed or inserted.
        #[test]
        fn a_valid_request_mutated_by_one_byte(at in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0..3u8) {
            let mut bytes = valid().to_string().into_bytes();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
            match parse::<CreateMessage>(&bytes) {
                Ok(_) | Err(ApiError::InvalidJson(_)) => {}
                Err(ApiError::Invalid { field, message }) => {
                    // The field is named, unless it is the unknown field ""
                    // the mutation made.
                    prop_assert!(
                        !field.is_empty() || message.starts_with("unknown field ``"),
                        "{message}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
