//! Calls to Google: the OAuth token for the service account, and the RBM
//! send and revoke. Only workers call these; webhook handlers never do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use tokio::sync::{Mutex, RwLock};

use crate::config::RbmSettings;
use crate::metrics::Metrics;
use crate::outbound::{retry_after, CallError};

pub const RBM_SCOPE: &str = "https://www.googleapis.com/auth/rcsbusinessmessaging";

/// Refresh a token when less than this remains, so no call ever carries one
/// that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    #[error("cannot read the service account key {path}: {message}")]
    Key { path: String, message: String },
    #[error("cannot obtain an access token: {0}")]
    Token(String),
}

/// One OAuth token shared by every call, refreshed ahead of expiry;
/// concurrent refreshes collapse into one request to the token endpoint.
pub struct TokenSource {
    auth: yup_oauth2::authenticator::DefaultAuthenticator,
    cached: RwLock<Option<(Arc<str>, Instant)>>,
    refreshing: Mutex<()>,
    metrics: Metrics,
}

impl TokenSource {
    pub async fn from_key_file(
        path: &std::path::Path,
        timeout: Duration,
    ) -> Result<TokenSource, GoogleError> {
        let key_err = |message: String| GoogleError::Key {
            path: path.display().to_string(),
            message,
        };
        let key = yup_oauth2::read_service_account_key(path)
            .await
            .map_err(|e| key_err(e.to_string()))?;
        let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
            .with_timeout(timeout)
            .build()
            .await
            .map_err(|e| key_err(e.to_string()))?;
        Ok(TokenSource {
            auth,
            cached: RwLock::new(None),
            refreshing: Mutex::new(()),
            metrics: Metrics::default(),
        })
    }

    pub async fn token(&self) -> Result<Arc<str>, GoogleError> {
        if let Some(token) = self.fresh().await {
            return Ok(token);
        }
        // One caller refreshes; the others wait here and then find its token.
        let _guard = self.refreshing.lock().await;
        if let Some(token) = self.fresh().await {
            return Ok(token);
        }
        let started = Instant::now();
        let refreshed = self.request().await;
        self.metrics.token_refresh(refreshed.is_ok(), started);
        let (value, lifetime) = refreshed?;
        let expires = Instant::now() + lifetime;
        *self.cached.write().await = Some((value.clone(), expires));
        tracing::info!(
            valid_for_secs = lifetime.as_secs(),
            "obtained a Google access token"
        );
        Ok(value)
    }

    /// One request to the token endpoint: the token and how long it lasts.
    async fn request(&self) -> Result<(Arc<str>, Duration), GoogleError> {
        let t = self
            .auth
            .force_refreshed_token(&[RBM_SCOPE])
            .await
            .map_err(|e| GoogleError::Token(e.to_string()))?;
        let value: Arc<str> = t
            .token()
            .ok_or_else(|| {
                GoogleError::Token("the token endpoint returned no access token".into())
            })?
            .into();
        let lifetime = t
            .expiration_time()
            .map(|exp| {
                let secs = exp.unix_timestamp() - chrono::Utc::now().timestamp();
                Duration::from_secs(secs.max(0) as u64)
            })
            .unwrap_or(Duration::from_secs(3600));
        Ok((value, lifetime))
    }

    /// Forgets the cached token after Google refused it.
    pub async fn invalidate(&self) {
        *self.cached.write().await = None;
    }

    async fn fresh(&self) -> Option<Arc<str>> {
        let cached = self.cached.read().await;
        match &*cached {
            Some((token, expires)) if *expires > Instant::now() + REFRESH_MARGIN => {
                Some(token.clone())
            }
            _ => None,
        }
    }
}

/// What a DELETE of an agent message came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    /// 200: revoked (or accepted for revocation).
    Ok,
    /// 404: nothing to revoke.
    NotFound,
}

/// Where one agent's calls go, and with whose credentials.
struct AgentEndpoint {
    base_url: String,
    tokens: TokenSource,
}

/// The RBM API client of every configured agent: each agent's calls go to
/// its own base URL with its own service account's token.
pub struct RbmClient {
    http: reqwest::Client,
    /// Serves agents that have no endpoint of their own.
    default: AgentEndpoint,
    agents: HashMap<String, AgentEndpoint>,
    metrics: Metrics,
}

impl RbmClient {
    pub fn new(settings: &RbmSettings, tokens: TokenSource) -> RbmClient {
        let http = crate::outbound::client(settings.timeout);
        RbmClient {
            http,
            default: AgentEndpoint {
                base_url: settings.base_url.clone(),
                tokens,
            },
            agents: HashMap::new(),
            metrics: Metrics::default(),
        }
    }

    /// Sends the calls of `agent_id` (bare) to `base_url` with `tokens`.
    pub fn with_agent(
        mut self,
        agent_id: &str,
        base_url: &str,
        mut tokens: TokenSource,
    ) -> RbmClient {
        tokens.metrics = self.metrics.clone();
        self.agents.insert(
            agent_id.to_owned(),
            AgentEndpoint {
                base_url: base_url.to_owned(),
                tokens,
            },
        );
        self
    }

    /// Counts calls and token refreshes in `metrics` rather than in a
    /// registry of their own.
    pub fn with_metrics(mut self, metrics: Metrics) -> RbmClient {
        self.default.tokens.metrics = metrics.clone();
        for agent in self.agents.values_mut() {
            agent.tokens.metrics = metrics.clone();
        }
        self.metrics = metrics;
        self
    }

