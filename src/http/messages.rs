//! The internal REST API: register, read, list and cancel messages.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::auth::AgentScope;
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::extract::{JsonBody, MessageIdPath};
use super::openapi::{
    InvalidField, MessageOutcome, MessageState, NotFound, PayloadTooLarge, Unauthorized,
    Unavailable, UnsupportedMediaType,
};
use super::AppState;
use crate::config::bare_agent_id;
use crate::domain::policy::{self, PolicyOverrides, QuietSetting, TrafficType};
use crate::domain::{
    rbm_content, sms_text, Input, Phone, State as MsgState, Verdict, RCS_TTL_MARGIN,
};
use crate::store::{Caller, Deadline, EventRow, MessageRow, NewMessage, Registered, StoreError};

pub const MAX_SMS_CHARS: usize = 1600;
/// Google refuses a TTL longer than 15 days.
const MAX_RBM_TTL: Duration = Duration::from_secs(15 * 24 * 3600);
const MAX_METADATA_BYTES: usize = 4096;
const MAX_PAGE: i64 = 500;

/// A message for fallback, in one of two modes:
///
/// - **track**: the agent has sent the RBM message itself; `message_id` is
///   the `messageId` it used.
/// - **send**: with an `rcs` object, rbm-fallback sends the RBM message
///   itself (Google's TTL just after the deadline) and takes it from there; a
///   phone Google cannot reach over RCS gets the SMS at once.
///
/// Give exactly one of `deadline` and `revoke_after_secs`, or neither if the
/// agent has a `default_deadline_secs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({
        "phone": "+14155550123",
        "message_id": "0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10",
        "revoke_after_secs": 300,
        "sms": { "body": "Your code is 123456" },
        "traffic_type": "AUTHENTICATION",
        "metadata": { "order": "A-1001" }
    }),
    json!({
        "phone": "+14155550123",
        "revoke_after_secs": 120,
        "rcs": {
            "contentMessage": { "text": "Your code is 123456" },
            "messageTrafficType": "AUTHENTICATION"
        },
        "sms": { "body": "Your code is 123456" },
        "policy": { "on_uncertain": "send_sms", "confirm_window_ms": 3000 }
    })
))]
pub struct CreateMessage {
    /// The RBM agent, with or without `@rbm.goog`; it must be a configured
    /// one that the API token may act for. Defaults to the token's only
    /// agent, else to the deployment's default agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The recipient, in E.164.
    #[schema(example = "+14155550123", pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub phone: String,
    /// Track mode (required): the RBM `messageId` the agent used, 1 to 128
    /// characters from `A-Z a-z 0-9 - _ . : ~`. Send mode: the UUID to send
    /// the message with; one is made when absent (give one, so that a retried
    /// request is recognised).
    #[serde(default)]
    #[schema(
        example = "0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10",
        pattern = r"^[A-Za-z0-9._:~-]{1,128}$"
    )]
    pub message_id: Option<String>,
    /// When to revoke the RCS if it is not delivered: RFC 3339, in the
    /// future, at most `fallback.max_deadline_secs` ahead (in send mode at
    /// most 15 days less 30 s: Google's TTL limit).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub deadline: Option<String>,
    /// Revoke this many seconds after registration instead of at `deadline`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub revoke_after_secs: Option<i64>,
    pub sms: SmsRequest,
    /// Send mode: the RBM message to send, as in the RBM API's AgentMessage.
    #[serde(default)]
    #[schema(value_type = Option<RcsRequest>)]
    pub rcs: Option<serde_json::Value>,
    /// Track mode: the RBM `messageTrafficType` the agent sent with, which
    /// picks the policy defaults. (Send mode takes `rcs.messageTrafficType`.)
    #[serde(default)]
    #[schema(value_type = Option<TrafficTypeName>)]
    pub traffic_type: Option<String>,
    /// This message's own policy; what it leaves out comes from the agent's
    /// and the deployment's defaults.
    #[serde(default)]
    #[schema(value_type = Option<PolicyRequest>)]
    pub policy: Option<PolicyOverrides>,
    /// Any JSON object of at most 4096 bytes, returned as given.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Where this message's outcome callbacks go, instead of the default.
    #[serde(default)]
    pub callback_url: Option<String>,
}

