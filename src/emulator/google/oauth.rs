//! The OAuth half of the emulator: a generated service account and the
//! JWT-bearer grant at `/token`, refused for the reasons Google refuses it, so
//! that a client that works here is not merely one the emulator trusts.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use rand::RngCore;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::Verifier;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::time::Instant;

use super::{Inner, CLIENT_EMAIL, RBM_SCOPE};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// What Google grants: one hour, less a second of slack.
const TOKEN_LIFETIME_SECS: u64 = 3599;
/// Tolerated clock skew for `iat` in the future.
const MAX_IAT_SKEW_SECS: i64 = 300;
const MAX_JWT_LIFETIME_SECS: i64 = 3600;

pub(super) struct ServiceKey {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) private: RsaPrivateKey,
    pub(super) public: RsaPublicKey,
    pub(super) pkcs8_pem: String,
    pub(super) key_id: String,
}

/// Generated once per process: 2048-bit generation is slow, and every
/// emulator may share it since each checks its own `aud`.
static KEY: OnceLock<Result<ServiceKey, String>> = OnceLock::new();

pub(super) fn service_key() -> anyhow::Result<&'static ServiceKey> {
    KEY.get_or_init(|| generate_key().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("generating the service-account key: {e}"))
}

fn generate_key() -> anyhow::Result<ServiceKey> {
    let mut rng = rand::rngs::OsRng;
    let private = RsaPrivateKey::new(&mut rng, 2048)?;
    let pkcs8_pem = private.to_pkcs8_pem(LineEnding::LF)?.to_string();
    let mut id = [0u8; 20];
    rng.fill_bytes(&mut id);
    let key_id = id.iter().map(|b| format!("{b:02x}")).collect();
    Ok(ServiceKey {
        public: private.to_public_key(),
        private,
        pkcs8_pem,
        key_id,
    })
}

/// JWT segments are base64url; the spec says unpadded, but yup-oauth2 pads,
/// and Google takes both.
const JWT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, PartialEq, Eq)]
pub(super) enum GrantError {
    InvalidRequest(String),
    UnsupportedGrantType(String),
    InvalidGrant(String),
    InvalidScope,
}

impl IntoResponse for GrantError {
    fn into_response(self) -> Response {
        let (error, description) = match self {
            GrantError::InvalidRequest(d) => ("invalid_request", d),
            GrantError::UnsupportedGrantType(d) => ("unsupported_grant_type", d),
            GrantError::InvalidGrant(d) => ("invalid_grant", d),
            GrantError::InvalidScope => (
                "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.".to_owned(),
            ),
        };
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": error, "error_description": description })),
        )
            .into_response()
    }
}

fn invalid_grant(d: &str) -> GrantError {
    GrantError::InvalidGrant(d.to_owned())
}

const BAD_TIMES: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                         reasonable timeframe. Check your iat and exp values in the JWT claim.";

/// Checks a grant assertion as Google does: RS256 only, signed by the
/// service account's key, issued by it, for this token URI and the RBM scope,
/// short-lived and current.
pub(super) fn check_assertion(
    jwt: &str,
    key: &ServiceKey,
    token_uri: &str,
    now: i64,
) -> Result<(), GrantError> {
    let mut parts = jwt.split('.');
    let (Some(h64), Some(c64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_grant("Invalid JWT: malformed assertion."));
    };
    let header = decode_json(h64).ok_or_else(|| invalid_grant("Invalid JWT header."))?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(invalid_grant("Invalid JWT: unsupported signing algorithm."));
    }
    if let Some(kid) = header.get("kid") {
        if kid.as_str() != Some(key.key_id.as_str()) {
            return Err(invalid_grant("Invalid JWT Signature."));
        }
    }
    let sig = JWT_B64
        .decode(s64)
        .ok()
        .and_then(|b| Signature::try_from(b.as_slice()).ok())
        .ok_or_else(|| invalid_grant("Invalid JWT Signature."))?;
    let verifier = VerifyingKey::<Sha256>::new(key.public.clone());
    let signed = &jwt[..h64.len() + 1 + c64.len()];
    verifier
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| invalid_grant("Invalid JWT Signature."))?;

    let claims = decode_json(c64).ok_or_else(|| invalid_grant("Invalid JWT claims."))?;
    let claim = |name: &str| claims.get(name).and_then(Value::as_str);
    if claim("iss") != Some(CLIENT_EMAIL) {
        return Err(invalid_grant("Invalid grant: account not found"));
    }
    if claim("aud") != Some(token_uri) {
        return Err(GrantError::InvalidGrant(format!(
            "Invalid JWT: Failed audience check. The right audience is {token_uri}"
        )));
    }
    let time = |name: &str| claims.get(name).and_then(Value::as_i64);
    let (Some(iat), Some(exp)) = (time("iat"), time("exp")) else {
        return Err(invalid_grant(BAD_TIMES));
    };
    if exp <= now
        || exp <= iat
        || exp - iat > MAX_JWT_LIFETIME_SECS
        || iat > now + MAX_IAT_SKEW_SECS
    {
        return Err(invalid_grant(BAD_TIMES));
    }
    let scoped = claim("scope").is_some_and(|s| s.split_whitespace().any(|s| s == RBM_SCOPE));
    if !scoped {
        return Err(GrantError::InvalidScope);
    }
    Ok(())
}

fn decode_json(segment: &str) -> Option<Value> {
    let bytes = JWT_B64.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `POST /token`, form-encoded `grant_type` and `assertion`.
pub(super) async fn token(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match grant(&inner, &body) {
        Ok(token) => (
            StatusCode::OK,
            Json(json!({
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECS,
                "token_type": "Bearer",
            })),
        )
            .into_response(),
        Err(e) => {
            tracing::debug!(error = ?e, "google emulator refused a token grant");
            e.into_response()
        }
    }
}

fn grant(inner: &Inner, body: &[u8]) -> Result<String, GrantError> {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(body)
        .map_err(|_| GrantError::InvalidRequest("Malformed form body.".to_owned()))?;
    match form.get("grant_type").map(String::as_str) {
        Some(GRANT_TYPE) => {}
        Some(other) => {
            return Err(GrantError::UnsupportedGrantType(format!(
                "Invalid grant_type: {other}"
            )))
        }
        None => {
            return Err(GrantError::InvalidRequest(
                "Missing required parameter: grant_type".to_owned(),
            ))
        }
    }
    let assertion = form.get("assertion").ok_or_else(|| {
        GrantError::InvalidRequest("Missing required parameter: assertion".to_owned())
    })?;
    check_assertion(
        assertion,
        inner.key,
        &inner.token_uri(),
        chrono::Utc::now().timestamp(),
    )?;

    let mut raw = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("ya29.{}", URL_SAFE_NO_PAD.encode(raw));
    let expires = Instant::now() + Duration::from_secs(TOKEN_LIFETIME_SECS);
    let mut st = inner.st();
    st.access_tokens.insert(token.clone(), expires);
    st.token_grants += 1;
    Ok(token)
}
