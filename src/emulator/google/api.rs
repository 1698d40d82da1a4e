//! The RBM REST surface: routes, Google's error body, and the checks every
//! call passes (bearer token, agent id, phone format) before its own logic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::send_body::{parse_send_body, AsSent};
use super::{is_e164, oauth, Expiry, GoogleFaults, Inner, Refusal, RevokeRecord, SendRecord};
use crate::emulator::conn::ConnKill;
use crate::emulator::faults::{self, Fault, Plan};

type Params = Query<HashMap<String, String>>;

pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/token", post(oauth::token))
        .route("/v1/phones/{phone}/agentMessages", post(send))
        .route(
            "/v1/phones/{phone}/agentMessages/{message_id}",
            delete(revoke),
        )
        .route("/v1/phones/{phone}/capabilities", get(capabilities))
        .route("/emulator/agent-send", post(control_send))
        .route("/emulator/faults", get(get_faults).post(set_faults))
        .fallback(|| async {
            google_error(StatusCode::NOT_FOUND, "Requested entity was not found.")
        })
        .layer(middleware::from_fn_with_state(inner.clone(), outage))
        .with_state(inner)
}

/// Counts every request to Google's own endpoints, and answers them all 503
/// while `GoogleFaults::unavailable` is on. The emulator's control plane
/// (`/emulator/...`) is neither counted nor affected.
async fn outage(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/emulator/") {
        return next.run(req).await;
    }
    let unavailable = {
        let mut st = inner.st();
        st.requests += 1;
        st.faults.unavailable
    };
    if unavailable {
        return google_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is currently unavailable.",
        );
    }
    next.run(req).await
}

/// Carries out `act` under `plan`: after the added latency, either as
/// usual, or replaced by an error answer, or with the answer lost (a hang or
/// a reset, with `act` done first or not at all). Returns the response, the
/// status `act` gave (0 when it was not carried out) and whether the answer
/// was lost.
async fn under(
    inner: &Inner,
    conn: &ConnKill,
    plan: Plan,
    act: impl FnOnce() -> Response,
) -> (Response, u16, bool) {
    tokio::time::sleep(plan.latency).await;
    let done = |resp: Response| {
        let status = resp.status().as_u16();
        (resp, status)
    };
    match plan.fault {
        Fault::None => {
            let (resp, status) = done(act());
            (resp, status, false)
        }
        Fault::Status(code) => {
            let resp = error_answer(code);
            let status = resp.status().as_u16();
            (resp, status, false)
        }
        Fault::Hang { applied } | Fault::Reset { applied } => {
            let (resp, status) = if applied {
                done(act())
            } else {
                (error_answer(503), 0)
            };
            if matches!(plan.fault, Fault::Hang { .. }) {
                let hang_for = inner.st().faults.hang_for;
                tokio::time::sleep(hang_for).await;
            }
            conn.kill();
            (resp, status, true)
        }
        Fault::ResponseLost => {
            let (resp, status) = done(act());
            conn.kill();
            (resp, status, true)
        }
    }
}

/// The fault plan for one call other than a DELETE.
fn plan_other(inner: &Inner, what: &str, phone: &str) -> Plan {
    let mut st = inner.st();
    st.other_calls += 1;
    let n = st.other_calls.to_string();
    st.faults.plan(&[what, phone, &n])
}

/// `GET /emulator/faults`: the faults in force, in the compact form.
async fn get_faults(State(inner): State<Arc<Inner>>) -> String {
    inner.st().faults.to_string()
}

/// `POST /emulator/faults` with a compact fault string (`error_rate=0.2,...`,
/// with or without the `google.` prefix) changes the named faults; an empty
/// body turns every fault off.
async fn set_faults(State(inner): State<Arc<Inner>>, body: String) -> Response {
    let mut next = if body.trim().is_empty() {
        GoogleFaults::default()
    } else {
        inner.st().faults.clone()
    };
    match faults::parse_one(&body, "google", &mut |k, v| next.set(k, v)) {
        Ok(()) => {
            let text = next.to_string();
            inner.st().faults = next;
            (StatusCode::OK, text).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    }
}

/// Google's JSON error body; the status name follows google.rpc.Code.
pub(super) fn google_error(code: StatusCode, message: &str) -> Response {
    let status = match code.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500 => "INTERNAL",
        _ => "UNKNOWN",
    };
    let body = json!({ "error": { "code": code.as_u16(), "message": message, "status": status } });
    (code, Json(body)).into_response()
}