/// The RBM message rbm-fallback sends in send mode: the fields of the RBM
/// API's AgentMessage that the agent chooses. rbm-fallback sets
/// `expireTime` from the deadline itself, so neither `ttl` nor `expireTime`
/// may be given.
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct RcsRequest {
    /// As in the RBM API: exactly one of `text`, `fileName`,
    /// `uploadedRbmFile`, `richCard`, `contentInfo`, with `suggestions`.
    #[schema(value_type = Object, example = json!({ "text": "Your code is 123456" }))]
    contentMessage: serde_json::Value,
    #[schema(value_type = Option<TrafficTypeName>)]
    messageTrafficType: Option<String>,
}

/// RBM's `messageTrafficType`.
#[derive(ToSchema)]
#[schema(as = TrafficType)]
#[allow(dead_code, clippy::upper_case_acronyms)]
pub enum TrafficTypeName {
    AUTHENTICATION,
    TRANSACTION,
    PROMOTION,
    SERVICEREQUEST,
    ACKNOWLEDGEMENT,
}

/// How this message trades a possible duplicate against a possible miss.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PolicyRequest {
    /// When Google says the revoke failed (404, or
    /// TTL_EXPIRATION_REVOKE_FAILED) yet no DELIVERED or READ arrives within
    /// the confirm window: `skip` trusts Google (no SMS: no duplicate, maybe
    /// a miss); `send_sms` sends it (no miss, maybe a duplicate).
    #[schema(value_type = Option<OnUncertainName>)]
    on_uncertain: Option<String>,
    /// How long to wait for a DELIVERED after a revoke, 0 to 3600000.
    #[schema(minimum = 0, maximum = 3_600_000)]
    confirm_window_ms: Option<u64>,
    /// `"off"`, or the hours during which an SMS must not land.
    #[schema(value_type = Option<Object>, example = json!({ "start": "21:00", "end": "08:00", "time_zone": "auto", "action": "wait" }))]
    quiet_hours: Option<serde_json::Value>,
}

#[derive(ToSchema)]
#[schema(as = OnUncertain)]
#[allow(dead_code, non_camel_case_types)]
pub enum OnUncertainName {
    skip,
    send_sms,
}

/// The policy a message lives by, resolved at registration.
#[derive(Serialize, ToSchema)]
pub struct PolicyResource {
    #[schema(value_type = OnUncertainName)]
    pub on_uncertain: String,
    pub confirm_window_ms: u64,
    /// `{"start", "end", "time_zone", "action"}`, or `null` for none.
    #[schema(value_type = Option<Object>, required = true)]
    pub quiet_hours: Option<serde_json::Value>,
}

/// The SMS to send if the RCS is not delivered in time.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsRequest {
    /// Not blank, at most 1600 characters.
    #[schema(example = "Your code is 123456", min_length = 1, max_length = 1600)]
    pub body: String,
    /// A sender for this message (E.164 number or alphanumeric sender id of
    /// at most 11 characters) instead of the configured one.
    #[serde(default)]
    pub from: Option<String>,
}

/// A registered message, its state and (when read one by one) its history.
#[derive(Serialize, ToSchema)]
pub struct MessageResource {
    pub message_id: String,
    /// The bare agent id.
    pub agent_id: String,
    pub phone: String,
    #[schema(value_type = MessageState)]
    pub state: String,
    #[schema(value_type = MessageOutcome)]
    pub outcome: String,
    pub deadline: DateTime<Utc>,
    /// `track`: the agent sent the RBM message; `send`: rbm-fallback did.
    #[schema(example = "send")]
    pub mode: &'static str,
    /// Send mode: the RBM message as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, required = false)]
    pub rcs: Option<serde_json::Value>,
    #[schema(value_type = Option<TrafficTypeName>, required = true)]
    pub traffic_type: Option<String>,
    pub policy: PolicyResource,
    pub sms: SmsResource,
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<serde_json::Value>,
    /// The message's own callback URL, if it has one.
    pub callback_url: Option<String>,
    /// When the service will next act on the message, if it will. For a
    /// pending message: `worker.claim_lead_ms` before the deadline, when its
    /// revoke is claimed; the DELETE itself leaves at the deadline.
    #[schema(required = true)]
    pub next_action_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The ordered history; present on single reads, absent in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<EventResource>, required = false)]
    pub events: Option<Vec<EventResource>>,
}

/// The fallback SMS and, once Twilio has it, its sid and latest status.
#[derive(Serialize, ToSchema)]
pub struct SmsResource {
    pub body: String,
    /// `GSM-7` or `UCS-2`: the encoding the text needs.
    #[schema(example = "GSM-7")]
    pub encoding: &'static str,
    /// How many SMS segments the text takes.
    #[schema(example = 1)]
    pub segments: u32,
    #[schema(required = true)]
    pub from: Option<String>,
    /// Twilio's message sid.
    #[schema(required = true)]
    pub sid: Option<String>,
    /// Twilio's latest status of the SMS (e.g. `queued`, `sent`, `delivered`).
    #[schema(required = true)]
    pub status: Option<String>,
}

