//! Bearer-token authentication of the internal API.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;
use crate::signature::secret_eq;

pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let scope = match bearer(&req) {
        Some(presented) if is_api_token(&state, presented) => scope_of(&state, presented),
        _ => return Err(ApiError::Unauthorized),
    };
    req.extensions_mut().insert(scope);
    Ok(next.run(req).await)
}

/// The agents a caller's API token may act for.
#[derive(Clone, Debug)]
pub struct AgentScope(Option<Vec<String>>);

impl AgentScope {
    pub fn allows(&self, agent_id: &str) -> bool {
        match &self.0 {
            None => true,
            Some(agents) => agents.iter().any(|a| a == agent_id),
        }
    }

    /// The one agent the token is limited to, if it is limited to one.
    pub fn only(&self) -> Option<&str> {
        match self.0.as_deref() {
            Some([one]) => Some(one),
            _ => None,
        }
    }
}

/// A token listed under some agents acts only for them; any other API
/// token acts for every agent.
fn scope_of(state: &AppState, presented: &str) -> AgentScope {
    let mut listed = Vec::new();
    for agent in &state.settings.agents {
        let mut hit = false;
        for token in &agent.api_tokens {
            hit |= secret_eq(presented, token.expose());
        }
        if hit {
            listed.push(agent.id.clone());
        }
    }
    AgentScope((!listed.is_empty()).then_some(listed))
}

/// As [`require_token`], also accepting the token as `?token=`: a browser
/// opening the dashboard cannot send a bearer header.
pub async fn require_token_or_query(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let from_query = req.uri().query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
    });
    // The page shows every agent's messages: a token limited to some agents
    // does not open it.
    let ok = match (bearer(&req), from_query.as_deref()) {
        (Some(t), _) | (None, Some(t)) => {
            is_api_token(&state, t) && scope_of(&state, t).0.is_none()
        }
        (None, None) => false,
    };
    if ok {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 9110).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

fn is_api_token(state: &AppState, presented: &str) -> bool {
    // Compare against every token, so timing does not tell which one matched.
    let mut ok = false;
    let agent_tokens = state.settings.agents.iter().flat_map(|a| &a.api_tokens);
    for token in state.settings.server.api_tokens.iter().chain(agent_tokens) {
        ok |= secret_eq(presented, token.expose());
    }
    ok
}