/// Why a call was refused before reaching its own logic.
struct Rejection(StatusCode, &'static str);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        google_error(self.0, self.1)
    }
}

/// The checks shared by every RBM call, in Google's order: credentials, then
/// the agent the credentials act for, then the resource name.
fn authorize(
    inner: &Inner,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    phone: &str,
) -> Result<(), Rejection> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let now = Instant::now();
    let valid = bearer.is_some_and(|t| {
        inner
            .st()
            .access_tokens
            .get(t)
            .is_some_and(|exp| *exp > now)
    });
    if !valid {
        return Err(Rejection(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials.",
        ));
    }
    let agent = params.get("agentId").map(String::as_str).unwrap_or("");
    if !inner.agent_matches(agent) {
        return Err(Rejection(
            StatusCode::FORBIDDEN,
            "The caller does not have permission",
        ));
    }
    if !is_e164(phone) {
        return Err(Rejection(
            StatusCode::BAD_REQUEST,
            "Request contains an invalid argument: phone number must be in E.164 format.",
        ));
    }
    Ok(())
}

async fn revoke(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    Path((phone, message_id)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let received_at = Utc::now();
    inner.revoke_arrivals.send_modify(|n| *n += 1);
    let mut hold = inner.revoke_hold.subscribe();
    // An error means the emulator is gone; nothing left to wait for.
    let _ = hold.wait_for(|held| !*held).await;
    let plan = {
        let mut st = inner.st();
        let n = st.deletes_for.entry(message_id.clone()).or_insert(0);
        *n += 1;
        let n = n.to_string();
        st.faults.plan(&["DELETE", &phone, &message_id, &n])
    };
    // In a task of its own, so that a client giving up on a hung request
    // (which drops this handler) cannot keep the DELETE from being recorded.
    let task = tokio::spawn(async move {
        let act = || match authorize(&inner, &headers, &params, &phone) {
            Err(rejection) => rejection.into_response(),
            Ok(()) => revoke_answer(inner.revoke(&phone, &message_id)),
        };
        let (resp, status, answer_lost) = under(&inner, &conn, plan, act).await;
        inner.record_revoke(RevokeRecord {
            phone,
            message_id,
            agent_id: params.get("agentId").cloned().unwrap_or_default(),
            received_at,
            status,
            answered_at: Utc::now(),
            answer_lost,
        });
        resp
    });
    task.await
        .unwrap_or_else(|_| google_error(StatusCode::INTERNAL_SERVER_ERROR, "emulator task failed"))
}

/// An injected error: Google's error body; 429 with `Retry-After`.
fn error_answer(status: u16) -> Response {
    revoke_answer(status)
}

fn revoke_answer(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match code.as_u16() {
        200 => (StatusCode::OK, Json(json!({}))).into_response(),
        404 => google_error(code, "Requested entity was not found."),
        429 => {
            let mut resp = google_error(code, "Resource has been exhausted (e.g. check quota).");
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            resp
        }
        503 => google_error(code, "The service is currently unavailable."),
        c if c >= 400 => google_error(code, "Internal error encountered."),
        // An injected non-error status is answered as given.
        _ => (code, Json(json!({}))).into_response(),
    }
}

async fn send(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    Path(phone): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Utc::now();
    let plan = plan_other(&inner, "send", &phone);
    // In a task of its own, as a DELETE is, so that a client giving up on a
    // hung request cannot keep the send from being recorded.
    let task = tokio::spawn(async move {
        let act = || send_now(&inner, &phone, &params, &headers, &body);
        let (resp, status, answer_lost) = under(&inner, &conn, plan, act).await;
        let sent = AsSent::read(&body);
        inner.record_send(SendRecord {
            phone,
            message_id: params.get("messageId").cloned().unwrap_or_default(),
            agent_id: params.get("agentId").cloned().unwrap_or_default(),
            received_at,
            status,
            answered_at: Utc::now(),
            answer_lost,
            traffic_type: sent.traffic_type,
            ttl: sent.ttl,
            expire_time: sent.expire_time,
        });
        resp
    });
    task.await
        .unwrap_or_else(|_| google_error(StatusCode::INTERNAL_SERVER_ERROR, "emulator task failed"))
}

fn send_now(
    inner: &Arc<Inner>,
    phone: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Err(rejection) = authorize(inner, headers, params, phone) {
        return rejection.into_response();
    }
    let message_id = match params.get("messageId") {
        Some(id) if uuid::Uuid::parse_str(id).is_ok() => id.clone(),
        Some(_) => return bad_request("messageId must be a UUID."),
        None => return bad_request("Missing required parameter: messageId."),
    };
    // Google checks the request before it looks at the phone: a body it
    // refuses is answered 400 even for a phone it cannot reach.
    let req = match parse_send_body(body, Utc::now()) {
        Ok(req) => req,
        Err(bad) => return bad_request(&bad.to_string()),
    };
    match inner.send_message(
        phone,
        &message_id,
        req.content,
        req.traffic_type,
        req.expiry,
    ) {
        Ok(resource) => (StatusCode::OK, Json(resource)).into_response(),
        Err(refusal) => refusal_answer(refusal),
    }
}

fn refusal_answer(refusal: Refusal) -> Response {
    let code = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::NOT_FOUND);
    google_error(code, &refusal.to_string())
}