/// One step of a message's history.
#[derive(Serialize, ToSchema)]
pub struct EventResource {
    pub at: DateTime<Utc>,
    /// What happened: `registered`, `revoke_attempt`, `revoke_ok`,
    /// `sms_accepted`, `rcs_delivered`, `cancelled`, ….
    #[schema(example = "revoke_ok")]
    pub kind: String,
    #[schema(value_type = Option<MessageState>, required = true)]
    pub state_before: Option<String>,
    #[schema(value_type = MessageState)]
    pub state: String,
    /// What happened, e.g. a Twilio error code or the status Google answered.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl MessageResource {
    fn new(
        m: MessageRow,
        events: Option<Vec<EventRow>>,
        confirm_window: Duration,
    ) -> MessageResource {
        let shape = sms_text::shape(&m.sms_body);
        let confirm_window = m.confirm_window(confirm_window);
        MessageResource {
            mode: if m.rcs.is_some() { "send" } else { "track" },
            rcs: m.rcs,
            traffic_type: m.traffic_type,
            policy: PolicyResource {
                confirm_window_ms: confirm_window.as_millis() as u64,
                on_uncertain: m.on_uncertain,
                quiet_hours: m.quiet_hours,
            },
            message_id: m.message_id,
            agent_id: m.agent_id,
            phone: m.phone,
            state: m.state,
            outcome: m.outcome,
            deadline: m.deadline,
            sms: SmsResource {
                encoding: shape.encoding.as_str(),
                segments: shape.segments,
                body: m.sms_body,
                from: m.sms_from,
                sid: m.sms_sid,
                status: m.sms_status,
            },
            metadata: m.metadata,
            callback_url: m.callback_url,
            next_action_at: m.due_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
            events: events.map(|evs| {
                evs.into_iter()
                    .map(|e| EventResource {
                        at: e.at,
                        kind: e.kind,
                        state_before: e.state_before,
                        state: e.state_after,
                        detail: e.detail,
                    })
                    .collect()
            }),
        }
    }
}

async fn with_history(state: &AppState, m: MessageRow) -> Result<Json<MessageResource>, ApiError> {
    let events = state.store.history(m.id).await?;
    Ok(Json(MessageResource::new(
        m,
        Some(events),
        state.settings.fallback.confirm_window,
    )))
}

/// A registration whose deadline has passed is only fine as the retry of
/// one that was stored (a client that lost the answer must still learn the
/// message is registered): then the stored message, else the 422 to give.
/// `None` when the deadline is still ahead.
async fn registered_before(
    state: &AppState,
    new: &NewMessage,
    deadline: Option<&str>,
) -> Result<Option<Result<MessageRow, ApiError>>, StoreError> {
    let Deadline::At(at) = new.deadline else {
        return Ok(None);
    };
    if at > Utc::now() {
        return Ok(None);
    }
    Ok(Some(match state.store.get(&new.message_id).await? {
        Some(m) if m.request_digest == new.request_digest => Ok(m),
        _ => Err(ApiError::invalid(
            "deadline",
            format!("{} is in the past", deadline.unwrap_or_default()),
        )),
    }))
}

/// A page's size and where it starts, from the `limit` and `cursor`
/// query parameters of the listing endpoints.
pub(super) fn page(
    limit: Option<&str>,
    cursor: Option<&str>,
    max: i64,
) -> Result<(i64, Option<i64>), ApiError> {
    let limit = match limit {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| {
                ApiError::InvalidQuery(format!("limit must be a whole number from 1 to {max}"))
            })?,
    };
    let after =
        match cursor {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::InvalidQuery("cursor is not one this API returned".into())
            })?),
        };
    Ok((limit, after))
}

/// Ids travel in URLs (ours and Twilio's callback): keep them to characters
/// that need no escaping and cannot form a path.
pub fn validate_message_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "message_id",
            "must be 1 to 128 characters from A-Z a-z 0-9 - _ . : ~",
        ))
    }
}

