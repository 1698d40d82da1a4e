//! The checks Google makes on an agent message's `contentMessage` before it
//! looks at the phone, made at intake instead: a send-mode message whose
//! content Google would refuse with 400 ends `failed` without an SMS, so a
//! content that can never be sent is better refused while the caller is
//! still there to hear it. Only documented rules are checked; what depends
//! on the device stays Google's to judge at send time.

use serde_json::{Map, Value};

/// Longest `contentMessage.text`, in characters.
pub const MAX_TEXT_CHARS: usize = 3072;

/// The members of AgentContentMessage's `content` oneof.
const CONTENT_KINDS: [&str; 5] = [
    "text",
    "fileName",
    "uploadedRbmFile",
    "richCard",
    "contentInfo",
];

/// Why a content is refused: the field under `contentMessage` (empty for
/// the object itself) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("unknown field; contentMessage holds one of text, fileName, uploadedRbmFile, richCard, contentInfo, and suggestions")]
    UnknownField(String),
    #[error("must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error(
        "must set exactly one of text, fileName, uploadedRbmFile, richCard, contentInfo; it sets {0}"
    )]
    Kinds(String),
    #[error("is {0} characters; Google takes at most {MAX_TEXT_CHARS}")]
    TextTooLong(usize),
}

impl ContentError {
    /// The offending field, relative to `contentMessage`.
    pub fn field(&self) -> &str {
        match self {
            ContentError::UnknownField(f) | ContentError::WrongType { field: f, .. } => f,
            ContentError::Kinds(_) => "",
            ContentError::TextTooLong(_) => "text",
        }
    }
}

/// Checks a `contentMessage` as Google would. A null member is an absent
/// one, as in proto3 JSON.
pub fn check(content: &Map<String, Value>) -> Result<(), ContentError> {
    for (key, value) in content.iter().filter(|(_, v)| !v.is_null()) {
        let (ok, expected) = match key.as_str() {
            "text" | "fileName" => (value.is_string(), "a string"),
            "suggestions" => (value.is_array(), "an array"),
            k if CONTENT_KINDS.contains(&k) => (value.is_object(), "an object"),
            _ => return Err(ContentError::UnknownField(key.chars().take(64).collect())),
        };
        if !ok {
            return Err(ContentError::WrongType {
                field: key.clone(),
                expected,
            });
        }
    }
    let kinds: Vec<&str> = CONTENT_KINDS
        .into_iter()
        .filter(|k| content.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    if kinds.len() != 1 {
        return Err(ContentError::Kinds(if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        }));
    }
    if let Some(text) = content.get("text").and_then(Value::as_str) {
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(ContentError::TextTooLong(chars));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check_json(v: Value) -> Result<(), ContentError> {
        check(v.as_object().expect("an object"))
    }

    #[test]
    fn one_kind_of_content_with_optional_suggestions() {
        for content in [
            json!({ "text": "hi" }),
            json!({ "fileName": "files/abc", "suggestions": [] }),
            json!({ "uploadedRbmFile": { "fileName": "files/abc" } }),
            json!({ "richCard": { "standaloneCard": {} } }),
            json!({ "contentInfo": { "fileUrl": "https://example.com/a.png" } }),
            json!({ "text": "hi", "richCard": null }),
        ] {
            assert_eq!(check_json(content.clone()), Ok(()), "{content}");
        }
        assert_eq!(
            check_json(json!({ "suggestions": [] })),
            Err(ContentError::Kinds("none".into()))
        );
        let two = check_json(json!({ "text": "hi", "fileName": "x.png" })).unwrap_err();
        assert_eq!(two, ContentError::Kinds("text, fileName".into()));
        assert_eq!(two.field(), "");
    }

    #[test]
    fn fields_are_known_and_of_their_type() {
        let e = check_json(json!({ "text": "hi", "colour": "red" })).unwrap_err();
        assert_eq!(e.field(), "colour");
        let e = check_json(json!({ "text": 5 })).unwrap_err();
        assert_eq!(e.field(), "text");
        assert!(e.to_string().contains("a string"));
        let e = check_json(json!({ "richCard": "card" })).unwrap_err();
        assert_eq!(e.field(), "richCard");
        let e = check_json(json!({ "text": "hi", "suggestions": {} })).unwrap_err();
        assert_eq!(e.field(), "suggestions");
    }

    #[test]
    fn text_length_counts_characters() {
        assert_eq!(
            check_json(json!({ "text": "é".repeat(MAX_TEXT_CHARS) })),
            Ok(())
        );
        assert_eq!(
            check_json(json!({ "text": "a".repeat(MAX_TEXT_CHARS + 1) })),
            Err(ContentError::TextTooLong(MAX_TEXT_CHARS + 1))
        );
    }
}