fn bad_request(detail: &str) -> Response {
    google_error(
        StatusCode::BAD_REQUEST,
        &format!("Request contains an invalid argument: {detail}"),
    )
}

async fn capabilities(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    Path(phone): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let plan = plan_other(&inner, "capabilities", &phone);
    let act = || capabilities_now(&inner, &phone, &params, &headers);
    under(&inner, &conn, plan, act).await.0
}

fn capabilities_now(
    inner: &Inner,
    phone: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    if let Err(rejection) = authorize(inner, headers, params, phone) {
        return rejection.into_response();
    }
    if !params.contains_key("requestId") {
        return bad_request("Missing required parameter: requestId.");
    }
    if let Err(refusal) = inner.reachable(phone) {
        return refusal_answer(refusal);
    }
    let features = [
        "RICHCARD_STANDALONE",
        "RICHCARD_CAROUSEL",
        "ACTION_CREATE_CALENDAR_EVENT",
        "ACTION_DIAL",
        "ACTION_OPEN_URL",
        "ACTION_SHARE_LOCATION",
        "ACTION_VIEW_LOCATION",
    ];
    (StatusCode::OK, Json(json!({ "features": features }))).into_response()
}

/// The emulator's own control plane, not part of Google's API: lets a person
/// trying the sandbox "send" an RCS message as the agent would, without
/// minting an OAuth token first. Body: {"phone", "message_id", "ttl_secs"?}.
async fn control_send(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return google_error(StatusCode::BAD_REQUEST, "expected a JSON body");
    };
    let (Some(phone), Some(id)) = (
        v.get("phone").and_then(Value::as_str),
        v.get("message_id").and_then(Value::as_str),
    ) else {
        return google_error(StatusCode::BAD_REQUEST, "phone and message_id are required");
    };
    if !is_e164(phone) || id.is_empty() {
        return google_error(StatusCode::BAD_REQUEST, "invalid phone or message_id");
    }
    let ttl = v
        .get("ttl_secs")
        .and_then(Value::as_f64)
        .filter(|t| *t > 0.0)
        .map(Duration::from_secs_f64);
    let content = json!({ "text": format!("sandbox message {id}") });
    if let Err(refusal) = inner.send_message(phone, id, content, None, ttl.map(Expiry::Ttl)) {
        return refusal_answer(refusal);
    }
    (
        StatusCode::OK,
        Json(json!({ "name": format!("phones/{phone}/agentMessages/{id}") })),
    )
        .into_response()
}