fn validate(
    state: &AppState,
    scope: &AgentScope,
    req: &CreateMessage,
) -> Result<NewMessage, ApiError> {
    let settings = &state.settings;
    let agent = match req.agent_id.as_deref().map(bare_agent_id) {
        // The token's only agent, else the default one.
        None => scope
            .only()
            .and_then(|id| settings.agent(id))
            .unwrap_or(&settings.agents[0]),
        Some(a) => settings.agent(a).ok_or_else(|| {
            let served: Vec<&str> = settings.agents.iter().map(|a| a.id.as_str()).collect();
            ApiError::invalid(
                "agent_id",
                format!(
                    "unknown agent {a:?}; this deployment serves {}",
                    served.join(", ")
                ),
            )
        })?,
    };
    if !scope.allows(&agent.id) {
        return Err(forbidden_agent());
    }
    let agent_id = agent.id.clone();
    let phone = Phone::parse(&req.phone).map_err(|e| ApiError::invalid("phone", e.to_string()))?;
    let send_mode = req.rcs.is_some();
    let message_id = match (&req.message_id, send_mode) {
        (Some(id), false) => {
            validate_message_id(id)?;
            id.clone()
        }
        (None, false) => {
            return Err(ApiError::invalid(
                "message_id",
                "missing field `message_id` (required unless rcs is given: then rbm-fallback sends the message itself)",
            ))
        }
        (Some(id), true) => match uuid::Uuid::parse_str(id) {
            Ok(_) if id.len() == 36 => id.clone(),
            _ => {
                return Err(ApiError::invalid(
                    "message_id",
                    "must be a UUID such as 0f4c5a36-9f0b-4c4e-8d3b-2b7c1a9e6d10 in send mode (Google's messageId)",
                ))
            }
        },
        (None, true) => uuid::Uuid::new_v4().to_string(),
    };
    let rcs_traffic = match &req.rcs {
        Some(rcs) => validate_rcs(rcs)?,
        None => None,
    };
    let traffic = match (&req.traffic_type, rcs_traffic) {
        (Some(t), from_rcs) => {
            let t = TrafficType::parse(t).ok_or_else(|| {
                ApiError::invalid(
                    "traffic_type",
                    format!("unknown {t:?}; one of {}", TrafficType::names()),
                )
            })?;
            if from_rcs.is_some_and(|r| r != t) {
                return Err(ApiError::invalid(
                    "traffic_type",
                    "differs from rcs.messageTrafficType; give it once",
                ));
            }
            Some(t)
        }
        (None, from_rcs) => from_rcs,
    };
    let overrides = req.policy.clone().unwrap_or_default();
    overrides
        .check()
        .map_err(|(field, message)| ApiError::invalid(format!("policy.{field}"), message))?;
    let policy = policy::resolve(
        &overrides,
        &agent.policy,
        &settings.fallback.policy,
        traffic,
        settings.fallback.confirm_window,
    );

    // Google's TTL caps how far ahead a message it sends may expire.
    let max = if send_mode {
        state
            .settings
            .fallback
            .max_deadline
            .min(MAX_RBM_TTL - RCS_TTL_MARGIN)
    } else {
        state.settings.fallback.max_deadline
    };
    let deadline = match (&req.deadline, req.revoke_after_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "deadline",
                "give either deadline or revoke_after_secs, not both",
            ))
        }
        (None, None) => match agent.default_deadline {
            Some(d) => Deadline::After(d.as_secs() as i64),
            None => {
                return Err(ApiError::invalid(
                    "deadline",
                    "one of deadline or revoke_after_secs is required",
                ))
            }
        },
        (Some(text), None) => {
            let at = DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    ApiError::invalid(
                        "deadline",
                        format!("must be an RFC 3339 time such as 2026-01-15T10:00:00Z ({e})"),
                    )
                })?
                .with_timezone(&Utc);
            // A deadline in the past is refused in `create`, once it is known
            // not to be the retry of a request accepted earlier.
            if (at - Utc::now()).to_std().unwrap_or_default() > max {
                return Err(ApiError::invalid(
                    "deadline",
                    format!("is more than {} seconds ahead", max.as_secs()),
                ));
            }
            Deadline::At(at)
        }
        (None, Some(secs)) => {
            if secs < 1 || secs as u64 > max.as_secs() {
                return Err(ApiError::invalid(
                    "revoke_after_secs",
                    format!("must be between 1 and {}", max.as_secs()),
                ));
            }
            Deadline::After(secs)
        }
    };

    let body = &req.sms.body;
    if body.trim().is_empty() {
        return Err(ApiError::invalid("sms.body", "must not be empty"));
    }
    let chars = body.chars().count();
    if chars > MAX_SMS_CHARS {
        return Err(ApiError::invalid(
            "sms.body",
            format!("is {chars} characters; at most {MAX_SMS_CHARS} can be sent"),
        ));
    }
    if body.contains('\0') {
        return Err(ApiError::invalid(
            "sms.body",
            "must not contain NUL characters",
        ));
    }
    let shape = sms_text::shape(body);
    let most = settings.fallback.max_sms_segments;
    if shape.segments > most {
        return Err(ApiError::invalid(
            "sms.body",
            format!(
                "needs {} SMS segments ({}, {chars} characters); at most {most} are allowed",
                shape.segments,
                shape.encoding.as_str()
            ),
        ));
    }
    if let Some(from) = &req.sms.from {
        let alphanumeric = (1..=11).contains(&from.len())
            && from.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
            && from.bytes().any(|b| b.is_ascii_alphabetic());
        if Phone::parse(from).is_err() && !alphanumeric {
            return Err(ApiError::invalid(
                "sms.from",
                "must be an E.164 number or an alphanumeric sender id of at most 11 characters",
            ));
        }
    }
    if let Some(meta) = &req.metadata {
        if !meta.is_object() {
            return Err(ApiError::invalid("metadata", "must be a JSON object"));
        }
        if contains_nul(meta) {
            return Err(ApiError::invalid(
                "metadata",
                "must not contain NUL characters",
            ));
        }
        if meta.to_string().len() > MAX_METADATA_BYTES {
            return Err(ApiError::invalid(
                "metadata",
                format!("must be at most {MAX_METADATA_BYTES} bytes"),
            ));
        }
    }

    if let Some(url) = &req.callback_url {
        crate::outbox::validate_target_url(url)
            .map_err(|e| ApiError::invalid("callback_url", e))?;
        if state.settings.callbacks.secret.is_none() {
            return Err(ApiError::invalid(
                "callback_url",
                "callbacks are not enabled in this deployment (RBMF_CALLBACK_SECRET is not set)",
            ));
        }
    }

    // The digest covers the request as given, with the agent normalised, so
    // a retried request matches even though "revoke_after_secs" is relative.
    let mut canonical = serde_json::json!({
        "agent_id": agent_id,
        "phone": req.phone,
        "message_id": message_id,
        "deadline": match &deadline {
            Deadline::At(at) => Some(at.to_rfc3339()),
            Deadline::After(_) => None,
        },
        "revoke_after_secs": req.revoke_after_secs,
        "sms": { "body": req.sms.body, "from": req.sms.from },
        "metadata": req.metadata,
    });
    // Only when given, so that digests of requests without one stay as
    // they were before the field existed.
    if let Some(url) = &req.callback_url {
        canonical["callback_url"] = url.as_str().into();
    }
    if let Some(rcs) = &req.rcs {
        canonical["rcs"] = rcs.clone();
    }
    if let Some(t) = traffic {
        canonical["traffic_type"] = t.as_str().into();
    }
    // The policy as asked, not as resolved: the defaults it was resolved
    // against may change before the retry comes.
    if let Some(asked) = &req.policy {
        canonical["policy"] = policy_as_asked(asked);
    }
    let request_digest = Sha256::digest(canonical.to_string().as_bytes()).to_vec();

    Ok(NewMessage {
        message_id,
        agent_id,
        phone: phone.as_str().to_owned(),
        deadline,
        sms_body: body.clone(),
        sms_from: req.sms.from.clone().or_else(|| agent.sms_from.clone()),
        metadata: req.metadata.clone(),
        callback_url: req.callback_url.clone(),
        request_digest,
        rcs: req.rcs.clone(),
        traffic_type: traffic.map(|t| t.as_str().to_owned()),
        on_uncertain: policy.on_uncertain,
        confirm_window_ms: policy.confirm_window.as_millis() as i32,
        quiet_hours: policy
            .quiet_hours
            .as_ref()
            .map(|q| serde_json::to_value(q).expect("quiet hours serialise")),
    })
}

