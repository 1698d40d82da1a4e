//! Calls to Twilio's Messages API, with reqwest rather than the `twilio`
//! crate: we need a configurable base URL, StatusCallback, Messaging Services,
//! error codes, and the list endpoint that makes a retry after a lost
//! response safe.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::config::{Secret, SmsSender, TwilioSettings};
use crate::metrics::Metrics;
use crate::outbound::{retry_after, CallError};

/// Clock skew allowed between us and Twilio when matching a message created
/// by an attempt whose response was lost.
const RECONCILE_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsRecord {
    pub sid: String,
    pub status: String,
}

pub struct TwilioClient {
    http: reqwest::Client,
    messages_url: String,
    account_sid: String,
    auth_token: Secret,
    sender: SmsSender,
    metrics: Metrics,
}

#[derive(Deserialize)]
struct MessageJson {
    sid: String,
    status: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    date_created: Option<String>,
}

#[derive(Deserialize)]
struct ListJson {
    messages: Vec<MessageJson>,
}

#[derive(Deserialize)]
struct ErrorJson {
    code: Option<u32>,
    message: Option<String>,
}

impl TwilioClient {
    pub fn new(settings: &TwilioSettings) -> TwilioClient {
        let http = crate::outbound::client(settings.timeout);
        TwilioClient {
            http,
            messages_url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                settings.base_url, settings.account_sid
            ),
            account_sid: settings.account_sid.clone(),
            auth_token: settings.auth_token.clone(),
            sender: settings.sender.clone(),
            metrics: Metrics::default(),
        }
    }

    /// Counts calls in `metrics` rather than in a registry of their own.
    pub fn with_metrics(mut self, metrics: Metrics) -> TwilioClient {
        self.metrics = metrics;
        self
    }

    /// Creates the message. `from` overrides the configured sender.
    pub async fn send(
        &self,
        to: &str,
        body: &str,
        from: Option<&str>,
        status_callback: &str,
    ) -> Result<SmsRecord, CallError> {
        self.metrics
            .outbound(
                "twilio",
                "send",
                self.create(to, body, from, status_callback),
            )
            .await
    }

    async fn create(
        &self,
        to: &str,
        body: &str,
        from: Option<&str>,
        status_callback: &str,
    ) -> Result<SmsRecord, CallError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("To", to),
            ("Body", body),
            ("StatusCallback", status_callback),
        ];
        match (from, &self.sender) {
            (Some(from), _) => form.push(("From", from)),
            (None, SmsSender::From(from)) => form.push(("From", from)),
            (None, SmsSender::MessagingService(sid)) => form.push(("MessagingServiceSid", sid)),
        }
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        let m: MessageJson = read(response).await?;
        Ok(SmsRecord {
            sid: m.sid,
            status: m.status,
        })
    }

    /// Looks for a message to `to` with this body created since `since`: the
    /// trace of an earlier attempt whose answer never reached us.
    pub async fn find(
        &self,
        to: &str,
        body: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<SmsRecord>, CallError> {
        self.metrics
            .outbound("twilio", "find", self.list(to, body, since))
            .await
    }

    async fn list(
        &self,
        to: &str,
        body: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<SmsRecord>, CallError> {
        // No DateSent filter: a message still queued has no date_sent yet.
        let response = self
            .http
            .get(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .query(&[("To", to), ("PageSize", "50")])
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        let list: ListJson = read(response).await?;
        let not_before = since - RECONCILE_SKEW;
        Ok(list
            .messages
            .into_iter()
            .find(|m| {
                m.to.as_deref() == Some(to)
                    && m.body.as_deref() == Some(body)
                    && m.date_created
                        .as_deref()
                        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
                        .is_some_and(|d| d >= not_before)
            })
            .map(|m| SmsRecord {
                sid: m.sid,
                status: m.status,
            }))
    }
}

async fn read<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, CallError> {
    let status = response.status();
    let headers = response.headers().clone();
    // A body cut off mid-way after a 2xx leaves the outcome unknown.
    let text = response.text().await.map_err(|e| CallError::Ambiguous {
        detail: format!("reading Twilio's answer: {e}"),
    })?;
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|e| CallError::Ambiguous {
            detail: format!("unreadable answer from Twilio ({status}): {e}"),
        });
    }
    let err: Option<ErrorJson> = serde_json::from_str(&text).ok();
    let code = err.as_ref().and_then(|e| e.code);
    let message = err
        .and_then(|e| e.message)
        .unwrap_or_else(|| text.chars().take(300).collect());
    let detail = match code {
        Some(code) => format!("Twilio {} error {code}: {message}", status.as_u16()),
        None => format!("Twilio {}: {message}", status.as_u16()),
    };
    if status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::REQUEST_TIMEOUT
    {
        // Rate limits and outages pass; so does a credential an operator fixes.
        Err(CallError::Retryable {
            retry_after: retry_after(&headers),
            detail,
        })
    } else {
        Err(CallError::Rejected {
            status: status.as_u16(),
            code,
            detail,
        })
    }
}
