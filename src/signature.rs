//! The two webhook signature schemes we speak, shared by the verifying side
//! (the service) and the signing side (the emulators), so that both agree by
//! construction and a test vector pins them to the real wire format.
//!
//! Every comparison here is constant-time: an attacker timing our answers must
//! learn nothing about how much of a forged signature was right.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha512;
use subtle::ConstantTimeEq;

/// Google's `X-Goog-Signature`: base64(HMAC-SHA512(client token, decoded `message.data`)).
pub fn google_sign(client_token: &str, decoded_data: &[u8]) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(client_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(decoded_data);
    B64.encode(mac.finalize().into_bytes())
}

/// Checks an `X-Goog-Signature` header value against the decoded `message.data`.
pub fn google_verify(client_token: &str, decoded_data: &[u8], header: &str) -> bool {
    let Ok(given) = B64.decode(header.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha512>::new_from_slice(client_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(decoded_data);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given).is_ok()
}

/// Twilio's `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, url + each POST
/// parameter's name and value, sorted by name)).
pub fn twilio_sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Twilio sorts by name; for repeated names the values keep their order,
    // which a stable sort on the name alone preserves.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    B64.encode(mac.finalize().into_bytes())
}

/// Checks an `X-Twilio-Signature`. Like Twilio's own SDKs, the URL is tried as
/// given and with its default port made explicit or removed, because Twilio
/// signs the URL exactly as it was configured on its side.
pub fn twilio_verify(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let header = header.trim().as_bytes();
    let mut ok = subtle::Choice::from(0);
    for candidate in url_variants(url) {
        let expected = twilio_sign(auth_token, &candidate, params);
        ok |= expected.as_bytes().ct_eq(header);
    }
    ok.into()
}

fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some(scheme_end) = url.find("://") else {
        return out;
    };
    let default_port = match &url[..scheme_end] {
        s if s.eq_ignore_ascii_case("https") => "443",
        s if s.eq_ignore_ascii_case("http") => "80",
        _ => return out,
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let (before, after) = (&url[..authority_start], &url[authority_end..]);
    // An IPv6 literal holds colons of its own; only a colon after `]` starts a port.
    let port_colon = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].find(':').map(|i| bracket + i),
        None => authority.rfind(':'),
    };
    match port_colon {
        Some(colon) if &authority[colon + 1..] == default_port => {
            out.push(format!("{before}{}{after}", &authority[..colon]));
        }
        Some(_) => {}
        None => out.push(format!("{before}{authority}:{default_port}{after}")),
    }
    out
}

/// Constant-time equality for secrets of possibly different lengths: both
/// sides are hashed first so the comparison time does not reveal the length.
pub fn secret_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.ct_eq(&hb).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_TOKEN: &str = "SJENCPGJESMGUFPY";
    const VECTOR_DATA: &str = r#"{"senderPhoneNumber":"+12223334444","eventType":"DELIVERED","eventId":"MxAbCdEfGhIjKlMnOpQrStUv","messageId":"0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10","sendTime":"2026-01-15T10:00:01.123456Z","agentId":"myagent@rbm.goog"}"#;
    const VECTOR_SIG: &str =
        "r2YxSBoPHw9bglEvipKAC7lghANN+vywAiv6m87bUnr9bTDpfS8GRNBpxc0e26nCDkKqpxFq1pbkwTSAvWCO7Q==";

    #[test]
    fn google_matches_the_published_test_vector() {
        assert_eq!(
            google_sign(VECTOR_TOKEN, VECTOR_DATA.as_bytes()),
            VECTOR_SIG
        );
        assert!(google_verify(
            VECTOR_TOKEN,
            VECTOR_DATA.as_bytes(),
            VECTOR_SIG
        ));
    }

    #[test]
    fn google_rejects_modified_data_wrong_key_and_garbage() {
        let tampered = VECTOR_DATA.replace("DELIVERED", "READ");
        assert!(!google_verify(
            VECTOR_TOKEN,
            tampered.as_bytes(),
            VECTOR_SIG
        ));
        assert!(!google_verify(
            "SJENCPGJESMGUFPZ",
            VECTOR_DATA.as_bytes(),
            VECTOR_SIG
        ));
        assert!(!google_verify(
            VECTOR_TOKEN,
            VECTOR_DATA.as_bytes(),
            "not base64!"
        ));
        assert!(!google_verify(VECTOR_TOKEN, VECTOR_DATA.as_bytes(), ""));
        // A truncated signature must not verify as a prefix match.
        assert!(!google_verify(
            VECTOR_TOKEN,
            VECTOR_DATA.as_bytes(),
            &VECTOR_SIG[..40]
        ));
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn twilio_matches_twilio_documented_example() {
        // The worked example from Twilio's security documentation.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let sig = twilio_sign("12345", url, &p);
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(twilio_verify("12345", url, &p, &sig));
    }

    #[test]
    fn twilio_order_of_parameters_does_not_matter_but_content_does() {
        let url = "https://example.com/webhooks/twilio/status?message_id=m1";
        let a = params(&[("MessageStatus", "sent"), ("MessageSid", "SM1")]);
        let b = params(&[("MessageSid", "SM1"), ("MessageStatus", "sent")]);
        let sig = twilio_sign("tok", url, &a);
        assert!(twilio_verify("tok", url, &b, &sig));
        let changed = params(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        assert!(!twilio_verify("tok", url, &changed, &sig));
        assert!(!twilio_verify("other", url, &a, &sig));
        assert!(!twilio_verify(
            "tok",
            "https://example.com/elsewhere",
            &a,
            &sig
        ));
    }

    #[test]
    fn twilio_accepts_the_url_with_or_without_the_default_port() {
        let p = params(&[("MessageSid", "SM1")]);
        let with_port = "https://example.com:443/webhooks/twilio/status";
        let without = "https://example.com/webhooks/twilio/status";
        assert!(twilio_verify(
            "tok",
            without,
            &p,
            &twilio_sign("tok", with_port, &p)
        ));
        assert!(twilio_verify(
            "tok",
            with_port,
            &p,
            &twilio_sign("tok", without, &p)
        ));
        // A non-default port is part of the identity of the URL.
        let odd = "https://example.com:8443/webhooks/twilio/status";
        assert!(!twilio_verify(
            "tok",
            without,
            &p,
            &twilio_sign("tok", odd, &p)
        ));
    }

    #[test]
    fn secret_eq_is_plain_equality() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
        assert!(!secret_eq("", "a"));
    }
}