/// A request's own policy in one canonical form, for the digest.
fn policy_as_asked(p: &PolicyOverrides) -> serde_json::Value {
    serde_json::json!({
        "on_uncertain": p.on_uncertain.map(|o| o.as_str()),
        "confirm_window_ms": p.confirm_window_ms,
        "quiet_hours": match &p.quiet_hours {
            None => serde_json::Value::Null,
            Some(QuietSetting::Off) => "off".into(),
            Some(QuietSetting::Rule(rule)) => serde_json::to_value(rule).unwrap_or_default(),
        },
    })
}

/// Send mode's `rcs` object: what rbm-fallback itself relies on, and the
/// documented rules Google checks the content by (a 400 at send time would
/// fail the message without an SMS). What depends on the device stays
/// Google's to judge. Returns its traffic type.
fn validate_rcs(rcs: &serde_json::Value) -> Result<Option<TrafficType>, ApiError> {
    let serde_json::Value::Object(fields) = rcs else {
        return Err(ApiError::invalid(
            "rcs",
            "must be an object with contentMessage and, optionally, messageTrafficType",
        ));
    };
    for key in fields.keys() {
        match key.as_str() {
            "contentMessage" | "messageTrafficType" => {}
            "ttl" | "expireTime" => {
                return Err(ApiError::invalid(
                    format!("rcs.{key}"),
                    "is set by rbm-fallback from the deadline; leave it out",
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("rcs.{}", key.chars().take(64).collect::<String>()),
                    "unknown field; rcs holds contentMessage and messageTrafficType",
                ))
            }
        }
    }
    match fields.get("contentMessage") {
        Some(serde_json::Value::Object(c)) if !c.is_empty() => {
            rbm_content::check(c).map_err(|e| {
                let field = match e.field() {
                    "" => "rcs.contentMessage".to_owned(),
                    f => format!("rcs.contentMessage.{f}"),
                };
                ApiError::invalid(field, e.to_string())
            })?
        }
        _ => {
            return Err(ApiError::invalid(
                "rcs.contentMessage",
                "is required: the RBM message content, e.g. {\"text\": \"…\"}",
            ))
        }
    }
    if contains_nul(rcs) {
        return Err(ApiError::invalid("rcs", "must not contain NUL characters"));
    }
    match fields.get("messageTrafficType") {
        // Google's own ways of saying "none".
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(t)) if t == "MESSAGE_TRAFFIC_TYPE_UNSPECIFIED" => Ok(None),
        Some(serde_json::Value::String(t)) => TrafficType::parse(t).map(Some).ok_or_else(|| {
            ApiError::invalid(
                "rcs.messageTrafficType",
                format!("unknown {t:?}; one of {}", TrafficType::names()),
            )
        }),
        Some(_) => Err(ApiError::invalid(
            "rcs.messageTrafficType",
            format!("must be one of {}", TrafficType::names()),
        )),
    }
}

