//! What can go wrong calling Google or Twilio, classified by what it means
//! for a retry: safe, unsafe without checking first, or pointless.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The upstream surely did nothing (refused, overloaded, unreachable):
    /// retrying is safe.
    #[error("{detail}")]
    Retryable {
        retry_after: Option<Duration>,
        detail: String,
    },
    /// The request may have reached the upstream and taken effect (a timeout
    /// or a reset after it was sent).
    #[error("{detail}")]
    Ambiguous { detail: String },
    /// Refused for good: retrying cannot help.
    #[error("{status}: {detail}")]
    Rejected {
        status: u16,
        /// The upstream's own error code (Twilio's, e.g. 21211).
        code: Option<u32>,
        detail: String,
    },
}

impl CallError {
    pub fn from_reqwest(e: reqwest::Error) -> CallError {
        // reqwest names the URL in its errors, and ours hold phone numbers
        // (the revoke's path, the `To` of Twilio's list), which must not reach
        // the logs unmasked: name only the host.
        let host = e.url().and_then(|u| u.host_str()).map(str::to_owned);
        let e = e.without_url();
        let mut detail = error_chain(&e);
        if let Some(host) = host {
            detail.push_str(&format!(" (calling {host})"));
        }
        if e.is_connect() {
            // No connection, so no request: nothing can have happened.
            CallError::Retryable {
                retry_after: None,
                detail,
            }
        } else if e.is_builder() {
            CallError::Rejected {
                status: 0,
                code: None,
                detail,
            }
        } else {
            CallError::Ambiguous { detail }
        }
    }
}

/// An error with its causes, "outer: inner: innermost".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `Retry-After` in seconds (the HTTP-date form is rare from these APIs and
/// is treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The HTTP client for one upstream: every call bounded by `timeout`, and
/// connecting by at most five seconds of it.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("rbm-fallback/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is static")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_do_not_repeat_the_phone_number_in_the_url() {
        // A port nothing listens on: the connection is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!(
            "http://127.0.0.1:{port}/v1/phones/+14155550123/agentMessages/m1?To=%2B14155550123"
        );
        let e = reqwest::Client::new()
            .delete(&url)
            .send()
            .await
            .unwrap_err();
        match CallError::from_reqwest(e) {
            CallError::Retryable { detail, .. } => {
                assert!(!detail.contains("4155550123"), "{detail}");
                assert!(detail.contains("127.0.0.1"), "{detail}");
            }
            other => panic!("a refused connection is retryable: {other:?}"),
        }
    }
}