    fn endpoint(&self, agent_id: &str) -> &AgentEndpoint {
        self.agents
            .get(crate::config::bare_agent_id(agent_id))
            .unwrap_or(&self.default)
    }

    /// Obtains the agent's access token ahead of a call, if it is not cached
    /// already: the call that follows then leaves as soon as it is made.
    pub async fn ready(&self, agent_id: &str) -> Result<(), CallError> {
        self.endpoint(agent_id).token().await.map(drop)
    }

    /// `DELETE /v1/phones/{phone}/agentMessages/{id}?agentId={agent}`.
    pub async fn revoke(
        &self,
        agent_id: &str,
        phone: &str,
        message_id: &str,
    ) -> Result<Revoked, CallError> {
        self.metrics
            .outbound("google", "revoke", self.delete(agent_id, phone, message_id))
            .await
    }

    /// `POST /v1/phones/{phone}/agentMessages?messageId={id}&agentId={agent}`
    /// with `body` (contentMessage, messageTrafficType, expireTime). Google
    /// ignores a messageId it has seen, so a retry never sends twice.
    pub async fn send(
        &self,
        agent_id: &str,
        phone: &str,
        message_id: &str,
        body: &serde_json::Value,
    ) -> Result<SendAnswer, CallError> {
        self.metrics
            .outbound(
                "google",
                "send",
                self.send_once(agent_id, phone, message_id, body),
            )
            .await
    }

    async fn send_once(
        &self,
        agent_id: &str,
        phone: &str,
        message_id: &str,
        body: &serde_json::Value,
    ) -> Result<SendAnswer, CallError> {
        let endpoint = self.endpoint(agent_id);
        let response = endpoint
            .agent_messages(&self.http, Method::POST, agent_id, phone, None)
            .await?
            .query(&[("messageId", message_id)])
            .json(body)
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        match response.status() {
            StatusCode::OK => Ok(SendAnswer::Sent),
            s @ (StatusCode::NOT_FOUND | StatusCode::FORBIDDEN) => Ok(SendAnswer::Unreachable {
                status: s.as_u16(),
                detail: body_excerpt(response).await,
            }),
            _ => Err(endpoint.failure(response).await),
        }
    }

    async fn delete(
        &self,
        agent_id: &str,
        phone: &str,
        message_id: &str,
    ) -> Result<Revoked, CallError> {
        let endpoint = self.endpoint(agent_id);
        let response = endpoint
            .agent_messages(
                &self.http,
                Method::DELETE,
                agent_id,
                phone,
                Some(message_id),
            )
            .await?
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        match response.status() {
            StatusCode::OK => Ok(Revoked::Ok),
            StatusCode::NOT_FOUND => Ok(Revoked::NotFound),
            _ => Err(endpoint.failure(response).await),
        }
    }
}

/// What a send of an agent message came to.
#[derive(Debug, PartialEq, Eq)]
pub enum SendAnswer {
    /// 200: Google holds it (or already did: a repeated messageId).
    Sent,
    /// 404 (not RCS-capable, or the carrier has not launched RBM) or 403
    /// (the agent is not launched for this user).
    Unreachable { status: u16, detail: String },
}

impl AgentEndpoint {
    fn url<'a>(
        &self,
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<reqwest::Url, CallError> {
        let bad = |detail: String| CallError::Rejected {
            status: 0,
            code: None,
            detail,
        };
        let mut url =
            reqwest::Url::parse(&self.base_url).map_err(|e| bad(format!("bad base URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| bad("bad base URL".into()))?
            .extend(segments);
        Ok(url)
    }

    /// A request to `phones/{phone}/agentMessages[/{message_id}]` on the
    /// agent's behalf: `agentId` in the query and a bearer token attached.
    async fn agent_messages(
        &self,
        http: &reqwest::Client,
        method: Method,
        agent_id: &str,
        phone: &str,
        message_id: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, CallError> {
        let mut url = self.url(
            ["v1", "phones", phone, "agentMessages"]
                .into_iter()
                .chain(message_id),
        )?;
        url.query_pairs_mut().append_pair("agentId", agent_id);
        let token = self.token().await?;
        Ok(http.request(method, url).bearer_auth(&*token))
    }

    async fn token(&self) -> Result<Arc<str>, CallError> {
        self.tokens.token().await.map_err(|e| CallError::Retryable {
            retry_after: None,
            detail: e.to_string(),
        })
    }

    /// An answer that is neither success nor a meaningful 404: retry what a
    /// retry may cure, refuse the rest with Google's message.
    async fn failure(&self, response: reqwest::Response) -> CallError {
        match response.status() {
            StatusCode::UNAUTHORIZED => {
                // An expired or revoked token: fetch a new one for the retry.
                self.tokens.invalidate().await;
                CallError::Retryable {
                    retry_after: None,
                    detail: format!("401 from Google: {}", body_excerpt(response).await),
                }
            }
            s if s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT
                || s.is_server_error() =>
            {
                let retry_after = retry_after(response.headers());
                CallError::Retryable {
                    retry_after,
                    detail: format!(
                        "{} from Google: {}",
                        s.as_u16(),
                        body_excerpt(response).await
                    ),
                }
            }
            s => CallError::Rejected {
                status: s.as_u16(),
                code: None,
                detail: body_excerpt(response).await,
            },
        }
    }
}

/// Google's error message, or the start of whatever body came back.
async fn body_excerpt(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.chars().take(300).collect())
}
