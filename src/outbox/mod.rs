//! The transactional outbox: HTTP requests owed to others because of a
//! committed change, stored in that change's transaction and delivered
//! afterwards, at least once.
//!
//! Two kinds of rows:
//! - `relay`: a verified Google webhook, forwarded byte for byte (body,
//!   `Content-Type`, `X-Goog-Signature`) to the agent's own webhook URL.
//!   Rows of one agent share an ordering key and go strictly in order.
//! - `callback`: a JSON event about a message (`message.outcome`,
//!   `message.sms_status`), signed per Standard Webhooks at each try.
//!   Delivered independently of each other.
//!
//! The deliverer ([`deliver::run`]) claims due rows with a lease in a short
//! statement, calls out with no transaction open, and settles the row with
//! an update guarded by the lease token.

mod deliver;
mod events;
mod queue;
mod signing;

pub use deliver::run;
pub use events::{callbacks_for_step, Callback};
pub use queue::{enqueue_callbacks, Relay};
pub use signing::{sign, SigningSecret};

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The agent's upstream webhook URL, if its webhooks are to be relayed.
pub fn relay_url_for<'a>(settings: &'a Settings, agent_id: &str) -> Option<&'a str> {
    settings.agent(agent_id)?.relay_url.as_deref()
}

/// An absolute http(s) URL with a host and no fragment, returned as given.
pub fn validate_target_url(url: &str) -> Result<String, String> {
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not an absolute URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("must be an http or https URL with a host".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_are_absolute_http_and_kept_as_given() {
        for ok in [
            "https://agent.example.com/rbm/webhook/",
            "http://127.0.0.1:9000/hook?token=abc",
        ] {
            assert_eq!(validate_target_url(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "/relative",
            "ftp://x.example.com/",
            "https://x.example.com/#frag",
            "https://user:pw@x.example.com/",
            "mailto:a@b.c",
        ] {
            assert!(validate_target_url(bad).is_err(), "{bad}");
        }
    }
}