/// PostgreSQL's jsonb cannot store NUL characters, in keys or strings.
fn contains_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    operation_id = "createMessage",
    summary = "Register a message for fallback (track mode), or hand it over to be sent (send mode)",
    request_body = CreateMessage,
    responses(
        (status = 201, description = "Registered.", body = MessageResource),
        (status = 200, description = "An identical repeat: the stored resource, in whatever state it has reached.", body = MessageResource),
        (status = 400, description = "`invalid_json`: malformed JSON; `invalid_body`: the body could not be read.", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the API token may not act for this agent.", body = ErrorBody),
        (status = 409, description = "`message_id_conflict`: the id is registered with different content.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidField),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(scope): Extension<AgentScope>,
    JsonBody(req): JsonBody<CreateMessage>,
) -> Result<(StatusCode, Json<MessageResource>), ApiError> {
    let new = validate(&state, &scope, &req)?;
    match registered_before(&state, &new, req.deadline.as_deref()).await? {
        Some(Ok(m)) => return Ok((StatusCode::OK, with_history(&state, m).await?)),
        Some(Err(e)) => return Err(e),
        None => {}
    }
    match state.writes.registrations.submit(new.clone()).await? {
        (Registered::Created(m), events) => {
            tracing::info!(message_id = %m.message_id, deadline = %m.deadline, "registered");
            let confirm_window = state.settings.fallback.confirm_window;
            Ok((
                StatusCode::CREATED,
                Json(MessageResource::new(m, Some(events), confirm_window)),
            ))
        }
        (Registered::Existing(m), _) => Ok((StatusCode::OK, with_history(&state, m).await?)),
        (Registered::Conflict, _) => Err(ApiError::Conflict {
            code: "message_id_conflict",
            message: format!(
                "message {} is already registered with different content",
                new.message_id
            ),
        }),
    }
}

#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}",
    tag = "messages",
    operation_id = "getMessage",
    summary = "Read a message with its history",
    params(("message_id" = String, Path, description = "The RBM `messageId` it was registered with.")),
    responses(
        (status = 200, description = "The message with its `events`.", body = MessageResource),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the API token may not act for the message's agent.", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(scope): Extension<AgentScope>,
    MessageIdPath(id): MessageIdPath,
) -> Result<Json<MessageResource>, ApiError> {
    validate_message_id(&id).map_err(|_| not_found(&id))?;
    let (m, events) = state
        .store
        .get_with_history(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if !scope.allows(&m.agent_id) {
        return Err(forbidden_agent());
    }
    let confirm_window = state.settings.fallback.confirm_window;
    Ok(Json(MessageResource::new(m, Some(events), confirm_window)))
}

fn forbidden_agent() -> ApiError {
    ApiError::Forbidden("this API token may not act for the message's agent")
}

fn not_found(id: &str) -> ApiError {
    let shown: String = id.chars().take(128).collect();
    ApiError::NotFound(format!("no message {shown:?}"))
}

#[utoipa::path(
    delete,
    path = "/v1/messages/{message_id}",
    tag = "messages",
    operation_id = "cancelMessage",
    summary = "Cancel a pending message",
    description = "No fallback is needed after all. Only a `pending` message, or a send-mode one between send attempts (`rcs_sending`), can be cancelled; cancelling a cancelled one again answers 200.",
    params(("message_id" = String, Path, description = "The RBM `messageId` it was registered with.")),
    responses(
        (status = 200, description = "Cancelled (now or before).", body = MessageResource),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the API token may not act for the message's agent.", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 409, description = "`not_cancellable`: revocation has begun, a send is under way, or the message is finished.", body = ErrorBody),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(scope): Extension<AgentScope>,
    MessageIdPath(id): MessageIdPath,
) -> Result<Json<MessageResource>, ApiError> {
    validate_message_id(&id).map_err(|_| not_found(&id))?;
    if scope.only().is_some() || state.settings.agents.len() > 1 {
        let m = state.store.get(&id).await?.ok_or_else(|| not_found(&id))?;
        if !scope.allows(&m.agent_id) {
            return Err(forbidden_agent());
        }
    }
    let applied = state
        .store
        .apply_to(
            &id,
            Caller::Outside,
            &Input::Cancel,
            serde_json::json!({ "by": "api" }),
            &state.policy,
        )
        .await?
        .ok_or_else(|| not_found(&id))?;
    match applied.verdict {
        Verdict::Apply(_) => {
            tracing::info!(message_id = %id, "cancelled");
            with_history(&state, applied.message).await
        }
        // Cancelling twice is a retry, not a conflict.
        Verdict::Refuse { .. } if applied.message.state == MsgState::Cancelled.as_str() => {
            with_history(&state, applied.message).await
        }
        Verdict::Refuse { reason } | Verdict::Record { note: reason, .. } => {
            Err(ApiError::Conflict {
                code: "not_cancellable",
                message: format!(
                    "cannot cancel message {id} in state {}: {reason}",
                    applied.message.state
                ),
            })
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only messages in this state.
    #[param(value_type = Option<MessageState>)]
    state: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// One page of messages, newest first, without their histories.
#[derive(Serialize, ToSchema)]
pub struct ListResponse {
    pub messages: Vec<MessageResource>,
    /// Pass it back as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/messages",
    tag = "messages",
    operation_id = "listMessages",
    summary = "List messages, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "One page.", body = ListResponse),
        (status = 400, description = "`invalid_query`: a bad `state`, `limit` or `cursor`, or an unknown parameter.", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(scope): Extension<AgentScope>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    if let Some(s) = &q.state {
        s.parse::<MsgState>().map_err(|_| {
            let all: Vec<&str> = MsgState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::InvalidQuery(format!("unknown state {s:?}; one of {}", all.join(", ")))
        })?;
    }
    let (limit, after) = page(q.limit.as_deref(), q.cursor.as_deref(), MAX_PAGE)?;
    let page = state.store.list(q.state.as_deref(), after, limit).await?;
    Ok(Json(ListResponse {
        // A token limited to some agents sees only their messages; a page
        // may then hold fewer than `limit`.
        messages: page
            .messages
            .into_iter()
            .filter(|m| scope.allows(&m.agent_id))
            .map(|m| MessageResource::new(m, None, state.settings.fallback.confirm_window))
            .collect(),
        next_cursor: page.next_after.map(encode_cursor),
    }))
}

// Opaque to clients, so the ordering key can change without breaking them.
pub(super) fn encode_cursor(id: i64) -> String {
    B64URL.encode(format!("v1:{id}"))
}

pub(super) fn decode_cursor(c: &str) -> Option<i64> {
    let raw = B64URL.decode(c).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("v1:")?
        .parse()
        .ok()
}

pub const MAX_BATCH: usize = 1000;

/// Registrations to store together.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1000 registrations; each is validated and answered on its own.
    #[schema(value_type = Vec<CreateMessage>, min_items = 1, max_items = 1000)]
    messages: Vec<Box<serde_json::value::RawValue>>,
}

/// The answer to one item of a batch, as the single endpoint would give it.
#[derive(Serialize, ToSchema)]
pub struct BatchItem {
    /// The item's position in the request.
    pub index: usize,
    /// 201 (created), 200 (identical repeat), 409 or a 4xx validation error.
    #[schema(example = 201)]
    pub status: u16,
    /// Present unless the item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = MessageResource, required = false)]
    pub message: Option<MessageResource>,
    /// Present if the item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = ErrorDetail, required = false)]
    pub error: Option<serde_json::Value>,
}

/// Counts per kind of answer, and one result per item in request order.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub created: usize,
    pub existing: usize,
    pub failed: usize,
    pub results: Vec<BatchItem>,
}

/// `POST /v1/messages:batch`: each item is validated on its own and answered
/// as the single endpoint would; the accepted ones are stored in one
/// transaction.
#[utoipa::path(
    post,
    path = "/v1/messages:batch",
    tag = "messages",
    operation_id = "createMessages",
    summary = "Register up to 1000 messages at once",
    description = "Each item is validated and answered as `POST /v1/messages` would answer it; the accepted ones are stored in one transaction.",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item.", body = BatchResponse),
        (status = 400, description = "`invalid_json`: malformed JSON; `invalid_body`: the body could not be read.", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_field`: `messages` is missing, empty, too long or not an array of objects, or an unknown field was given.", body = ErrorBody),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(scope): Extension<AgentScope>,
    JsonBody(req): JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    if req.messages.is_empty() || req.messages.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "must hold 1 to {MAX_BATCH} messages, got {}",
                req.messages.len()
            ),
        ));
    }
    let mut results: Vec<Option<BatchItem>> = (0..req.messages.len()).map(|_| None).collect();
    let fail = |index: usize, e: ApiError| {
        let (status, body) = e.status_and_body();
        Some(BatchItem {
            index,
            status: status.as_u16(),
            message: None,
            error: Some(body["error"].clone()),
        })
    };
    let mut accepted = Vec::with_capacity(req.messages.len());
    let mut positions = Vec::with_capacity(req.messages.len());
    for (i, raw) in req.messages.iter().enumerate() {
        let item = super::extract::parse::<CreateMessage>(raw.get().as_bytes())
            .and_then(|item| validate(&state, &scope, &item).map(|new| (item, new)));
        match item {
            Err(e) => results[i] = fail(i, e),
            Ok((item, new)) => {
                match registered_before(&state, &new, item.deadline.as_deref()).await? {
                    Some(Err(e)) => results[i] = fail(i, e),
                    Some(Ok(m)) => {
                        results[i] = Some(BatchItem {
                            index: i,
                            status: 200,
                            message: Some(MessageResource::new(
                                m,
                                None,
                                state.settings.fallback.confirm_window,
                            )),
                            error: None,
                        })
                    }
                    None => {
                        // The id answers a conflict; the message goes to the store.
                        positions.push((i, new.message_id.clone()));
                        accepted.push(new);
                    }
                }
            }
        }
    }
    let registered = state.store.register_batch(accepted, &state.policy).await?;
    for ((i, message_id), outcome) in positions.into_iter().zip(registered) {
        results[i] = match outcome {
            Registered::Created(m) => Some(BatchItem {
                index: i,
                status: 201,
                message: Some(MessageResource::new(
                    m,
                    None,
                    state.settings.fallback.confirm_window,
                )),
                error: None,
            }),
            Registered::Existing(m) => Some(BatchItem {
                index: i,
                status: 200,
                message: Some(MessageResource::new(
                    m,
                    None,
                    state.settings.fallback.confirm_window,
                )),
                error: None,
            }),
            Registered::Conflict => fail(
                i,
                ApiError::Conflict {
                    code: "message_id_conflict",
                    message: format!(
                        "message {message_id} is already registered with different content"
                    ),
                },
            ),
        };
    }
    let results: Vec<BatchItem> = results.into_iter().flatten().collect();
    let count = |s: u16| results.iter().filter(|r| r.status == s).count();
    let (created, existing) = (count(201), count(200));
    tracing::info!(
        created,
        existing,
        failed = results.len() - created - existing,
        "batch registered"
    );
    Ok(Json(BatchResponse {
        created,
        existing,
        failed: results.len() - created - existing,
        results,
    }))
}
