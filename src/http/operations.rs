//! `GET /v1/operations/stuck`: the rows of the `stuck_messages` view, for
//! operators (and their alerting) to find messages that need a look.

use axum::extract::{Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::messages::encode_cursor;
use super::AppState;
use crate::store::StuckRow;

const MAX_PAGE: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StuckQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub struct StuckResponse {
    messages: Vec<StuckMessage>,
    next_cursor: Option<String>,
}

#[derive(Serialize)]
struct StuckMessage {
    message_id: String,
    agent_id: String,
    phone: String,
    state: String,
    outcome: String,
    /// `overdue`, `in_doubt` or `awaiting_sms_status`.
    reason: String,
    /// Seconds past its due time (or since Twilio took the SMS).
    waiting_secs: f64,
    deadline: DateTime<Utc>,
    due_at: Option<DateTime<Utc>>,
    attempts: i32,
    in_doubt: bool,
    updated_at: DateTime<Utc>,
}

impl From<StuckRow> for StuckMessage {
    fn from(r: StuckRow) -> StuckMessage {
        StuckMessage {
            message_id: r.message_id,
            agent_id: r.agent_id,
            phone: r.phone,
            state: r.state,
            outcome: r.outcome,
            reason: r.reason,
            waiting_secs: (r.waiting_secs * 1000.0).round() / 1000.0,
            deadline: r.deadline,
            due_at: r.due_at,
            attempts: r.attempts,
            in_doubt: r.in_doubt,
            updated_at: r.updated_at,
        }
    }
}

pub async fn stuck(
    State(state): State<AppState>,
    Extension(scope): Extension<super::auth::AgentScope>,
    query: Result<Query<StuckQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StuckResponse>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let (limit, after) = super::messages::page(q.limit.as_deref(), q.cursor.as_deref(), MAX_PAGE)?;
    // One more than asked tells whether another page follows.
    let mut rows = state.store.stuck(after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(r.id)))
        .flatten();
    Ok(Json(StuckResponse {
        // A token limited to some agents sees only their messages.
        messages: rows
            .into_iter()
            .filter(|r| scope.allows(&r.agent_id))
            .map(StuckMessage::from)
            .collect(),
        next_cursor,
    }))
}
